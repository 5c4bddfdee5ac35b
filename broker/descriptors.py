"""File descriptors: the daemon's open-files limit, and refusing clients before it is reached.

At start the daemon raises its soft `RLIMIT_NOFILE` to the hard limit
(`raise_open_files_limit`, both logged): the soft default (1024 on most
systems) is far below what a broker with thousands of clients needs, and
the hard limit is what the administrator allows.

At the limit, `accept()` fails with EMFILE; asyncio and uvloop then stop
accepting for a while and every new client stalls in the listen backlog,
the operators' own monitoring included (RabbitMQ behaves so). Moorage
refuses at once instead: a client protocol's shell asks `exhausted(fd)` for
each accepted socket and closes it when fewer than `reserve` descriptors
would be left (`limits.file_descriptor_reserve`, 32 by default). The
reserve keeps room for what must go on working: the store's files (the
SQLite database, its WAL and shared memory, a backup), the management API
and metrics (whose HTTP listener is not refused), log files.

The check is O(1): POSIX hands out the lowest free descriptor, so a socket
numbered `fd` means descriptors 0..fd-1 are all open. (With holes in that
range it lets a few more in, never fewer.)
"""

from __future__ import annotations

import logging
import time

try:
    import resource
except ImportError:  # not POSIX: no limits to raise or read
    resource = None  # type: ignore[assignment]

log = logging.getLogger("moorage.descriptors")

REFUSAL_LOG_INTERVAL = 10.0  # seconds between two warnings about refused clients


def open_files_limit() -> int | None:
    """The soft limit on open descriptors (None where unknown or unlimited)."""
    if resource is None:
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def raise_open_files_limit() -> tuple[int, int, int] | None:
    """Raise the soft open-files limit to the hard one; return the soft limits before
    and after, and the hard limit, for `log_open_files_limit`.

    None where the platform has no such limit. A refusal by the system is
    logged and leaves the limit as it was.
    """
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if soft != target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, e)
            target = soft
    return soft, target, hard


def log_open_files_limit(limits: tuple[int, int, int] | None) -> None:
    """Log what `raise_open_files_limit` did (once the broker has started, so that a
    broker that cannot start says only why)."""
    if limits is not None:
        soft, target, hard = limits
        log.info(
            "open-files limit: %s (soft limit was %s, hard limit %s)",
            _text(target),
            _text(soft),
            _text(hard),
        )


def _text(limit: int) -> str:
    return "unlimited" if resource is not None and limit == resource.RLIM_INFINITY else str(limit)


class DescriptorGuard:
    """Decides whether an accepted client socket may stay open; logs refusals sparingly."""

    def __init__(self, reserve: int) -> None:
        self.reserve = reserve
        self.refused = 0
        self._last_warning = float("-inf")

    def exhausted(self, fd: int) -> bool:
        """Would keeping descriptor `fd` open eat into the reserve? (Counts a refusal.)"""
        if self.reserve <= 0 or fd < 0:
            return False
        limit = open_files_limit()
        if limit is None or fd < limit - self.reserve:
            return False
        self.refused += 1
        now = time.monotonic()  # log pacing only, not broker logic
        if now - self._last_warning >= REFUSAL_LOG_INTERVAL:
            self._last_warning = now
            log.warning(
                "open-files limit %d nearly reached (descriptor %d, %d kept in reserve): "
                "refusing new client connections (%d so far)",
                limit,
                fd,
                self.reserve,
                self.refused,
            )
        return True
