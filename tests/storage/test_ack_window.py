"""SQLiteStore's ack window: delivered messages wait unwritten for their ack.

Each test drives the real store on a real file and looks at what reached
the file (`stats`, the rows after close) and when the callbacks fired. The
hold's time limits (the window, `held_max_age`) are checked with a manual
clock on the gathering batch alone, in `test_batch.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from moorage.storage.sqlite import SQLiteStore
from moorage.storage.store import ExchangeRecord, QueueRecord
from tests.storage.conftest import Settle
from tests.storage.test_sqlite import V, opened, raw_rows


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


LONG = 30.0  # an ack window no test waits for: firing before it proves the early path


def recorder(fired: list[str], name: str, done: asyncio.Event | None = None) -> Callable[..., None]:
    def callback(error: BaseException | None) -> None:
        assert error is None
        fired.append(name)
        if done is not None:
            done.set()

    return callback


async def holding(path: Path) -> SQLiteStore:
    """A store that would hold a batch longer than any test waits."""
    store = await opened(path, ack_window=LONG)
    store.held_max_age = LONG
    return store


@pytest.fixture
async def store(db: Path, settle: Settle) -> AsyncIterator[SQLiteStore]:
    """This module's store: held longer than any test waits, with a queue "q" written."""
    held = await holding(db)
    held.put_queue(QueueRecord(V, "q"))
    await settle(held)
    yield held
    await held.close()


def deliver(store: SQLiteStore, seq: int, queue: str = "q") -> None:
    """A persistent publish that went straight to a consumer awaiting an ack."""
    store.put_message(seq, b"body %d" % seq)
    store.enqueue(V, queue, seq, seq)
    store.mark_delivered(V, queue, seq, 1)


async def ack_of_a_written_entry_then_a_delivery(store: SQLiteStore, settle: Settle) -> int:
    """Entry 1 written, then acked (a removal in the batch), then message 2 delivered.

    Returns the batches committed before the ack.
    """
    store.put_queue(QueueRecord(V, "q"))
    store.put_message(1, b"written")
    store.enqueue(V, "q", 1, 1)
    await settle(store)
    batches = store.stats.batches
    store.ack(V, "q", 1)
    deliver(store, 2)
    return batches


async def test_an_ack_within_the_window_confirms_without_a_write(
    store: SQLiteStore, db: Path
) -> None:
    batches = store.stats.batches
    fired: list[str] = []
    done = asyncio.Event()
    for seq in (1, 2, 3):
        deliver(store, seq)
    store.when_durable(recorder(fired, "confirm", done), removals=False)
    for _ in range(5):
        await asyncio.sleep(0)
    assert fired == []  # held: waiting for the acks, not written
    assert store.pending
    for seq in (1, 2, 3):
        store.ack(V, "q", seq)
    await asyncio.wait_for(done.wait(), 5)
    assert fired == ["confirm"]
    assert store.stats.batches == batches
    assert store.stats.messages_written == 0
    await store.close()
    assert raw_rows(db, "SELECT count(*) FROM messages") == [(0,)]


async def test_callbacks_fire_in_order_as_their_messages_are_acked(store: SQLiteStore) -> None:
    fired: list[str] = []
    deliver(store, 1)
    store.when_durable(recorder(fired, "first"), removals=False)
    deliver(store, 2)
    second = asyncio.Event()
    store.when_durable(recorder(fired, "second", second), removals=False)
    store.ack(V, "q", 2)  # the later message first: nothing may fire yet
    for _ in range(5):
        await asyncio.sleep(0)
    assert fired == []
    store.ack(V, "q", 1)
    await asyncio.wait_for(second.wait(), 5)
    assert fired == ["first", "second"]
    assert store.stats.messages_written == 0


async def test_an_undelivered_enqueue_is_written_at_once(store: SQLiteStore, db: Path) -> None:
    """A message nobody was given (a backlog) gains nothing from waiting."""
    deliver(store, 1)
    store.put_message(2, b"nobody took it")
    store.enqueue(V, "q", 2, 2)
    fired: list[str] = []
    done = asyncio.Event()
    store.when_durable(recorder(fired, "confirm", done), removals=False)
    await asyncio.wait_for(done.wait(), 5)
    assert store.stats.messages_written == 2  # the whole batch went
    await store.close()
    assert raw_rows(db, "SELECT seq FROM entries ORDER BY seq") == [(1,), (2,)]


async def test_an_urgent_change_ends_the_hold(store: SQLiteStore, settle: Settle) -> None:
    deliver(store, 1)
    for _ in range(3):
        await asyncio.sleep(0)  # now held
    store.put_exchange(ExchangeRecord(V, "x", "direct"))
    await asyncio.wait_for(settle(store), 5)
    assert store.stats.messages_written == 1


async def test_a_confirm_does_not_wait_for_earlier_acks_but_others_do(
    db: Path, settle: Settle
) -> None:
    """`removals=False` passes over an ack of a written entry; the default waits for it
    to be written, and is not held back by the window for that (a tx.commit-ok)."""
    store = await holding(db)
    try:
        batches = await ack_of_a_written_entry_then_a_delivery(store, settle)
        committed: dict[str, int] = {}
        strict = asyncio.Event()

        def confirm(error: BaseException | None) -> None:
            committed["confirm"] = store.stats.batches

        def commit_ok(error: BaseException | None) -> None:
            committed["strict"] = store.stats.batches
            strict.set()

        store.when_durable(confirm, removals=False)
        store.when_durable(commit_ok)
        store.ack(V, "q", 2)
        await asyncio.wait_for(strict.wait(), 5)  # not the 30 s window
        assert committed == {"confirm": batches, "strict": batches + 1}
    finally:
        await store.close()


async def test_a_strict_callback_holds_back_later_confirms(db: Path, settle: Settle) -> None:
    """Callbacks keep their registration order whatever each waits for."""
    store = await holding(db)
    try:
        await ack_of_a_written_entry_then_a_delivery(store, settle)
        fired: list[str] = []
        done = asyncio.Event()
        store.when_durable(recorder(fired, "strict"))
        store.when_durable(recorder(fired, "confirm", done), removals=False)
        store.ack(V, "q", 2)
        await asyncio.wait_for(done.wait(), 5)
        assert fired == ["strict", "confirm"]
        assert store.stats.messages_written == 1  # message 2 was acked before the write
    finally:
        await store.close()


async def test_a_strict_callback_ends_a_hold_already_running(
    store: SQLiteStore, settle: Settle
) -> None:
    deliver(store, 1)
    store.when_durable(lambda error: None, removals=False)
    for _ in range(3):
        await asyncio.sleep(0)  # held for the confirm
    await asyncio.wait_for(settle(store), 5)  # a strict one: written now
    assert store.stats.messages_written == 1


async def test_no_early_confirm_while_an_earlier_batch_is_in_flight(store: SQLiteStore) -> None:
    fired: list[str] = []
    done = asyncio.Event()
    store.put_exchange(ExchangeRecord(V, "x", "direct"))
    store.when_durable(recorder(fired, "declare-ok"))
    await asyncio.sleep(0)  # that batch is now with the writer
    deliver(store, 1)
    store.when_durable(recorder(fired, "confirm", done), removals=False)
    store.ack(V, "q", 1)
    await asyncio.wait_for(done.wait(), 5)
    assert fired == ["declare-ok", "confirm"]
    assert store.stats.messages_written == 0


async def test_close_writes_a_held_batch(db: Path) -> None:
    store = await holding(db)
    store.put_queue(QueueRecord(V, "q"))
    deliver(store, 1)
    await asyncio.sleep(0.01)
    await asyncio.wait_for(store.close(), 5)
    assert raw_rows(db, "SELECT seq FROM entries") == [(1,)]


async def test_a_negative_window_is_refused(db: Path) -> None:
    for bad in (-1.0, float("nan")):
        try:
            SQLiteStore(db, ack_window=bad)
        except ValueError:
            continue
        raise AssertionError(f"ack_window={bad} accepted")


async def test_a_read_ends_the_hold_and_sees_the_held_entries(store: SQLiteStore) -> None:
    """Paging reads back what the batch holds without waiting for the window."""
    deliver(store, 1)
    deliver(store, 2)
    for _ in range(3):
        await asyncio.sleep(0)  # now held
    entries = await asyncio.wait_for(store.read_queue(V, "q", 0, 10), 5)
    assert [e.seq for e in entries] == [1, 2]
