"""An embedded broker with the MQTT and AMQP listeners, on a background loop.

paho-mqtt and pika are blocking clients, so the broker runs on its own thread
(`mqtt_broker.call` runs a function there). `PahoClient` wraps paho so each
step waits for its acknowledgement on an event, never on a sleep, and
`RawClient` speaks MQTT with the codec's client role for the cases no
library would send.
"""

from __future__ import annotations

import contextlib
import queue
import socket
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.properties import Properties as PahoProperties
from paho.mqtt.reasoncodes import ReasonCode as PahoReasonCode

from moorage.broker.broker import Broker
from moorage.broker.embedded import embedded_config
from moorage.protocols.mqtt.codec import (
    NEED_DATA,
    Connect,
    Connection,
    ConnectionClosed,
    Packet,
    Role,
)
from tests.helpers import RunningBroker, make_user

TIMEOUT = 10.0  # a generous bound for what must arrive (a loaded machine is slow, not wrong)


class MQTTBroker(RunningBroker):
    """An embedded broker (`moorage.broker.embedded`) with the MQTT and AMQP listeners,
    on a background thread, with the MQTT tests' users and shortcuts."""

    def __init__(self) -> None:
        super().__init__(
            embedded_config(
                protocols=("mqtt", "amqp"),
                users=[
                    make_user("alice", "secret", {"/": (".*", ".*", ".*")}),
                    make_user("reader", "secret", {"/": (".*", "mqtt-.*", ".*")}),
                    make_user("noread", "secret", {"/": (".*", ".*", "mqtt-.*")}),
                ],
            )
        )

    def start(self) -> MQTTBroker:
        super().start()
        return self

    @property
    def broker(self) -> Broker:
        """The core (only touch it through `call`)."""
        return self.embedded.core

    @property
    def mqtt_port(self) -> int:
        return self.embedded.ports["mqtt"]

    @property
    def amqp_url(self) -> str:
        return self.url

    def connection_count(self) -> int:
        """Open MQTT connections."""
        return self.call(lambda: self.daemon.listeners["mqtt"].connection_count())


@pytest.fixture
def mqtt_broker() -> Iterator[MQTTBroker]:
    running = MQTTBroker().start()
    yield running
    running.stop()
    if running.errors:
        pytest.fail("broker loop reported errors:\n" + "\n".join(running.errors), pytrace=False)


class PahoClient:
    """paho-mqtt with blocking helpers that wait on acknowledgements."""

    def __init__(
        self,
        port: int,
        client_id: str = "",
        *,
        protocol: int = paho.MQTTv311,
        clean: bool = True,
        **connect_kwargs: Any,
    ) -> None:
        kwargs: dict[str, Any] = {"client_id": client_id, "protocol": protocol}
        if protocol != paho.MQTTv5:
            kwargs["clean_session"] = clean
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, **kwargs)
        # anonymous clients are refused by default; tests of that call username_pw_set(None)
        self.client.username_pw_set("guest", "guest")
        self.port = port
        self.protocol = protocol
        self.clean = clean
        self.connect_kwargs = connect_kwargs
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.connack: queue.Queue[tuple[dict[str, Any], Any, Any]] = queue.Queue()
        self.subacks: queue.Queue[list[Any]] = queue.Queue()
        self.unsubacks: queue.Queue[Any] = queue.Queue()
        self.disconnects: queue.Queue[Any] = queue.Queue()
        self.client.on_connect = lambda _c, _u, flags, rc, props: self.connack.put(
            (flags, rc, props)
        )
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda _c, _u, _mid, rcs, _p: self.subacks.put(rcs)
        self.client.on_unsubscribe = lambda _c, _u, _mid, rcs, _p: self.unsubacks.put(rcs)
        self.client.on_disconnect = self._on_disconnect

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.disconnects.put(rc)
        # no automatic reconnect: tests reconnect explicitly (and sockets do not leak)
        with contextlib.suppress(Exception):
            self.client.disconnect()

    def connect(self, *, expect_success: bool = True, **kwargs: Any) -> tuple[Any, Any, Any]:
        if self.protocol == paho.MQTTv5:
            kwargs.setdefault("clean_start", self.clean)
        self.client.connect("127.0.0.1", self.port, **self.connect_kwargs, **kwargs)
        self.client.loop_start()
        flags, rc, props = self.connack.get(timeout=TIMEOUT)
        if expect_success:
            assert not rc.is_failure, rc
        return flags, rc, props

    def subscribe(self, topic: str, qos: int = 0, **kwargs: Any) -> list[Any]:
        result, _mid = self.client.subscribe(topic, qos, **kwargs)
        assert result == paho.MQTT_ERR_SUCCESS
        return self.subacks.get(timeout=TIMEOUT)

    def unsubscribe(self, topic: str) -> Any:
        self.client.unsubscribe(topic)
        return self.unsubacks.get(timeout=TIMEOUT)

    def publish(
        self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False, **kw: Any
    ) -> paho.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos, retain, **kw)
        info.wait_for_publish(TIMEOUT)
        return info

    def get(self, timeout: float = TIMEOUT) -> paho.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def nothing_more(self, timeout: float = 0.2) -> bool:
        """True when no message arrives within `timeout` (only after a sync point)."""
        try:
            self.messages.get(timeout=timeout)
        except queue.Empty:
            return True
        return False

    def sync(self) -> None:
        """A round trip: every message the broker sent before is in `messages` afterwards."""
        self.subscribe("moorage/test/sync-" + str(id(self)))

    def disconnect(self, properties: PahoProperties | None = None, reasoncode: Any = None) -> None:
        self.client.disconnect(reasoncode=reasoncode, properties=properties)
        self.disconnects.get(timeout=TIMEOUT)
        self.client.loop_stop()

    def drop(self) -> None:
        """Close the socket without DISCONNECT (an abrupt network failure)."""
        sock = self.client.socket()
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(queue.Empty):
            self.disconnects.get(timeout=TIMEOUT)
        self.client.loop_stop()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()
        # paho keeps a socket pair to wake its loop and does not always close it
        for name in ("_sockpairR", "_sockpairW"):
            pair_end = getattr(self.client, name, None)
            if pair_end is not None:
                pair_end.close()


@pytest.fixture
def paho_client(mqtt_broker: MQTTBroker) -> Iterator[Callable[..., PahoClient]]:
    made: list[PahoClient] = []

    def make(client_id: str = "", **kwargs: Any) -> PahoClient:
        c = PahoClient(mqtt_broker.mqtt_port, client_id, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


class RawClient:
    """MQTT over a blocking socket, with the codec in the client role."""

    def __init__(self, port: int, version: int = 4) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.codec = Connection(Role.CLIENT, version=version)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, packet: Packet) -> None:
        self.sock.sendall(self.codec.send(packet))

    def connect(self, client_id: str = "raw", **kwargs: Any) -> Packet:
        kwargs.setdefault("username", "guest")
        kwargs.setdefault("password", b"guest")
        self.send(Connect(client_id=client_id, protocol_version=self.codec.version, **kwargs))
        return self.receive()

    def receive(self) -> Packet | ConnectionClosed:
        """The next packet, or ConnectionClosed when the broker closed the socket."""
        while True:
            event = self.codec.next_event()
            if event is not NEED_DATA:
                return event  # type: ignore[return-value]
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            self.codec.receive_data(data)

    def close(self) -> None:
        self.sock.close()


PahoReason = PahoReasonCode


@pytest.fixture
def raw_client(mqtt_broker: MQTTBroker) -> Iterator[Callable[..., RawClient]]:
    made: list[RawClient] = []

    def make(version: int = 4) -> RawClient:
        c = RawClient(mqtt_broker.mqtt_port, version)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
