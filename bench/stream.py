"""What the MQTT and STOMP benchmarks share: a raw asyncio connection and the run loop.

The AMQP benchmark (:mod:`bench.amqp_bench`) came first and has its own client; the
MQTT (:mod:`bench.mqtt_bench`) and STOMP (:mod:`bench.stomp_bench`) clients are built
the same way and reuse its measurement pieces (:class:`~bench.results.Stats`,
:class:`~bench.results.Progress`, :func:`~bench.results.make_result`):

* :class:`StreamConnection` is an ``asyncio.Protocol`` that feeds received bytes to a
  protocol codec, hands every event to :meth:`StreamConnection.on_event`, and writes
  everything queued while handling one read in a single ``transport.write``.
* :class:`StreamRun` opens consumers first, then producers, runs them until every
  expected message arrived, nothing moved for ``idle_timeout`` seconds, or the hard
  ``timeout`` passed, and turns the counters into a :class:`~bench.results.Result`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from moorage.bench.errors import BenchError, ServerClosed
from moorage.bench.results import Progress, Result, Stats, make_result

CONNECT_TIMEOUT: Final = 10.0
CLOSE_TIMEOUT: Final = 3.0
MIN_SLEEP: Final = 0.001


class StreamConnection(asyncio.Protocol):
    """A connection whose bytes go through a sans-IO codec (subclasses pick it)."""

    def __init__(self, label: str, on_failure: Callable[[BaseException], None]) -> None:
        self.label = label
        self.transport: asyncio.Transport | None = None
        self.error: BaseException | None = None
        self._on_failure = on_failure
        self._out: list[bytes] = []
        self._paused = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._closing = False
        self._lost = asyncio.get_running_loop().create_future()

    # -- subclass hooks ----------------------------------------------------------------------

    def feed(self, data: bytes, now: int) -> None:
        """Give ``data`` to the codec and handle every complete event."""
        raise NotImplementedError

    # -- writing -----------------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        """False while the transport's buffer is above its high-water mark."""
        return not self._paused

    async def wait_writable(self) -> None:
        """Sleep until writes may continue (or the connection failed)."""
        await self._writable.wait()

    def write(self, data: bytes | bytearray) -> None:
        """Write bytes straight to the socket."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def queue(self, data: bytes) -> None:
        """Queue bytes; :meth:`flush` (or the end of a read) writes them in one go."""
        self._out.append(data)

    def flush(self) -> None:
        """Write everything queued in one ``transport.write``."""
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self.write(data)

    async def close_transport(self) -> None:
        """Drop the socket and wait briefly for ``connection_lost``; never raises."""
        self._closing = True
        self.flush()
        if self.transport is not None:
            self.transport.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.shield(self._lost)

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.feed(data, time.perf_counter_ns())
        except BenchError as e:
            self.fail(e)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closing:
            why = f"{exc}" if exc else "closed by the broker"
            self.fail(ServerClosed(f"{self.label}: connection lost ({why})"))
        self.transport = None
        if not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True
        self._writable.clear()

    def resume_writing(self) -> None:
        self._paused = False
        self._writable.set()

    def fail(self, error: BaseException) -> None:
        """Record the first error, wake a waiting producer and tell the run."""
        if self.error is None:
            self.error = error
            self._writable.set()
            self._on_failure(error)


async def open_connection(
    factory: Callable[[], StreamConnection], host: str, port: int, label: str
) -> Any:
    """TCP connect within :data:`CONNECT_TIMEOUT`; BenchError when it fails."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            _, conn = await loop.create_connection(factory, host, port)
    except OSError as e:
        raise BenchError(f"{label}: cannot connect to {host}:{port}: {e}") from e
    except TimeoutError as e:
        raise BenchError(f"{label}: no connection within {CONNECT_TIMEOUT:g}s") from e
    return conn


class Role(Protocol):
    """A producer or a consumer of a :class:`StreamRun`."""

    async def close(self) -> None: ...


class ProducerRole(Role, Protocol):
    async def run(self, deadline_ns: int | None) -> None: ...

    def outstanding(self) -> int: ...


class StreamOptions(Protocol):
    """The options every stream benchmark has (see ``bench.mqtt_bench.Options``)."""

    count: int | None
    duration: float | None
    timeout: float
    idle_timeout: float
    progress: bool
    confirm: int

    def scenario(self) -> str: ...

    def expected_deliveries(self) -> int | None: ...


class StreamRun:
    """One measurement: consumers, then producers, then wait for the deliveries."""

    def __init__(self, opts: StreamOptions) -> None:
        self.opts = opts
        self.stats = Stats()
        self.error: BaseException | None = None
        self.producers: list[ProducerRole] = []
        self.consumers: list[Role] = []
        self.broker = "unknown broker"
        self.notes: list[str] = []
        self._wake = asyncio.Event()

    def fail(self, error: BaseException) -> None:
        """Called by any connection that fails: the run stops and reports it."""
        if self.error is None:
            self.error = error
        self._wake.set()

    def progressed(self) -> None:
        """Called on deliveries: wakes the run loop when it may be finished."""
        if self.stats.delivered >= self.stats.expected:
            self._wake.set()

    async def setup(self) -> None:
        """Open the consumers and producers (subclasses)."""
        raise NotImplementedError

    async def execute(self) -> Result:
        """Set up, measure, tear down; returns what was measured (complete or not)."""
        cpu0, wall0 = time.process_time(), time.perf_counter()
        complete = False
        try:
            await self.setup()
            complete = await self._measure()
        finally:
            for role in [*self.producers, *self.consumers]:
                with contextlib.suppress(BenchError, OSError):
                    await role.close()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        result = make_result(self.opts, self.stats, self.broker, complete, cpu, wall)  # type: ignore[arg-type]
        if self.error is not None:
            result.complete = False
            self.notes.append(f"error: {self.error}")
        result.notes += self.notes
        return result

    async def _measure(self) -> bool:
        opts, stats = self.opts, self.stats
        expected = opts.expected_deliveries()
        if expected is not None:
            stats.expected = expected
        progress = Progress(stats, bool(opts.confirm), opts.progress)
        stats.start_ns = time.perf_counter_ns()
        deadline_ns = (
            stats.start_ns + int(opts.duration * 1e9) if opts.duration is not None else None
        )
        tasks = [asyncio.ensure_future(p.run(deadline_ns)) for p in self.producers]
        hard_stop = time.monotonic() + opts.timeout
        last_change = time.monotonic()
        last_seen = (-1, -1, -1)
        try:
            while self.error is None:
                if all(t.done() for t in tasks):
                    for t in tasks:
                        if t.exception() is not None:
                            raise t.exception()  # type: ignore[misc]
                    if opts.duration is not None and stats.expected == float("inf"):
                        stats.expected = self.expected_after_duration()
                    if stats.delivered >= stats.expected and not self._outstanding():
                        progress.tick(final=True)
                        return True
                now = time.monotonic()
                seen = (stats.sent, stats.delivered, stats.confirmed)
                if seen != last_seen:
                    last_seen, last_change = seen, now
                elif now - last_change > opts.idle_timeout:
                    self.notes.append(
                        f"nothing moved for {opts.idle_timeout:g}s: "
                        f"{stats.sent - stats.delivered:,} messages not delivered"
                    )
                    break
                if now > hard_stop:
                    self.notes.append(f"hard timeout of {opts.timeout:g}s reached")
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0 - (now - progress._t) % 1.0):
                        await self._wake.wait()
                if time.perf_counter() - progress._t >= 1.0:
                    progress.tick()
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, BaseException):
                    await t
        progress.tick(final=True)
        return False

    def _outstanding(self) -> int:
        return sum(p.outstanding() for p in self.producers)

    def expected_after_duration(self) -> int:
        """Deliveries that complete a ``--duration`` run, once publishing stopped."""
        return self.stats.sent


def split(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal shares."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]
