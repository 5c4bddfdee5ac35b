"""The asyncio shell of an MQTT connection: bytes in, one coalesced write per tick out.

It owns the transport, arms one timer (the CONNECT deadline, then
keep-alive), and turns transport back-pressure (pause_writing /
resume_writing) into delivery flow control in the adapter. Like every TCP
shell it paces its reads with `protocols.reading.pace_reading` (fairness
between sockets, publisher flow control). The broker-wide
`SessionRegistry` gets the loop's `call_later` for session expiry and will
delays the first time a listener starts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from typing import TYPE_CHECKING, Any

from protocols.mqtt.adapter import MQTTConnection, registry_for
from protocols.reading import pace_reading

if TYPE_CHECKING:
    from broker.broker import Broker

log = logging.getLogger("moorage.mqtt")


def _peer(transport: asyncio.BaseTransport) -> tuple[str, bool]:
    info: Any = transport.get_extra_info("peername")
    if not info:
        return "unknown", True  # unix sockets and the like: local by definition
    host = str(info[0])
    try:
        loopback = ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        loopback = False
    return f"{host}:{info[1]}", loopback


class MQTTServerProtocol(asyncio.Protocol):
    """One client connection; `MQTTConnection` holds its protocol state."""

    def __init__(self, listener: MQTTListener) -> None:
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self.from_loopback = False
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = float("inf")
        self.mqtt: MQTTConnection | None = None

    # -- Shell ---------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def close(self) -> None:
        self._closing = True
        if not self._flush_scheduled:
            self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        transport = self.transport
        if transport is None:
            self._out.clear()
            return
        if self._out:
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out.clear()
            if not transport.is_closing():
                transport.write(data)
        if self._closing and not transport.is_closing():
            transport.close()

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer, self.from_loopback = _peer(transport)
        self.listener.connections.add(self)
        self.mqtt = MQTTConnection(self.listener.broker, self, self.loop.time())
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        mqtt = self.mqtt
        if mqtt is not None:
            mqtt.data_received(data, self.loop.time())
            if mqtt.next_deadline() != self._timer_when:
                self._arm_timer()
            if self.transport is not None and not mqtt.closed:
                pace_reading(self.transport, self.loop, self.listener.broker.flow, len(data))

    def eof_received(self) -> bool | None:
        if self.mqtt is not None:
            self.mqtt.data_received(b"", self.loop.time())
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self.mqtt is not None:
            self.mqtt.connection_lost()
        self.transport = None

    def pause_writing(self) -> None:
        if self.mqtt is not None:
            self.mqtt.set_writable(False)

    def resume_writing(self) -> None:
        if self.mqtt is not None:
            self.mqtt.set_writable(True)

    # -- timer -----------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        if self.mqtt is None or self.transport is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_when = self.mqtt.next_deadline()
        if self._timer_when != float("inf"):
            self._timer = self.loop.call_at(self._timer_when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.mqtt is None or self.transport is None:
            return
        self.mqtt.handle_timer(self.loop.time())
        self._arm_timer()


class MQTTListener:
    """A listening socket and the connections it accepted."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.connections: set[MQTTServerProtocol] = set()
        self.server: asyncio.base_events.Server

    def shutdown_connections(self, reason: str) -> None:
        for conn in list(self.connections):
            if conn.mqtt is not None:
                conn.mqtt.shutdown(reason)
        registry_for(self.broker).close()

    def connection_count(self) -> int:
        return len(self.connections)


class MQTTPlugin:
    """Entry point `moorage.protocols: mqtt` (default port 1883)."""

    name = "mqtt"
    default_port = 1883

    async def start(
        self, broker: Broker, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> MQTTListener:
        loop = asyncio.get_running_loop()
        registry = registry_for(broker)
        registry.call_later = loop.call_later
        await registry.recover()  # persistent sessions and retained messages (once)
        listener = MQTTListener(broker)
        listener.server = await loop.create_server(
            lambda: MQTTServerProtocol(listener), host, port, ssl=ssl_context, backlog=1024
        )
        return listener
