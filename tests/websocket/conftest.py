"""An embedded broker with the WebSocket listeners (and AMQP), on a background loop.

Like `tests/mqtt` and `tests/stomp`, the broker is `moorage.broker.embedded`'s,
with only these listeners open on free loopback ports. Blocking clients (paho,
stomp.py, pika) run on the test thread; asyncio clients (aiomqtt, aiohttp)
on the test's own loop. `ws_broker` takes indirect parameters as a dict of
`Limits` fields, e.g. `{"max_message_size": 1024}`.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest

from moorage.broker.broker import Broker
from moorage.broker.embedded import embedded_config
from tests.helpers import RunningBroker

TIMEOUT = 10.0  # a generous bound for what must arrive (a loaded machine is slow)


class WSBroker(RunningBroker):
    """An embedded broker (`moorage.broker.embedded`) with the mqtt_ws, stomp_ws and
    AMQP listeners, on a background thread, with the WebSocket tests' shortcuts."""

    def __init__(self, limits: dict[str, Any]) -> None:
        super().__init__(embedded_config(protocols=("mqtt_ws", "stomp_ws", "amqp"), limits=limits))

    def start(self) -> WSBroker:
        super().start()
        return self

    @property
    def broker(self) -> Broker:
        """The core (only touch it through `call`)."""
        return self.embedded.core

    @property
    def listeners(self) -> dict[str, Any]:
        return dict(self.daemon.listeners)

    def connection_count(self, name: str) -> int:  # type: ignore[override]
        return self.call(lambda: self.daemon.listeners[name].connection_count())

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
        return self.embedded.ports["mqtt_ws"]

    @property
    def stomp_port(self) -> int:
        return self.embedded.ports["stomp_ws"]

    @property
    def amqp_url(self) -> str:
        return self.url


@pytest.fixture
def ws_broker(request: pytest.FixtureRequest) -> Iterator[WSBroker]:
    running = WSBroker(getattr(request, "param", {})).start()
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
