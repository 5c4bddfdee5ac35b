"""A generic WebSocket shell (RFC 6455) for the byte-stream adapters, built on aiohttp.

Theory of operation
-------------------
MQTT and STOMP each have a sans-IO adapter driven by an asyncio shell through
`data_received(data, now)`, `handle_timer(now)`, `set_writable(flag)`,
`connection_lost()` and `shutdown(reason)`; the adapter writes through a
`Shell` (`send(bytes)`, `close()`, `peer`, `from_loopback`). This module is a
second shell with the same contract, whose transport is a WebSocket instead
of a TCP stream, so neither adapter knows which one it runs on.

One `aiohttp.web.Server` (the low-level server: one handler, no router)
serves the path `/ws` on an asyncio Server of our own, which is what the
daemon sees as `listener.server`. A request on `/ws`:

1. picks a subprotocol from `Sec-WebSocket-Protocol` with the plug-in's
   `select_subprotocol`; a plug-in that requires one (MQTT [MQTT-6.0.0-3])
   refuses the upgrade with 400 and `Connection: close`, as RabbitMQ does;
2. upgrades, echoing the chosen subprotocol (RFC 6455 section 4.2.2), with
   `max_msg_size` tied to the broker's limits (aiohttp closes with 1009
   "message too big" when a client exceeds it) and aiohttp answering pings;
3. runs two tasks: the handler reads messages in order and feeds their
   payloads (binary or text) to the adapter as bytes, and a writer task
   sends what the adapter queued, coalesced (`Framing.BINARY`: one binary
   message per batch, as MQTT allows [MQTT-6.0.0-1]) or one message per
   `send` call (`Framing.TEXT`: a text message, or a binary one when the
   bytes are not UTF-8, so STOMP frames keep their message boundaries).

Back-pressure: the writer awaits each send, which waits for aiohttp's
transport to drain. While more than `HIGH_WATER` bytes wait to be written
the adapter is told `set_writable(False)` (its core session stops
deliveries); once everything queued was written, `set_writable(True)`.
Reading is naturally paced: the next message is read only after the
adapter handled the last one. Publisher flow control is the TCP shells'
(`protocols.reading`): while the store lags, or while the memory alarm is
set and this client has published, the next message is not read; the
adapter is told its peer's silence is the broker's doing (`peer_held`).

Closing: when the adapter calls `close()`, the writer sends what is queued,
then a close frame (1000, or 1001 "going away" when the listener shuts down)
and waits briefly for the client's close frame. When the client closes
first, the adapter sees end-of-stream, then `connection_lost()`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, WSMsgType, web

from moorage.broker.clock import Timer
from moorage.protocols.tcp import ConnectionAdapter as Adapter
from moorage.protocols.tcp import fileno_of, peer_of

if TYPE_CHECKING:
    from moorage.broker.broker import Broker

log = logging.getLogger("moorage.websocket")

PATH = "/ws"
HIGH_WATER = 256 * 1024  # queued output bytes above which deliveries pause
MAX_BATCH = 64 * 1024  # a coalesced binary message is at most this (unless one chunk is larger)
CLOSE_TIMEOUT = 2.0  # seconds to wait for the client's close frame after ours
IDLE_HTTP_TIMEOUT = 10.0  # keep-alive of an HTTP connection that has not upgraded


class Framing(enum.Enum):
    """How queued output becomes WebSocket messages."""

    BINARY = "binary"  # coalesce into binary messages (MQTT: packets need not align)
    TEXT = "text"  # one message per send(): text when UTF-8, else binary (STOMP)


def _peer(transport: asyncio.BaseTransport | None) -> tuple[str, bool]:
    return peer_of(transport) if transport is not None else ("unknown", True)


def offered_subprotocols(request: web.BaseRequest) -> list[str]:
    """The client's `Sec-WebSocket-Protocol` tokens, in its order of preference."""
    tokens: list[str] = []
    for value in request.headers.getall("Sec-WebSocket-Protocol", ()):
        tokens.extend(t.strip() for t in value.split(",") if t.strip())
    return tokens


class WebSocketConnection:
    """One upgraded connection: the `Shell` of its adapter, a reader loop and a writer task."""

    def __init__(
        self, listener: WebSocketListener, request: web.BaseRequest, ws: web.WebSocketResponse
    ) -> None:
        self.listener = listener
        self.ws = ws
        self.loop = asyncio.get_running_loop()
        self.clock = listener.broker.clock  # `now` for the adapter and its one timer
        self.peer, self.from_loopback = _peer(request.transport)
        transport = request.transport
        # a verified client certificate of a WSS connection, else None
        self.peer_certificate = (
            transport.get_extra_info("peercert") if transport else None
        ) or None
        self.close_code = WSCloseCode.OK
        self.adapter: Adapter | None = None
        self._out: deque[bytes] = deque()
        self._out_bytes = 0  # queued plus the batch being sent
        self._wakeup = asyncio.Event()
        self._closing = False
        self._writable = True
        self._timer: Timer | None = None
        self._timer_when = float("inf")
        self._held: asyncio.Future[None] | None = None  # reading paused by flow control
        self._output_delay = 0.0  # `delay_output`: the writer waits this long first

    # -- Shell ---------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue bytes; the writer task sends them (after this tick)."""
        if self._closing or not data:
            return
        self._out.append(data)
        self._out_bytes += len(data)
        self._wakeup.set()

    def delay_output(self, delay: float) -> None:
        """Hold what is sent from now on, and the close, for `delay` seconds (`hold_refusal`)."""
        self._output_delay = max(self._output_delay, delay)

    def close(self) -> None:
        """Send what is queued, then close the WebSocket with `close_code`."""
        self._closing = True
        self._wakeup.set()
        self._release_hold()

    # -- the connection's life -------------------------------------------------------------

    async def run(self) -> None:
        """Feed messages to the adapter until either side closes; returns when all is done."""
        adapter = self.adapter = self.listener.plugin.make_adapter(
            self.listener.broker, self, self.clock.monotonic()
        )
        writer = asyncio.create_task(self._write_loop())
        self._arm_timer()
        peer_closed = False
        try:
            peer_closed = await self._read_loop(adapter)
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if peer_closed and not self._closing:
                adapter.data_received(b"", self.clock.monotonic())  # end of stream, as eof_received
            adapter.connection_lost()
            self._closing = True
            self._wakeup.set()
            await writer

    async def _read_loop(self, adapter: Adapter) -> bool:
        """Messages in order until the adapter closes (False) or the client goes (True)."""
        while not self._closing:
            msg = await self.ws.receive()
            if msg.type is WSMsgType.BINARY:
                data: bytes = msg.data
            elif msg.type is WSMsgType.TEXT:
                data = msg.data.encode()
            elif msg.type is WSMsgType.ERROR:
                # aiohttp already closed with the matching code (1009 message too big, 1002 ...)
                log.info("closing WebSocket %s: %s", self.peer, msg.data)
                return True
            else:  # CLOSE, CLOSING, CLOSED
                return True
            adapter.data_received(data, self.clock.monotonic())
            if adapter.next_deadline() != self._timer_when:
                self._arm_timer()
            await self._flow_control(adapter)
        return False

    async def _flow_control(self, adapter: Adapter) -> None:
        """Wait while the store lags, while a resource alarm holds a publisher, or while
        the adapter waits for an answer (`Adapter.waiting`, ended by `input_wanted`)."""
        flow = self.listener.broker.flow
        while not self._closing and not adapter.closed:
            wait: Callable[[Callable[[], None]], None] | None
            if flow.blocked:
                wait = flow.on_resume
            elif flow.publishers_blocked and adapter.publisher:
                wait = flow.on_alarms_clear
            elif adapter.waiting:
                wait = None
            else:
                return
            self._held = held = self.loop.create_future()
            if wait is not None:
                wait(self._release_hold)
            await held

    def input_wanted(self) -> None:
        """The adapter's awaited answer came (`want_input`): read messages again."""
        self._release_hold()

    def _release_hold(self) -> None:
        held, self._held = self._held, None
        if held is not None and not held.done():
            held.set_result(None)

    async def _write_loop(self) -> None:
        ws = self.ws
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._output_delay > 0:
                delay, self._output_delay = self._output_delay, 0.0
                await self.clock.sleep(delay)
            while self._out:
                if self._writable and self._out_bytes > HIGH_WATER:
                    self._set_writable(False)
                batch = self._take_batch()
                try:
                    for message, opcode in batch:
                        if ws.closed:
                            break
                        await ws.send_frame(message, opcode)
                except ConnectionError:  # the client is gone; the reader sees it too
                    self._out.clear()
                    self._out_bytes = sum(len(m) for m, _ in batch)
                finally:
                    self._out_bytes -= sum(len(m) for m, _ in batch)
            if not self._writable and not self._closing:
                self._set_writable(True)
            if self._closing:
                if not ws.closed:
                    await ws.close(code=self.close_code)
                return

    def _take_batch(self) -> list[tuple[bytes, WSMsgType]]:
        out = self._out
        if self.listener.plugin.framing is Framing.TEXT:
            data = out.popleft()
            try:
                data.decode()
            except UnicodeDecodeError:
                return [(data, WSMsgType.BINARY)]
            return [(data, WSMsgType.TEXT)]
        chunks = [out.popleft()]
        size = len(chunks[0])
        while out and size + len(out[0]) <= MAX_BATCH:
            size += len(out[0])
            chunks.append(out.popleft())
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return [(data, WSMsgType.BINARY)]

    def _set_writable(self, writable: bool) -> None:
        self._writable = writable
        if self.adapter is not None:
            self.adapter.set_writable(writable)

    def shutdown(self, reason: str) -> None:
        """Broker shutdown: the adapter says goodbye, we close with 1001 "going away"."""
        self.close_code = WSCloseCode.GOING_AWAY
        if self.adapter is not None:
            self.adapter.shutdown(reason)
        else:
            self.close()

    # -- timer -----------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        if self.adapter is None or self._closing:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_when = self.adapter.next_deadline()
        if self._timer_when != float("inf"):
            self._timer = self.clock.call_at(self._timer_when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.adapter is None or self._closing:
            return
        now = self.clock.monotonic()
        if self._held is not None:
            self.adapter.peer_held(now)
        self.adapter.handle_timer(now)
        self._arm_timer()


def _refuse(status: int, text: str) -> web.Response:
    response = web.Response(status=status, text=text + "\n")
    response.force_close()  # `Connection: close`, as RabbitMQ's Web-MQTT answers
    return response


class WebSocketListener:
    """A listening socket, its HTTP server and the WebSocket connections it upgraded."""

    def __init__(self, plugin: WebSocketPlugin, broker: Broker) -> None:
        self.plugin = plugin
        self.broker = broker
        self.connections: set[WebSocketConnection] = set()
        self.web_server = web.Server(
            self.handle,
            access_log=None,
            keepalive_timeout=IDLE_HTTP_TIMEOUT,
        )
        self.server: asyncio.base_events.Server

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """The one HTTP handler: upgrade `GET /ws`, refuse everything else."""
        transport = request.transport
        if transport is not None and self.broker.descriptors.exhausted(fileno_of(transport)):
            return _refuse(503, "too many open files: try again later")  # broker.descriptors
        if request.path != PATH:
            return _refuse(404, f"WebSocket endpoint is {PATH}")
        offered = offered_subprotocols(request)
        chosen = self.plugin.select_subprotocol(offered)
        if chosen is None and (offered or self.plugin.require_subprotocol):
            log.info(
                "refusing WebSocket upgrade from %s: subprotocols %r, expected one of %r",
                request.remote,
                offered,
                self.plugin.subprotocols,
            )
            known = ", ".join(self.plugin.subprotocols)
            return _refuse(400, f"expected a subprotocol among: {known}")
        ws = web.WebSocketResponse(
            protocols=(chosen,) if chosen else (),
            max_msg_size=self.plugin.max_message_size(self.broker),
            compress=False,
            autoping=True,
            timeout=CLOSE_TIMEOUT,
        )
        if not ws.can_prepare(request).ok:
            return _refuse(400, "expected a WebSocket upgrade")
        await ws.prepare(request)
        connection = WebSocketConnection(self, request, ws)
        self.connections.add(connection)
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)
        return ws

    # -- Listener ------------------------------------------------------------------------

    def shutdown_connections(self, reason: str) -> None:
        for connection in list(self.connections):
            connection.shutdown(reason)
        self.web_server.pre_shutdown()  # idle HTTP keep-alive connections close now

    def connection_count(self) -> int:
        return len(self.connections)

    async def aclose(self, grace: float = 5.0) -> None:
        """Stop listening, close every connection and wait for their handlers (tests, tools)."""
        self.server.close()
        self.shutdown_connections("listener closed")
        await self.web_server.shutdown(grace)
        await self.server.wait_closed()


class WebSocketPlugin:
    """Base of the `*_ws` protocol plug-ins: subclasses name the adapter and subprotocols."""

    name = "ws"
    subprotocols: tuple[str, ...] = ()
    require_subprotocol = False  # refuse a client that offers none
    framing = Framing.BINARY

    def select_subprotocol(self, offered: Iterable[str]) -> str | None:
        """The subprotocol to echo, or None. Default: the client's first known one."""
        for token in offered:
            if token in self.subprotocols:
                return token
        return None

    def max_message_size(self, broker: Broker) -> int:
        """The largest WebSocket message accepted (aiohttp closes with 1009 above it)."""
        return broker.limits.max_message_size

    def make_adapter(self, broker: Broker, shell: WebSocketConnection, now: float) -> Adapter:
        raise NotImplementedError

    async def start(
        self, broker: Broker, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> WebSocketListener:
        """Listen on host:port, path /ws. Raises OSError when the address cannot be bound."""
        listener = WebSocketListener(self, broker)
        loop = asyncio.get_running_loop()
        listener.server = await loop.create_server(
            listener.web_server, host, port, ssl=ssl_context, backlog=1024
        )
        return listener


__all__ = [
    "PATH",
    "Adapter",
    "Framing",
    "WebSocketConnection",
    "WebSocketListener",
    "WebSocketPlugin",
    "offered_subprotocols",
]
