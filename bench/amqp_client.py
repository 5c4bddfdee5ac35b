"""The raw, pipelined AMQP 0-9-1 client of the benchmark: connection, producer, consumer.

`RawConnection` speaks the protocol on an ``asyncio.Protocol`` and decodes with
the broker's own sans-IO codec; `Producer` publishes pre-encoded frames
(`publish_template`) with one stamp patched in per message, honouring
``pause_writing``, ``connection.blocked``/``channel.flow`` and the confirm
window; `Consumer` acks with ``multiple=True`` every ``--ack-every``
deliveries; `drain_events` is the receive path that ``--self-test`` measures
as well. See `amqp_bench.py` for why it is built this way.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import math
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, Final

from pamqp import commands
from pamqp.base import Frame

from moorage.bench.amqp_options import Options
from moorage.bench.errors import BenchError, ServerClosed
from moorage.bench.results import STAMP, STAMP_SIZE, Stats
from moorage.protocols.amqp091.codec import (
    NEED_DATA,
    PROTOCOL_HEADER,
    ContentReceived,
    FrameDecoder,
    FrameError,
    MethodReceived,
    encode_content,
    encode_method,
)

CHANNEL: Final = 1  # every benchmark connection uses one channel
_FRAME_OVERHEAD: Final = 8  # type, channel, size (7 octets) and frame-end
_BODY_FRAME_HEADER: Final = 7
_FRAME_BODY: Final = 3
CONNECT_TIMEOUT: Final = 10.0  # seconds for TCP connect and for the AMQP handshake
CLOSE_TIMEOUT: Final = 3.0  # seconds for connection.close-ok during teardown
MIN_SLEEP: Final = 0.001  # seconds; the shortest rate-limit pause
CLIENT_PROPERTIES: Final[dict[str, Any]] = {
    "product": "moorage-bench",
    "platform": f"Python {sys.version.split()[0]}",
    "capabilities": {
        "publisher_confirms": True,
        "basic.nack": True,
        "consumer_cancel_notify": True,
        "connection.blocked": True,
        "authentication_failure_close": True,
    },
}


def text_of(value: Any) -> str:
    """A property or header value as text (bytes decoded leniently)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


DeliverHandler = Callable[[ContentReceived, int], None]
ConfirmHandler = Callable[[int, bool, bool, int], None]


def drain_events(
    decoder: FrameDecoder,
    now: int,
    on_deliver: DeliverHandler | None,
    on_method: Callable[[int, Frame, int], None],
) -> None:
    """Hand every complete event in the decoder to its handler (the client's receive path).

    Shared by :class:`RawConnection` and ``--self-test`` so that the self-test measures
    exactly the code a consumer runs.  ``now`` is the arrival time of the bytes.
    """
    while (event := decoder.next_event()) is not NEED_DATA:
        if type(event) is ContentReceived:
            if on_deliver is not None and type(event.method) is commands.Basic.Deliver:
                on_deliver(event, now)
        elif type(event) is MethodReceived:
            on_method(event.channel, event.method, now)
        # Heartbeats are ignored: we negotiate none and never time the broker out.


class RawConnection(asyncio.Protocol):
    """One AMQP connection with one channel, driven by the codec.

    Synchronous methods (declare, qos, ...) go through :meth:`call`, one at a time.
    Publishes are written by the producer directly (:meth:`write`); acks are queued
    (:meth:`queue`) and flushed once per received chunk, so one read yields one write.
    """

    def __init__(self, label: str, on_failure: Callable[[BaseException], None]) -> None:
        self.label = label
        self.decoder = FrameDecoder(expect_protocol_header=False)
        self.transport: asyncio.Transport | None = None
        self.frame_max = 0
        self.server_properties: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.on_deliver: DeliverHandler | None = None
        self.on_confirm: ConfirmHandler | None = None
        self._on_failure = on_failure
        self._waiter: tuple[int, type[Frame], asyncio.Future[Any]] | None = None
        self._out: list[bytes] = []
        self._paused = False  # transport buffer above its high-water mark
        self._blocked = False  # connection.blocked or channel.flow(active=False)
        self._writable = asyncio.Event()
        self._writable.set()
        self._closing = False
        self._lost = asyncio.get_running_loop().create_future()

    # -- opening and closing ---------------------------------------------------------------

    @classmethod
    async def open(
        cls, opts: Options, label: str, on_failure: Callable[[BaseException], None]
    ) -> RawConnection:
        """Connect, run the handshake and open channel 1."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, conn = await loop.create_connection(
                    lambda: cls(label, on_failure), opts.host, opts.port
                )
                await conn._handshake(opts)
        except OSError as e:
            raise BenchError(f"{label}: cannot connect to {opts.host}:{opts.port}: {e}") from e
        except TimeoutError as e:
            raise BenchError(f"{label}: no AMQP handshake within {CONNECT_TIMEOUT:g}s") from e
        return conn

    async def _handshake(self, opts: Options) -> None:
        """Spec 2.2.4: header, start/start-ok, tune/tune-ok, open/open-ok; then channel.open."""
        assert self.transport is not None
        start = await self.call(0, None, commands.Connection.Start, raw=PROTOCOL_HEADER)
        self.server_properties = dict(start.server_properties or {})
        mechanisms = start.mechanisms
        if isinstance(mechanisms, bytes):
            mechanisms = mechanisms.decode("utf-8", "replace")
        if "PLAIN" not in mechanisms.split():
            raise BenchError(f"{self.label}: broker offers no PLAIN login ({mechanisms})")
        start_ok = commands.Connection.StartOk(
            client_properties=CLIENT_PROPERTIES,
            mechanism="PLAIN",
            response=f"\0{opts.user}\0{opts.password}",
            locale="en_US",
        )
        tune = await self.call(0, start_ok, commands.Connection.Tune)
        # Echo the broker's frame_max (0 = unlimited) and switch heartbeats off.
        self.frame_max = tune.frame_max
        self.decoder.frame_max = tune.frame_max
        self.queue(0, commands.Connection.TuneOk(tune.channel_max, tune.frame_max, 0))
        await self.call(0, commands.Connection.Open(opts.vhost), commands.Connection.OpenOk)
        await self.call(CHANNEL, commands.Channel.Open(), commands.Channel.OpenOk)

    def broker_name(self) -> str:
        """``product version`` from connection.start, e.g. ``RabbitMQ 3.12.1``."""
        props = self.server_properties
        product = text_of(props.get("product", "")) or "unknown broker"
        return f"{product} {text_of(props.get('version', ''))}".strip()

    async def close(self) -> None:
        """connection.close, wait briefly for close-ok, drop the socket; never raises."""
        if self.transport is None or self._closing:
            return
        self._closing = True
        if self.error is None:
            with contextlib.suppress(BenchError, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self.call(
                        0,
                        commands.Connection.Close(200, "benchmark done", 0, 0),
                        commands.Connection.CloseOk,
                    )
        if self.transport is not None:
            self.transport.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.shield(self._lost)

    # -- writing ---------------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        """True unless back-pressure or the broker's flow control says stop."""
        return not (self._paused or self._blocked)

    async def wait_writable(self) -> None:
        """Sleep until writes may continue (or the connection failed)."""
        await self._writable.wait()

    def write(self, data: bytes) -> None:
        """Write publishes (already framed) straight to the socket."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def queue(self, channel: int, method: Frame) -> None:
        """Queue a method frame; :meth:`flush` (or the end of a read) writes it."""
        self._out.append(encode_method(channel, method))

    def flush(self) -> None:
        """Write everything queued in one ``transport.write``."""
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self.write(data)

    async def call(
        self,
        channel: int,
        method: Frame | None,
        reply: type[Frame],
        *,
        raw: bytes = b"",
    ) -> Any:
        """Send a synchronous method (or raw bytes) and return the broker's reply method."""
        if self.error is not None:
            raise self.error
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        assert self._waiter is None, "one synchronous call at a time per connection"
        self._waiter = (channel, reply, future)
        if raw:
            self._out.append(raw)
        if method is not None:
            self.queue(channel, method)
        self.flush()
        try:
            return await future
        finally:
            self._waiter = None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        self.decoder.receive_data(data)
        try:
            drain_events(self.decoder, now, self.on_deliver, self._on_method)
        except FrameError as e:
            self.queue(0, e.close_method())
            self._fail(ServerClosed(f"{self.label}: broker sent a bad frame: {e.text}"))
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        why = f"{exc}" if exc else "closed by the broker"
        self._fail(ServerClosed(f"{self.label}: connection lost ({why})"))
        self.transport = None
        if not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True
        self._update_writable()

    def resume_writing(self) -> None:
        self._paused = False
        self._update_writable()

    # -- incoming methods ----------------------------------------------------------------

    def _update_writable(self) -> None:
        if self.writable or self.error is not None:
            self._writable.set()  # an error wakes the producer too, so that it notices
        else:
            self._writable.clear()

    def _on_method(self, channel: int, method: Frame, now: int) -> None:
        kind = type(method)
        if kind is commands.Basic.Ack or kind is commands.Basic.Nack:
            if self.on_confirm is not None:
                self.on_confirm(
                    method.delivery_tag, method.multiple, kind is commands.Basic.Nack, now
                )
            return
        waiter = self._waiter
        if waiter is not None and waiter[0] == channel and kind is waiter[1]:
            if not waiter[2].done():
                waiter[2].set_result(method)
            return
        if kind is commands.Connection.Close:
            self.queue(0, commands.Connection.CloseOk())
            self._fail(
                ServerClosed(
                    f"{self.label}: broker closed the connection: "
                    f"{method.reply_code} {method.reply_text}"
                )
            )
        elif kind is commands.Channel.Close:
            self.queue(channel, commands.Channel.CloseOk())
            error = ServerClosed(
                f"{self.label}: broker closed the channel: {method.reply_code} {method.reply_text}"
            )
            if waiter is not None and waiter[0] == channel and not waiter[2].done():
                # The call that caused it fails; the connection (and reopening) stays usable.
                waiter[2].set_exception(error)
                return
            self._fail(error)
        elif kind is commands.Connection.Blocked or kind is commands.Connection.Unblocked:
            self._blocked = kind is commands.Connection.Blocked
            self._update_writable()
        elif kind is commands.Channel.Flow:
            self._blocked = not method.active
            self.queue(channel, commands.Channel.FlowOk(method.active))
            self._update_writable()
        elif kind is commands.Basic.Cancel:
            self._fail(ServerClosed(f"{self.label}: broker cancelled the consumer"))
        # Anything else (basic.return of a mandatory publish, ...) is not ours to act on.

    def _fail(self, error: BaseException) -> None:
        """Record the first error, wake everyone waiting, tell the run (unless we close)."""
        if self.error is not None:
            return
        self.error = error
        if self._waiter is not None and not self._waiter[2].done():
            self._waiter[2].set_exception(error)
        self._update_writable()
        if not self._closing:
            self._on_failure(error)


# -- producers and consumers ---------------------------------------------------------------


def publish_template(
    exchange: str, routing_key: str, size: int, persistent: bool, frame_max: int
) -> tuple[bytes, bytes]:
    """Frames of one publish split around the 8-octet timestamp: ``(before, after)``.

    The codec builds the method, content header and body frames once; the timestamp
    is the start of the first body frame's payload.
    """
    properties = commands.Basic.Properties(delivery_mode=2 if persistent else None)
    method = commands.Basic.Publish(exchange=exchange, routing_key=routing_key)
    frames = encode_content(CHANNEL, method, properties, bytes(size), frame_max)
    chunk = frame_max - _FRAME_OVERHEAD if frame_max else size
    body_frames = math.ceil(size / chunk)
    offset = len(frames) - (size + _FRAME_OVERHEAD * body_frames) + _BODY_FRAME_HEADER
    assert frames[offset - _BODY_FRAME_HEADER] == _FRAME_BODY
    return frames[:offset], frames[offset + STAMP_SIZE :]


class ConfirmTracker:
    """Send time per publish sequence number, to time confirms.

    Handles ``multiple=True`` (everything up to the tag) and single, possibly
    out-of-order, acks.  Confirmed entries are dropped from the front now and then,
    so memory follows the window, not the run length.
    """

    def __init__(self) -> None:
        self.base = 1  # sequence number of index 0
        self.floor = 1  # lowest sequence number that may still be unconfirmed
        self.next_seq = 1
        self.stamps: array.array[int] = array.array("q")
        self.done = bytearray()

    def add(self, n: int, stamp: int) -> None:
        """Record ``n`` publishes sent at ``stamp``."""
        self.stamps.extend([stamp] * n)
        self.done.extend(bytes(n))
        self.next_seq += n

    def confirm(self, tag: int, multiple: bool, now: int, out: array.array[int]) -> int:
        """Mark confirmed, append their latencies to ``out``; return how many were new."""
        lo = self.floor if multiple else tag
        hi = min(tag, self.next_seq - 1)
        base, stamps, done = self.base, self.stamps, self.done
        new = 0
        for seq in range(max(lo, base), hi + 1):
            i = seq - base
            if not done[i]:
                done[i] = 1
                out.append(now - stamps[i])
                new += 1
        floor = self.floor
        while floor < self.next_seq and done[floor - base]:
            floor += 1
        self.floor = floor
        if floor - base > 65536:
            cut = floor - base
            del stamps[:cut]
            del done[:cut]
            self.base = floor
        return new


class Producer:
    """Publishes as fast as flow control, the confirm window and ``--rate`` allow."""

    def __init__(
        self,
        conn: RawConnection,
        opts: Options,
        stats: Stats,
        route: tuple[str, str],
        quota: int | None,
        rate: float,
    ) -> None:
        self.conn = conn
        self.opts = opts
        self.stats = stats
        self.route = route
        self.quota = quota
        self.rate = rate
        self.sent = 0
        self.confirmed = 0
        self.tracker = ConfirmTracker() if opts.confirm else None
        self._space = asyncio.Event()
        conn.on_confirm = self.on_confirm

    async def setup(self) -> None:
        """Enter confirm mode when asked."""
        if self.tracker is not None:
            await self.conn.call(CHANNEL, commands.Confirm.Select(), commands.Confirm.SelectOk)

    def on_confirm(self, tag: int, multiple: bool, nack: bool, now: int) -> None:
        """basic.ack/nack from the broker: time them and open the window."""
        if self.tracker is None:
            return
        new = self.tracker.confirm(tag, multiple, now, self.stats.confirm_latencies)
        self.confirmed += new
        self.stats.confirmed += new
        if nack:
            self.stats.nacked += new
        self._space.set()

    @property
    def outstanding(self) -> int:
        """Publishes not yet confirmed (0 without confirms)."""
        return self.sent - self.confirmed if self.tracker is not None else 0

    async def run(self, deadline_ns: int | None) -> None:
        """Publish until the quota or deadline; returns early if the connection fails."""
        conn, stats, window = self.conn, self.stats, self.opts.confirm
        before, after = publish_template(
            *self.route, self.opts.size, self.opts.persistent, conn.frame_max
        )
        pack = STAMP.pack
        start = time.perf_counter_ns()
        while conn.error is None:
            now = time.perf_counter_ns()
            n = self.opts.batch
            if self.quota is not None:
                n = min(n, self.quota - self.sent)
            if n <= 0 or (deadline_ns is not None and now >= deadline_ns):
                return
            if not conn.writable:
                await conn.wait_writable()
                continue
            if window:
                free = window - (self.sent - self.confirmed)
                if free <= 0:
                    self._space.clear()
                    await self._space.wait()
                    continue
                n = min(n, free)
            if self.rate:
                due = int((now - start) * self.rate / 1e9) + 1 - self.sent
                if due <= 0:
                    # At least 1 ms: shorter timers would spin the CPU the broker needs;
                    # whatever fell due meanwhile goes out as one batch.
                    wait = (start + self.sent * 1e9 / self.rate - now) / 1e9
                    await asyncio.sleep(max(wait, MIN_SLEEP))
                    continue
                n = min(n, due)
            # One timestamp per batch: the whole batch leaves in this one write.
            conn.write(b"".join([before, pack(now), after] * n))
            if self.tracker is not None:
                self.tracker.add(n, now)
            self.sent += n
            stats.sent += n
            stats.last_publish_ns = now
            await asyncio.sleep(0)  # let deliveries and confirms in

    def wake(self) -> None:
        """Unblock a producer waiting for confirms (used when the run is stopped)."""
        self._space.set()


class Consumer:
    """Measures latency of every delivery and acks ``multiple=True`` every K of them."""

    def __init__(
        self,
        send: Callable[[int, Frame], None],
        opts: Options,
        stats: Stats,
        on_progress: Callable[[], None],
    ) -> None:
        self.send = send
        self.auto_ack = opts.auto_ack
        self.ack_every = opts.ack_every
        self.stats = stats
        self.on_progress = on_progress
        self.delivered = 0
        self.unacked = 0
        self.last_tag = 0

    def on_deliver(self, event: ContentReceived, now: int) -> None:
        """One basic.deliver with its body; ``now`` is when its bytes arrived."""
        body = event.body
        stats = self.stats
        if len(body) >= STAMP_SIZE:
            stats.latencies.append(now - STAMP.unpack_from(body)[0])
        self.delivered += 1
        stats.delivered += 1
        stats.last_delivery_ns = now
        if not self.auto_ack:
            self.last_tag = event.method.delivery_tag
            self.unacked += 1
            if self.unacked >= self.ack_every:
                self.ack()
        if stats.delivered >= stats.expected:
            self.on_progress()

    def ack(self) -> None:
        """Ack everything delivered so far with one basic.ack(multiple=True)."""
        if self.unacked:
            self.send(CHANNEL, commands.Basic.Ack(self.last_tag, multiple=True))
            self.unacked = 0
