"""An in-process broker with the WebSocket listeners (and AMQP) on port 0, on a background loop.

Like `tests/mqtt` and `tests/stomp`, the listeners are started directly on
port 0 rather than through the daemon, whose default ports stay disabled
(`tests.helpers.make_config` sets every port to 0). Blocking clients (paho,
stomp.py, pika) run on the test thread; asyncio clients (aiomqtt, aiohttp)
on the test's own loop. `ws_broker` takes indirect parameters as a dict of
`Limits` fields, e.g. `{"max_message_size": 1024}`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, TypeVar

import paho.mqtt.client as paho
import pytest

import moorage.protocols.amqp091.server
from moorage.broker.auth import UserDirectory
from moorage.broker.broker import Broker
from moorage.broker.config import Limits, default_guest
from moorage.protocols.mqtt.websocket import plugin as mqtt_ws
from moorage.protocols.stomp.websocket import plugin as stomp_ws
from moorage.storage import MemoryStore

T = TypeVar("T")
TIMEOUT = 3.0


class WSBroker:
    """A Broker with mqtt_ws, stomp_ws and AMQP listeners on a background event loop."""

    def __init__(self, limits: Limits) -> None:
        self.broker = Broker(
            store=MemoryStore(),
            users=UserDirectory([default_guest()], loopback_users=frozenset({"guest"})),
            limits=limits,
        )
        self.loop = asyncio.new_event_loop()
        self.errors: list[str] = []
        self.loop.set_exception_handler(lambda _loop, ctx: self.errors.append(str(ctx)))
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.listeners: dict[str, Any] = {}
        self.ports: dict[str, int] = {}

    def start(self) -> WSBroker:
        self._thread.start()
        self.run(self._start())
        return self

    async def _start(self) -> None:
        await self.broker.start()
        for plugin in (mqtt_ws, stomp_ws, moorage.protocols.amqp091.server.plugin):
            listener = await plugin.start(self.broker, "127.0.0.1", 0)
            self.listeners[plugin.name] = listener
            self.ports[plugin.name] = listener.server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        for listener in self.listeners.values():
            listener.server.close()
            listener.shutdown_connections("test over")
        async with asyncio.timeout(3):
            while any(listener.connection_count() for listener in self.listeners.values()):  # noqa: ASYNC110 - no close event to await
                await asyncio.sleep(0.01)
        for name in ("mqtt_ws", "stomp_ws"):
            await self.listeners[name].aclose()
        await self.listeners["amqp"].server.wait_closed()
        await self.broker.stop()

    def stop(self) -> None:
        try:
            self.run(self._stop(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(TIMEOUT)
            self.loop.close()

    def run(self, coro: Any, timeout: float = TIMEOUT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                result.set_result(fn(*args))
            except BaseException as e:
                result.set_exception(e)

        self.loop.call_soon_threadsafe(run)
        return result.result(TIMEOUT)

    def connection_count(self, name: str) -> int:
        return self.call(lambda: self.listeners[name].connection_count())

    def wait_connections(self, name: str, n: int, timeout: float = TIMEOUT) -> bool:
        """Poll until listener `name` has `n` WebSocket connections (handlers still running)."""
        deadline = time.monotonic() + timeout
        while self.connection_count(name) != n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    @property
    def mqtt_port(self) -> int:
        return self.ports["mqtt_ws"]

    @property
    def stomp_port(self) -> int:
        return self.ports["stomp_ws"]

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.ports['amqp']}/%2F"


@pytest.fixture
def ws_broker(request: pytest.FixtureRequest) -> Iterator[WSBroker]:
    limits = replace(Limits(), **getattr(request, "param", {}))
    running = WSBroker(limits).start()
    yield running
    running.stop()
    if running.errors:
        pytest.fail("broker loop reported errors:\n" + "\n".join(running.errors), pytrace=False)


class PahoWS:
    """paho-mqtt over WebSocket (path /ws) with blocking helpers that wait on events."""

    def __init__(self, port: int, client_id: str, protocol: int = paho.MQTTv311) -> None:
        self.port = port
        self.protocol = protocol
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            transport="websockets",
        )
        self.client.ws_set_options(path="/ws")
        self.client.username_pw_set("guest", "guest")
        self.connack: queue.Queue[Any] = queue.Queue()
        self.subacks: queue.Queue[Any] = queue.Queue()
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.disconnects: queue.Queue[Any] = queue.Queue()
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connack.put(rc)
        self.client.on_subscribe = lambda _c, _u, _mid, rcs, _p: self.subacks.put(rcs)
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_disconnect = lambda _c, _u, _f, rc, _p: self.disconnects.put(rc)

    def connect(self) -> Any:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        rc = self.connack.get(timeout=TIMEOUT)
        assert not rc.is_failure, rc
        return rc

    def subscribe(self, topic: str, qos: int = 0) -> Any:
        result, _mid = self.client.subscribe(topic, qos)
        assert result == paho.MQTT_ERR_SUCCESS
        return self.subacks.get(timeout=TIMEOUT)

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        self.client.publish(topic, payload, qos).wait_for_publish(TIMEOUT)

    def get(self) -> paho.MQTTMessage:
        return self.messages.get(timeout=TIMEOUT)

    def disconnect(self) -> None:
        self.client.disconnect()
        self.disconnects.get(timeout=TIMEOUT)
        self.client.loop_stop()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()
        for name in ("_sockpairR", "_sockpairW"):
            pair_end = getattr(self.client, name, None)
            if pair_end is not None:
                pair_end.close()


@pytest.fixture
def paho_ws(ws_broker: WSBroker) -> Iterator[Callable[..., PahoWS]]:
    made: list[PahoWS] = []

    def make(client_id: str, protocol: int = paho.MQTTv311) -> PahoWS:
        c = PahoWS(ws_broker.mqtt_port, client_id, protocol)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()
