"""The disk alarm: block publishers before the data directory's file system fills.

RabbitMQ's `disk_free_limit` in Moorage's terms (`storage.disk_free_limit`,
bytes, 50 MB by default as in RabbitMQ; or `storage.disk_free_limit_relative`,
a multiple of the machine's RAM like RabbitMQ's `disk_free_limit.relative`).
A full disk turns confirms into nacks (the store's write fails); this alarm
acts before that: every `INTERVAL` seconds, on the broker's clock, the
monitor reads the space available to the broker (`os.statvfs` of the data
directory: `f_bavail`, what an unprivileged writer may use). Under the limit
the alarm is set on the broker's `WriteFlow`: connections that publish are
no longer read (MQTT and STOMP publishers simply wait) and AMQP clients that
asked for it get `connection.blocked` "low on disk". Consumers carry on, so
acks free space.

Hysteresis: the alarm clears only once the free space is back above the
limit plus `HYSTERESIS` of it (10 %, at least 1 MiB, at most 32 MiB), so a broker that hovers
at the limit does not block and unblock its publishers at every check
(RabbitMQ has no hysteresis here; the issue asked for it).

A store with no folder (the memory store) has nothing to watch: no monitor.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from moorage.broker import logs
from moorage.broker.clock import SYSTEM_CLOCK, Clock
from moorage.broker.flow import WriteFlow
from moorage.broker.memory import physical_memory
from moorage.broker.periodic import Periodic

log = logging.getLogger("moorage.disk")

INTERVAL = 1.0  # seconds between two measurements (RabbitMQ: 10 s, faster near the limit)
HYSTERESIS = 0.1  # of the limit: how far above it free space must be for the alarm to clear
MIN_HYSTERESIS = 1024 * 1024  # ... at least
MAX_HYSTERESIS = 32 * 1024 * 1024  # ... at most (a relative limit can be many GB)
DEFAULT_LIMIT = 50_000_000  # RabbitMQ's default: "50MB"


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on `path`'s file system."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def limit_bytes(absolute: int, relative: float, total_memory: int | None = None) -> int:
    """The disk free limit: `relative` x RAM when set (> 0), else `absolute` bytes."""
    if relative > 0:
        return int(relative * (physical_memory() if total_memory is None else total_memory))
    return max(0, absolute)


class DiskMonitor:
    """Measures the free space of one folder periodically; sets or clears the disk alarm."""

    def __init__(
        self,
        path: Path,
        limit: int,
        flow: WriteFlow,
        clock: Clock = SYSTEM_CLOCK,
        measure: Callable[[Path], int] = free_bytes,
    ) -> None:
        self.path = path
        self.limit = limit
        self.flow = flow
        self.measure = measure
        self.free: int | None = None
        """Free bytes at the last check (None before the first, or when it failed)."""
        self.periodic = Periodic(INTERVAL, self._tick, clock)

    @property
    def clear_at(self) -> int:
        """Free bytes above which a set alarm clears."""
        margin = min(max(int(self.limit * HYSTERESIS), MIN_HYSTERESIS), MAX_HYSTERESIS)
        return self.limit + margin

    def start(self) -> None:
        """Check now, then every INTERVAL seconds; a limit of 0 turns the alarm off."""
        if self.limit > 0:
            self.check()
            self.periodic.start()

    async def stop(self) -> None:
        await self.periodic.stop()

    async def _tick(self) -> None:
        self.check()

    def check(self) -> None:
        """Measure now and set or clear the alarm."""
        try:
            self.free = free = self.measure(self.path)
        except OSError as e:  # the folder went away: say so, keep the alarm as it is
            if self.free is not None:
                log.error("cannot measure free disk space of %s: %s", self.path, e)
            self.free = None
            return
        flow = self.flow
        if free < self.limit and not flow.disk_alarm:
            logs.event(
                "alarm.raised",
                f"disk alarm set: {free // 1_000_000} MB free on {self.path}, under the limit "
                f"of {self.limit // 1_000_000} MB; publishers are blocked until space is freed",
                level=logging.WARNING,
                alarm="disk",
                free=free,
                limit=self.limit,
            )
            flow.set_alarm("disk", True)
        elif free >= self.clear_at and flow.disk_alarm:
            logs.event(
                "alarm.cleared",
                f"disk alarm cleared: {free // 1_000_000} MB free on {self.path}",
                level=logging.WARNING,
                alarm="disk",
                free=free,
                limit=self.limit,
            )
            flow.set_alarm("disk", False)
