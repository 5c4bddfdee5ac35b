"""What only the SQLite store does: survive restarts and crashes, refuse bad files,
migrate, group and cancel writes, report a full disk and recover from it."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import sqlite3
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import moorage.storage.sqlite.schema as schema_module
import moorage.storage.sqlite.statements as statements_module
from moorage.storage.memory import MemoryStore
from moorage.storage.sqlite import SQLiteStore
from moorage.storage.store import (
    BindingRecord,
    ExchangeRecord,
    QueueRecord,
    Store,
    StoredEntry,
    StoreError,
)
from tests.storage.conftest import Settle

V = "/"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


async def opened(path: Path, **kwargs: Any) -> SQLiteStore:
    store = SQLiteStore(path, **kwargs)
    await store.open()
    return store


async def pragma(store: SQLiteStore, name: str) -> Any:
    return await store._submit(lambda conn: conn.execute(f"PRAGMA {name}").fetchone()[0])


def raw_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Query a closed store's file directly."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def read_file(path: Path) -> bytes:
    return path.read_bytes()


def write_file(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file of the store's directory, to prove nothing was touched."""
    return {p.name: p.read_bytes() for p in sorted(path.parent.iterdir())}


# -- arguments and set-up --------------------------------------------------------


def test_unknown_durability_mode(db: Path) -> None:
    with pytest.raises(ValueError, match="durability"):
        SQLiteStore(db, durability="sometimes")
    with pytest.raises(ValueError, match="flush_delay"):
        SQLiteStore(db, flush_delay=-1)


@pytest.mark.parametrize(("durability", "synchronous"), [("fsync", 2), ("nosync", 0)])
async def test_pragmas(tmp_path: Path, durability: str, synchronous: int) -> None:
    path = tmp_path / "a" / "b" / "store.db"  # parents created
    store = await opened(path, durability=durability)
    try:
        assert await pragma(store, "journal_mode") == "wal"
        assert await pragma(store, "foreign_keys") == 1
        assert await pragma(store, "synchronous") == synchronous
        assert await pragma(store, "auto_vacuum") == 2  # incremental
        assert await pragma(store, "locking_mode") == "exclusive"
    finally:
        await store.close()
    assert raw_rows(path, "SELECT version FROM schema_version") == [
        (len(schema_module.MIGRATIONS),)
    ]


async def test_vacuum_off_creates_a_file_without_auto_vacuum(db: Path) -> None:
    store = await opened(db, vacuum=False)
    try:
        assert await pragma(store, "auto_vacuum") == 0
    finally:
        await store.close()


async def test_nosync_mode_works(db: Path, settle: Settle) -> None:
    store = await opened(db, durability="nosync")
    store.put_queue(QueueRecord(V, "q"))
    store.put_message(1, b"x")
    store.enqueue(V, "q", 1, 1)
    await settle(store)
    assert store.stats.batches == 1
    assert store.stats.fsyncs == 0
    await store.close()
    store = await opened(db)
    try:
        assert await store.read_queue(V, "q", 0, 10) == [StoredEntry(1, 1, b"x")]
    finally:
        await store.close()


async def test_a_second_open_of_the_same_file_is_refused(db: Path) -> None:
    first = await opened(db)
    try:
        before = read_file(db)
        with pytest.raises(StoreError, match="in use"):
            await opened(db)
        assert read_file(db) == before
        first.put_vhost("still-works")
        assert (await first.load_topology()).vhosts == ["still-works"]
    finally:
        await first.close()


async def test_open_twice_and_close_idempotent(db: Path) -> None:
    store = await opened(db)
    with pytest.raises(StoreError):
        await store.open()
    await store.close()
    await store.close()
    with pytest.raises(StoreError):
        await store.read_queue(V, "q", 0, 1)
    never_opened = SQLiteStore(db)
    await never_opened.close()


# -- restarts and crashes -------------------------------------------------------


async def test_everything_survives_close_and_reopen(db: Path, settle: Settle) -> None:
    store = await opened(db)
    store.put_vhost(V)
    x = ExchangeRecord(V, "x", "topic", True, True, b"\x00args")
    store.put_exchange(x)
    store.put_queue(QueueRecord(V, "q1", arguments=b"a1"))
    store.put_queue(QueueRecord(V, "q2"))
    b = BindingRecord(V, "x", "q1", "queue", "#", b"")
    store.put_binding(b)
    store.put_message(7, b"seven")
    store.enqueue(V, "q1", 1, 7)
    store.enqueue(V, "q2", 1, 7)
    store.put_message(8, b"eight")
    store.enqueue(V, "q1", 2, 8)
    await settle(store)
    store.mark_delivered(V, "q1", 1, 2)  # written by close()
    await store.close()
    assert not db.with_name(db.name + "-wal").exists()  # checkpointed on close

    store = await opened(db)
    try:
        topology = await store.load_topology()
        assert topology.vhosts == [V]
        assert topology.exchanges == [x]
        assert topology.queues == [QueueRecord(V, "q1", arguments=b"a1"), QueueRecord(V, "q2")]
        assert topology.bindings == [b]
        assert await store.read_queue(V, "q1", 0, 10) == [
            StoredEntry(1, 7, b"seven", 2),
            StoredEntry(2, 8, b"eight", 0),
        ]
        assert await store.read_queue(V, "q2", 0, 10) == [StoredEntry(1, 7, b"seven")]
        assert await store.max_message_id() == 8
        # Queue ids continue after the restart: a new queue does not collide.
        store.put_queue(QueueRecord(V, "q3"))
        store.put_message(9, b"nine")
        store.enqueue(V, "q3", 1, 9)
        store.ack(V, "q2", 1)
        await settle(store)
        assert await store.read_queue(V, "q3", 0, 10) == [StoredEntry(1, 9, b"nine")]
        assert await store.queue_stats(V, "q1") == (2, 10, 2)
    finally:
        await store.close()


CHILD = """
import asyncio, collections, sys
sys.path.insert(0, sys.argv[3])
from moorage.storage.sqlite import SQLiteStore
from moorage.storage.store import QueueRecord

async def main(path, durability):
    store = SQLiteStore(path, durability=durability)
    await store.open()
    store.put_vhost("/")
    store.put_queue(QueueRecord("/", "q"))
    loop = asyncio.get_running_loop()
    window = collections.deque()  # like a publisher's unconfirmed window
    def confirmed(error, seq, future):
        if error is None:
            sys.stdout.write(f"{seq}\\n")
            sys.stdout.flush()
        future.set_result(None)
    seq = 0
    while True:
        for _ in range(25):
            seq += 1
            store.put_message(seq, b"m%d" % seq)
            store.enqueue("/", "q", seq, seq)
            if seq % 3 == 0:  # consumed at once: acked in the batch, or after it
                store.ack("/", "q", seq - 1)
        future = loop.create_future()
        store.when_durable(lambda error, s=seq, f=future: confirmed(error, s, f))
        window.append(future)
        if len(window) > 8:
            await window.popleft()
        await asyncio.sleep(0)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.parametrize("durability", ["fsync", "nosync"])
async def test_kill_9_loses_no_confirmed_message(db: Path, durability: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(db),
        durability,
        str(ROOT),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    confirmed = 0
    try:
        async with asyncio.timeout(20):
            while confirmed < 3000:
                line = await proc.stdout.readline()
                assert line, "child died"
                confirmed = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        # Confirmations already written to the pipe count too.
        for line in (await proc.stdout.read()).split():
            confirmed = int(line)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL

    store = await opened(db)
    try:
        entries = await store.read_queue(V, "q", 0, 10_000_000)
    finally:
        await store.close()
    found = [e.seq for e in entries]
    # Every confirmed message that was not acked is there, once, in order,
    # and nothing that was acked (before a confirmation) came back.
    expected = [s for s in range(1, confirmed + 1) if s % 3 != 2]
    assert found[: len(expected)] == expected
    assert all(e.data == b"m%d" % e.seq for e in entries)
    assert found == sorted(set(found))


# -- bad files ------------------------------------------------------------------


async def test_garbage_file_is_refused_and_left_alone(db: Path) -> None:
    write_file(db, os.urandom(10_000))
    before = snapshot(db)
    with pytest.raises(StoreError, match="not a SQLite database") as info:
        await opened(db)
    assert str(db) in str(info.value)
    assert "\n" not in str(info.value)
    assert snapshot(db) == before


async def test_corrupt_database_is_refused_and_left_alone(db: Path, settle: Settle) -> None:
    store = await opened(db)
    store.put_queue(QueueRecord(V, "q"))
    for i in range(1, 200):
        store.put_message(i, os.urandom(500))
        store.enqueue(V, "q", i, i)
    await settle(store)
    await store.close()
    data = bytearray(read_file(db))
    page = 4096
    assert len(data) > 4 * page
    rng = random.Random(1)
    data[page:] = bytes(rng.getrandbits(8) for _ in range(len(data) - page))
    write_file(db, bytes(data))
    before = snapshot(db)
    with pytest.raises(StoreError, match="corrupt") as info:
        await opened(db)
    assert str(db) in str(info.value)
    assert snapshot(db) == before


async def test_foreign_sqlite_database_is_refused(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.commit()
    conn.close()
    before = snapshot(db)
    with pytest.raises(StoreError, match="not a Moorage store"):
        await opened(db)
    assert snapshot(db) == before


async def test_newer_schema_is_refused(db: Path) -> None:
    await (await opened(db)).close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE schema_version SET version = 999")
    conn.commit()
    conn.close()
    before = snapshot(db)
    with pytest.raises(StoreError, match="newer"):
        await opened(db)
    assert snapshot(db) == before


async def test_empty_file_is_a_new_store(db: Path) -> None:
    write_file(db, b"")
    store = await opened(db)
    await store.close()
    assert raw_rows(db, "SELECT version FROM schema_version") == [(len(schema_module.MIGRATIONS),)]


async def test_migrations_run_in_order_once(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await opened(db)
    store.put_vhost("kept")
    await store.close()
    extra = (
        *schema_module.MIGRATIONS,
        ("CREATE TABLE retention (queue_id INTEGER, seconds INTEGER)",),
        ("ALTER TABLE retention ADD COLUMN note TEXT", "INSERT INTO retention VALUES (1, 2, 'x')"),
    )
    monkeypatch.setattr(schema_module, "MIGRATIONS", extra)
    for _ in range(2):  # the second open has nothing to do
        store = await opened(db)
        assert (await store.load_topology()).vhosts == ["kept"]
        await store.close()
    assert raw_rows(db, "SELECT version FROM schema_version") == [(len(extra),)]
    assert raw_rows(db, "SELECT * FROM retention") == [(1, 2, "x")]


async def test_failed_migration_leaves_the_previous_version(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await (await opened(db)).close()
    broken = (*schema_module.MIGRATIONS, ("CREATE TABLE t (x)", "THIS IS NOT SQL"))
    monkeypatch.setattr(schema_module, "MIGRATIONS", broken)
    with pytest.raises(StoreError, match="cannot prepare"):
        await opened(db)
    assert raw_rows(db, "SELECT version FROM schema_version") == [(len(broken) - 1,)]
    assert raw_rows(db, "SELECT name FROM sqlite_master WHERE name = 't'") == []


async def test_a_version_1_file_is_migrated(
    db: Path, settle: Settle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries written before retention existed keep expires_at 0 (never)."""
    # A version 1 file, as the code before retention made it: its schema, and
    # entries in the four columns it had (written directly: today's enqueue
    # names the fifth).
    with monkeypatch.context() as patch:
        patch.setattr(schema_module, "MIGRATIONS", schema_module.MIGRATIONS[:1])
        store = await opened(db)
        store.put_vhost(V)
        store.put_queue(QueueRecord(V, "q"))
        store.put_message(1, b"one")
        store.put_message(2, b"two")
        await settle(store)
        await store.close()
    assert raw_rows(db, "SELECT version FROM schema_version") == [(1,)]
    conn = sqlite3.connect(db)
    try:
        assert "expires_at" not in [r[1] for r in conn.execute("PRAGMA table_info(entries)")]
        conn.executemany(
            "INSERT INTO entries (queue_id, seq, message_id, delivery_count)"
            " SELECT id, ?, ?, ? FROM queues WHERE name = 'q'",
            [(1, 1, 0), (2, 2, 3)],
        )
        conn.commit()
    finally:
        conn.close()

    store = await opened(db)
    try:
        assert await store.read_queue(V, "q", 0, 10) == [
            StoredEntry(1, 1, b"one", 0, 0.0),
            StoredEntry(2, 2, b"two", 3, 0.0),
        ]
        assert await store.expire(V, "q", 1e18) == 0  # 0 is never, even for old entries
        store.put_message(3, b"three")
        store.enqueue(V, "q", 3, 3, 5.5)
        assert await store.expire(V, "q", 5.5) == 1
        assert await store.queue_stats(V, "q") == (2, 6, 2)
    finally:
        await store.close()
    assert raw_rows(db, "SELECT version FROM schema_version") == [(len(schema_module.MIGRATIONS),)]
    assert raw_rows(db, "SELECT seq, expires_at FROM entries ORDER BY seq") == [(1, 0.0), (2, 0.0)]
    assert raw_rows(db, "SELECT name FROM sqlite_master WHERE name = 'entries_by_expiry'") == [
        ("entries_by_expiry",)
    ]
    assert raw_rows(db, "PRAGMA integrity_check") == [("ok",)]


# -- group commit and cancellation ------------------------------------------------


async def test_one_loop_iteration_is_one_batch(db: Path, settle: Settle) -> None:
    store = await opened(db)
    try:
        store.put_queue(QueueRecord(V, "q"))
        for i in range(1, 101):
            store.put_message(i, b"x")
            store.enqueue(V, "q", i, i)
        await settle(store)
        assert store.stats.batches == 1
        assert store.stats.ops_written == 201
        assert store.stats.messages_written == 100
    finally:
        await store.close()


async def test_changes_gather_while_a_batch_is_in_flight(db: Path, settle: Settle) -> None:
    store = await opened(db)
    try:
        # Keep the writer busy so that the first batch stays in flight.
        release = threading.Event()
        busy = asyncio.ensure_future(store._submit(lambda conn: release.wait(5)))
        store.put_queue(QueueRecord(V, "q"))
        order: list[int] = []
        for i in range(1, 6):
            store.put_message(i, b"x")
            store.enqueue(V, "q", i, i)
            store.when_durable(lambda e, i=i: order.append(i))
            await asyncio.sleep(0)  # a flush per iteration, but one batch in flight
        assert store.stats.batches == 0
        release.set()
        await busy
        await settle(store)
        assert order == [1, 2, 3, 4, 5]
        assert store.stats.batches == 2  # the first iteration's, then all the others
        assert [e.seq for e in await store.read_queue(V, "q", 0, 10)] == [1, 2, 3, 4, 5]
    finally:
        await store.close()


async def test_callbacks_fire_after_the_commit(db: Path) -> None:
    store = await opened(db)
    try:
        store.put_queue(QueueRecord(V, "q"))
        seen: list[int] = []
        done = asyncio.Event()

        def callback(error: BaseException | None) -> None:
            assert error is None
            seen.append(store.stats.batches)
            done.set()

        store.when_durable(callback)
        assert seen == []  # not synchronous: there is a change to write
        assert store.pending
        await asyncio.wait_for(done.wait(), 5)
        assert seen == [1]
    finally:
        await store.close()


async def test_ack_before_write_is_never_written(db: Path, settle: Settle) -> None:
    store = await opened(db)
    store.put_queue(QueueRecord(V, "q1"))
    store.put_queue(QueueRecord(V, "q2"))
    await settle(store)
    written = store.stats.ops_written
    store.put_message(1, b"consumed at once")
    store.enqueue(V, "q1", 1, 1)
    store.mark_delivered(V, "q1", 1, 1)
    store.ack(V, "q1", 1)
    store.put_message(2, b"fanned out")
    store.enqueue(V, "q1", 2, 2)
    store.enqueue(V, "q2", 1, 2)
    store.ack(V, "q1", 2)  # message 2 is still referenced by q2
    assert store.stats.ops_cancelled == 3  # put 1, enqueue 1, enqueue q1/2
    await settle(store)
    assert store.stats.ops_written - written == 2  # put 2, enqueue q2/1
    assert store.stats.messages_written == 1
    await store.close()
    assert raw_rows(db, "SELECT id FROM messages") == [(2,)]
    assert raw_rows(db, "SELECT queue_id, seq FROM entries") == [(2, 1)]


async def test_everything_cancelled_still_confirms(db: Path, settle: Settle) -> None:
    store = await opened(db)
    try:
        store.put_queue(QueueRecord(V, "q"))
        await settle(store)
        batches = store.stats.batches
        store.put_message(1, b"x")
        store.enqueue(V, "q", 1, 1)
        fired: list[BaseException | None] = []
        store.when_durable(fired.append)
        store.ack(V, "q", 1)
        assert store.pending  # a callback is still owed
        store.when_durable(fired.append)
        await settle(store)
        assert fired == [None, None]
        assert store.stats.batches == batches  # nothing was written
    finally:
        await store.close()


async def test_ack_in_batch_of_a_message_written_earlier(db: Path, settle: Settle) -> None:
    """The body is in the file, the entry only in the batch: the body must go."""
    store = await opened(db)
    store.put_queue(QueueRecord(V, "q"))
    store.put_message(1, b"x")
    await settle(store)
    store.enqueue(V, "q", 1, 1)
    store.ack(V, "q", 1)
    await settle(store)
    assert await store.max_message_id() == 0
    await store.close()


async def test_purge_and_delete_cancel_batched_enqueues(db: Path, settle: Settle) -> None:
    store = await opened(db)
    store.put_queue(QueueRecord(V, "q"))
    store.put_queue(QueueRecord(V, "gone"))
    await settle(store)
    for i in range(1, 11):
        store.put_message(i, b"x")
        store.enqueue(V, "q" if i <= 5 else "gone", i, i)
    store.purge_queue(V, "q")
    store.delete_queue(V, "gone")
    assert store.stats.ops_cancelled == 20
    await settle(store)
    assert store.stats.messages_written == 0
    await store.close()
    assert raw_rows(db, "SELECT count(*) FROM messages") == [(0,)]


async def test_ack_range_cancels_batched_enqueues(db: Path, settle: Settle) -> None:
    store = await opened(db)
    store.put_queue(QueueRecord(V, "q"))
    store.put_message(100, b"written earlier")
    await settle(store)
    for i in range(1, 11):
        store.put_message(i, b"x")
        store.enqueue(V, "q", i, i)
    store.enqueue(V, "q", 11, 100)  # its body is already in the file
    store.mark_delivered(V, "q", 4, 1)
    store.ack_range(V, "q", 3, 11)
    store.enqueue(V, "q", 12, 2)  # after the range: not cancelled, nor its put
    # Enqueues 3..11 and puts 3..10; the range still runs its DELETE.
    assert store.stats.ops_cancelled == 17
    await settle(store)
    assert store.stats.messages_written == 1 + 2  # 100, then 1 and 2
    assert [e.seq for e in await store.read_queue(V, "q", 0, 100)] == [1, 2, 12]
    await store.close()
    assert raw_rows(db, "SELECT id FROM messages ORDER BY id") == [(1,), (2,)]  # 100 collected


async def test_expire_flushes_at_once_and_shares_the_batch(db: Path, settle: Settle) -> None:
    store = await opened(db, flush_delay=10)  # would not flush on its own for a while
    try:
        store.put_queue(QueueRecord(V, "q"))
        for i in range(1, 201):
            store.put_message(i, b"x")
            store.enqueue(V, "q", i, i, 5.0 if i % 2 else 0.0)
        async with asyncio.timeout(5):
            assert await store.expire(V, "q", 10) == 100
        assert not store.pending
        assert store.stats.batches == 1  # the enqueues and the expire: one transaction
        assert store.stats.expire_runs == 1
        assert store.stats.expired == 100
        assert store.stats.entries_written == 200
        assert await store.queue_stats(V, "q") == (100, 100, 200)
        assert await store.max_message_id() == 200
    finally:
        await store.close()


async def test_expire_while_a_batch_is_in_flight(db: Path, settle: Settle) -> None:
    store = await opened(db)
    try:
        store.put_queue(QueueRecord(V, "q"))
        await settle(store)
        release = threading.Event()
        busy = asyncio.ensure_future(store._submit(lambda conn: release.wait(5)))
        await asyncio.sleep(0)
        for i in (1, 2):
            store.put_message(i, b"x")
            store.enqueue(V, "q", i, i, 1.0)
        await asyncio.sleep(0)  # batch 1 is in flight, behind the busy job
        store.put_message(3, b"x")
        store.enqueue(V, "q", 3, 3, 1.0)  # gathering: before the call
        expired = asyncio.ensure_future(store.expire(V, "q", 2.0))
        await asyncio.sleep(0)
        store.put_message(4, b"x")
        store.enqueue(V, "q", 4, 4, 1.0)  # after the call: same batch, after the barrier
        store.ack(V, "q", 3)  # after the call: must not cancel enqueue 3
        assert not expired.done()
        release.set()
        await busy
        assert await expired == 3
        await settle(store)
        assert [e.seq for e in await store.read_queue(V, "q", 0, 10)] == [4]
        assert store.stats.ops_cancelled == 0
    finally:
        await store.close()


async def test_delivery_marks_ride_along(db: Path, settle: Settle) -> None:
    store = await opened(db)
    try:
        store.put_queue(QueueRecord(V, "q"))
        store.put_message(1, b"x")
        store.enqueue(V, "q", 1, 1)
        await settle(store)
        batches = store.stats.batches
        store.mark_delivered(V, "q", 1, 1)
        for _ in range(3):
            await asyncio.sleep(0)
        assert store.stats.batches == batches  # not written on its own
        store.put_vhost("other")
        await settle(store)
        assert store.stats.batches == batches + 1
        assert [e.delivery_count for e in await store.read_queue(V, "q", 0, 1)] == [1]
    finally:
        await store.close()


async def test_a_raising_callback_does_not_stop_the_others(db: Path, settle: Settle) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    store = await opened(db)
    try:
        fired: list[str] = []

        def bad(error: BaseException | None) -> None:
            raise RuntimeError("boom")

        store.put_vhost("v")
        store.when_durable(bad)
        store.when_durable(lambda e: fired.append("after"))
        await settle(store)
        assert fired == ["after"]
        assert isinstance(reported[0]["exception"], RuntimeError)
    finally:
        loop.set_exception_handler(previous)
        await store.close()


async def test_a_read_sees_changes_queued_before_it(db: Path) -> None:
    store = await opened(db, flush_delay=10)  # would not flush on its own for a while
    try:
        store.put_queue(QueueRecord(V, "q"))
        store.put_message(1, b"x")
        store.enqueue(V, "q", 1, 1)
        store.mark_delivered(V, "q", 1, 4)
        async with asyncio.timeout(5):
            assert await store.read_queue(V, "q", 0, 10) == [StoredEntry(1, 1, b"x", 4)]
    finally:
        await store.close()


# -- failures ---------------------------------------------------------------------


async def test_disk_full_reports_keeps_and_retries(db: Path, settle: Settle) -> None:
    store = await opened(db)
    try:
        store.put_queue(QueueRecord(V, "q"))
        await settle(store)
        pages = await pragma(store, "page_count")
        await pragma(store, f"max_page_count = {pages}")  # SQLITE_FULL at the next growth

        errors: list[BaseException | None] = []
        failed = asyncio.Event()
        for i in range(1, 21):
            store.put_message(i, bytes(10_000))
            store.enqueue(V, "q", i, i)
        store.when_durable(lambda e: (errors.append(e), failed.set()))
        await asyncio.wait_for(failed.wait(), 5)
        assert len(errors) == 1
        assert isinstance(errors[0], StoreError)
        assert "full" in str(errors[0])
        assert store.pending  # the changes are kept
        assert store.stats.failed_batches >= 1

        # Every later callback hears of the failure while the disk stays full.
        with pytest.raises(StoreError):
            await settle(store)

        await pragma(store, "max_page_count = 1000000")  # space is back
        await settle(store)
        assert not store.pending
        entries = await store.read_queue(V, "q", 0, 100)
        assert [e.seq for e in entries] == list(range(1, 21))
    finally:
        await store.close()


async def test_failed_batch_is_retried_by_the_timer(
    db: Path, settle: Settle, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await opened(db)
    store.retry_interval = 0.05
    try:
        store.put_queue(QueueRecord(V, "q"))
        await settle(store)
        pages = await pragma(store, "page_count")
        await pragma(store, f"max_page_count = {pages}")
        store.put_message(1, bytes(100_000))
        store.enqueue(V, "q", 1, 1)
        with pytest.raises(StoreError):
            await settle(store)
        # Hear of every batch completion, without causing a flush as settle() would.
        completed = asyncio.Event()
        batch_done = store._writer.on_done

        def spy(*args: Any) -> None:
            batch_done(*args)
            completed.set()

        monkeypatch.setattr(store._writer, "on_done", spy)
        await pragma(store, "max_page_count = 1000000")  # no further change is queued
        async with asyncio.timeout(5):
            while store.pending:
                completed.clear()
                await completed.wait()
        assert await store.queue_stats(V, "q") == (1, 100_000, 1)
    finally:
        await store.close()


async def test_failed_expire_is_reported_and_not_retried(db: Path, settle: Settle) -> None:
    store = await opened(db)
    try:
        store.put_queue(QueueRecord(V, "q"))
        for i in range(1, 6):
            store.put_message(i, b"x")
            store.enqueue(V, "q", i, i, 1.0)
        await settle(store)
        await pragma(store, f"max_page_count = {await pragma(store, 'page_count')}")
        store.put_message(100, bytes(100_000))
        store.enqueue(V, "q", 100, 100, 1.0)
        with pytest.raises(StoreError, match="full"):
            await store.expire(V, "q", 2.0)
        assert store.pending  # the put and the enqueue are kept; the expire is not
        assert store.stats.expire_runs == 0
        await pragma(store, "max_page_count = 1000000")
        await settle(store)
        assert [e.seq for e in await store.read_queue(V, "q", 0, 10)] == [1, 2, 3, 4, 5, 100]
        assert store.stats.expire_runs == 0
        assert await store.expire(V, "q", 2.0) == 6
    finally:
        await store.close()


async def test_close_reports_changes_it_could_not_write(db: Path, settle: Settle) -> None:
    store = await opened(db)
    store.put_queue(QueueRecord(V, "q"))
    await settle(store)
    await pragma(store, f"max_page_count = {await pragma(store, 'page_count')}")
    store.put_message(1, bytes(100_000))
    store.enqueue(V, "q", 1, 1)
    fired: list[BaseException | None] = []
    store.when_durable(fired.append)
    with pytest.raises(StoreError, match="could not be written"):
        await store.close()
    assert isinstance(fired[0], StoreError)
    store = await opened(db)  # the file is fine, without the lost message
    try:
        assert await store.queue_stats(V, "q") == (0, 0, 0)
    finally:
        await store.close()


# -- size -----------------------------------------------------------------------


async def test_100k_enqueues_in_one_batch(db: Path, settle: Settle) -> None:
    store = await opened(db)
    try:
        store.put_queue(QueueRecord(V, "q"))
        for i in range(1, 100_001):
            store.put_message(i, b"%d" % i)
            store.enqueue(V, "q", i, i)
        await settle(store)
        assert store.stats.batches == 1  # one transaction, whatever the machine's speed
        assert (await store.queue_stats(V, "q"))[0] == 100_000
        page = await store.read_queue(V, "q", 99_990, 100)
        assert [e.seq for e in page] == list(range(99_991, 100_001))
    finally:
        await store.close()


async def test_space_is_reclaimed_after_acks(db: Path, settle: Settle) -> None:
    store = await opened(db)
    store.vacuum_check_deletes = 10
    store.vacuum_free_pages = 64
    store.vacuum_keep_pages = 16
    try:
        store.put_queue(QueueRecord(V, "q"))
        for i in range(1, 301):
            store.put_message(i, os.urandom(4000))
            store.enqueue(V, "q", i, i)
        await settle(store)
        grown = await pragma(store, "page_count")
        assert grown > 300
        for i in range(1, 301):
            store.ack(V, "q", i)
        await settle(store)
        # The vacuum runs after the batch's callbacks; a read queues behind it.
        shrunk = await pragma(store, "page_count")
        assert store.stats.vacuumed_pages > 0
        assert shrunk < grown / 2
        assert await pragma(store, "freelist_count") <= 16
    finally:
        await store.close()


async def test_space_is_reclaimed_after_expire(db: Path, settle: Settle) -> None:
    store = await opened(db)
    store.vacuum_check_deletes = 10
    store.vacuum_free_pages = 64
    store.vacuum_keep_pages = 16
    try:
        store.put_queue(QueueRecord(V, "q"))
        for i in range(1, 301):
            store.put_message(i, os.urandom(4000))
            store.enqueue(V, "q", i, i, 1.0)
        await settle(store)
        grown = await pragma(store, "page_count")
        assert await store.expire(V, "q", 1.0) == 300
        shrunk = await pragma(store, "page_count")  # queued behind the vacuum
        assert store.stats.vacuumed_pages > 0
        assert shrunk < grown / 2
    finally:
        await store.close()


async def test_expire_200k_entries(db: Path, settle: Settle) -> None:
    """Expiry walks an index and deletes by key: fast, and in slices of `limit`."""
    store = await opened(db, durability="nosync")
    try:
        store.put_queue(QueueRecord(V, "q"))
        n = 200_000
        for i in range(1, n + 1):
            store.put_message(i, b"%d" % i)
            store.enqueue(V, "q", i, i, 1000.0 + (i % 1000))  # not in seq order
        store.put_message(n + 1, b"kept")
        store.enqueue(V, "q", n + 1, n + 1, 0.0)
        await settle(store)
        assert await store.expire(V, "q", 1000.0 + 499, limit=n) == n // 2
        removed = n // 2
        while count := await store.expire(V, "q", 3000.0, limit=25_000):
            assert count <= 25_000  # in slices of `limit`
            removed += count
        assert removed == n
        assert await store.queue_stats(V, "q") == (1, 4, n + 1)
        assert await store.max_message_id() == n + 1
    finally:
        await store.close()


def _hot_statements() -> list[str]:
    sqls = [statements_module.SQL_READ_QUEUE, statements_module.SQL_QUEUE_STATS]
    sqls.append(statements_module.SQL_MARKS[8])
    for kind in (statements_module.ACK_RANGE,):  # a barrier, but it must not scan either
        for sql, _ in statements_module.STATEMENTS[kind]:
            sqls.append(sql if isinstance(sql, str) else sql[8])
    for kind in statements_module.HOT_KINDS:
        for sql, _ in statements_module.STATEMENTS[kind]:
            sqls.append(sql if isinstance(sql, str) else sql[8])
    return sqls


@pytest.mark.parametrize("sql", _hot_statements())
async def test_hot_statements_never_scan_a_big_table(db: Path, sql: str) -> None:
    """With a million entries, a scan per ack would be the end of the broker."""
    store = await opened(db)
    try:
        plan = await store._submit(
            lambda conn: [
                row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, [1] * sql.count("?"))
            ]
        )
    finally:
        await store.close()
    scans = [d for d in plan if re.match(r"SCAN (entries|messages|e|m)\b", d)]
    assert scans == [], plan


async def test_expire_walks_the_expiry_index(db: Path) -> None:
    store = await opened(db)
    try:
        plan = await store._submit(
            lambda conn: [
                row[3]
                for row in conn.execute(
                    "EXPLAIN QUERY PLAN " + statements_module.SQL_EXPIRE, (1, 1.0, 10)
                )
            ]
        )
    finally:
        await store.close()
    assert not [d for d in plan if d.startswith("SCAN") or "TEMP B-TREE" in d], plan
    assert any("entries_by_expiry" in d for d in plan), plan


async def test_expire_reads_no_message_body(db: Path) -> None:
    """Only ids are read (by the orphan trigger); never `messages.data`."""
    store = await opened(db)

    def reads(conn: sqlite3.Connection) -> set[tuple[str, str]]:
        seen: set[tuple[str, str]] = set()

        def authorizer(action: int, arg1: Any, arg2: Any, _db: Any, _source: Any) -> int:
            if action == sqlite3.SQLITE_READ:
                seen.add((arg1, arg2))
            return sqlite3.SQLITE_OK

        conn.set_authorizer(authorizer)
        try:  # the authorizer sees every column the statement (and its triggers) may read
            conn.execute("EXPLAIN " + statements_module.SQL_EXPIRE, (1, 1.0, 10)).fetchall()
        finally:
            conn.set_authorizer(None)
        return seen

    try:
        seen = await store._submit(reads)
    finally:
        await store.close()
    assert ("messages", "id") in seen  # the trigger, so the probe works
    assert ("messages", "data") not in seen, seen


async def test_orphan_message_trigger_uses_the_index(db: Path) -> None:
    store = await opened(db)
    try:
        plan = await store._submit(
            lambda conn: [
                row[3]
                for row in conn.execute(
                    "EXPLAIN QUERY PLAN DELETE FROM messages WHERE id = ?1"
                    " AND NOT EXISTS (SELECT 1 FROM entries WHERE message_id = ?1)",
                    (1,),
                )
            ]
        )
    finally:
        await store.close()
    assert not [d for d in plan if d.startswith("SCAN")], plan
    assert any("entries_by_message" in d for d in plan), plan


# -- SQLite and the reference agree --------------------------------------------------


QUEUES = [("a", "q1"), ("a", "q2"), ("b", "q3")]


class Workload:
    """The same random calls on several stores, with the test's own idea of live entries."""

    def __init__(self, seed: int, stores: list[Store], settle: Settle) -> None:
        self.rng = random.Random(seed)
        self.stores = stores
        self.settle = settle
        self.next_seq = dict.fromkeys(QUEUES, 1)
        self.live: dict[tuple[str, str], list[int]] = {q: [] for q in QUEUES}
        self.next_id = 1
        for s in stores:
            for vhost, name in QUEUES:
                s.put_vhost(vhost)
                s.put_queue(QueueRecord(vhost, name))

    def publish(self) -> None:
        targets = self.rng.sample(QUEUES, self.rng.randint(1, 3))
        for s in self.stores:
            s.put_message(self.next_id, b"m%d" % self.next_id)
        for q in targets:
            expires_at = self.rng.choice([0.0, 0.0, float(self.rng.randint(1, 20))])
            for s in self.stores:
                s.enqueue(q[0], q[1], self.next_seq[q], self.next_id, expires_at)
            self.live[q].append(self.next_seq[q])
            self.next_seq[q] += 1
        self.next_id += 1

    def ack(self) -> None:
        q = self.rng.choice(QUEUES)
        if self.live[q]:
            seq = self.live[q].pop(self.rng.randrange(len(self.live[q])))
            for s in self.stores:
                s.ack(q[0], q[1], seq)

    def mark(self) -> None:
        q = self.rng.choice(QUEUES)
        if self.live[q]:
            seq, count = self.rng.choice(self.live[q]), self.rng.randint(1, 5)
            for s in self.stores:
                s.mark_delivered(q[0], q[1], seq, count)

    def ack_range(self) -> None:
        q = self.rng.choice(QUEUES)
        if self.live[q]:
            # The range may reach past the last seq: later enqueues land in it.
            first = self.rng.choice(self.live[q])
            last = first + self.rng.randint(0, 6)
            for s in self.stores:
                s.ack_range(q[0], q[1], first, last)
            self.live[q] = [seq for seq in self.live[q] if not first <= seq <= last]

    async def expire(self) -> None:
        q = self.rng.choice(QUEUES)
        now, limit = float(self.rng.randint(0, 20)), self.rng.randint(1, 4)
        counts = [await s.expire(q[0], q[1], now, limit) for s in self.stores]
        assert counts[0] == counts[1]
        self.live[q] = [e.seq for e in await self.stores[0].read_queue(q[0], q[1], 0, 10**6)]

    def purge(self) -> None:
        q = self.rng.choice(QUEUES)
        for s in self.stores:
            s.purge_queue(*q)
        self.live[q].clear()

    def redeclare(self) -> None:
        q = self.rng.choice(QUEUES)
        for s in self.stores:
            s.delete_queue(*q)
            s.put_queue(QueueRecord(*q))
        self.live[q].clear()

    async def compare(self, queues: list[tuple[str, str]]) -> None:
        for q in queues:
            reads = [await s.read_queue(q[0], q[1], 0, 1000) for s in self.stores]
            assert reads[0] == reads[1]
            stats = [await s.queue_stats(*q) for s in self.stores]
            assert stats[0] == stats[1]
        ids = [await s.max_message_id() for s in self.stores]
        assert ids[0] == ids[1]

    async def run(self, steps: int) -> None:
        actions: list[tuple[float, Callable[[], Awaitable[None] | None]]] = [
            (0.4, self.publish),
            (0.25, self.ack),
            (0.1, self.mark),
            (0.03, self.ack_range),
            (0.05, self.expire),
            (0.03, self.purge),
            (0.02, self.redeclare),
        ]
        for _ in range(steps):
            roll = self.rng.random()
            for weight, action in actions:
                if roll < weight:
                    pending = action()
                    if pending is not None:
                        await pending
                    break
                roll -= weight
            else:
                if roll < 0.05:
                    await asyncio.sleep(0)  # let a batch go while more gathers
                elif roll < 0.08:
                    for s in self.stores:
                        await self.settle(s)
                else:
                    await self.compare([self.rng.choice(QUEUES)])
        await self.compare(QUEUES)


@pytest.mark.parametrize("seed", range(8))
async def test_random_workload_matches_memory_store(
    tmp_path: Path, settle: Settle, seed: int
) -> None:
    path = tmp_path / "store.db"
    memory = MemoryStore()
    await memory.open()
    sqlite = await opened(path, durability="nosync")
    try:
        await Workload(seed, [memory, sqlite], settle).run(300)
        await sqlite.close()
        reopened = await opened(path)  # and the same again from the file
        try:
            for vhost, name in QUEUES:
                assert await reopened.read_queue(vhost, name, 0, 1000) == (
                    await memory.read_queue(vhost, name, 0, 1000)
                )
            assert await reopened.max_message_id() == await memory.max_message_id()
        finally:
            await reopened.close()
    finally:
        await sqlite.close()
        await memory.close()


async def test_a_version_2_file_is_migrated_to_sessions_and_retained(
    db: Path, settle: Settle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 3 adds the session and retained tables; old entries and bodies behave as before."""
    with monkeypatch.context() as patch:
        patch.setattr(schema_module, "MIGRATIONS", schema_module.MIGRATIONS[:2])
        store = await opened(db)
        store.put_vhost(V)
        store.put_queue(QueueRecord(V, "q"))
        store.put_message(1, b"one")
        store.enqueue(V, "q", 1, 1)
        await settle(store)
        await store.close()
    assert raw_rows(db, "SELECT version FROM schema_version") == [(2,)]
    store = await opened(db)
    try:
        store.put_retained(V, "t", 1)
        store.put_session(V, "mqtt", "c", b"state")
        store.ack(V, "q", 1)  # the body stays: it is retained now
        await settle(store)
    finally:
        await store.close()
    assert raw_rows(db, "SELECT version FROM schema_version") == [(len(schema_module.MIGRATIONS),)]
    store = await opened(db)
    try:
        assert [(r.topic, r.data) for r in await store.load_retained()] == [("t", b"one")]
        assert [r.state for r in await store.load_sessions("mqtt")] == [b"state"]
        store.delete_retained(V, "t")
        await settle(store)
    finally:
        await store.close()
    assert raw_rows(db, "SELECT count(*) FROM messages") == [(0,)]
    assert raw_rows(db, "PRAGMA integrity_check") == [("ok",)]
