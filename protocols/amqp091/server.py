"""The asyncio shell of an AMQP connection: bytes in, one coalesced write per tick out.

It owns the transport, arms one timer for heartbeats and the handshake
deadline, and passes transport back-pressure (pause_writing/resume_writing)
to the adapter, which stops deliveries while the socket's buffer is full.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from typing import TYPE_CHECKING, Any

from protocols.amqp091.adapter import AMQPConnection
from protocols.reading import pace_reading

if TYPE_CHECKING:
    from broker.broker import Broker

log = logging.getLogger("moorage.amqp")


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


class AMQPServerProtocol(asyncio.Protocol):
    """One client connection; `AMQPConnection` holds its protocol state."""

    def __init__(self, listener: AMQPListener) -> None:
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
        self.amqp: AMQPConnection | None = None

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
        self.amqp = AMQPConnection(self.listener.broker, self, self.loop.time())
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        amqp = self.amqp
        if amqp is not None:
            amqp.data_received(data, self.loop.time())
            if amqp.next_deadline() < self._timer_when:
                self._arm_timer()  # e.g. a close-ok deadline earlier than the heartbeat
            if self.transport is not None:
                pace_reading(self.transport, self.loop, self.listener.broker.flow, len(data))

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self.amqp is not None:
            self.amqp.connection_lost()
        self.transport = None

    def pause_writing(self) -> None:
        if self.amqp is not None:
            self.amqp.set_writable(False)

    def resume_writing(self) -> None:
        if self.amqp is not None:
            self.amqp.set_writable(True)

    # -- timer -----------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        if self.amqp is None or self.transport is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = self.amqp.next_deadline()
        self._timer = self.loop.call_at(self._timer_when, self._on_timer)

    def _on_timer(self) -> None:
        if self.amqp is None or self.transport is None:
            return
        self.amqp.handle_timer(self.loop.time())
        self._arm_timer()


class AMQPListener:
    """A listening socket and the connections it accepted."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.connections: set[AMQPServerProtocol] = set()
        self.server: asyncio.base_events.Server

    def shutdown_connections(self, reason: str) -> None:
        for conn in list(self.connections):
            if conn.amqp is not None:
                conn.amqp.shutdown(reason)
                conn._arm_timer()

    def connection_count(self) -> int:
        return len(self.connections)


class AMQPPlugin:
    """Entry point `moorage.protocols: amqp`."""

    name = "amqp"

    async def start(
        self, broker: Broker, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> AMQPListener:
        listener = AMQPListener(broker)
        loop = asyncio.get_running_loop()
        listener.server = await loop.create_server(
            lambda: AMQPServerProtocol(listener), host, port, ssl=ssl_context, backlog=1024
        )
        return listener
