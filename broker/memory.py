"""The memory alarm: block publishers while queued messages hold too much RAM.

RabbitMQ's `vm_memory_high_watermark` in Moorage's terms. Persistent
messages in durable queues page to disk (`limits.queue_memory_limit`), but
transient ones, and every message of a non-durable queue, stay in RAM: a
publisher that outruns its consumers would grow the daemon without bound.

Every `INTERVAL` seconds the monitor adds up what queued messages hold:
their bodies plus `ENTRY_OVERHEAD` bytes for the objects around each one
(measured: ~680 bytes per queued AMQP message). Past the watermark the alarm
is set: connections that publish stop being read (see `protocols.reading`)
and AMQP clients that asked for it get `connection.blocked`. Connections
that only consume go on, so consumers drain the queues; once the total is
below the watermark again, the alarm clears and every paused reader resumes.
Unacked deliveries count too (sessions keep `unacked_bytes` up to date as
they deliver and settle): a consumer without a prefetch limit takes every
message of its queue at once, and RabbitMQ, which counts all of its memory,
would block publishers then as well.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from moorage.broker import logs
from moorage.broker.clock import SYSTEM_CLOCK, Clock
from moorage.broker.flow import WriteFlow
from moorage.broker.periodic import Periodic

log = logging.getLogger("moorage.memory")

INTERVAL = 0.1  # seconds between two measurements
ENTRY_OVERHEAD = 700  # bytes a queued message costs beyond its body


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


class MemoryMonitor:
    """Measures queued memory periodically and sets or clears the broker's memory alarm.

    `measure` returns the bytes that queued messages hold (`Broker.queued_memory`:
    every queue's `memory_bytes(ENTRY_OVERHEAD)` plus `unacked_bytes`); the
    alarm is `flow`'s.
    """

    def __init__(
        self,
        watermark: int,
        flow: WriteFlow,
        measure: Callable[[], int],
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.watermark = watermark
        self.flow = flow
        self.measure = measure
        self.used = 0
        self.unacked_bytes = 0
        """Bodies + `ENTRY_OVERHEAD` of every delivery awaiting an ack (kept by sessions)."""
        self.periodic = Periodic(INTERVAL, self._tick, clock)

    def start(self) -> None:
        """Start measuring, unless the watermark is 0 (off)."""
        if self.watermark:
            self.periodic.start()

    async def stop(self) -> None:
        await self.periodic.stop()

    async def _tick(self) -> None:
        self.check()

    def check(self) -> None:
        """Measure now and set or clear the alarm."""
        self.used = used = self.measure()
        flow = self.flow
        if used > self.watermark and not flow.memory_alarm:
            logs.event(
                "alarm.raised",
                f"memory alarm set: queued messages hold {used >> 20} MiB, over the high "
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
                f"memory alarm cleared: queued messages hold {used >> 20} MiB",
                level=logging.WARNING,
                alarm="memory",
                used=used,
                watermark=self.watermark,
            )
            flow.set_memory_alarm(False)
