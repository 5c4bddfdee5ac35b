"""The authentication chain with RabbitMQ's HTTP backend contract, against an aiohttp server.

The service answers `allow <tags>` or `deny` on `user_path`, after a short
pause so that every login really waits for it. Users it accepts get their
permissions from the store (RabbitMQ's authn = http, authz = internal: no
authorisation path is configured here; `test_http_authorisation.py` has them).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pytest
import stomp
from aiohttp import web
from pamqp import commands, frame, header
from pika.exceptions import ProbableAuthenticationError

from moorage.broker.auth import Permission, User
from moorage.broker.embedded import free_port
from tests.helpers import RawClient, RunningBroker, make_config
from tests.mqtt.conftest import PahoClient

pytestmark = pytest.mark.timeout(60)


class AuthService:
    """RabbitMQ's `user_path` contract on a loop of its own: h/pw is allowed, all else denied."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []  # (method, username)
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.released = asyncio.Event()  # set on `loop`: the "slow" user is answered

    def release(self) -> None:
        self.loop.call_soon_threadsafe(self.released.set)

    async def user(self, request: web.Request) -> web.Response:
        params = await request.post() if request.method == "POST" else request.query
        self.calls.append((request.method, str(params.get("username"))))
        await asyncio.sleep(0.2)  # the broker must wait for the answer, not assume one
        if params.get("username") == "slow":  # answered when the test says so
            await self.released.wait()
            return web.Response(text="deny")
        if (params.get("username"), params.get("password")) == ("h", "pw"):
            return web.Response(text="allow management monitoring")
        return web.Response(text="deny")

    def start(self) -> AuthService:
        self.thread.start()

        async def serve() -> None:
            app = web.Application()
            app.router.add_route("*", "/auth/user", self.user)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)
        return self

    def stop(self) -> None:
        self.release()
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def service() -> Iterator[AuthService]:
    running = AuthService().start()
    yield running
    running.stop()


def _broker(
    tmp_path: Path,
    start: Callable[..., RunningBroker],
    backends: list[str],
    **http: object,
) -> RunningBroker:
    # "h" is in the store without a password: its permissions are the store's,
    # its password the HTTP service's
    config = make_config(tmp_path, User("h", None, (), {"/": Permission(".*", ".*", ".*")}))
    config.ports["mqtt"] = free_port()
    config.ports["stomp"] = free_port()
    config.auth_backends = backends
    config.auth_settings = {"http": {"cache_ttl": 30.0, **http}}
    return start(config)


def _amqp(broker: RunningBroker, user: str, password: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker.url_for(user, password)))
    try:
        connection.channel().queue_declare(f"q-{user}")
    finally:
        connection.close()


def test_chain_logs_in_through_the_service_and_caches_it(
    tmp_path: Path, service: AuthService, start_broker: Callable[..., RunningBroker]
) -> None:
    url = f"http://127.0.0.1:{service.port}/auth/user"
    broker = _broker(tmp_path, start_broker, ["internal", "http"], user_path=url)
    _amqp(broker, "guest", "guest")  # the store answers first: the service is not asked
    assert service.calls == []
    _amqp(broker, "h", "pw")  # the store refuses (no password), the service allows
    assert broker.queue_exists("q-h")
    assert service.calls == [("GET", "h")]
    _amqp(broker, "h", "pw")  # from the cache
    with pytest.raises(ProbableAuthenticationError):
        _amqp(broker, "h", "wrong")
    assert service.calls == [("GET", "h"), ("GET", "h")]

    # MQTT and STOMP wait for the chain too (their CONNECT is answered after it)
    mqtt = PahoClient(broker.daemon.ports["mqtt"], "c-h")
    mqtt.client.username_pw_set("h", "pw")
    try:
        mqtt.connect()
        assert [int(r.value) for r in mqtt.subscribe("a/b", 1)] == [1]
    finally:
        mqtt.stop()
    port = broker.daemon.ports["stomp"]
    connection = stomp.Connection12([("127.0.0.1", port)], timeout=10)
    connection.connect("h", "pw", wait=True)
    connection.disconnect()
    refused = PahoClient(broker.daemon.ports["mqtt"], "c-x")
    refused.client.username_pw_set("nobody", "x")
    try:
        _flags, rc, _props = refused.connect(expect_success=False)
        assert int(rc.value) == 0x86
    finally:
        refused.stop()


def test_post_and_a_backend_that_is_down(
    tmp_path: Path,
    service: AuthService,
    start_broker: Callable[..., RunningBroker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"http://127.0.0.1:{service.port}/auth/user"
    broker = _broker(tmp_path, start_broker, ["http"], user_path=url, http_method="post")
    _amqp(broker, "h", "pw")
    assert service.calls == [("POST", "h")]
    with pytest.raises(ProbableAuthenticationError):  # the chain has no store: guest is refused
        _amqp(broker, "guest", "guest")
    broker.stop()

    caplog.set_level(logging.WARNING, "moorage.auth")
    down = f"http://127.0.0.1:{free_port()}/auth/user"  # nothing listens there
    broker = _broker(tmp_path, start_broker, ["http"], user_path=down, request_timeout=3.0)
    with pytest.raises(ProbableAuthenticationError):
        _amqp(broker, "h", "pw")
    assert "cannot be asked" in caplog.text


def test_frames_pipelined_behind_start_ok_wait_for_the_answer(
    tmp_path: Path, service: AuthService, start_broker: Callable[..., RunningBroker]
) -> None:
    """A client that sends start-ok, tune-ok, open and channel.open in one write (as
    `moorage bench conn` does) gets them handled in order once the service answered."""
    url = f"http://127.0.0.1:{service.port}/auth/user"
    broker = _broker(tmp_path, start_broker, ["http"], user_path=url)
    with RawClient(broker.port) as client:
        client.send(header.ProtocolHeader().marshal())
        client.expect(commands.Connection.Start)
        client.send(
            b"".join(
                frame.marshal(method, channel)
                for channel, method in (
                    (0, commands.Connection.StartOk(mechanism="PLAIN", response="\0h\0pw")),
                    (0, commands.Connection.TuneOk(2047, 131072, 0)),
                    (0, commands.Connection.Open("/")),
                    (1, commands.Channel.Open()),
                )
            )
        )
        client.expect(commands.Connection.Tune)
        client.expect(commands.Connection.OpenOk)
        client.expect(commands.Channel.OpenOk)
    assert service.calls == [("GET", "h")]


def _login_frames(protocol: str, sock: socket.socket) -> None:
    """Send `protocol`'s login as the user "slow" (AMQP: after reading connection.start)."""
    if protocol == "amqp":
        sock.sendall(header.ProtocolHeader().marshal())
        sock.recv(65536)  # connection.start
        start_ok = commands.Connection.StartOk(mechanism="PLAIN", response="\0slow\0pw")
        sock.sendall(frame.marshal(start_ok, 0))
    elif protocol == "mqtt":
        fields = b"".join(len(f).to_bytes(2, "big") + f for f in (b"c", b"slow", b"pw"))
        body = b"\x00\x04MQTT\x04\xc2\x00\x3c" + fields
        sock.sendall(bytes([0x10, len(body)]) + body)
    else:
        sock.sendall(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:slow\npasscode:pw\n\n\x00")


@pytest.mark.parametrize("protocol", ["amqp", "mqtt", "stomp"])
def test_a_client_waiting_for_its_login_cannot_pile_up_input(
    tmp_path: Path, service: AuthService, start_broker: Callable[..., RunningBroker], protocol: str
) -> None:
    """While a backend has not answered, the adapter handles none of the client's input,
    so the broker stops reading it: a client that floods bytes behind its login fills
    the socket buffers and no more (it could otherwise grow the broker's buffer by
    gigabytes in the seconds a slow service takes)."""
    url = f"http://127.0.0.1:{service.port}/auth/user"
    broker = _broker(tmp_path, start_broker, ["http"], user_path=url, request_timeout=60)
    port = {"amqp": broker.port, **broker.daemon.ports}[protocol]
    limit = 256 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        _login_frames(protocol, sock)
        deadline = time.monotonic() + 30
        while ("GET", "slow") not in service.calls:  # the login waits for the service
            assert time.monotonic() < deadline, "the service was never asked"
            time.sleep(0.02)
        sock.setblocking(False)
        chunk = b"\x00" * 65536
        sent, stalled_since = 0, None
        while sent < limit and time.monotonic() < deadline:
            try:
                sent += sock.send(chunk)
                stalled_since = None
            except BlockingIOError:
                now = time.monotonic()
                stalled_since = stalled_since or now
                if now - stalled_since > 2.0:  # nobody reads: the buffers are full
                    break
                time.sleep(0.01)
    # the kernel's buffers on both sides (a few MiB on loopback), not the flood
    assert sent < 64 * 1024 * 1024, f"the broker read {sent} bytes behind a pending login"
