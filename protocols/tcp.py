"""The asyncio shell every TCP protocol adapter runs in: bytes in, one write per tick out.

A protocol's connection state machine (its adapter) never touches a socket
or a clock. This shell owns the transport and does that part for all of
them: it feeds received bytes in with the current time, coalesces the
adapter's output into one `transport.write` per loop tick, arms a single
timer at the adapter's next deadline (heartbeats, keep-alive, handshake and
close timeouts), turns transport back-pressure (`pause_writing` /
`resume_writing`) into the adapter's delivery flow control, and paces its
reads (`protocols.reading`).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from moorage.broker.clock import Timer
from moorage.protocols.reading import ReadPacer

if TYPE_CHECKING:
    from moorage.broker.broker import Broker

# Output gathered within one tick is written at once past this many bytes.
# Coalescing is for many small frames; without a bound, a consumer that
# comes back to a deep queue of large messages got the whole in-memory part
# of it encoded into one tick's output (16 MiB of 64 KiB MQTT messages, held
# twice by the join), before `pause_writing` could stop its deliveries. An
# early write lets the transport's back-pressure act within the tick.
WRITE_EARLY = 1024 * 1024


class ConnectionAdapter(Protocol):
    """What a protocol's connection state machine offers its shell."""

    @property
    def closed(self) -> bool:
        """No more input is accepted (output may still be flushing)."""
        ...

    def data_received(self, data: bytes, now: float) -> None:
        """Bytes from the socket; b"" is the end of the stream."""

    def next_deadline(self) -> float:
        """When `handle_timer` must run next (on `broker.clock.monotonic()`; inf: never)."""
        ...

    @property
    def publisher(self) -> bool:
        """Has this client published? (The memory alarm pauses only publishers.)"""
        ...

    @property
    def waiting(self) -> bool:
        """Is an answer awaited (a login or a permission a backend has not given yet)?
        Its input is not handled meanwhile, so the shell stops reading it: a client
        cannot pile up bytes while it waits. The adapter calls `want_input` after."""
        ...

    def peer_held(self, now: float) -> None:
        """The shell is not reading this peer (flow control): its silence so far is excused."""

    def handle_timer(self, now: float) -> None: ...
    def set_writable(self, writable: bool) -> None: ...
    def connection_lost(self) -> None: ...
    def shutdown(self, reason: str) -> None:
        """Broker shutdown: send the protocol's goodbye and close."""


class Shell(Protocol):
    """What an adapter writes through (implemented here and by the WebSocket shell).

    A shell may also offer `flush()`, writing what was sent so far at once
    (`TCPShell.flush`), and `delay_output(seconds)`, holding back what is sent
    from then on, a close included (a refused login's answer, see
    `hold_refusal`); adapters look for them with getattr.
    """

    peer: str
    from_loopback: bool

    def send(self, data: bytes) -> None: ...
    def close(self) -> None: ...


def want_input(shell: Shell) -> None:
    """The adapter handles input again (its `waiting` is over): the shell reads again."""
    wanted = getattr(shell, "input_wanted", None)
    if wanted is not None:
        wanted()


def hold_refusal(shell: Shell, delay: float) -> None:
    """Make a refused login's answer wait out the brute-force delay (`broker.auth_guard`).

    Call it before sending the refusal: the shell holds that answer and the
    close that follows for `delay` seconds, without blocking anything else.
    """
    hold = getattr(shell, "delay_output", None)
    if hold is not None and delay > 0:
        hold(delay)


AdapterFactory = Callable[["Broker", Shell, float], ConnectionAdapter]
"""Builds a connection's adapter: (broker, shell, now)."""


def peer_of(transport: asyncio.BaseTransport) -> tuple[str, bool]:
    """("host:port", is it a loopback address?) of a transport's peer."""
    info: Any = transport.get_extra_info("peername")
    if not info:
        return "unknown", True  # unix sockets and the like: local by definition
    host = str(info[0])
    return f"{host}:{info[1]}", _is_loopback(host)


@functools.lru_cache(maxsize=1024)
def _is_loopback(host: str) -> bool:
    """Is `host` (a peer's address as the socket gives it) a loopback address?

    Cached: parsing the address was a visible share of accepting a connection,
    and the clients of a broker come from few addresses.
    """
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def fileno_of(transport: asyncio.BaseTransport) -> int:
    """The descriptor of a transport's socket (-1 when it has none)."""
    sock = transport.get_extra_info("socket")
    return int(sock.fileno()) if sock is not None else -1


class TCPShell(asyncio.Protocol):
    """One client connection; its adapter holds the protocol state."""

    def __init__(self, listener: TCPListener) -> None:
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.clock = listener.broker.clock  # `now` for the adapter and its one timer
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self.from_loopback = False
        self.peer_certificate: dict[str, Any] | None = None
        self.adapter: ConnectionAdapter | None = None
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._flush_scheduled = False
        self._closing = False
        self._timer: Timer | None = None
        self._timer_when = float("inf")
        self._pacer: ReadPacer | None = None
        self._output_hold: Timer | None = None  # `delay_output`: writes wait until it fires

    # -- Shell ------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self._out.append(data)
        self._out_bytes += len(data)
        if self._out_bytes >= WRITE_EARLY:
            self.flush()
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def close(self) -> None:
        self._closing = True
        if not self._flush_scheduled:
            self._flush()

    def flush(self) -> None:
        """Write what was sent so far now, not at the end of the loop tick.

        For an answer a client waits on (a STOMP RECEIPT) while the adapter
        still has much of a large read to handle: at the end of the tick it
        would wait for all of it. Optional for a `Shell` (the WebSocket shell
        writes from a task of its own).
        """
        out, transport = self._out, self.transport
        if self._output_hold is not None:
            return
        if out and transport is not None and not transport.is_closing():
            self._out_bytes = 0
            transport.write(b"".join(out) if len(out) > 1 else out[0])
            out.clear()

    def delay_output(self, delay: float) -> None:
        """Hold what is sent from now on, and a close, for `delay` seconds (`hold_refusal`)."""
        if delay > 0 and self.transport is not None and self._output_hold is None:
            self._output_hold = self.clock.call_later(delay, self._end_output_hold)

    def _end_output_hold(self) -> None:
        self._output_hold = None
        self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._output_hold is not None:
            return  # `_end_output_hold` flushes (and closes, if asked)
        transport = self.transport
        if transport is None:
            self._out.clear()
            self._out_bytes = 0
            return
        if self._out:
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out.clear()
            self._out_bytes = 0
            if not transport.is_closing():
                transport.write(data)
        if self._closing and not transport.is_closing():
            transport.close()

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        stream: asyncio.Transport = transport  # type: ignore[assignment]
        if self.listener.broker.descriptors.exhausted(fileno_of(stream)):
            stream.abort()  # accept and close at once: no stall in the backlog
            return
        self.transport = stream
        self._pacer = ReadPacer(stream, self.loop, self.listener.broker.flow)
        self.peer, self.from_loopback = peer_of(transport)
        # a verified client certificate (tls.verify optional or required), else None
        self.peer_certificate = transport.get_extra_info("peercert") or None
        self.listener.connections.add(self)
        self.adapter = self.listener.adapter_factory(
            self.listener.broker, self, self.clock.monotonic()
        )
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        adapter = self.adapter
        if adapter is None:
            return
        adapter.data_received(data, self.clock.monotonic())
        if adapter.next_deadline() != self._timer_when:
            self._arm_timer()
        if self._pacer is not None and not adapter.closed:
            self._pacer.after_read(len(data), adapter.publisher, adapter.waiting)

    def input_wanted(self) -> None:
        """The adapter's awaited answer came (`want_input`): read from the socket again."""
        if self._pacer is not None:
            self._pacer.answered()

    def eof_received(self) -> bool | None:
        if self.adapter is not None and not self.adapter.closed:
            self.adapter.data_received(b"", self.clock.monotonic())
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._output_hold is not None:
            self._output_hold.cancel()
            self._output_hold = None
        if self.adapter is not None:
            self.adapter.connection_lost()
        self.transport = None
        self._pacer = None

    def pause_writing(self) -> None:
        if self.adapter is not None:
            self.adapter.set_writable(False)

    def resume_writing(self) -> None:
        if self.adapter is not None:
            self.adapter.set_writable(True)

    # -- timer --------------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        if self.adapter is None or self.transport is None or self._closing:
            return  # a closing connection needs no timer (its deadline may be past)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_when = self.adapter.next_deadline()
        if self._timer_when != float("inf"):
            self._timer = self.clock.call_at(self._timer_when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.adapter is None or self.transport is None:
            return
        now = self.clock.monotonic()
        if self._pacer is not None and self._pacer.held:
            self.adapter.peer_held(now)
        self.adapter.handle_timer(now)
        self._arm_timer()

    def shutdown(self, reason: str) -> None:
        """Ask the adapter to say goodbye; its close deadline may need the timer sooner."""
        if self.adapter is not None:
            self.adapter.shutdown(reason)
            self._arm_timer()


class TCPListener:
    """A listening socket, the connections it accepted, and how to build their adapters."""

    def __init__(
        self,
        broker: Broker,
        adapter_factory: AdapterFactory,
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        self.broker = broker
        self.adapter_factory = adapter_factory
        self.on_shutdown = on_shutdown
        self.connections: set[TCPShell] = set()
        self.server: asyncio.base_events.Server

    def shutdown_connections(self, reason: str) -> None:
        for shell in list(self.connections):
            shell.shutdown(reason)
        if self.on_shutdown is not None:
            self.on_shutdown()

    def connection_count(self) -> int:
        return len(self.connections)


async def listen(
    broker: Broker,
    host: str,
    port: int,
    adapter_factory: AdapterFactory,
    *,
    ssl_context: ssl.SSLContext | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> TCPListener:
    """Listen on host:port. Raises OSError when the address cannot be bound."""
    listener = TCPListener(broker, adapter_factory, on_shutdown)
    loop = asyncio.get_running_loop()
    listener.server = await loop.create_server(
        lambda: TCPShell(listener), host, port, ssl=ssl_context, backlog=1024
    )
    return listener
