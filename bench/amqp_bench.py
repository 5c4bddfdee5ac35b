"""AMQP 0-9-1 throughput and latency benchmark: messages per second and latency percentiles.

Run ``python -m bench.amqp_bench --help``; ``bench/README.md`` explains the scenarios.

Why it is built this way
------------------------
* **A raw, pipelined client.**  General-purpose clients (pika, aio-pika) spend more CPU
  per message than a Python broker does, so they would measure themselves.  The raw
  client speaks the protocol directly on an ``asyncio.Protocol`` (uvloop when
  available), decodes with the broker's own sans-IO codec
  (:mod:`protocols.amqp091.codec`) and never waits for a reply while publishing.
  ``--self-test`` measures how fast it can go without a broker, so a result close to
  that ceiling means the *client* was the limit, not the broker.
* **Publishes are built once and stamped.**  Every publish of a run has the same
  method frame, content header and body size; only the first 8 body octets (the send
  timestamp) change.  The frames come from :func:`~protocols.amqp091.codec.encode_content`
  once per producer; each batch patches in one timestamp and joins the copies into a
  single ``transport.write``.  Encoding each message with pamqp instead costs several
  times more (``--self-test`` shows both).
* **End-to-end latency without clock sync.**  Producers and consumers live in the same
  process, so the consumer subtracts the ``time.perf_counter_ns()`` stamp in the body
  from its own clock when the bytes arrive.
* **Flow control is honoured, never bypassed.**  A producer stops when the transport
  calls ``pause_writing`` (socket buffer full), when the broker sends
  ``connection.blocked`` or ``channel.flow``, and, with ``--confirm N``, while N
  publishes are unconfirmed.  Without confirms nothing bounds how far publishers run
  ahead of consumers except TCP, so latency at full speed is mostly queueing time; use
  ``--rate`` to measure latency at a fixed load.
* **Bounded and local.**  Every run ends by itself (``--count``/``--duration`` plus a
  hard ``--timeout``), cleans up the queues and exchange it declared, and refuses any
  host that is not a loopback address: a load generator must not flood a network by
  accident.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import ipaddress
import json
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from pamqp import commands
from pamqp.base import Frame

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

# The 8-octet send timestamp at the start of every message body (perf_counter_ns).
_STAMP: Final = struct.Struct(">Q")
STAMP_SIZE: Final = _STAMP.size
CHANNEL: Final = 1  # every benchmark connection uses one channel
_FRAME_OVERHEAD: Final = 8  # type, channel, size (7 octets) and frame-end
_BODY_FRAME_HEADER: Final = 7
_FRAME_BODY: Final = 3
CONNECT_TIMEOUT: Final = 10.0  # seconds for TCP connect and for the AMQP handshake
CLOSE_TIMEOUT: Final = 3.0  # seconds for connection.close-ok during teardown
MIN_SLEEP: Final = 0.001  # seconds; the shortest rate-limit pause
SPAWN_READY_TIMEOUT: Final = 30.0  # seconds a spawned broker gets to start listening
REPO_ROOT: Final = Path(__file__).resolve().parent.parent
# Every listener of `moorage serve` (broker.config.DEFAULT_PORTS); a spawned broker
# opens only the one under test, so runs never collide with a broker on default ports.
LISTENERS: Final = ("amqp", "mqtt", "stomp", "http", "mqtt_ws", "stomp_ws")
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


class BenchError(Exception):
    """The benchmark cannot go on; the message is one line for the operator."""


class UsageError(BenchError):
    """The flags do not make a runnable benchmark (exit status 2, like argparse)."""


class ServerClosed(BenchError):
    """The broker closed the connection or channel, or the socket dropped."""


# -- options -----------------------------------------------------------------------------


@dataclass(slots=True)
class Options:
    """Validated command-line options (see :func:`build_parser` for their meaning)."""

    host: str = "127.0.0.1"
    port: int = 5672
    user: str = "guest"
    password: str = "guest"  # noqa: S105 - RabbitMQ's well-known loopback default
    vhost: str = "/"
    client: str = "raw"
    producers: int = 1
    consumers: int = 1
    fanout: int = 0
    size: int = 128
    count: int | None = 100_000
    duration: float | None = None
    persistent: bool = False
    confirm: int = 0
    prefetch: int = 1000
    ack_every: int = 500
    auto_ack: bool = False
    rate: float = 0.0
    batch: int = 200
    queue: str | None = None
    timeout: float = 120.0
    json: bool = False
    progress: bool = True

    @property
    def queues(self) -> int:
        """Number of queues: K with ``--fanout K``, else one shared queue."""
        return self.fanout or 1

    @property
    def consumer_count(self) -> int:
        """Consumers: one per queue with fan-out, else ``--consumers``."""
        return self.fanout or self.consumers

    def scenario(self) -> str:
        """A short human name of what is measured, e.g. ``raw 1->1 128B transient ...``."""
        parts = [self.client, f"{self.producers}->{self.consumer_count}"]
        if self.fanout:
            parts.append(f"fanout={self.fanout}")
        parts += [f"{self.size}B", "persistent" if self.persistent else "transient"]
        if self.confirm:
            parts.append(f"confirm={self.confirm}")
        if self.auto_ack:
            parts.append("auto-ack")
        else:
            parts.append(f"prefetch={self.prefetch} ack-every={self.ack_every}")
        if self.rate:
            parts.append(f"rate={self.rate:g}/s")
        parts.append(f"count={self.count}" if self.count is not None else f"{self.duration:g}s")
        return " ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    """The command line; every option's help says what it changes in the measurement."""
    p = argparse.ArgumentParser(
        prog="python -m bench.amqp_bench",
        description="AMQP 0-9-1 throughput and latency benchmark (talks to loopback only). "
        "Prints msg/s and end-to-end latency percentiles; see bench/README.md.",
    )
    target = p.add_argument_group("broker")
    target.add_argument("--host", default="127.0.0.1", help="loopback host (default 127.0.0.1)")
    target.add_argument("--port", type=int, default=5672, help="AMQP port (default 5672)")
    target.add_argument("--user", default="guest", help="PLAIN user (default guest)")
    target.add_argument("--password", default="guest", help="PLAIN password (default guest)")
    target.add_argument("--vhost", default="/", help="virtual host (default /)")
    target.add_argument(
        "--spawn",
        action="store_true",
        help="run a Moorage broker on a free port with a temp data dir for this run",
    )
    target.add_argument(
        "--spawn-store",
        choices=["sqlite", "memory"],
        default="sqlite",
        help="storage backend of the --spawn broker (default sqlite)",
    )

    load = p.add_argument_group("scenario")
    load.add_argument(
        "--client",
        choices=["raw", "pika"],
        default="raw",
        help="raw pipelined client (default) or one pika producer/consumer pair",
    )
    load.add_argument("--producers", type=int, default=1, metavar="P", help="(default 1)")
    load.add_argument(
        "--consumers", type=int, default=1, metavar="C", help="on one shared queue (default 1)"
    )
    load.add_argument(
        "--fanout",
        type=int,
        default=0,
        metavar="K",
        help="publish to a fanout exchange bound to K queues with one consumer each",
    )
    load.add_argument(
        "--size", type=int, default=128, metavar="BYTES", help="message body size (default 128)"
    )
    amount = load.add_mutually_exclusive_group()
    amount.add_argument(
        "--count", type=int, metavar="N", help="messages to publish in total (default 100000)"
    )
    amount.add_argument("--duration", type=float, metavar="S", help="publish for S seconds")
    load.add_argument(
        "--persistent", action="store_true", help="delivery_mode 2 and durable queues"
    )
    load.add_argument(
        "--confirm",
        type=int,
        default=0,
        metavar="N",
        help="publisher confirms with at most N unconfirmed publishes (default off)",
    )
    load.add_argument(
        "--prefetch", type=int, default=1000, metavar="N", help="basic.qos count (default 1000)"
    )
    load.add_argument(
        "--ack-every",
        type=int,
        metavar="K",
        help="ack with multiple=True every K deliveries (default prefetch/2)",
    )
    load.add_argument("--auto-ack", action="store_true", help="consume with no-ack")
    load.add_argument(
        "--rate", type=float, default=0.0, metavar="R", help="total publish rate limit, msg/s"
    )
    load.add_argument(
        "--queue", help="use this durable queue (purged first) instead of a fresh one"
    )
    load.add_argument(
        "--batch",
        type=int,
        default=200,
        metavar="N",
        help="publishes coalesced into one write (default 200)",
    )
    load.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="hard limit of the measurement (default 120, or duration + 30)",
    )

    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the result as one JSON object")
    out.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    out.add_argument(
        "--self-test",
        action="store_true",
        help="measure the raw client's own encode/decode ceiling, without a broker",
    )
    out.add_argument(
        "--loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="client event loop (default: uvloop when installed)",
    )
    return p


def options_from(args: argparse.Namespace) -> Options:
    """Check the combination of flags; raises BenchError with the reason."""
    count = args.count
    if count is None and args.duration is None:
        count = 100_000
    ack_every = args.ack_every
    if ack_every is None:
        ack_every = max(1, args.prefetch // 2) if args.prefetch else 100
    opts = Options(
        host=args.host,
        port=args.port,
        user=args.user,
        password=args.password,
        vhost=args.vhost,
        client=args.client,
        producers=args.producers,
        consumers=args.consumers,
        fanout=args.fanout,
        size=args.size,
        count=count,
        duration=args.duration,
        persistent=args.persistent,
        confirm=args.confirm,
        prefetch=args.prefetch,
        ack_every=ack_every,
        auto_ack=args.auto_ack,
        rate=args.rate,
        batch=args.batch,
        queue=args.queue,
        timeout=args.timeout or (args.duration + 30.0 if args.duration else 120.0),
        json=args.json,
        progress=not args.quiet,
    )
    _validate(opts)
    return opts


def _validate(o: Options) -> None:
    checks = [
        (o.size >= STAMP_SIZE, f"--size must be at least {STAMP_SIZE} (the send timestamp)"),
        (o.producers >= 1 and o.consumers >= 1, "--producers and --consumers must be >= 1"),
        (o.fanout >= 0 and o.confirm >= 0 and o.prefetch >= 0, "counts must not be negative"),
        (o.count is None or o.count >= 1, "--count must be >= 1"),
        (o.duration is None or o.duration > 0, "--duration must be > 0"),
        (o.rate >= 0 and o.batch >= 1 and o.timeout > 0, "bad --rate, --batch or --timeout"),
        (o.ack_every >= 1, "--ack-every must be >= 1"),
        # Acking every K with fewer than K deliveries allowed in flight never acks: a stall.
        (
            o.auto_ack or not o.prefetch or o.ack_every <= o.prefetch,
            "--ack-every larger than --prefetch would never ack: the consumer would stall",
        ),
        (not (o.queue and o.fanout), "--queue and --fanout do not combine"),
        (not (o.fanout and o.consumers != 1), "--fanout K uses K consumers, drop --consumers"),
    ]
    if o.client == "pika":
        checks.append(
            (
                o.producers == 1 and o.consumers == 1 and not o.fanout,
                "--client pika runs one producer and one consumer, without --fanout",
            )
        )
    for ok, why in checks:
        if not ok:
            raise UsageError(why)


def require_loopback(host: str) -> None:
    """Refuse any host that resolves to a non-loopback address (see module docstring)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as e:
        raise BenchError(f"cannot resolve {host!r}: {e}") from e
    for info in infos:
        address = str(info[4][0]).split("%")[0]
        if not ipaddress.ip_address(address).is_loopback:
            raise UsageError(
                f"{host!r} is not a loopback address; this tool only talks to loopback"
            )


# -- measurements --------------------------------------------------------------------------


@dataclass(slots=True)
class Stats:
    """Counters and latency samples shared by producers, consumers and the reporter.

    Each counter has one writer (single event loop, or one thread per role with pika),
    so plain integers suffice.
    """

    expected: float = math.inf  # deliveries that complete the run (known late with --duration)
    sent: int = 0
    delivered: int = 0
    confirmed: int = 0  # acks + nacks received
    nacked: int = 0
    start_ns: int = 0
    last_publish_ns: int = 0
    last_delivery_ns: int = 0
    latencies: array.array[int] = field(default_factory=lambda: array.array("q"))
    confirm_latencies: array.array[int] = field(default_factory=lambda: array.array("q"))


def percentiles(samples: array.array[int], points: tuple[float, ...]) -> dict[str, float]:
    """Nearest-rank percentiles of nanosecond samples, in milliseconds (empty: no samples)."""
    if not samples:
        return {}
    ordered = sorted(samples)
    n = len(ordered)
    result = {}
    for q in points:
        rank = max(1, math.ceil(q / 100.0 * n))
        result[f"p{q:g}"] = round(ordered[rank - 1] / 1e6, 3)
    result["max"] = round(ordered[-1] / 1e6, 3)
    return result


@dataclass(slots=True)
class Result:
    """What one run measured; printed as a table or as JSON."""

    scenario: str
    broker: str
    sent: int
    delivered: int
    elapsed_s: float
    sent_per_s: float
    delivered_per_s: float
    latency_ms: dict[str, float]
    confirm_latency_ms: dict[str, float] | None
    nacked: int
    complete: bool
    client_cpu_pct: float
    broker_cpu_pct: float | None = None
    notes: list[str] = field(default_factory=list)


def make_result(
    opts: Options, stats: Stats, broker: str, complete: bool, cpu: float, wall: float
) -> Result:
    """Rates over the time from the first publish to the last publish/delivery."""
    start = stats.start_ns
    send_span = max(stats.last_publish_ns - start, 1) / 1e9
    deliver_span = max(stats.last_delivery_ns - start, 1) / 1e9
    return Result(
        scenario=opts.scenario(),
        broker=broker,
        sent=stats.sent,
        delivered=stats.delivered,
        elapsed_s=round(
            max(stats.last_publish_ns, stats.last_delivery_ns, start) / 1e9 - start / 1e9, 3
        ),
        sent_per_s=round(stats.sent / send_span) if stats.sent else 0,
        delivered_per_s=round(stats.delivered / deliver_span) if stats.delivered else 0,
        latency_ms=percentiles(stats.latencies, (50, 99, 99.9)),
        confirm_latency_ms=(
            percentiles(stats.confirm_latencies, (50, 99)) if opts.confirm else None
        ),
        nacked=stats.nacked,
        complete=complete,
        client_cpu_pct=round(100.0 * cpu / wall, 1) if wall > 0 else 0.0,
    )


class Progress:
    """One stderr line per second: publish and delivery rates, outstanding confirms."""

    def __init__(self, stats: Stats, confirm: bool, enabled: bool) -> None:
        self.stats = stats
        self.confirm = confirm
        self.enabled = enabled
        self._t = time.perf_counter()
        self._sent = 0
        self._delivered = 0
        self._t0 = self._t

    def tick(self, final: bool = False) -> None:
        """Print the rates since the previous tick (the final one only if it means much)."""
        now = time.perf_counter()
        dt = now - self._t
        if not self.enabled or dt <= 0 or (final and dt < 0.2):
            return
        s = self.stats
        line = (
            f"[{now - self._t0:6.1f}s] published {(s.sent - self._sent) / dt:>9,.0f}/s"
            f"  delivered {(s.delivered - self._delivered) / dt:>9,.0f}/s"
        )
        if self.confirm:
            line += f"  unconfirmed {s.sent - s.confirmed:>6,}"
        line += f"  (total {s.sent:,} sent, {s.delivered:,} delivered)"
        print(line, file=sys.stderr, flush=True)
        self._t, self._sent, self._delivered = now, s.sent, s.delivered


# -- the raw client ------------------------------------------------------------------------

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
        product = _text(props.get("product", "")) or "unknown broker"
        return f"{product} {_text(props.get('version', ''))}".strip()

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
        pack = _STAMP.pack
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
            stats.latencies.append(now - _STAMP.unpack_from(body)[0])
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


# -- a raw run -----------------------------------------------------------------------------


class RawRun:
    """Topology, connections, the measurement and the cleanup of one raw-client run."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.stats = Stats()
        self.admin: RawConnection | None = None
        self.producers: list[Producer] = []
        self.consumers: list[tuple[RawConnection, Consumer]] = []
        self.connections: list[RawConnection] = []  # producers' and consumers'
        self.created_queues: list[str] = []
        self.exchange = ""
        self.failure: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.delivered_all = asyncio.Event()
        self.finishing = False

    def fail(self, error: BaseException) -> None:
        """Any connection's failure ends the measurement (not during teardown)."""
        if not self.finishing and not self.failure.done():
            self.failure.set_exception(error)

    async def execute(self) -> Result:
        """Set up, measure, tear down; the result notes what went wrong if anything did."""
        cpu0, wall0 = time.process_time(), time.perf_counter()
        notes: list[str] = []
        complete = False
        try:
            await self._setup()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            complete = await self._measure(notes)
        finally:
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            await self._teardown()
            if self.failure.done() and not self.failure.cancelled():
                self.failure.exception()  # mark retrieved
        broker = self.admin.broker_name() if self.admin else "?"
        result = make_result(self.opts, self.stats, broker, complete, cpu, wall)
        result.notes += notes
        return result

    async def _setup(self) -> None:
        opts = self.opts
        self.admin = admin = await RawConnection.open(opts, "admin", self.fail)
        queues = await self._declare(admin)
        labels = [f"consumer-{i}" for i in range(opts.consumer_count)]
        labels += [f"producer-{i}" for i in range(opts.producers)]
        opened = await asyncio.gather(
            *(RawConnection.open(opts, lb, self.fail) for lb in labels), return_exceptions=True
        )
        conns = [c for c in opened if isinstance(c, RawConnection)]
        self.connections += conns  # closed by the teardown even if another one failed
        for error in opened:
            if isinstance(error, BaseException):
                raise error
        for i, conn in enumerate(conns[: opts.consumer_count]):
            consumer = Consumer(conn.queue, opts, self.stats, self._check_done)
            conn.on_deliver = consumer.on_deliver
            if not opts.auto_ack:
                await conn.call(
                    CHANNEL,
                    commands.Basic.Qos(prefetch_count=opts.prefetch),
                    commands.Basic.QosOk,
                )
            await conn.call(
                CHANNEL,
                commands.Basic.Consume(queue=queues[i % len(queues)], no_ack=opts.auto_ack),
                commands.Basic.ConsumeOk,
            )
            self.consumers.append((conn, consumer))
        route = (self.exchange, "") if opts.fanout else ("", queues[0])
        total = opts.count
        rate = opts.rate / opts.producers
        for i, conn in enumerate(conns[opts.consumer_count :]):
            quota = (
                None if total is None else total // opts.producers + (i < total % opts.producers)
            )
            producer = Producer(conn, opts, self.stats, route, quota, rate)
            await producer.setup()
            self.producers.append(producer)
        if opts.count is not None:
            self.stats.expected = opts.count * opts.queues

    async def _declare(self, admin: RawConnection) -> list[str]:
        """A fresh auto-delete queue (or K of them behind a fanout exchange), or ``--queue``."""
        opts = self.opts
        if opts.queue:
            declare = commands.Queue.Declare(queue=opts.queue, durable=True)
            await admin.call(CHANNEL, declare, commands.Queue.DeclareOk)
            purge = commands.Queue.Purge(queue=opts.queue)
            await admin.call(CHANNEL, purge, commands.Queue.PurgeOk)
            return [opts.queue]
        queues = []
        for _ in range(opts.queues):
            declare = commands.Queue.Declare(durable=opts.persistent, auto_delete=True)
            ok = await admin.call(CHANNEL, declare, commands.Queue.DeclareOk)
            queues.append(ok.queue)
            self.created_queues.append(ok.queue)
        if opts.fanout:
            self.exchange = f"moorage-bench-fanout-{os.getpid()}-{time.monotonic_ns()}"
            declare_x = commands.Exchange.Declare(
                exchange=self.exchange, exchange_type="fanout", durable=opts.persistent
            )
            await admin.call(CHANNEL, declare_x, commands.Exchange.DeclareOk)
            for q in queues:
                bind = commands.Queue.Bind(queue=q, exchange=self.exchange)
                await admin.call(CHANNEL, bind, commands.Queue.BindOk)
        return queues

    def _check_done(self) -> None:
        if self.stats.delivered >= self.stats.expected:
            self.delivered_all.set()

    def _outstanding(self) -> int:
        return sum(p.outstanding for p in self.producers)

    async def _race(self, awaitable: Any) -> None:
        """Await ``awaitable`` unless a connection fails first (then raise its error)."""
        task = asyncio.ensure_future(awaitable)
        try:
            done, _ = await asyncio.wait({task, self.failure}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()  # a timeout or a failure: nobody waits for it any more
        if task in done:
            task.result()
        else:
            self.failure.result()

    async def _measure(self, notes: list[str]) -> bool:
        """Run producers; wait for every delivery and confirm. True if the run completed."""
        opts, stats = self.opts, self.stats
        progress = Progress(stats, bool(opts.confirm), opts.progress)
        stats.start_ns = stats.last_publish_ns = stats.last_delivery_ns = time.perf_counter_ns()
        deadline = None if opts.duration is None else stats.start_ns + int(opts.duration * 1e9)
        tasks = [asyncio.create_task(p.run(deadline)) for p in self.producers]
        ticker = asyncio.create_task(self._tick(progress))
        try:
            async with asyncio.timeout(opts.timeout):
                await self._race(asyncio.wait(tasks))
                for task in tasks:
                    task.result()  # a producer's bug surfaces here, not silently
                if opts.duration is not None:
                    stats.expected = stats.sent * opts.queues
                    self._check_done()
                await self._race(self.delivered_all.wait())
                while self._outstanding():
                    await self._race(asyncio.sleep(0.005))
            return True
        except TimeoutError:
            undelivered = stats.sent * opts.queues - stats.delivered
            notes.append(
                f"stopped by --timeout {opts.timeout:g}s: {undelivered} deliveries missing, "
                f"{self._outstanding()} publishes unconfirmed"
            )
        except BenchError as e:
            notes.append(f"run aborted: {e}")
        finally:
            for task in tasks:
                task.cancel()
            for p in self.producers:
                p.wake()
            ticker.cancel()
            await asyncio.gather(*tasks, ticker, return_exceptions=True)
            progress.tick(final=True)
        return False

    async def _tick(self, progress: Progress) -> None:
        while True:
            await asyncio.sleep(1.0)
            progress.tick()

    async def _teardown(self) -> None:
        """Final acks, close clients, delete what we declared; bounded, never raises."""
        self.finishing = True
        for conn, consumer in self.consumers:
            if conn.error is None:
                consumer.ack()
                conn.flush()
        await asyncio.gather(*(c.close() for c in self.connections))
        admin = self.admin
        if admin is None:
            return
        with contextlib.suppress(BenchError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT * 2):
                # Auto-delete queues are usually gone already once the consumers left; a
                # broker that answers 404 closes the channel, which is reopened.
                if self.exchange:
                    await self._delete(admin, commands.Exchange.Delete(exchange=self.exchange))
                for q in self.created_queues:
                    await self._delete(admin, commands.Queue.Delete(queue=q))
        await admin.close()

    @staticmethod
    async def _delete(admin: RawConnection, method: Frame) -> None:
        reply = (
            commands.Exchange.DeleteOk
            if isinstance(method, commands.Exchange.Delete)
            else commands.Queue.DeleteOk
        )
        try:
            await admin.call(CHANNEL, method, reply)
        except ServerClosed:
            if admin.error is not None:
                raise
            await admin.call(CHANNEL, commands.Channel.Open(), commands.Channel.OpenOk)


# -- the pika comparison -----------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class PikaRun:
    """One pika BlockingConnection producer and one consumer, each in its own thread.

    This is what a typical Python application sees.  pika's blocking confirms wait for
    each publish, so the confirm window is effectively 1.  pika is imported lazily:
    only this mode needs it.
    """

    def __init__(self, opts: Options) -> None:
        import pika

        self.pika = pika
        self.opts = opts
        self.params = pika.ConnectionParameters(
            host=opts.host,
            port=opts.port,
            virtual_host=opts.vhost,
            credentials=pika.PlainCredentials(opts.user, opts.password),
            heartbeat=0,
            blocked_connection_timeout=opts.timeout,
        )
        self.stats = Stats()
        if opts.count is not None:
            self.stats.expected = opts.count
        self.queue = ""
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.errors: list[BaseException] = []
        self.notes: list[str] = []
        if opts.confirm > 1:
            self.notes.append("pika BlockingConnection waits for each confirm: window is 1")

    def execute(self) -> Result:
        """Declare, run both threads under the timeout, clean up."""
        from pika.exceptions import AMQPError

        opts = self.opts
        try:
            admin = self.pika.BlockingConnection(self.params)
        except (AMQPError, OSError) as e:
            raise BenchError(f"pika cannot connect to {opts.host}:{opts.port}: {e!r}") from e
        server = admin._impl.server_properties  # pika has no public accessor
        broker = " ".join(_text(server.get(k, "")) for k in ("product", "version")).strip()
        try:
            channel = admin.channel()
            if opts.queue:
                self.queue = opts.queue
                channel.queue_declare(opts.queue, durable=True)
                channel.queue_purge(opts.queue)
            else:
                declared = channel.queue_declare("", durable=opts.persistent, auto_delete=True)
                self.queue = declared.method.queue
        except AMQPError as e:
            with contextlib.suppress(AMQPError, OSError):
                admin.close()
            raise BenchError(f"pika cannot declare the queue: {e!r}") from e
        cpu0, wall0 = time.process_time(), time.perf_counter()
        complete = self._measure()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        self.notes += [f"run aborted: {type(e).__name__}: {e}" for e in self.errors]
        with contextlib.suppress(AMQPError, OSError):
            if not opts.queue:
                channel.queue_delete(self.queue)
            admin.close()
        result = make_result(opts, self.stats, broker, complete, cpu, wall)
        result.notes += self.notes
        return result

    def _measure(self) -> bool:
        opts, stats = self.opts, self.stats
        consumer = threading.Thread(target=self._guarded(self._consume), daemon=True)
        producer = threading.Thread(target=self._guarded(self._produce), daemon=True)
        consumer.start()
        self.ready.wait(CONNECT_TIMEOUT)
        progress = Progress(stats, bool(opts.confirm), opts.progress)
        stats.start_ns = stats.last_publish_ns = stats.last_delivery_ns = time.perf_counter_ns()
        producer.start()
        deadline = time.monotonic() + opts.timeout
        complete = False
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                self.notes.append(f"stopped by --timeout {opts.timeout:g}s")
                break
            consumer.join(min(1.0, left))
            progress.tick()
            if not producer.is_alive() and opts.duration is not None:
                stats.expected = stats.sent
            if not consumer.is_alive():
                complete = not self.errors
                break
        self.stop.set()
        producer.join(CLOSE_TIMEOUT)
        consumer.join(CLOSE_TIMEOUT)
        return complete

    def _guarded(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Run ``fn``; a failure is recorded for the main thread and stops the run."""
        from pika.exceptions import AMQPError

        def runner() -> None:
            try:
                fn()
            except (AMQPError, OSError, ValueError) as e:
                self.errors.append(e)
                self.stop.set()
            finally:
                self.ready.set()

        return runner

    def _consume(self) -> None:
        opts, stats = self.opts, self.stats
        conn = self.pika.BlockingConnection(self.params)
        ch = conn.channel()
        if not opts.auto_ack:
            ch.basic_qos(prefetch_count=opts.prefetch)
        unacked = 0
        unpack = _STAMP.unpack_from

        def on_message(ch: Any, method: Any, _props: Any, body: bytes) -> None:
            nonlocal unacked
            now = time.perf_counter_ns()
            stats.latencies.append(now - unpack(body)[0])
            stats.delivered += 1
            stats.last_delivery_ns = now
            if not opts.auto_ack:
                unacked += 1
                if unacked >= opts.ack_every or stats.delivered >= stats.expected:
                    ch.basic_ack(method.delivery_tag, multiple=True)
                    unacked = 0

        ch.basic_consume(self.queue, on_message, auto_ack=opts.auto_ack)
        self.ready.set()
        while not self.stop.is_set() and stats.delivered < stats.expected:
            conn.process_data_events(time_limit=0.05)
        conn.close()

    def _produce(self) -> None:
        opts, stats = self.opts, self.stats
        conn = self.pika.BlockingConnection(self.params)
        ch = conn.channel()
        if opts.confirm:
            ch.confirm_delivery()
        props = self.pika.BasicProperties(delivery_mode=2 if opts.persistent else None)
        pad = bytes(opts.size - STAMP_SIZE)
        start = time.perf_counter_ns()
        deadline = math.inf if opts.duration is None else start + opts.duration * 1e9
        quota = math.inf if opts.count is None else opts.count
        while not self.stop.is_set():
            now = time.perf_counter_ns()
            if stats.sent >= quota or now >= deadline:
                break
            if opts.rate and stats.sent >= (now - start) * opts.rate / 1e9 + 1:
                time.sleep(max(MIN_SLEEP, (start + stats.sent * 1e9 / opts.rate - now) / 1e9))
                continue
            ch.basic_publish("", self.queue, _STAMP.pack(now) + pad, props)
            if opts.confirm:
                stats.confirm_latencies.append(time.perf_counter_ns() - now)
                stats.confirmed += 1
            stats.sent += 1
            stats.last_publish_ns = now
        conn.close()


# -- self-test -------------------------------------------------------------------------------


def self_test(count: int, opts: Options) -> dict[str, Any]:
    """The raw client's own ceiling: encode publishes and decode deliveries, no broker.

    Runs the producer's batch encoding and the consumer's receive path
    (:func:`drain_events` + :class:`Consumer`, fed in 64 KiB reads like a socket)
    over ``count`` messages of ``opts.size`` bytes.
    """
    frame_max = 131072
    before, after = publish_template("", "amq.gen-0123456789abcdef", opts.size, False, frame_max)
    pack, batch = _STAMP.pack, opts.batch
    t = time.perf_counter()
    sink = 0
    for done in range(0, count, batch):
        n = min(batch, count - done)
        sink += len(b"".join([before, pack(time.perf_counter_ns()), after] * n))
    encode_s = time.perf_counter() - t

    naive = min(count, 50_000)
    props = commands.Basic.Properties()
    body = bytes(opts.size)
    t = time.perf_counter()
    for _ in range(naive):
        encode_content(CHANNEL, commands.Basic.Publish(routing_key="q"), props, body, frame_max)
    naive_s = time.perf_counter() - t

    block = 1000
    stream = b"".join(
        encode_content(
            CHANNEL,
            commands.Basic.Deliver("ctag-1", i + 1, False, "", "amq.gen-0123456789abcdef"),
            props,
            _STAMP.pack(time.perf_counter_ns()) + bytes(opts.size - STAMP_SIZE),
            frame_max,
        )
        for i in range(block)
    )
    stats = Stats()
    acks: list[int] = []
    consumer = Consumer(
        lambda _ch, m: acks.append(len(encode_method(CHANNEL, m))), opts, stats, lambda: None
    )
    decoder = FrameDecoder(expect_protocol_header=False)
    reads = [stream[i : i + 65536] for i in range(0, len(stream), 65536)]

    def ignore(_channel: int, _method: Frame, _now: int) -> None:
        pass

    t = time.perf_counter()
    for _ in range(math.ceil(count / block)):
        for chunk in reads:
            decoder.receive_data(chunk)
            drain_events(decoder, time.perf_counter_ns(), consumer.on_deliver, ignore)
    decode_s = time.perf_counter() - t
    encode_rate = count / encode_s
    decode_rate = stats.delivered / decode_s
    return {
        "scenario": f"self-test {opts.size}B batch={batch} ack-every={opts.ack_every}",
        "messages": count,
        "producer_encode_per_s": round(encode_rate),
        "producer_encode_mb_per_s": round(sink / encode_s / 1e6, 1),
        "codec_encode_content_per_s": round(naive / naive_s),
        "consumer_decode_per_s": round(decode_rate),
        "one_core_1to1_ceiling_per_s": round(1 / (1 / encode_rate + 1 / decode_rate)),
        "note": "a run near one_core_1to1_ceiling is limited by this client, not the broker",
    }


# -- spawning a broker -------------------------------------------------------------------------


@dataclass(slots=True)
class SpawnedBroker:
    """A Moorage subprocess started for one run."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def cpu_seconds(self) -> float | None:
        """User+system CPU of the broker so far (Linux /proc), or None."""
        try:
            fields_ = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields_[11]) + int(fields_[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the broker wrote (warnings and errors only: log level warning)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        kept = [line for line in text.splitlines() if "statistics: " not in line]
        return "\n".join(kept[-lines:])

    def statistics(self, timeout: float = 3.0) -> dict[str, int]:
        """Ask the broker for its counters (SIGUSR1) and read them from its log."""
        try:
            before = self.log_path.read_text(errors="replace").count("statistics: ")
        except OSError:
            return {}
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = [
                line
                for line in self.log_path.read_text(errors="replace").splitlines()
                if "statistics: " in line
            ]
            if len(lines) > before:
                pairs = lines[-1].split("statistics: ", 1)[1].split()
                return {k: int(v) for k, v in (p.split("=", 1) for p in pairs)}
            time.sleep(0.02)
        return {}


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def spawned_broker(store: str, protocol: str = "amqp") -> Iterator[SpawnedBroker]:
    """Start ``moorage serve`` with only ``protocol`` listening on a free loopback port.

    It gets a temp data dir (removed afterwards) and is stopped with SIGTERM after.
    """
    tmp = Path(tempfile.mkdtemp(prefix="moorage-bench-"))
    try:
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "moorage.broker.cli",
            "serve",
            "--bind",
            "127.0.0.1",
            "--data-dir",
            str(tmp / "data"),
            "--log-level",
            "warning",
        ]
        cmd += [
            f"--{name.replace('_', '-')}-port={port if name == protocol else 0}"
            for name in LISTENERS
        ]
        if store == "memory":
            config = tmp / "moorage.toml"
            config.write_text('[storage]\nbackend = "memory"\n')
            cmd += ["--config", str(config)]
        log_path = tmp / "broker.log"
        with log_path.open("wb") as log:
            # Fixed argv of our own interpreter, no shell: nothing user-controlled is run.
            process = subprocess.Popen(  # noqa: S603
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, stdin=subprocess.DEVNULL
            )
        broker = SpawnedBroker(port, process, log_path)
        try:
            _wait_listening(broker)
            yield broker
        finally:
            _stop(process)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_listening(broker: SpawnedBroker) -> None:
    deadline = time.monotonic() + SPAWN_READY_TIMEOUT
    while time.monotonic() < deadline:
        if broker.process.poll() is not None:
            raise BenchError(
                f"spawned broker exited with code {broker.process.returncode}:\n{broker.log_tail()}"
            )
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", broker.port), timeout=0.5),
        ):
            return
        time.sleep(0.05)
    raise BenchError(f"spawned broker not listening after {SPAWN_READY_TIMEOUT:g}s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# -- output ----------------------------------------------------------------------------------


def _ms(values: dict[str, float] | None, key: str) -> str:
    if not values or key not in values:
        return "-"
    return f"{values[key]:.2f}"


def format_table(result: Result) -> str:
    """The final human-readable table: one header, one row, then a details line."""
    lat, conf = result.latency_ms, result.confirm_latency_ms
    columns = [
        ("scenario", result.scenario),
        ("sent/s", f"{result.sent_per_s:,.0f}"),
        ("deliv/s", f"{result.delivered_per_s:,.0f}"),
        ("p50 ms", _ms(lat, "p50")),
        ("p99 ms", _ms(lat, "p99")),
        ("p99.9 ms", _ms(lat, "p99.9")),
    ]
    if conf is not None:
        columns += [("confirm p50", _ms(conf, "p50")), ("confirm p99", _ms(conf, "p99"))]
    widths = [max(len(h), len(v)) for h, v in columns]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )
        for cells in ([h for h, _ in columns], [v for _, v in columns])
    ]
    broker_cpu = f", broker CPU {result.broker_cpu_pct:.0f}%" if result.broker_cpu_pct else ""
    nacked = f"; {result.nacked:,} nacked" if result.nacked else ""
    lines.append(
        f"broker {result.broker}: {result.sent:,} sent, {result.delivered:,} delivered in "
        f"{result.elapsed_s:.2f}s; max latency {_ms(lat, 'max')} ms; "
        f"client CPU {result.client_cpu_pct:.0f}%{broker_cpu}{nacked}"
    )
    if not result.complete:
        lines.append("INCOMPLETE RUN")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def format_self_test(report: dict[str, Any]) -> str:
    """The self-test report as aligned lines."""
    return "\n".join(
        f"{k:<30} {v:>12,}" if isinstance(v, int) else f"{k:<30} {v}" for k, v in report.items()
    )


# -- main --------------------------------------------------------------------------------------


def _new_loop(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise
        else:
            return uvloop.new_event_loop  # type: ignore[no-any-return]
    return asyncio.new_event_loop


async def _run_raw(opts: Options) -> Result:
    return await RawRun(opts).execute()  # RawRun needs the running loop


def run(opts: Options, loop: str) -> Result:
    """One measurement with the chosen client against ``opts.host:opts.port``."""
    require_loopback(opts.host)
    if opts.client == "pika":
        return PikaRun(opts).execute()
    with asyncio.Runner(loop_factory=_new_loop(loop)) as runner:
        return runner.run(_run_raw(opts))


def _run_spawned(opts: Options, loop: str, store: str) -> Result:
    return run_spawned_with(opts, loop, store, "amqp", run)


def run_spawned_with(
    opts: Any, loop: str, store: str, protocol: str, run_fn: Callable[[Any, str], Result]
) -> Result:
    """``run_fn(opts, loop)`` against a Moorage spawned for it; adds its CPU and log."""
    with spawned_broker(store, protocol) as broker:
        opts.host, opts.port = "127.0.0.1", broker.port
        stats0 = broker.statistics()
        cpu0 = broker.cpu_seconds()
        wall0 = time.perf_counter()
        try:
            result = run_fn(opts, loop)
        except BenchError as e:
            tail = broker.log_tail()
            raise BenchError(
                f"{e}\nbroker log (warnings and errors):\n{tail}" if tail else e
            ) from e
        cpu1 = broker.cpu_seconds()
        wall = time.perf_counter() - wall0
        if cpu0 is not None and cpu1 is not None:
            result.broker_cpu_pct = round(100 * (cpu1 - cpu0) / wall, 1)
        stats1 = broker.statistics()
        if "store_fsyncs" in stats0 and "store_fsyncs" in stats1:
            fsyncs = stats1["store_fsyncs"] - stats0["store_fsyncs"]
            batches = stats1["store_batches"] - stats0["store_batches"]
            result.notes.append(
                f"store: {fsyncs / wall:,.0f} fsyncs/s, {batches / wall:,.0f} batches/s "
                f"({fsyncs} fsyncs over the run)"
            )
        if protocol != "amqp":  # only AMQP names its product in the handshake
            result.broker = "Moorage"
        result.broker += f" (spawned, {store} store)"
        if broker.process.poll() is not None:
            result.complete = False
            result.notes.append(f"broker exited with code {broker.process.returncode} during run")
        tail = broker.log_tail()
        if tail:
            result.notes.append("broker log (warnings and errors):\n" + tail)
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit status 0 when the run completed, 1 otherwise, 2 for bad flags."""
    args = build_parser().parse_args(argv)
    try:
        opts = options_from(args)
        if args.self_test:
            report = self_test(opts.count or 100_000, opts)
            print(json.dumps(report) if opts.json else format_self_test(report))
            return 0
        if args.spawn:
            result = _run_spawned(opts, args.loop, args.spawn_store)
        else:
            result = run(opts, args.loop)
    except BenchError as e:
        print(f"amqp_bench: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(asdict(result)) if opts.json else format_table(result))
    return 0 if result.complete else 1


if __name__ == "__main__":
    sys.exit(main())
