"""The memory alarm: block publishers while the broker process holds too much RAM.

RabbitMQ's `vm_memory_high_watermark` in Moorage's terms. Persistent
messages in durable queues page to disk (`limits.queue_memory_limit`), but
transient ones, and every message of a non-durable queue, stay in RAM; and
beyond the queues a flood leaves memory in socket buffers, store batches,
decoded frames and the allocator. A publisher that outruns its consumers
would grow the daemon without bound.

What is measured (`limits.memory_calculation_strategy`):

- `"rss"` (the default, RabbitMQ's `vm_memory_calculation_strategy = rss`):
  the resident set of the whole process, read from `/proc/self/statm` (one
  small read, ~10 µs). This is what the operating system and its OOM killer
  see, so every hidden holder is counted. Where /proc does not exist the
  monitor falls back to the estimate below.
- `"queued"`: what queued messages hold: their bodies plus `ENTRY_OVERHEAD`
  bytes for the objects around each one (measured: ~680 bytes per queued
  AMQP message), plus unacked deliveries (sessions keep `unacked_bytes` up to
  date as they deliver and settle). For a broker embedded in another
  program, whose RSS is not the broker's alone.

Every `INTERVAL` seconds (on the broker's clock) the monitor measures. Past
the watermark the alarm is set: connections that publish stop being read
(see `protocols.reading`) and AMQP clients that asked for it get
`connection.blocked`. Connections that only consume go on, so consumers drain
the queues; once the measure is below the watermark again, the alarm clears
and every paused reader resumes.

Giving memory back. CPython frees the objects of a drained queue, but glibc's
allocator keeps freed heap memory mapped, and SQLite keeps its page cache
(16 MiB): measured with 64 KiB messages, an offline MQTT session flooded past
an 80-96 MiB watermark and then drained stayed at 69-76 MiB against 49 MiB
before the flood (1.7 GB against 512 MiB in the report that asked for this
module). Every `TRIM_EVERY` seconds the monitor asks the allocator how much
free memory it holds (`broker.allocator`); when that grew by `TRIM_STEP`
since its low point, or while the alarm is set, it calls `malloc_trim(0)`.
After a drain (the queued estimate fell by `RELEASE_STEP` from its peak,
is under `TRIM_STEP` and stopped moving) the store's page cache is released
too (`PRAGMA shrink_memory` where the store has `release_memory`), then
trimmed; traffic that never queues `RELEASE_STEP` keeps the cache.

That first release often comes before a flood is over: once the backlog is
drained the alarm clears, the held publishers send the rest of their flood,
and it flows straight through to the consumer, refilling the page cache and
touching again heap pages the trim had returned (+15-25 MiB at 512 MiB),
while the queued estimate stays under `RELEASE_STEP` (an MQTT client acking
each PUBLISH keeps 0-18 deliveries of 64 KiB in flight). Nothing released
that memory again: at the issue's 512 MiB (16,384 x 64 KiB) each protocol
ended either at 0.84-0.86x of its starting RSS or, when no later release
came, at 1.08-1.20x, MQTT most often (up to 1.25x reported), the test's
20 % failed now and then for MQTT and STOMP. So the caches are also
released, on the same quiet queues, when the RSS grew by `TRIM_STEP` above
its lowest since the last release, `RELEASE_EVERY` after that release at
the earliest (without a store cache, the allocator is trimmed). The same
floods now settle at 0.82-0.86x for all three protocols
(`tests/limits/test_memory_flood.py` at full size prints it).

What stays is CPython's small-object allocator: a pymalloc arena (1 MiB) is
returned only when every object in it is gone, and the few objects made
during a flood that outlive it (connections, timers, statements) keep ~5 of
them (`sys._debugmallocstats()`: 20 arenas before a 512 MiB MQTT flood, 25
after, 4.9 MB of their pools unused). It is less than the ~17 MB of free
heap top that glibc holds at start-up before the first trim, which is why
a drained broker ends below where it started.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Collection, Iterable
from operator import attrgetter
from typing import Any

from moorage.broker import allocator, logs
from moorage.broker.clock import SYSTEM_CLOCK, Clock
from moorage.broker.flow import WriteFlow
from moorage.broker.periodic import Periodic

log = logging.getLogger("moorage.memory")

INTERVAL = 0.1  # seconds between two measurements
ENTRY_OVERHEAD = 700  # bytes a queued message costs beyond its body
TRIM_STEP = 8 * 1024 * 1024  # freed bytes that call for a trim
RELEASE_STEP = 1024 * 1024  # queued bytes drained that call for releasing the store's caches
RELEASE_EVERY = 10.0  # seconds between a release and one for regrown RSS, at least
TRIM_EVERY = 1.0  # seconds between two looks at the allocator (and trims) at least
STRATEGIES = ("rss", "queued")

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def physical_memory() -> int:
    """Bytes of RAM of this machine (0 when the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def watermark_bytes(setting: float, total: int | None = None) -> int:
    """`limits.memory_high_watermark` in bytes: a fraction of RAM (≤ 1), bytes (> 1), 0 off."""
    if setting <= 0:
        return 0
    if setting <= 1:
        return int(setting * (physical_memory() if total is None else total))
    return int(setting)


_READY, _READY_BYTES = attrgetter("ready"), attrgetter("ready_bytes")
_TAIL_BYTES, _TAIL_ENTRIES = attrgetter("tail_bytes"), attrgetter("tail_entries")


def queued_bytes(queues_by_vhost: Iterable[Collection[Any]]) -> int:
    """`Queue.memory_bytes(ENTRY_OVERHEAD)` of every queue, summed column by column in
    C: the monitor asks ten times a second, whatever the number of queues."""
    total = 0
    for queues in queues_by_vhost:
        entries = sum(map(len, map(_READY, queues))) + sum(map(_TAIL_ENTRIES, queues))
        total += sum(map(_READY_BYTES, queues)) + sum(map(_TAIL_BYTES, queues))
        total += entries * ENTRY_OVERHEAD
    return total


def process_rss() -> int | None:
    """Resident bytes of this process (None where /proc/self/statm does not exist)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


class MemoryMonitor:
    """Measures memory periodically and sets or clears the broker's memory alarm.

    `measure` returns the bytes that queued messages hold (`Broker.queued_memory`:
    every queue's `memory_bytes(ENTRY_OVERHEAD)` plus `unacked_bytes`); with the
    `"rss"` strategy the alarm follows the process's RSS instead, and the
    estimate only decides when to trim. The alarm is `flow`'s.
    """

    def __init__(
        self,
        watermark: int,
        flow: WriteFlow,
        measure: Callable[[], int],
        clock: Clock = SYSTEM_CLOCK,
        strategy: str = "rss",
        release_caches: Callable[[], Awaitable[None]] | None = None,
        read_rss: Callable[[], int | None] = process_rss,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"memory strategy must be one of {STRATEGIES}, not {strategy!r}")
        self.watermark = watermark
        self.flow = flow
        self.measure = measure
        self.clock = clock
        self.strategy = strategy
        self.release_caches = release_caches
        """Frees the store's own caches (`SQLiteStore.release_memory`), where it has one."""
        self.read_rss = read_rss
        """The process's RSS in bytes, or None (`process_rss`; a test passes its own)."""
        self._releasing: asyncio.Task[None] | None = None
        self.used = 0
        """The last measure the alarm was decided on (bytes)."""
        self.queued = 0
        """The last queued-message estimate (bytes)."""
        self.rss: int | None = None
        """The process's RSS at the last check, before any trim it made (None where unknown)."""
        self.unacked_bytes = 0
        """Bodies + `ENTRY_OVERHEAD` of every delivery awaiting an ack (kept by sessions)."""
        self.trims = 0
        self._freed = 0  # drops of the queued estimate since the last trim (no glibc)
        self._queued_peak = 0  # the queued estimate's highest since the caches were released
        self._free_low: int | None = None  # the allocator's free bytes, lowest since a trim
        self._rss_low: int | None = None  # the RSS, lowest since the caches were released
        self._last_release = float("-inf")
        self._last_look = float("-inf")
        self.periodic = Periodic(INTERVAL, self._tick, clock)

    def start(self) -> None:
        """Start measuring, unless the watermark is 0 (off)."""
        if self.watermark:
            self.periodic.start()

    async def stop(self) -> None:
        await self.periodic.stop()
        if self._releasing is not None:
            await self._releasing

    async def _tick(self) -> None:
        self.check()

    def check(self) -> None:
        """Measure now, give freed memory back if much was freed, set or clear the alarm."""
        queued = self.measure()
        drop = self.queued - queued
        self.queued = queued
        if drop > 0:
            self._freed += drop
        self._queued_peak = max(self._queued_peak, queued)
        self.rss = rss = self.read_rss()
        now = self.clock.monotonic()
        if now - self._last_look >= TRIM_EVERY:
            self._last_look = now
            self._maybe_trim(drop, now)
        flow = self.flow
        used = rss if self.strategy == "rss" and rss is not None else queued
        self.used = used
        if used > self.watermark and not flow.memory_alarm:
            held = "the broker holds" if used is rss else "queued messages hold"
            logs.event(
                "alarm.raised",
                f"memory alarm set: {held} {used >> 20} MiB, over the high "
                f"watermark of {self.watermark >> 20} MiB; publishers are blocked until "
                "consumers drain the queues",
                level=logging.WARNING,
                alarm="memory",
                used=used,
                watermark=self.watermark,
            )
            flow.set_memory_alarm(True)
        elif used <= self.watermark and flow.memory_alarm:
            logs.event(
                "alarm.cleared",
                f"memory alarm cleared: {used >> 20} MiB in use",
                level=logging.WARNING,
                alarm="memory",
                used=used,
                watermark=self.watermark,
            )
            flow.set_memory_alarm(False)

    def _maybe_trim(self, drop: int, now: float) -> None:
        """Trim when the allocator holds `TRIM_STEP` more free bytes than at its low point.

        Where glibc cannot say (`allocator.free_heap_bytes` is None), when
        the queued estimate fell by that much instead. Once the queues are
        quiet (the estimate is under `TRIM_STEP` and did not move since the
        last check), the store's caches go too, then what that freed, after
        a drain (the estimate fell by `RELEASE_STEP` since the last release)
        or when the RSS grew by `TRIM_STEP` since its low point after the last
        release (`RELEASE_EVERY` seconds after it at least).
        """
        free = allocator.free_heap_bytes()
        if free is None:
            wanted = self._freed >= TRIM_STEP
        else:
            low = free if self._free_low is None else min(self._free_low, free)
            self._free_low = low
            wanted = free - low >= TRIM_STEP
        rss = self.rss
        if rss is not None:
            self._rss_low = rss if self._rss_low is None else min(self._rss_low, rss)
        quiet = drop == 0 and self.queued < TRIM_STEP
        drained = quiet and self._queued_peak - self.queued >= RELEASE_STEP
        # Traffic that flows through without queueing (a consumer keeping up)
        # after a release regrows what it released: the store's page cache,
        # heap pages that the trim returned and new messages touched again.
        regrown = (
            quiet
            and rss is not None
            and self._rss_low is not None
            and rss - self._rss_low >= TRIM_STEP
            and now - self._last_release >= RELEASE_EVERY
        )
        if wanted or self.flow.memory_alarm:
            self._trim()
            self._free_low = free
            if free is None:
                self._freed = 0
        if (drained or regrown) and self._releasing is None:
            self._queued_peak = self.queued
            self._last_release = now
            self._rss_low = None  # the next look's RSS, after the release
            if self.release_caches is not None:
                self._releasing = asyncio.get_running_loop().create_task(self._release())
            else:
                self._trim()

    def _trim(self) -> None:
        if allocator.trim():
            self.trims += 1

    async def _release(self) -> None:
        """The store's caches, then what freeing them left in the allocator."""
        assert self.release_caches is not None
        try:
            await self.release_caches()
        except Exception:  # the store closing or failing: its own errors say why
            log.debug("store caches not released", exc_info=True)
        else:
            self._trim()
        finally:
            self._releasing = None
