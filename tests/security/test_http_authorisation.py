"""RabbitMQ's HTTP backend as the authoriser (`vhost_path`, `resource_path`, `topic_path`),
against an aiohttp service implementing the contract, with real clients.

The service allows the users `h` and `novhost` (password `pw`); refuses the
vhost to `novhost`; refuses a resource whose name holds `forbidden` (any
permission), `noread` (read) or `nowrite` (write), answers nonsense for
`garbage` and never in time for `slow`; refuses routing keys that start with
`secret`. Every answer comes after a short pause, so that each check that is
not cached really waits for it. `guest` is the store's: the service never
hears of it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pika
import pytest
import stomp
from aiohttp import web
from pika.exceptions import ChannelClosedByBroker, ProbableAccessDeniedError

from moorage.broker.clock import ManualClock
from moorage.broker.embedded import free_port
from tests.helpers import RunningBroker, make_config
from tests.mqtt.conftest import TIMEOUT, PahoClient

pytestmark = pytest.mark.timeout(90)


class AuthzService:
    """RabbitMQ's four paths on a loop of its own (see the module docstring)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, str]]] = []  # (path, method, parameters)
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/auth/{path}"

    def asked(self, path: str, **params: str) -> int:
        """How many requests to `path` had (at least) these parameters."""
        return sum(
            1
            for p, _m, got in list(self.calls)
            if p == path and all(got.get(k) == v for k, v in params.items())
        )

    async def _params(self, request: web.Request, path: str) -> dict[str, str]:
        source = await request.post() if request.method == "POST" else request.query
        params = {k: str(v) for k, v in source.items()}
        self.calls.append((path, request.method, params))
        await asyncio.sleep(0.05)  # the broker must wait for the answer, not assume one
        return params

    async def user(self, request: web.Request) -> web.Response:
        p = await self._params(request, "user")
        ok = p.get("username") in ("h", "novhost") and p.get("password") == "pw"
        return web.Response(text="allow management" if ok else "deny")

    async def vhost(self, request: web.Request) -> web.Response:
        p = await self._params(request, "vhost")
        return web.Response(text="deny" if p["username"] == "novhost" else "allow")

    async def resource(self, request: web.Request) -> web.Response:
        p = await self._params(request, "resource")
        name, permission = p["name"], p["permission"]
        if "slow" in name:
            await asyncio.sleep(3)  # request_timeout is 1 s in that test
        if "garbage" in name:
            return web.Response(text="maybe")
        denied = (
            "forbidden" in name
            or (permission == "read" and "noread" in name)
            or (permission == "write" and "nowrite" in name)
        )
        return web.Response(text="deny" if denied else "allow")

    async def topic(self, request: web.Request) -> web.Response:
        p = await self._params(request, "topic")
        return web.Response(text="deny" if p["routing_key"].startswith("secret") else "allow")

    def start(self) -> AuthzService:
        self.thread.start()

        async def serve() -> None:
            app = web.Application()
            for name in ("user", "vhost", "resource", "topic"):
                app.router.add_route("*", f"/auth/{name}", getattr(self, name))
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)
        return self

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def service() -> Iterator[AuthzService]:
    running = AuthzService().start()
    yield running
    running.stop()


def _broker(
    tmp_path: Path,
    start: Callable[..., RunningBroker],
    service: AuthzService,
    clock: ManualClock | None = None,
    **http: object,
) -> RunningBroker:
    config = make_config(tmp_path)
    config.ports["mqtt"] = free_port()
    config.ports["stomp"] = free_port()
    config.auth_backends = ["internal", "http"]
    config.auth_settings = {
        "http": {
            "user_path": service.url("user"),
            "vhost_path": service.url("vhost"),
            "resource_path": service.url("resource"),
            "topic_path": service.url("topic"),
            "cache_ttl": 30.0,
            **http,
        }
    }
    return start(config, clock=clock) if clock is not None else start(config)


def _pika(broker: RunningBroker, user: str = "h") -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(broker.url_for(user, "pw")))


def _refused(action: Callable[[], object]) -> int:
    """The reply code of the channel.close that `action` got."""
    with pytest.raises(ChannelClosedByBroker) as e:
        action()
    return int(e.value.reply_code)


@pytest.mark.parametrize("method", ["get", "post"])
def test_amqp_resources_and_topics_are_the_services(
    tmp_path: Path,
    service: AuthzService,
    start_broker: Callable[..., RunningBroker],
    method: str,
) -> None:
    broker = _broker(tmp_path, start_broker, service, http_method=method)
    connection = _pika(broker)
    try:
        ch = connection.channel()
        ch.queue_declare("q1")
        ch.queue_bind("q1", "amq.topic", "a.#")
        ch.basic_publish("amq.topic", "a.b", b"allowed")
        method_frame, _props, body = next(ch.consume("q1", inactivity_timeout=10))
        assert method_frame is not None
        assert body == b"allowed"
        ch.cancel()
        assert _refused(lambda: ch.queue_declare("forbidden-q")) == 403

        ch = connection.channel()
        ch.queue_declare("noread-q")  # configure: allowed
        assert _refused(lambda: ch.basic_consume("noread-q", lambda *a: None)) == 403

        ch = connection.channel()
        ch.exchange_declare("nowrite-x", "fanout")
        ch.basic_publish("nowrite-x", "", b"x")
        assert _refused(lambda: ch.queue_declare("q1", passive=True)) == 403

        ch = connection.channel()  # topic_path: the routing key on a topic exchange
        ch.basic_publish("amq.topic", "secret.k", b"x")
        assert _refused(lambda: ch.queue_declare("q1", passive=True)) == 403
        ch = connection.channel()
        assert _refused(lambda: ch.queue_bind("q1", "amq.topic", "secret.#")) == 403
    finally:
        if connection.is_open:
            connection.close()

    verb = method.upper()
    assert {m for _p, m, _q in service.calls} == {verb}
    assert service.asked("vhost", username="h", vhost="/", ip="127.0.0.1") == 1
    assert service.asked(
        "resource", username="h", vhost="/", resource="queue", name="q1", permission="configure"
    )
    assert service.asked("resource", resource="exchange", name="amq.topic", permission="write")
    assert service.asked(
        "topic",
        username="h",
        vhost="/",
        resource="topic",
        name="amq.topic",
        permission="write",
        routing_key="secret.k",
        **{"variable_map.username": "h", "variable_map.vhost": "/"},
    )
    assert service.asked("topic", permission="read", routing_key="secret.#")

    # a user of the store keeps the store's permissions: the service never hears of it
    guest_connection = pika.BlockingConnection(pika.URLParameters(broker.url_for("guest", "guest")))
    try:
        guest_connection.channel().queue_declare("forbidden-for-h")
    finally:
        guest_connection.close()
    assert not any(q.get("username") == "guest" for _p, _m, q in service.calls)


def test_a_route_cached_by_another_user_still_asks_topic_path(
    tmp_path: Path, service: AuthzService, start_broker: Callable[..., RunningBroker]
) -> None:
    """The vhost's route cache skips routing, never the permission checks: a key
    that `guest` (the store's, no topic permissions) made hot is still asked of
    the service for `h`, and refused."""
    broker = _broker(tmp_path, start_broker, service)
    guest = pika.BlockingConnection(pika.URLParameters(broker.url_for("guest", "guest")))
    try:
        ch = guest.channel()
        ch.queue_declare("hot")
        ch.queue_bind("hot", "amq.topic", "secret.hot")
        for _ in range(3):  # the route (amq.topic, secret.hot) is cached now
            ch.basic_publish("amq.topic", "secret.hot", b"guest's")
    finally:
        guest.close()
    connection = _pika(broker)
    try:
        ch = connection.channel()
        ch.basic_publish("amq.topic", "secret.hot", b"h's")
        assert _refused(lambda: ch.queue_declare("hot", passive=True)) == 403
    finally:
        if connection.is_open:
            connection.close()
    assert service.asked("topic", username="h", routing_key="secret.hot") == 1


def test_frames_behind_a_pending_check_keep_their_order(
    tmp_path: Path, service: AuthzService, start_broker: Callable[..., RunningBroker]
) -> None:
    """Each routing key is a new topic_path question: every publish waits for its
    answer, and those behind it wait too; the queue gets them in the order sent."""
    broker = _broker(tmp_path, start_broker, service)
    connection = _pika(broker)
    try:
        ch = connection.channel()
        ch.queue_declare("ordered")
        ch.queue_bind("ordered", "amq.topic", "o.#")
        for i in range(20):
            ch.basic_publish("amq.topic", f"o.{i}", str(i).encode())
        got = []
        for method_frame, _props, body in ch.consume("ordered", inactivity_timeout=10):
            assert method_frame is not None
            got.append(int(body))
            if len(got) == 20:
                break
        ch.cancel()
    finally:
        connection.close()
    assert got == list(range(20))
    assert service.asked("topic", permission="write") == 20


def test_vhost_path_deny_refuses_the_connection(
    tmp_path: Path, service: AuthzService, start_broker: Callable[..., RunningBroker]
) -> None:
    broker = _broker(tmp_path, start_broker, service)
    with pytest.raises(ProbableAccessDeniedError, match=r"\(530\) .NOT_ALLOWED - access to vhost"):
        _pika(broker, "novhost")
    assert service.asked("vhost", username="novhost", vhost="/") == 1

    mqtt = PahoClient(broker.daemon.ports["mqtt"], "nv", protocol=paho.MQTTv5)
    mqtt.client.username_pw_set("novhost", "pw")
    try:
        _flags, rc, _props = mqtt.connect(expect_success=False)
        assert int(rc.value) == 0x87
    finally:
        mqtt.stop()
    errors = _StompErrors()
    connection = stomp.Connection12([("127.0.0.1", broker.daemon.ports["stomp"])], timeout=10)
    connection.set_listener("errors", errors)
    connection.connect("novhost", "pw", wait=False)
    assert "vhost" in errors.next()


def _mqtt(broker: RunningBroker, client_id: str, protocol: int) -> PahoClient:
    client = PahoClient(broker.daemon.ports["mqtt"], client_id, protocol=protocol)
    client.client.username_pw_set("h", "pw")
    client.connect()
    return client


def test_mqtt_subscribe_and_publish_by_the_service(
    tmp_path: Path, service: AuthzService, start_broker: Callable[..., RunningBroker]
) -> None:
    broker = _broker(tmp_path, start_broker, service)

    v5 = _mqtt(broker, "m5", paho.MQTTv5)
    acks: queue.Queue[Any] = queue.Queue()
    v5.client.on_publish = lambda _c, _u, _mid, rc, _p: acks.put(rc)
    try:
        assert [int(r.value) for r in v5.subscribe("a/b", 1)] == [1]
        assert [int(r.value) for r in v5.subscribe("secret/x", 1)] == [0x87]
        v5.client.publish("a/b", b"hello", 1)
        assert int(acks.get(timeout=TIMEOUT).value) == 0
        assert v5.get().payload == b"hello"
        v5.client.publish("secret/y", b"no", 1)
        assert int(acks.get(timeout=TIMEOUT).value) == 0x87
    finally:
        v5.stop()
    assert service.asked(
        "topic",
        name="amq.topic",
        permission="read",
        routing_key="secret.x",
        **{"variable_map.client_id": "m5"},
    )

    v3 = _mqtt(broker, "m3", paho.MQTTv311)
    try:
        assert [int(r.value) for r in v3.subscribe("a/c", 1)] == [1]
        assert [int(r.value) for r in v3.subscribe("secret/z", 1)] == [0x80]
        v3.client.publish("secret/w", b"no", 1)  # 3.1.1 cannot say no: dropped
        v3.disconnects.get(timeout=TIMEOUT)
    finally:
        v3.stop()


class _StompErrors(stomp.ConnectionListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.errors: queue.Queue[str] = queue.Queue()
        self.messages: queue.Queue[str] = queue.Queue()
        self.receipts: queue.Queue[str] = queue.Queue()
        self.disconnected = threading.Event()

    def on_disconnected(self) -> None:
        self.disconnected.set()

    def on_error(self, frame: Any) -> None:
        self.errors.put(frame.headers.get("message", ""))

    def on_message(self, frame: Any) -> None:
        self.messages.put(frame.body)

    def on_receipt(self, frame: Any) -> None:
        self.receipts.put(frame.headers.get("receipt-id", ""))

    def next(self) -> str:
        return self.errors.get(timeout=TIMEOUT)

    def refused(self) -> bool:
        """The next ERROR refuses, and the broker then closes the connection."""
        return "refused" in self.next() and self.disconnected.wait(TIMEOUT)


def _close_stomp(connection: stomp.Connection12, listener: _StompErrors) -> None:
    """Says DISCONNECT unless the broker already closed: stomp.py's receiver thread
    drops the socket when it sees the close, so a DISCONNECT racing it is an error."""
    if not listener.disconnected.is_set():
        connection.disconnect()


def _stomp(broker: RunningBroker) -> tuple[stomp.Connection12, _StompErrors]:
    listener = _StompErrors()
    connection = stomp.Connection12([("127.0.0.1", broker.daemon.ports["stomp"])], timeout=10)
    connection.set_listener("errors", listener)
    connection.connect("h", "pw", wait=True)
    return connection, listener


def test_stomp_send_and_subscribe_by_the_service(
    tmp_path: Path, service: AuthzService, start_broker: Callable[..., RunningBroker]
) -> None:
    broker = _broker(tmp_path, start_broker, service)
    connection, listener = _stomp(broker)
    try:
        connection.subscribe("/topic/a.s", "1", headers={"receipt": "r1"})
        connection.send("/topic/a.s", "allowed")
        assert listener.messages.get(timeout=TIMEOUT) == "allowed"
        connection.send("/topic/secret.s", "no")
        assert listener.refused()
    finally:
        _close_stomp(connection, listener)
    for destination in ("/topic/secret.t", "/queue/forbidden-s"):
        connection, listener = _stomp(broker)
        try:
            connection.subscribe(destination, "1")
            assert listener.refused()
        finally:
            _close_stomp(connection, listener)
    assert service.asked("topic", permission="write", routing_key="secret.s")
    assert service.asked("resource", resource="queue", name="forbidden-s")


def test_a_stomp_commit_waits_for_answers_forgotten_since_its_sends(
    tmp_path: Path, service: AuthzService, start_broker: Callable[..., RunningBroker]
) -> None:
    """SENDs in a transaction are checked when sent; a COMMIT that comes after the
    answers expired waits for them again, and publishes each message once, in order."""
    clock = ManualClock()
    broker = _broker(
        tmp_path, start_broker, service, clock=clock, cache_ttl=1.0, request_timeout=0.5
    )
    connection, listener = _stomp(broker)
    try:
        connection.subscribe("/topic/a.tx", "1")
        tx = connection.begin()
        connection.send("/topic/a.tx", "1", transaction=tx)
        connection.send("/topic/a.tx", "2", transaction=tx, headers={"receipt": "sent"})
        assert listener.receipts.get(timeout=TIMEOUT) == "sent"
        assert service.asked("topic", permission="write", routing_key="a.tx") == 1
        broker.call(clock.advance, 3.0)  # past max(1 s, 4 x 0.5 s): forgotten
        connection.commit(tx)
        assert [listener.messages.get(timeout=TIMEOUT) for _ in range(2)] == ["1", "2"]
        connection.send("/topic/a.tx", "3")
        assert listener.messages.get(timeout=TIMEOUT) == "3"  # nothing published twice
        assert service.asked("topic", permission="write", routing_key="a.tx") == 2
    finally:
        _close_stomp(connection, listener)


def test_answers_are_cached_for_the_ttl_of_the_broker_clock(
    tmp_path: Path, service: AuthzService, start_broker: Callable[..., RunningBroker]
) -> None:
    clock = ManualClock()
    broker = _broker(tmp_path, start_broker, service, clock=clock)
    ask = {"resource": "queue", "name": "cq", "permission": "configure"}
    connection = _pika(broker)
    try:
        connection.channel().queue_declare("cq")
        connection.channel().queue_declare("cq")  # another session: the backend's cache
        assert service.asked("resource", **ask) == 1
        broker.call(clock.advance, 29.0)
        connection.channel().queue_declare("cq")
        assert service.asked("resource", **ask) == 1
        broker.call(clock.advance, 2.0)  # past the TTL: asked again
        connection.channel().queue_declare("cq")
        assert service.asked("resource", **ask) == 2
    finally:
        connection.close()


def test_a_service_that_is_down_or_slow_or_confused_refuses(
    tmp_path: Path,
    service: AuthzService,
    start_broker: Callable[..., RunningBroker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "moorage.auth")
    down = f"http://127.0.0.1:{free_port()}/auth/topic"  # nothing listens there
    broker = _broker(tmp_path, start_broker, service, topic_path=down, request_timeout=1.0)
    connection = _pika(broker)
    try:
        ch = connection.channel()
        ch.basic_publish("amq.topic", "a.b", b"x")
        assert _refused(lambda: ch.queue_declare("q", passive=True)) == 403
        assert "cannot be asked" in caplog.text
        ch = connection.channel()
        assert _refused(lambda: ch.queue_declare("slow-q")) == 403  # request_timeout
        assert "TimeoutError" in caplog.text
        ch = connection.channel()
        assert _refused(lambda: ch.queue_declare("garbage-q")) == 403
        assert "answered 'maybe'" in caplog.text
        connection.channel().queue_declare("fine-q")  # the connection still works
    finally:
        connection.close()


def test_a_resumed_mqtt_session_waits_for_the_service(
    tmp_path: Path, service: AuthzService, start_broker: Callable[..., RunningBroker]
) -> None:
    """With cache_ttl = 0 an answer is kept only for the frames that waited for it
    (4 request timeouts of the broker's clock): a later CONNECT that resumes the
    session asks again (read on its queue) before anything is done."""
    clock = ManualClock()
    broker = _broker(
        tmp_path, start_broker, service, clock=clock, cache_ttl=0.0, request_timeout=0.5
    )
    read = {"resource": "queue", "name": "mqtt-subscription-r1qos1", "permission": "read"}
    first = PahoClient(broker.daemon.ports["mqtt"], "r1", clean=False)
    first.client.username_pw_set("h", "pw")
    first.connect()
    try:
        assert [int(r.value) for r in first.subscribe("a/r", 1)] == [1]
    finally:
        first.stop()
    assert service.asked("resource", **read) == 1
    broker.call(clock.advance, 3.0)  # past 4 x 0.5 s: every answer forgotten
    client = PahoClient(broker.daemon.ports["mqtt"], "r1", clean=False)
    client.client.username_pw_set("h", "pw")
    try:
        _flags, _rc, _props = client.connect()
        assert service.asked("resource", **read) == 2
        guest = pika.BlockingConnection(pika.URLParameters(broker.url_for("guest", "guest")))
        try:
            guest.channel().basic_publish("amq.topic", "a.r", b"resumed")
        finally:
            guest.close()
        assert client.get().payload == b"resumed"
    finally:
        client.stop()


def test_a_will_waits_for_the_service_too(
    tmp_path: Path, service: AuthzService, start_broker: Callable[..., RunningBroker]
) -> None:
    """A will published after the answers of CONNECT were forgotten asks again (the
    vhost, write on amq.topic, the topic) and is published once they come."""
    clock = ManualClock()
    broker = _broker(
        tmp_path, start_broker, service, clock=clock, cache_ttl=1.0, request_timeout=0.5
    )
    listener = PahoClient(broker.daemon.ports["mqtt"], "listener")  # guest: the store's
    listener.connect()
    dying = PahoClient(broker.daemon.ports["mqtt"], "dying")
    dying.client.username_pw_set("h", "pw")
    dying.client.will_set("will/x", b"gone", 1)
    try:
        assert [int(r.value) for r in listener.subscribe("will/x", 1)] == [1]
        dying.connect()
        assert service.asked("topic", permission="write", routing_key="will.x") == 0
        broker.call(clock.advance, 3.0)  # past max(1 s, 4 x 0.5 s): forgotten
        dying.drop()
        assert listener.get().payload == b"gone"
        assert service.asked("vhost", username="h") == 2
        assert service.asked("topic", permission="write", routing_key="will.x") == 1
    finally:
        dying.stop()
        listener.stop()
