"""The shared-storage lock and lease, on the broker's clock: `ManualClock`, no sleeping.

Two `SharedStorage` objects on one `tmp_path` stand for two brokers: a
`flock` belongs to an open file, so two opens of the lock file conflict
within one process as they do between two. Time moves only on `advance`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from moorage.broker.clock import ManualClock
from moorage.broker.shared_storage import (
    LEASE_FILE,
    LeaseLost,
    LeaseObserver,
    LeaseRecord,
    SharedStorage,
    may_take_over,
    process_alive,
)
from moorage.storage.sqlite import SQLiteStore

T = TypeVar("T")

LEASE = 8.0
POLL = 0.5


def record(**changes: object) -> LeaseRecord:
    fields: dict[str, object] = {
        "owner": "a",
        "host": "h1",
        "pid": 1,
        "epoch": 3,
        "renewals": 0,
        "duration": LEASE,
        "renewed_at": 0.0,
    }
    fields.update(changes)
    return LeaseRecord(**fields)  # type: ignore[arg-type]


class Threads:
    """`asyncio.to_thread` that counts the calls under way: time moves only when none
    is, as on a machine fast enough to finish each within a step (a loaded one-core
    run renewed a lease after time had moved past it)."""

    def __init__(self) -> None:
        self.under_way = 0

    async def __call__(self, func: Callable[..., T], /, *args: Any) -> T:
        self.under_way += 1
        try:
            return await asyncio.to_thread(func, *args)
        finally:
            self.under_way -= 1


THREADS = Threads()


def storage(path: Path, clock: ManualClock, host: str = "h1") -> SharedStorage:
    return SharedStorage(path, lease=LEASE, poll=POLL, clock=clock, host=host, blocking=THREADS)


def files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


async def turn(times: int = 20) -> None:
    """Let the loop run what is ready (tasks, and threads' results): at least `times`
    turns, and on until no file I/O is under way (bounded by a generous 30 s)."""
    deadline = time.monotonic() + 30
    for _ in range(times):
        await asyncio.sleep(0.01)
    while THREADS.under_way:
        assert time.monotonic() < deadline, "file I/O did not finish"
        await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # what its result started (a write after a read) counts too


async def advance(clock: ManualClock, seconds: float, step: float = POLL) -> None:
    """Move time in steps, letting the loop run between them."""
    while seconds > 1e-9:
        clock.advance(min(step, seconds))
        seconds -= step
        await turn(3)


# -- the pure decisions -----------------------------------------------------------


def test_a_record_round_trips_and_garbage_is_no_record() -> None:
    assert LeaseRecord.decode(record(released=True).encode()) == record(released=True)
    for garbage in (b"", b"{", b"[]", b'{"owner": 1}', b"\xff\xfe", b'{"pid": "x"}'):
        assert LeaseRecord.decode(garbage) is None


def test_the_observer_counts_an_unchanged_record_on_its_own_clock() -> None:
    observer = LeaseObserver(LEASE)
    content = record().encode()
    observer.observe(content, 100.0)
    observer.observe(content, 107.9)
    assert not observer.expired(107.9)
    assert observer.expired(108.0)
    observer.observe(record(renewals=1).encode(), 108.0)  # renewed: counting starts again
    assert not observer.expired(115.9)
    assert observer.expired(116.0)


def test_the_observer_waits_for_the_longer_of_the_two_leases() -> None:
    observer = LeaseObserver(2.0)
    observer.observe(record(duration=30.0).encode(), 0.0)
    assert not observer.expired(29.0)
    assert observer.expired(30.0)
    unreadable = LeaseObserver(2.0)
    unreadable.observe(b"not json", 0.0)  # only its age can tell
    assert unreadable.expired(2.0)


def test_takeover_needs_the_holder_gone() -> None:
    observer = LeaseObserver(LEASE)
    live = record().encode()
    observer.observe(live, 0.0)
    assert may_take_over(None, observer, 0.0, "h1", None) == "no lease record"
    released = record(released=True).encode()
    assert may_take_over(released, observer, 0.0, "h1", True) == "lease released by a"
    assert may_take_over(live, observer, 0.0, "h1", False) == "holder pid 1 has ended"
    assert may_take_over(live, observer, 0.0, "h1", True) is None
    # Another host's pid means nothing here: only the lease's age counts.
    assert may_take_over(live, observer, 7.9, "h2", False) is None
    assert may_take_over(live, observer, 8.0, "h2", None) == "lease expired"
    # On a local file system the free lock is proof enough, whoever the record names.
    assert "local file system" in str(may_take_over(live, observer, 0.0, "h2", None, True))
    assert may_take_over(None, observer, 0.0, "h2", None, True) == "no lease record"


def test_process_alive() -> None:
    assert not process_alive(os.getpid())  # a record with our pid is a previous run's
    assert process_alive(os.getppid())
    assert not process_alive(0)
    assert not process_alive(2**22 + 12345)  # above pid_max


# -- holding ---------------------------------------------------------------------


async def test_the_first_broker_takes_over_at_epoch_one(tmp_path: Path) -> None:
    clock = ManualClock()
    a = storage(tmp_path, clock)
    taken = await a.acquire()
    assert (taken.epoch, taken.owner, taken.pid) == (1, a.owner, os.getpid())
    assert LeaseRecord.decode((tmp_path / LEASE_FILE).read_bytes()) == taken
    a.check()  # within the lease
    await a.release()
    released = LeaseRecord.decode((tmp_path / LEASE_FILE).read_bytes())
    assert released == dataclasses.replace(taken, released=True)


async def test_a_new_holder_removes_the_half_written_lease_of_a_dead_one(tmp_path: Path) -> None:
    (tmp_path / f"{LEASE_FILE}.h1-999-abc").write_bytes(b'{"owner": "h1:99')
    a = storage(tmp_path, ManualClock())
    await a.acquire()
    assert files(tmp_path) == [LEASE_FILE, "moorage.lock"]
    await a.release()


async def test_a_renewed_lease_keeps_running(tmp_path: Path) -> None:
    clock = ManualClock()
    a = storage(tmp_path, clock)
    await a.acquire()
    a.start_renewing()
    await advance(clock, LEASE * 3)
    a.check()
    assert not a.lost.is_set()
    renewed = LeaseRecord.decode((tmp_path / LEASE_FILE).read_bytes())
    assert renewed is not None
    assert renewed.renewals >= 10
    await a.release()


async def test_a_holder_that_missed_its_renewals_refuses_writes_and_stops(tmp_path: Path) -> None:
    clock = ManualClock()
    a = storage(tmp_path, clock)
    await a.acquire()
    clock.advance(LEASE - 0.001)  # stuck: no renewal ran (no timer was armed)
    a.check()
    clock.advance(0.001)
    with pytest.raises(LeaseLost, match="expired"):
        a.check()  # the writer thread's guard reads the clock, not the loop
    await a.renew()  # the late renewal gives up instead of renewing
    assert a.lost.is_set()
    assert a.lease_lost_reason() == "not renewed in time"
    with pytest.raises(LeaseLost, match="not renewed in time"):
        a.check()
    a.close()


async def test_a_holder_whose_record_names_another_owner_stops(tmp_path: Path) -> None:
    clock = ManualClock()
    a = storage(tmp_path, clock)
    taken = await a.acquire()
    (tmp_path / LEASE_FILE).write_bytes(record(owner="b", epoch=taken.epoch + 1).encode())
    await a.renew()
    assert a.lost.is_set()
    assert "now names b" in a.lease_lost_reason()
    with pytest.raises(LeaseLost):
        a.check()
    a.close()


# -- waiting and taking over -------------------------------------------------------


async def test_release_lets_a_renewal_under_way_write_first(tmp_path: Path) -> None:
    """A renewal whose write is under way when the broker stops finishes before the
    "released" record is written: it never lands after it and marks the lease held
    again (a waiter would then wait out a whole lease instead of taking over at once)."""
    clock = ManualClock()
    held, go, written = threading.Event(), threading.Event(), threading.Event()

    async def blocking(func: Callable[..., T], /, *args: Any) -> T:
        renewal = getattr(func, "__name__", "") == "_write" and args[0].renewals > 0

        def run() -> T:
            if renewal and not args[0].released:
                held.set()
                go.wait(30)  # the renewal's write, held in its thread
            try:
                return func(*args)
            finally:
                if renewal:
                    written.set()

        return await asyncio.to_thread(run)

    a = SharedStorage(tmp_path, lease=LEASE, poll=POLL, clock=clock, host="h1", blocking=blocking)
    await a.acquire()
    a.start_renewing()
    await asyncio.sleep(0)  # the renewing task sleeps on the clock
    clock.advance(LEASE / 2)
    assert await asyncio.to_thread(held.wait, 30)
    releasing = asyncio.ensure_future(a.release())
    # it waits for the held write, however long (a broken release is done within 1 s)
    await asyncio.wait({releasing}, timeout=1.0)
    assert not releasing.done()
    go.set()
    await asyncio.wait_for(releasing, 30)
    assert await asyncio.to_thread(written.wait, 30)
    final = LeaseRecord.decode((tmp_path / LEASE_FILE).read_bytes())
    assert final is not None
    assert final.released


async def test_a_waiter_takes_over_when_the_holder_releases(tmp_path: Path) -> None:
    clock = ManualClock()
    a, b = storage(tmp_path, clock), storage(tmp_path, clock)
    await a.acquire()
    waiting = asyncio.ensure_future(b.acquire())
    await advance(clock, LEASE * 2)  # the holder is alive and keeps the lock: b waits
    assert not waiting.done()
    await a.release()
    await advance(clock, POLL)
    taken = await asyncio.wait_for(waiting, 5)
    assert taken.epoch == 2
    b.check()
    await b.release()


async def test_a_waiter_takes_over_from_a_dead_holder_on_this_host_at_once(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    # The record of a holder that ended without releasing: a pid that no longer exists.
    (tmp_path / LEASE_FILE).write_bytes(record(host="h1", pid=2**22 + 12345, epoch=7).encode())
    b = storage(tmp_path, clock, host="h1")
    taken = await asyncio.wait_for(b.acquire(), 5)
    assert taken.epoch == 8
    await b.release()


async def test_a_lock_lost_by_a_live_holder_elsewhere_waits_for_the_lease(tmp_path: Path) -> None:
    """A file system that drops locks: the waiter gets the lock while the lease runs."""
    clock = ManualClock()
    a = storage(tmp_path, clock, host="h1")
    await a.acquire()
    a.start_renewing()
    a.close()  # the lock is gone, the holder still renews
    b = storage(tmp_path, clock, host="h2")
    waiting = asyncio.ensure_future(b.acquire())
    await advance(clock, LEASE * 2)
    assert not waiting.done()  # renewals keep it waiting
    # a's renewals stop (stuck, or cut off) and leave its last record, unreleased.
    await a.release()
    (tmp_path / LEASE_FILE).write_bytes(record(owner=a.owner, host="h1", epoch=1).encode())
    await advance(clock, LEASE - POLL)
    assert not waiting.done()
    await advance(clock, POLL * 2)
    taken = await asyncio.wait_for(waiting, 5)
    assert taken.epoch == 2
    # The old holder, if it ever renews again, finds b's record and stops.
    await b.release()


async def test_the_guard_refuses_store_writes_once_the_lease_has_lapsed(tmp_path: Path) -> None:
    clock = ManualClock()
    a = storage(tmp_path, clock)
    await a.acquire()
    store = SQLiteStore(tmp_path / "moorage.db", durability="nosync", guard=a.check)
    await store.open()
    outcomes: asyncio.Queue[BaseException | None] = asyncio.Queue()
    store.put_vhost("kept")
    store.when_durable(outcomes.put_nowait)
    assert await asyncio.wait_for(outcomes.get(), 5) is None
    clock.advance(LEASE)  # stuck past the lease
    store.put_vhost("refused")
    store.when_durable(outcomes.put_nowait)
    refused = await asyncio.wait_for(outcomes.get(), 5)
    assert isinstance(refused, Exception)
    assert "lease is lost" in str(refused)
    with pytest.raises(Exception, match="could not be written"):
        await store.close()
    a.close()
    with sqlite3.connect(tmp_path / "moorage.db") as conn:
        vhosts = {row[0] for row in conn.execute("SELECT name FROM vhosts")}
    assert "kept" in vhosts
    assert "refused" not in vhosts
