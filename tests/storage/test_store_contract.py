"""The `Store` contract, run against every implementation (see conftest `store`).

Each test runs twice: `settled` waits for `when_durable` between steps (so a
SQLite store writes each step separately), `unsettled` queues everything in
one loop iteration (so a SQLite store sees it in one batch and may cancel
an enqueue by a later ack). Both must give the same answers.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from moorage.storage.store import (
    BindingRecord,
    ExchangeRecord,
    QueueRecord,
    RetainedRecord,
    SessionRecord,
    Store,
    StoredEntry,
    StoreError,
)
from tests.storage.conftest import Settle

V = "/"


@pytest.fixture(params=["settled", "unsettled"])
def step(request: pytest.FixtureRequest, settle: Settle) -> Settle:
    """Between steps of a test: wait for durability, or not at all."""

    async def nothing(store: Store) -> None:
        return None

    return settle if request.param == "settled" else nothing


def declare(store: Store, *queues: str, vhost: str = V) -> None:
    store.put_vhost(vhost)
    for name in queues:
        store.put_queue(QueueRecord(vhost, name))


def publish(store: Store, message_id: int, data: bytes, *targets: tuple[str, int]) -> None:
    """Put a message and enqueue it at (queue, seq) for each target, in vhost V."""
    store.put_message(message_id, data)
    for queue, seq in targets:
        store.enqueue(V, queue, seq, message_id)


async def seqs(store: Store, queue: str, vhost: str = V) -> list[int]:
    return [e.seq for e in await store.read_queue(vhost, queue, 0, 1_000_000)]


def publish_expiring(store: Store, queue: str, items: list[tuple[int, float]]) -> None:
    """For each (seq, expires_at): a message with id = seq, enqueued at seq of `queue`."""
    for seq, expires_at in items:
        store.put_message(seq, b"m%d" % seq)
        store.enqueue(V, queue, seq, seq, expires_at)


# -- topology ------------------------------------------------------------------


async def test_topology_round_trip(store: Store, step: Settle) -> None:
    store.put_vhost("a")
    store.put_vhost("b")
    store.put_vhost("a")  # again: no duplicate
    x = ExchangeRecord("a", "x", "topic", auto_delete=True, internal=False, arguments=b"\x01")
    store.put_exchange(x)
    store.put_exchange(ExchangeRecord("a", "y", "fanout"))
    store.put_queue(QueueRecord("a", "q", auto_delete=True, arguments=b"args"))
    b1 = BindingRecord("a", "x", "q", "queue", "k.#", b"")
    b2 = BindingRecord("a", "x", "y", "exchange", "", b"\x02")
    store.put_binding(b1)
    store.put_binding(b2)
    store.put_binding(b1)  # again: no duplicate
    await step(store)
    topology = await store.load_topology()
    assert topology.vhosts == ["a", "b"]
    assert topology.exchanges == [x, ExchangeRecord("a", "y", "fanout")]
    assert topology.queues == [QueueRecord("a", "q", True, b"args")]
    assert topology.bindings == [b1, b2]


async def test_put_again_updates_in_place(store: Store, step: Settle) -> None:
    declare(store, "q", "r")
    store.put_exchange(ExchangeRecord(V, "x", "direct"))
    publish(store, 1, b"m", ("q", 1))
    await step(store)
    store.put_exchange(ExchangeRecord(V, "x", "topic", internal=True))
    store.put_queue(QueueRecord(V, "q", arguments=b"new"))
    await step(store)
    topology = await store.load_topology()
    assert topology.exchanges == [ExchangeRecord(V, "x", "topic", internal=True)]
    assert topology.queues == [QueueRecord(V, "q", arguments=b"new"), QueueRecord(V, "r")]
    assert await seqs(store, "q") == [1]  # a re-declared queue keeps its entries


async def test_delete_binding(store: Store, step: Settle) -> None:
    b = BindingRecord(V, "x", "q", "queue", "k")
    other_args = BindingRecord(V, "x", "q", "queue", "k", b"other")
    store.put_binding(b)
    store.put_binding(other_args)
    await step(store)
    store.delete_binding(b)
    store.delete_binding(BindingRecord(V, "x", "nope", "queue", "k"))  # absent: no-op
    await step(store)
    assert (await store.load_topology()).bindings == [other_args]


async def test_delete_queue_removes_bindings_and_entries(store: Store, step: Settle) -> None:
    declare(store, "q", "keep")
    store.put_exchange(ExchangeRecord(V, "x", "direct"))
    store.put_binding(BindingRecord(V, "x", "q", "queue", "k"))
    kept = BindingRecord(V, "x", "keep", "queue", "k")
    store.put_binding(kept)
    publish(store, 1, b"shared", ("q", 1), ("keep", 1))
    publish(store, 2, b"only-q", ("q", 2))
    await step(store)
    store.delete_queue(V, "q")
    await step(store)
    topology = await store.load_topology()
    assert topology.queues == [QueueRecord(V, "keep")]
    assert topology.bindings == [kept]
    assert await store.queue_stats(V, "q") == (0, 0, 0)
    assert await store.read_queue(V, "q", 0, 10) == []
    assert await store.read_queue(V, "keep", 0, 10) == [StoredEntry(1, 1, b"shared")]
    assert await store.max_message_id() == 1  # message 2 went with its queue
    # A queue declared again under the same name starts empty.
    store.put_queue(QueueRecord(V, "q"))
    await step(store)
    assert await store.queue_stats(V, "q") == (0, 0, 0)


async def test_delete_exchange_removes_bindings_from_and_to_it(store: Store, step: Settle) -> None:
    declare(store, "q")
    for name in ("x", "y", "z"):
        store.put_exchange(ExchangeRecord(V, name, "fanout"))
    store.put_binding(BindingRecord(V, "x", "q", "queue", ""))  # from x
    store.put_binding(BindingRecord(V, "y", "x", "exchange", ""))  # to x
    kept = [
        BindingRecord(V, "y", "q", "queue", ""),
        BindingRecord(V, "y", "z", "exchange", ""),
        BindingRecord(V, "z", "x", "queue", ""),  # a *queue* named x is not the exchange
    ]
    for b in kept:
        store.put_binding(b)
    await step(store)
    store.delete_exchange(V, "x")
    await step(store)
    topology = await store.load_topology()
    assert [e.name for e in topology.exchanges] == ["y", "z"]
    assert topology.bindings == kept


async def test_delete_vhost_cascades(store: Store, step: Settle) -> None:
    for vhost in ("a", "b"):
        store.put_vhost(vhost)
        store.put_exchange(ExchangeRecord(vhost, "x", "direct"))
        store.put_queue(QueueRecord(vhost, "q"))
        store.put_binding(BindingRecord(vhost, "x", "q", "queue", "k"))
    store.put_message(1, b"in-a")
    store.enqueue("a", "q", 1, 1)
    store.put_message(2, b"in-b")
    store.enqueue("b", "q", 1, 2)
    store.put_message(3, b"in-a-too")
    store.enqueue("a", "q", 2, 3)
    await step(store)
    store.delete_vhost("a")
    await step(store)
    topology = await store.load_topology()
    assert topology.vhosts == ["b"]
    assert topology.exchanges == [ExchangeRecord("b", "x", "direct")]
    assert topology.queues == [QueueRecord("b", "q")]
    assert topology.bindings == [BindingRecord("b", "x", "q", "queue", "k")]
    assert await store.queue_stats("a", "q") == (0, 0, 0)
    assert await store.read_queue("b", "q", 0, 10) == [StoredEntry(1, 2, b"in-b")]
    assert await store.max_message_id() == 2  # messages 1 and 3 are gone


# -- entries -------------------------------------------------------------------


async def test_enqueue_read_order_and_paging(store: Store, step: Settle) -> None:
    declare(store, "q", "other")
    # Publish out of id order and with gaps in seq: order is by seq only.
    for seq, message_id in [(2, 10), (3, 5), (5, 11), (8, 1), (13, 7), (21, 2)]:
        publish(store, message_id, b"m%d" % message_id, ("q", seq))
    publish(store, 99, b"elsewhere", ("other", 1))
    await step(store)
    first = await store.read_queue(V, "q", 0, 2)
    assert first == [StoredEntry(2, 10, b"m10"), StoredEntry(3, 5, b"m5")]
    assert [e.seq for e in await store.read_queue(V, "q", 3, 3)] == [5, 8, 13]
    assert [e.seq for e in await store.read_queue(V, "q", 4, 100)] == [5, 8, 13, 21]
    assert [e.seq for e in await store.read_queue(V, "q", 13, 100)] == [21]
    assert await store.read_queue(V, "q", 21, 100) == []
    assert await store.read_queue(V, "missing", 0, 100) == []


async def test_paging_through_a_long_queue(store: Store, step: Settle) -> None:
    declare(store, "q")
    for i in range(1, 1001):
        publish(store, i, i.to_bytes(4, "big"), ("q", i))
    await step(store)
    seen: list[int] = []
    after = 0
    while page := await store.read_queue(V, "q", after, 64):
        seen.extend(e.seq for e in page)
        assert all(e.data == e.seq.to_bytes(4, "big") for e in page)
        after = page[-1].seq
    assert seen == list(range(1, 1001))


async def test_same_message_in_two_queues(store: Store, step: Settle) -> None:
    declare(store, "q1", "q2")
    publish(store, 1, b"hello", ("q1", 1), ("q2", 7))
    await step(store)
    store.ack(V, "q1", 1)
    await step(store)
    assert await store.read_queue(V, "q1", 0, 10) == []
    assert await store.read_queue(V, "q2", 0, 10) == [StoredEntry(7, 1, b"hello")]
    assert await store.queue_stats(V, "q2") == (1, 5, 7)
    assert await store.max_message_id() == 1
    store.ack(V, "q2", 7)
    await step(store)
    assert await store.queue_stats(V, "q2") == (0, 0, 0)
    assert await store.max_message_id() == 0  # the body went with its last entry


async def test_ack_in_the_same_step_as_enqueue(store: Store, step: Settle) -> None:
    declare(store, "q1", "q2")
    await step(store)
    publish(store, 1, b"a", ("q1", 1))
    publish(store, 2, b"b", ("q1", 2), ("q2", 1))
    store.ack(V, "q1", 1)
    store.ack(V, "q1", 2)
    await step(store)
    assert await store.read_queue(V, "q1", 0, 10) == []
    assert await store.read_queue(V, "q2", 0, 10) == [StoredEntry(1, 2, b"b")]
    assert await store.max_message_id() == 2
    store.ack(V, "q2", 1)
    await step(store)
    assert await store.max_message_id() == 0


async def test_ack_of_unknown_entry_is_a_no_op(store: Store, step: Settle) -> None:
    declare(store, "q")
    publish(store, 1, b"x", ("q", 1))
    store.ack(V, "q", 2)
    store.ack(V, "nope", 1)
    store.mark_delivered(V, "nope", 1, 3)
    store.purge_queue(V, "nope")
    await step(store)
    assert await seqs(store, "q") == [1]


async def test_mark_delivered(store: Store, step: Settle) -> None:
    declare(store, "q")
    publish(store, 1, b"a", ("q", 1))
    publish(store, 2, b"b", ("q", 2))
    await step(store)
    store.mark_delivered(V, "q", 1, 1)
    store.mark_delivered(V, "q", 1, 2)
    await step(store)
    entries = await store.read_queue(V, "q", 0, 10)
    assert [(e.seq, e.delivery_count) for e in entries] == [(1, 2), (2, 0)]


async def test_mark_delivered_then_ack(store: Store, step: Settle) -> None:
    declare(store, "q")
    publish(store, 1, b"a", ("q", 1))
    store.mark_delivered(V, "q", 1, 1)
    store.ack(V, "q", 1)
    await step(store)
    assert await store.read_queue(V, "q", 0, 10) == []


async def test_purge(store: Store, step: Settle) -> None:
    declare(store, "q", "other")
    publish(store, 1, b"a", ("q", 1), ("other", 1))
    publish(store, 2, b"b", ("q", 2))
    await step(store)
    publish(store, 3, b"c", ("q", 3))
    store.purge_queue(V, "q")
    publish(store, 4, b"d", ("q", 4))  # after the purge: kept
    await step(store)
    assert await seqs(store, "q") == [4]
    assert await seqs(store, "other") == [1]
    assert await store.queue_stats(V, "q") == (1, 1, 4)
    assert (await store.load_topology()).queues == [QueueRecord(V, "q"), QueueRecord(V, "other")]
    store.ack(V, "other", 1)
    store.ack(V, "q", 4)
    await step(store)
    assert await store.max_message_id() == 0


async def test_queue_stats(store: Store, step: Settle) -> None:
    declare(store, "q", "r")
    assert await store.queue_stats(V, "q") == (0, 0, 0)
    publish(store, 1, b"12345", ("q", 3), ("r", 1))
    publish(store, 2, b"", ("q", 9))
    publish(store, 3, b"abc", ("q", 4))
    await step(store)
    assert await store.queue_stats(V, "q") == (3, 8, 9)
    assert await store.queue_stats(V, "r") == (1, 5, 1)
    assert await store.queue_stats(V, "missing") == (0, 0, 0)


async def test_max_message_id(store: Store, step: Settle) -> None:
    declare(store, "q")
    assert await store.max_message_id() == 0
    publish(store, 5, b"x", ("q", 1))
    publish(store, 3, b"y", ("q", 2))
    await step(store)
    assert await store.max_message_id() == 5


async def test_enqueue_of_a_message_never_put_raises(store: Store) -> None:
    declare(store, "q")
    with pytest.raises(StoreError):
        store.enqueue(V, "q", 1, 12345)


async def test_enqueue_after_the_last_ack_dropped_the_message_raises(store: Store) -> None:
    declare(store, "q")
    publish(store, 1, b"x", ("q", 1))
    store.ack(V, "q", 1)
    with pytest.raises(StoreError):
        store.enqueue(V, "q", 2, 1)


# -- ack_range -----------------------------------------------------------------


async def test_ack_range_removes_exactly_the_range(store: Store, step: Settle) -> None:
    declare(store, "q", "other")
    for seq in range(1, 11):
        publish(store, seq, b"m%d" % seq, ("q", seq))
    publish(store, 100, b"shared", ("q", 11), ("other", 1))
    publish(store, 101, b"shared-in-range", ("q", 12), ("other", 2))
    await step(store)
    store.ack_range(V, "q", 3, 7)
    store.ack_range(V, "q", 12, 12)  # a one-entry range
    await step(store)
    assert await seqs(store, "q") == [1, 2, 8, 9, 10, 11]
    assert await seqs(store, "other") == [1, 2]  # same seqs, other queue: untouched
    # Bodies only the range referenced are gone; a shared one stays.
    assert await store.read_queue(V, "other", 1, 1) == [StoredEntry(2, 101, b"shared-in-range")]
    assert await store.queue_stats(V, "q") == (6, 2 + 2 + 2 + 2 + 3 + 6, 11)
    store.ack_range(V, "q", 1, 1_000_000)
    store.ack_range(V, "other", 1, 2)
    await step(store)
    assert await store.queue_stats(V, "q") == (0, 0, 0)
    assert await store.max_message_id() == 0


async def test_ack_range_no_ops(store: Store, step: Settle) -> None:
    declare(store, "q")
    for seq in (5, 6, 7):
        publish(store, seq, b"x", ("q", seq))
    await step(store)
    store.ack_range(V, "q", 7, 5)  # first > last
    store.ack_range(V, "q", 1, 4)  # below
    store.ack_range(V, "q", 8, 100)  # above
    store.ack_range(V, "nope", 1, 100)  # unknown queue
    await step(store)
    assert await seqs(store, "q") == [5, 6, 7]


async def test_ack_range_then_enqueue_in_the_range_is_kept(store: Store, step: Settle) -> None:
    """The range is a barrier: an enqueue queued after it must survive it."""
    declare(store, "q")
    for seq in range(1, 11):
        publish(store, seq, b"old", ("q", seq))
    await step(store)  # settled: the range is on disk; unsettled: in the same batch
    store.ack_range(V, "q", 1, 10)
    publish(store, 20, b"new", ("q", 5))
    publish(store, 21, b"newer", ("q", 10))
    store.ack(V, "q", 10)  # acks after the range still work on what follows it
    await step(store)
    assert await store.read_queue(V, "q", 0, 100) == [StoredEntry(5, 20, b"new")]
    assert await store.max_message_id() == 20


async def test_enqueue_then_ack_range_is_removed(store: Store, step: Settle) -> None:
    declare(store, "q")
    publish(store, 1, b"before", ("q", 1))
    await step(store)
    publish(store, 2, b"in-range", ("q", 2))
    publish(store, 3, b"after-range", ("q", 9))
    store.ack_range(V, "q", 1, 5)
    publish(store, 4, b"later", ("q", 3))
    await step(store)
    assert await store.read_queue(V, "q", 0, 100) == [
        StoredEntry(3, 4, b"later"),
        StoredEntry(9, 3, b"after-range"),
    ]
    assert await store.max_message_id() == 4  # 1 and 2 went with their entries


async def test_ack_range_forgets_delivery_marks_of_its_entries(store: Store, step: Settle) -> None:
    declare(store, "q")
    publish(store, 1, b"a", ("q", 1))
    publish(store, 2, b"b", ("q", 2))
    await step(store)
    store.mark_delivered(V, "q", 1, 3)
    store.mark_delivered(V, "q", 2, 4)
    store.ack_range(V, "q", 1, 1)
    publish(store, 3, b"again", ("q", 1))  # a new entry at seq 1 was never delivered
    await step(store)
    entries = await store.read_queue(V, "q", 0, 10)
    assert [(e.seq, e.message_id, e.delivery_count) for e in entries] == [(1, 3, 0), (2, 2, 4)]


# -- retention -----------------------------------------------------------------


async def test_expires_at_is_read_back(store: Store, step: Settle) -> None:
    declare(store, "q")
    publish(store, 1, b"a", ("q", 1))  # default: never
    publish_expiring(store, "q", [(2, 1_700_000_000.25), (3, 0.0), (4, 5)])
    await step(store)
    entries = await store.read_queue(V, "q", 0, 10)
    assert [(e.seq, e.expires_at) for e in entries] == [
        (1, 0.0),
        (2, 1_700_000_000.25),
        (3, 0.0),
        (4, 5.0),
    ]
    assert all(isinstance(e.expires_at, float) for e in entries)
    assert entries[0] == StoredEntry(1, 1, b"a")


@pytest.mark.parametrize("bad", [-1.0, -1e-9, math.nan, math.inf, -math.inf])
async def test_enqueue_refuses_a_bad_expires_at(store: Store, bad: float) -> None:
    declare(store, "q")
    store.put_message(1, b"x")
    with pytest.raises(ValueError, match="expires_at"):
        store.enqueue(V, "q", 1, 1, bad)
    store.enqueue(V, "q", 2, 1, 0)  # the store is still fine
    assert await seqs(store, "q") == [2]


async def test_expire_removes_due_entries_only(store: Store, step: Settle) -> None:
    declare(store, "q", "other")
    publish_expiring(store, "q", [(1, 0), (2, 10), (3, 20), (4, 30), (5, 15)])
    store.put_message(100, b"shared")
    store.enqueue(V, "q", 6, 100, 12)
    store.enqueue(V, "other", 1, 100, 0)
    store.put_message(101, b"other")
    store.enqueue(V, "other", 2, 101, 1)
    await step(store)
    assert await store.expire(V, "q", 15) == 3  # 10, 12 and 15: expires_at <= now
    assert await seqs(store, "q") == [1, 3, 4]
    assert await seqs(store, "other") == [1, 2]  # expired too, but not asked for
    assert await store.expire(V, "q", 15) == 0
    assert await store.expire(V, "q", 19.999) == 0
    ids = [e.message_id for e in await store.read_queue(V, "other", 0, 10)]
    assert ids == [100, 101]  # the shared body stayed with its other entry
    assert await store.queue_stats(V, "q") == (3, 6, 4)  # bodies 2 and 5 are gone
    assert await store.expire(V, "q", 1e18) == 2
    assert await seqs(store, "q") == [1]  # 0: never
    assert await store.expire(V, "other", 1e18) == 1
    store.ack(V, "other", 1)
    store.ack(V, "q", 1)
    await step(store)
    assert await store.max_message_id() == 0


async def test_expire_takes_the_earliest_first_up_to_limit(store: Store, step: Settle) -> None:
    declare(store, "q")
    publish_expiring(store, "q", [(1, 50), (2, 10), (3, 30), (4, 10), (5, 20), (6, 99)])
    await step(store)
    assert await store.expire(V, "q", 60, limit=2) == 2  # 10 and 10, ties by seq
    assert await seqs(store, "q") == [1, 3, 5, 6]
    assert await store.expire(V, "q", 60, limit=1) == 1  # 20
    assert await seqs(store, "q") == [1, 3, 6]
    assert await store.expire(V, "q", 60, limit=0) == 0
    assert await store.expire(V, "q", 60) == 2  # 30 and 50; 99 is not due
    assert await seqs(store, "q") == [6]


async def test_expire_of_unknown_or_empty_queues(store: Store, step: Settle) -> None:
    declare(store, "q", "empty")
    publish_expiring(store, "q", [(1, 1)])
    await step(store)
    assert await store.expire(V, "nope", 100) == 0
    assert await store.expire("no-vhost", "q", 100) == 0
    assert await store.expire(V, "empty", 100) == 0
    store.delete_queue(V, "q")
    await step(store)
    assert await store.expire(V, "q", 100) == 0


async def test_expire_sees_what_was_queued_before_it(store: Store, step: Settle) -> None:
    declare(store, "q")
    await step(store)
    publish_expiring(store, "q", [(1, 5), (2, 50)])
    store.mark_delivered(V, "q", 2, 1)
    # No step: with SQLite these are still gathering, and must be written first.
    assert await store.expire(V, "q", 10) == 1
    entries = await store.read_queue(V, "q", 0, 10)
    assert [(e.seq, e.delivery_count) for e in entries] == [(2, 1)]
    assert await store.max_message_id() == 2


async def test_expire_does_not_touch_what_is_queued_after_it(store: Store, step: Settle) -> None:
    """Changes made while an expire is under way come after it, as in call order."""
    declare(store, "q")
    publish_expiring(store, "q", [(1, 5), (2, 5), (3, 50)])
    await step(store)
    publish_expiring(store, "q", [(4, 5)])  # before the call: expired
    task = asyncio.ensure_future(store.expire(V, "q", 10))
    await asyncio.sleep(0)  # the call is made
    publish_expiring(store, "q", [(5, 5)])  # after the call: kept, though due
    store.ack(V, "q", 4)  # after the call: the expire already removed it
    store.ack(V, "q", 3)
    assert await task == 3  # 1, 2 and 4
    await step(store)
    assert await seqs(store, "q") == [5]
    assert await store.expire(V, "q", 10) == 1
    assert await store.max_message_id() == 0


async def test_expire_in_the_middle_of_one_loop_iteration(store: Store, settle: Settle) -> None:
    """Changes just before and just after the call, all before the store can flush.

    The loop runs, in this order: the expire's first step (the call), then
    `after`, then anything the store scheduled. So with SQLite the enqueue of
    4 is still gathering when `after` acks it: that ack comes after the
    expire and must not cancel the enqueue the expire removes and counts.
    """
    declare(store, "q")
    publish_expiring(store, "q", [(1, 5), (2, 50)])
    await settle(store)

    def after() -> None:
        publish_expiring(store, "q", [(5, 5)])  # due, but after the call: kept
        store.ack(V, "q", 4)  # already expired: a no-op
        store.ack(V, "q", 2)

    task = asyncio.ensure_future(store.expire(V, "q", 10))
    asyncio.get_running_loop().call_soon(after)
    publish_expiring(store, "q", [(3, 0), (4, 5)])  # before the call: 4 is expired
    assert await task == 2  # 1 and 4
    await settle(store)
    assert await seqs(store, "q") == [3, 5]
    assert await store.max_message_id() == 5


async def test_expire_with_other_removals(store: Store, step: Settle) -> None:
    declare(store, "q")
    publish_expiring(store, "q", [(seq, seq) for seq in range(1, 11)])
    await step(store)
    store.ack(V, "q", 1)
    store.ack_range(V, "q", 2, 4)
    assert await store.expire(V, "q", 6) == 2  # 5 and 6: acked ones are not counted
    store.purge_queue(V, "q")
    publish_expiring(store, "q", [(11, 1)])
    assert await store.expire(V, "q", 6) == 1
    await step(store)
    assert await store.queue_stats(V, "q") == (0, 0, 0)
    assert await store.max_message_id() == 0


# -- durability ------------------------------------------------------------------


async def test_when_durable_fires_in_order_after_data_is_readable(
    store: Store, settle: Settle
) -> None:
    declare(store, "q")
    fired: list[tuple[str, BaseException | None, bool]] = []
    publish(store, 1, b"one", ("q", 1))
    store.when_durable(lambda e: fired.append(("a", e, store.pending)))
    publish(store, 2, b"two", ("q", 2))
    store.when_durable(lambda e: fired.append(("b", e, store.pending)))
    store.when_durable(lambda e: fired.append(("c", e, store.pending)))
    await settle(store)
    assert fired == [("a", None, False), ("b", None, False), ("c", None, False)]
    assert not store.pending
    assert await seqs(store, "q") == [1, 2]


async def test_when_durable_with_nothing_pending_is_synchronous(
    store: Store, settle: Settle
) -> None:
    declare(store, "q")
    await settle(store)
    fired: list[BaseException | None] = []
    store.when_durable(fired.append)
    assert fired == [None]


async def test_delivery_marks_hold_no_callback(store: Store, settle: Settle) -> None:
    declare(store, "q")
    publish(store, 1, b"a", ("q", 1))
    await settle(store)
    store.mark_delivered(V, "q", 1, 1)
    assert not store.pending
    fired: list[BaseException | None] = []
    store.when_durable(fired.append)
    assert fired == [None]
    # ... and yet the mark is read back.
    assert [e.delivery_count for e in await store.read_queue(V, "q", 0, 1)] == [1]


async def test_changes_after_close_are_refused(store: Store) -> None:
    declare(store, "q")
    await store.close()
    with pytest.raises(StoreError):
        store.put_vhost("x")
    with pytest.raises(StoreError):
        store.put_message(1, b"x")
    await store.close()  # idempotent


# -- protocol sessions ------------------------------------------------------------


async def test_sessions_round_trip(store: Store, step: Settle) -> None:
    declare(store)
    store.put_vhost("other")
    store.put_session(V, "mqtt", "c1", b"one")
    store.put_session(V, "mqtt", "c2", b"two")
    store.put_session("other", "mqtt", "c1", b"elsewhere")
    store.put_session(V, "stomp", "c1", b"not mqtt")
    await step(store)
    store.put_session(V, "mqtt", "c1", b"one, replaced")
    store.delete_session(V, "mqtt", "c2")
    store.delete_session(V, "mqtt", "never there")
    await step(store)
    got = sorted(await store.load_sessions("mqtt"), key=lambda r: (r.vhost, r.client_id))
    assert got == [
        SessionRecord(V, "mqtt", "c1", b"one, replaced"),
        SessionRecord("other", "mqtt", "c1", b"elsewhere"),
    ]
    assert await store.load_sessions("stomp") == [SessionRecord(V, "stomp", "c1", b"not mqtt")]
    assert await store.load_sessions("amqp") == []


async def test_delete_vhost_deletes_its_sessions_and_retained(store: Store, step: Settle) -> None:
    declare(store)
    store.put_vhost("gone")
    store.put_session("gone", "mqtt", "c", b"s")
    store.put_session(V, "mqtt", "c", b"kept")
    store.put_message(1, b"r1")
    store.put_message(2, b"r2")
    store.put_retained("gone", "t", 1)
    store.put_retained(V, "t", 2)
    await step(store)
    store.delete_vhost("gone")
    await step(store)
    assert await store.load_sessions("mqtt") == [SessionRecord(V, "mqtt", "c", b"kept")]
    assert await store.load_retained() == [RetainedRecord(V, "t", 2, b"r2")]
    assert await store.max_message_id() == 2  # body 1 went with its last reference


# -- retained messages --------------------------------------------------------------


async def test_retained_round_trip_and_replace(store: Store, step: Settle) -> None:
    declare(store)
    store.put_message(1, b"first")
    store.put_retained(V, "a/b", 1)
    store.put_message(2, b"other topic")
    store.put_retained(V, "a/c", 2)
    await step(store)
    store.put_message(3, b"second")
    store.put_retained(V, "a/b", 3)  # replaces 1, whose body goes
    await step(store)
    got = sorted(await store.load_retained(), key=lambda r: r.topic)
    assert got == [
        RetainedRecord(V, "a/b", 3, b"second"),
        RetainedRecord(V, "a/c", 2, b"other topic"),
    ]
    store.delete_retained(V, "a/c")
    store.delete_retained(V, "never")
    await step(store)
    assert await store.load_retained() == [RetainedRecord(V, "a/b", 3, b"second")]
    store.delete_retained(V, "a/b")
    await step(store)
    assert await store.load_retained() == []
    assert await store.max_message_id() == 0  # every body went with its reference


async def test_retained_body_outlives_its_queue_entries(store: Store, step: Settle) -> None:
    declare(store, "q")
    publish(store, 1, b"both", ("q", 1))
    store.put_retained(V, "t", 1)
    await step(store)
    store.ack(V, "q", 1)
    await step(store)
    assert await store.load_retained() == [RetainedRecord(V, "t", 1, b"both")]
    assert await seqs(store, "q") == []
    # and the entry's body stays while retained, then goes with the reference
    store.delete_retained(V, "t")
    await step(store)
    assert await store.max_message_id() == 0


async def test_retained_put_then_entry_acked_in_one_batch(store: Store, settle: Settle) -> None:
    """An ack in the same loop iteration cancels the enqueue, not the retained body."""
    declare(store, "q")
    store.put_message(1, b"m")
    store.put_retained(V, "t", 1)
    store.enqueue(V, "q", 1, 1)
    store.ack(V, "q", 1)
    await settle(store)
    assert await store.load_retained() == [RetainedRecord(V, "t", 1, b"m")]
    assert await seqs(store, "q") == []


async def test_retained_entry_of_a_message_kept_by_an_entry(store: Store, step: Settle) -> None:
    declare(store, "q")
    publish(store, 1, b"m", ("q", 1))
    store.put_retained(V, "t", 1)
    store.delete_retained(V, "t")
    await step(store)
    assert [e.data for e in await store.read_queue(V, "q", 0, 10)] == [b"m"]
    store.put_retained(V, "t", 1)
    store.put_retained(V, "t", 1)  # the same message again: still one reference kept
    store.ack(V, "q", 1)
    await step(store)
    assert await store.load_retained() == [RetainedRecord(V, "t", 1, b"m")]


async def test_put_retained_of_a_message_never_put_raises(store: Store) -> None:
    declare(store)
    with pytest.raises(StoreError):
        store.put_retained(V, "t", 99)


async def test_backup_copies_a_running_store(store: Store, tmp_path: Path) -> None:
    """A copy holds every change queued before it and opens as a store of its own."""
    from moorage.storage.sqlite import SQLiteStore

    destination = tmp_path / "copy" / "moorage.db"
    destination.parent.mkdir()
    if store.location is None:
        with pytest.raises(StoreError, match="nothing on disk"):
            await store.backup(destination)
        return
    store.put_vhost("v")
    store.put_queue(QueueRecord("v", "q"))
    store.put_message(1, b"kept")
    store.enqueue("v", "q", 1, 1)  # queued, maybe not yet written: the copy still has it
    size = await store.backup(destination)
    assert size == destination.stat().st_size > 0
    with pytest.raises(StoreError, match="exists"):
        await store.backup(destination)
    copy = SQLiteStore(destination)
    await copy.open()
    try:
        assert [q.name for q in (await copy.load_topology()).queues] == ["q"]
        assert [e.seq for e in await copy.read_queue("v", "q", 0, 10)] == [1]
    finally:
        await copy.close()
