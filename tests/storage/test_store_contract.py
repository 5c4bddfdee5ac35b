"""The `Store` contract, run against every implementation (see conftest `store`).

Each test runs twice: `settled` waits for `when_durable` between steps (so a
SQLite store writes each step separately), `unsettled` queues everything in
one loop iteration (so a SQLite store sees it in one batch and may cancel
an enqueue by a later ack). Both must give the same answers.
"""

from __future__ import annotations

import pytest

from storage.store import (
    BindingRecord,
    ExchangeRecord,
    QueueRecord,
    Store,
    StoredEntry,
    StoreError,
)
from tests.storage.conftest import Settle

pytestmark = pytest.mark.timeout(20)

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
