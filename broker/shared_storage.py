"""Shared-storage failover: two brokers on one data directory, one lock, one lease.

Theory of operation
-------------------
This is ActiveMQ's shared-file-system master/slave (and Amazon MQ's
active/standby on one volume). Every broker started with
`storage.mode = "shared"` on the same data directory does this:

1. **Wait.** It opens ``moorage.lock`` in the directory and tries
   `flock(LOCK_EX | LOCK_NB)` every `poll` seconds. While it waits it opens
   neither the store nor a single client listener (a client's connection is
   refused, so its failover list moves on at once), and it watches the
   lease record (below).
2. **Take over.** On a local file system the kernel frees a `flock` only
   when its holder's process ends, so holding the lock is proof enough
   (`trust_lock`, set by `check_file_system`). Elsewhere a lock can be lost
   by a process that still runs, and the waiter takes over when it holds
   the lock **and** the lease record says the previous holder is gone: the
   record is missing, was released by a clean shutdown, names a process on
   this host that no longer exists, or has not changed for a whole lease
   duration *as measured by the waiter's own monotonic clock* (no clock
   synchronisation between machines is assumed). It then writes a new
   record with the epoch raised by one, and only then opens the store,
   recovers and opens its listeners.
3. **Hold.** The holder rewrites the record (owner, epoch, a renewal count,
   its wall-clock time for operators) every `lease / 4` seconds. A renewal
   counts from the moment it *started*: the holder's lease runs until
   `start + lease` of its last completed renewal, which is never later than
   the moment a waiter could call the record expired. Before every store
   transaction the writer thread calls `SharedStorage.check` (the store's
   ``guard``, run inside the transaction): past that deadline, or once a
   renewal found another owner in the record, the transaction is refused,
   so no confirm, PUBACK or RECEIPT is sent for it. The event loop notices
   the same at its next renewal and stops serving: listeners close, clients
   are told to go, and the process exits non-zero so that systemd restarts
   it (as a waiter).

Why the guard lives on the writer thread: a process stopped (SIGSTOP, a VM
pause, a stalled disk) and continued later runs whatever its loop finds
ready first, client input included, before any renewal timer. The check on
the writer thread reads the monotonic clock at the moment of writing, so a
holder that slept through its lease refuses its first write after waking,
whatever ran first. (A transaction that passed the check just before the
pause commits when the process resumes; the other node cannot have opened the
file meanwhile -- see below -- so what it confirms is on disk for the next
holder to recover.)

What the lock guarantees on one machine: the kernel releases a `flock` and
SQLite's own exclusive lock (`locking_mode=EXCLUSIVE`, `storage.sqlite.schema`)
only when the holding process ends. A holder that is alive but stuck keeps
both, so the waiter cannot take over while it is stuck -- SQLite itself
would refuse to open the file. That is the safe side: the watchdog
(`WatchdogSec` in the systemd unit) kills a stuck process, and a stuck
process that wakes up finds its lease expired and exits; either way the
waiter takes over within one `poll` of the holder's end.

Time is an input: `SharedStorage` takes the broker's `Clock`, and the
decisions (`Lease.valid`, `LeaseObserver.expired`, `may_take_over`) are pure
functions of its readings and of the record, tested with `ManualClock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from moorage.broker.clock import SYSTEM_CLOCK, Clock
from moorage.broker.mounts import FileSystemKind, check_shared_storage

log = logging.getLogger("moorage.shared_storage")

LOCK_FILE = "moorage.lock"
LEASE_FILE = "moorage.lease"
RENEWALS_PER_LEASE = 4
"""The holder renews this many times per lease: three renewals may fail before it expires."""


_T = TypeVar("_T")


class Blocking(Protocol):
    """How a blocking call runs off the event loop: `asyncio.to_thread`'s shape."""

    def __call__(self, func: Callable[..., _T], /, *args: Any) -> Awaitable[_T]: ...


class LeaseLost(Exception):
    """This broker no longer holds the shared-storage lease and must not touch the store."""


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """The lease as written in ``moorage.lease`` (JSON), one line.

    `renewals` changes at each renewal, so a record that stays byte-for-byte
    the same is one nobody renews. `renewed_at` is the holder's wall clock,
    for operators only: no decision reads another machine's clock.
    """

    owner: str  # unique per process run
    host: str
    pid: int
    epoch: int  # raised by one at every takeover
    renewals: int
    duration: float  # the lease, seconds
    renewed_at: float
    released: bool = False  # written by a clean shutdown: take over at once

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> LeaseRecord | None:
        """The record in `data`, or None when it is not one (then only its age can tell)."""
        try:
            fields = json.loads(data)
            return cls(
                owner=str(fields["owner"]),
                host=str(fields["host"]),
                pid=int(fields["pid"]),
                epoch=int(fields["epoch"]),
                renewals=int(fields["renewals"]),
                duration=float(fields["duration"]),
                renewed_at=float(fields["renewed_at"]),
                released=bool(fields.get("released", False)),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


class LeaseObserver:
    """A waiter's view of the record: how long (on its own clock) it has stayed unchanged."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self._content: bytes | None = None
        self._since = 0.0
        self._seen = False

    def observe(self, content: bytes | None, now: float) -> None:
        """Note the record's bytes as read at monotonic time `now`."""
        if not self._seen or content != self._content:
            self._content, self._since, self._seen = content, now, True

    def expired(self, now: float) -> bool:
        """Has the record stayed the same for a whole lease (the longer of ours and its own)?"""
        if not self._seen:
            return False
        record = LeaseRecord.decode(self._content) if self._content else None
        duration = max(self.duration, record.duration if record else 0.0)
        return now - self._since >= duration


def process_alive(pid: int) -> bool:
    """Does process `pid` exist on this machine (a zombie counts as ended)?"""
    if pid <= 0 or pid == os.getpid():
        return False  # our own pid in a record is a previous run's
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rpartition(")")[2].split()[0] == "Z":
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def may_take_over(
    content: bytes | None,
    observer: LeaseObserver,
    now: float,
    host: str,
    alive: bool | None,
    trust_lock: bool = False,
) -> str | None:
    """Why a waiter that holds the lock may take over now, or None to keep waiting.

    Args:
        content: the lease file's bytes (None: no file).
        observer: the waiter's observation of the record so far (already fed `content`).
        now: the waiter's monotonic time.
        host: this machine's name.
        alive: whether the record's process exists (None: not asked, other host).
        trust_lock: the lock is one the kernel frees only when its holder ends
            (a local file system), so holding it proves the holder gone.
    """
    if content is None:
        return "no lease record"
    record = LeaseRecord.decode(content)
    if record is not None and record.released:
        return f"lease released by {record.owner}"
    if trust_lock:
        return "the lock is free on a local file system: its holder has ended"
    if record is not None and record.host == host and alive is False:
        return f"holder pid {record.pid} has ended"
    if observer.expired(now):
        return "lease expired"
    return None


class Lease:
    """The holder's side: until when its lease runs (monotonic), and whether it was lost."""

    def __init__(self, record: LeaseRecord, duration: float) -> None:
        self.record = record
        self.duration = duration
        self.deadline = float("-inf")
        self.lost_reason = ""

    def renewed(self, started: float) -> None:
        """A renewal that started at `started` is on disk: the lease runs a duration from then."""
        self.deadline = started + self.duration

    def valid(self, now: float) -> bool:
        return not self.lost_reason and now < self.deadline

    def lose(self, reason: str) -> None:
        if not self.lost_reason:
            self.lost_reason = reason


class SharedStorage:
    """The lock and lease of one broker on a shared data directory (see the module docs).

    `await acquire()` waits and takes over; then `check` is the store's guard
    and `lost` is set when the lease is gone; `release()` ends a clean run.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        lease: float = 10.0,
        poll: float = 0.5,
        clock: Clock = SYSTEM_CLOCK,
        host: str | None = None,
        blocking: Blocking = asyncio.to_thread,
    ) -> None:
        self.data_dir = data_dir
        self.duration = lease
        self.poll = poll
        self.clock = clock
        self.host = host if host is not None else socket.gethostname()
        self.owner = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.lock_path = data_dir / LOCK_FILE
        self.lease_path = data_dir / LEASE_FILE
        self.lease: Lease | None = None
        self.lost = asyncio.Event()
        self._lock_fd: int | None = None
        self._renewing: asyncio.Task[None] | None = None
        self._renewal: asyncio.Future[None] | None = None  # the renewal under way
        self.blocking = blocking
        """Runs file I/O off the loop (`asyncio.to_thread`; tests on a manual clock wait
        for it before they move time, as a fast machine would have)."""
        self.trust_lock = False
        """Holding the lock alone proves the holder gone (set on a local file system)."""

    # -- waiting and taking over ------------------------------------------------

    def check_file_system(self, mountinfo: Path | None = None) -> None:
        """Refuse a network file system (`broker.mounts`); warn about one not known to be local.

        Raises UnsafeFileSystem.
        """
        mount = (
            check_shared_storage(self.data_dir)
            if mountinfo is None
            else check_shared_storage(self.data_dir, mountinfo)
        )
        self.trust_lock = mount is not None and mount.kind is FileSystemKind.LOCAL
        if mount is None:
            log.warning(
                "cannot tell which file system holds %s: a takeover may wait for the lease",
                self.data_dir,
            )
        elif mount.kind is not FileSystemKind.LOCAL:
            log.warning(
                "%s is on %s (%s), which Moorage has not verified for shared storage: it must "
                "offer POSIX locks that hold across machines and honour fsync",
                self.data_dir,
                mount.fs_type,
                mount.kind.value,
            )

    async def acquire_unless(self, stop: asyncio.Event) -> bool:
        """`acquire()`, unless `stop` is set first (then False, with nothing held).

        Raises OSError when the lock or lease file cannot be used.
        """
        acquiring = asyncio.ensure_future(self.acquire())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not acquiring.done():
                acquiring.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await acquiring
        if acquiring.cancelled():
            self.close()
            return False
        try:
            acquiring.result()
        except BaseException:
            self.close()
            raise
        if stop.is_set():
            await self.release()
            return False
        self.start_renewing()  # from now: opening and recovering the store may outlast a lease
        return True

    def try_lock(self) -> bool:
        """Take the OS lock if it is free (never blocks). Raises OSError on I/O errors."""
        if self._lock_fd is None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def read_lease(self) -> bytes | None:
        """The lease file's bytes, None when there is none."""
        try:
            return self.lease_path.read_bytes()
        except FileNotFoundError:
            return None

    async def acquire(self) -> LeaseRecord:
        """Wait for the lock and a lapsed lease, then take over; the new record.

        Raises OSError when the lock or lease file cannot be used.
        """
        observer = LeaseObserver(self.duration)
        announced = False
        while True:
            now = self.clock.monotonic()
            content = self.read_lease()
            observer.observe(content, now)
            if self.try_lock():
                record = LeaseRecord.decode(content) if content else None
                alive = (
                    process_alive(record.pid)
                    if record is not None and record.host == self.host
                    else None
                )
                reason = may_take_over(content, observer, now, self.host, alive, self.trust_lock)
                if reason is not None:
                    return await self._take_over(record, reason)
                # Keep the lock: the record's owner lost it while its lease runs.
            if not announced:
                holder = LeaseRecord.decode(content) if content else None
                log.warning(
                    "waiting for the shared-storage lock in %s (held by %s)",
                    self.data_dir,
                    holder.owner if holder else "an unknown process",
                )
                announced = True
            await self.clock.sleep(self.poll)

    async def _take_over(self, previous: LeaseRecord | None, reason: str) -> LeaseRecord:
        epoch = (previous.epoch if previous is not None else 0) + 1
        record = LeaseRecord(
            owner=self.owner,
            host=self.host,
            pid=os.getpid(),
            epoch=epoch,
            renewals=0,
            duration=self.duration,
            renewed_at=self.clock.wall(),
        )
        self.lease = Lease(record, self.duration)
        started = self.clock.monotonic()
        await self.blocking(self._remove_stale_temporaries)
        await self.blocking(self._write, record)
        self.lease.renewed(started)
        log.warning(
            "took over the shared storage in %s at epoch %d (%s)", self.data_dir, epoch, reason
        )
        return record

    # -- holding ----------------------------------------------------------------

    def check(self) -> None:
        """The store's guard: raise LeaseLost unless the lease runs at this very moment.

        Called on the writer thread inside every write transaction; reads the
        clock, never the disk.
        """
        lease = self.lease
        if lease is None or not lease.valid(self.clock.monotonic()):
            reason = lease.lost_reason if lease is not None and lease.lost_reason else "expired"
            raise LeaseLost(f"the shared-storage lease is lost ({reason}); nothing is written")

    def start_renewing(self) -> None:
        """Renew every `lease / RENEWALS_PER_LEASE` seconds on the running loop until stopped."""
        if self._renewing is None:
            self._renewing = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        interval = self.duration / RENEWALS_PER_LEASE
        while not self.lost.is_set():
            await self.clock.sleep(interval)
            # shielded: `release` lets a renewal under way finish its write, so that
            # it never lands after (and undoes) the "released" record
            self._renewal = asyncio.ensure_future(self.renew())
            await asyncio.shield(self._renewal)

    async def renew(self) -> None:
        """One renewal: give up the lease if it ran out or changed hands, else rewrite it."""
        lease = self.lease
        if lease is None or self.lost.is_set():
            return
        started = self.clock.monotonic()
        if not lease.valid(started):
            self._lose(lease.lost_reason or "not renewed in time")
            return
        try:
            current = await self.blocking(self.read_lease)
            record = LeaseRecord.decode(current) if current else None
            mine = (lease.record.owner, lease.record.epoch)
            if record is None or (record.owner, record.epoch) != mine:
                self._lose(f"the lease record now names {record.owner if record else 'nobody'}")
                return
            renewed = replace(
                lease.record, renewals=lease.record.renewals + 1, renewed_at=self.clock.wall()
            )
            await self.blocking(self._write, renewed)
        except OSError as e:
            log.error("cannot renew the shared-storage lease: %s", e)
            return  # tried again at the next tick; the deadline decides
        if not lease.valid(self.clock.monotonic()):  # the write itself outlasted the lease
            self._lose(lease.lost_reason or "not renewed in time")
            return
        lease.record = renewed
        lease.renewed(started)

    def status(self) -> dict[str, Any]:
        """This node's role for operators (`broker.failover_status`: the management
        overview, `moorage status`, the `moorage_failover_*` metrics). Only the
        holder serves, so a node that can be asked is the primary."""
        lease = self.lease
        if lease is None:
            return {"mode": "shared-storage", "role": "waiting", "node": self.owner}
        now = self.clock.monotonic()
        return {
            "mode": "shared-storage",
            "role": "primary" if lease.valid(now) else "lease-lost",
            "node": self.owner,
            "epoch": lease.record.epoch,
            "lease_seconds": self.duration,
            "lease_remaining": round(max(0.0, lease.deadline - now), 3),
            "renewals": lease.record.renewals,
        }

    def lease_lost_reason(self) -> str:
        return self.lease.lost_reason if self.lease is not None else ""

    def _lose(self, reason: str) -> None:
        assert self.lease is not None
        self.lease.lose(reason)
        if not self.lost.is_set():
            log.critical("shared-storage lease lost: %s; this broker stops serving", reason)
            self.lost.set()

    async def release(self) -> None:
        """After a clean stop (store closed): mark the lease released and drop the lock."""
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
            self._renewing = None
        if self._renewal is not None:
            await self._renewal  # its write is done before "released" is written
            self._renewal = None
        lease = self.lease
        if lease is not None and not self.lost.is_set():
            with contextlib.suppress(OSError):
                await self.blocking(self._write, replace(lease.record, released=True))
        self.close()

    def close(self) -> None:
        """Drop the OS lock (closing the file releases it)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _temporary(self) -> Path:
        return self.lease_path.with_name(f"{LEASE_FILE}.{self.owner.replace(':', '-')}")

    def _remove_stale_temporaries(self) -> None:
        """Drop the temporary lease files of earlier holders that died while writing one."""
        for path in self.data_dir.glob(f"{LEASE_FILE}.*"):
            if path != self._temporary():
                with contextlib.suppress(OSError):
                    path.unlink()

    def _write(self, record: LeaseRecord) -> None:
        """Replace the lease file atomically and durably (write, fsync, rename, fsync dir)."""
        temporary = self._temporary()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, record.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.lease_path)
        directory = os.open(self.data_dir, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
