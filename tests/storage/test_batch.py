"""The gathering batch on its own: no thread, no SQLite, a manual loop and clock.

`GatheringBatch` decides what goes into the next transaction and when the
`when_durable` callbacks fire. Here a `ManualLoop` stands in for the event
loop (callbacks run only when the test says so, time moves only when the test
moves it) and a list stands in for the writer's job queue: the test plays the
writer by completing the batches it was handed. So group commit, the ack
window and its end conditions, cancellation by acks and callback order are
checked step by step, without sleeping and whatever the machine's speed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from moorage.storage.sqlite.batch import Batch, GatheringBatch, Read, SQLiteStats
from moorage.storage.sqlite.statements import (
    ACK,
    ACK_RANGE,
    COLLECT_MESSAGE,
    ENQUEUE,
    EXPIRE,
    PURGE,
    PUT_EXCHANGE,
    PUT_MESSAGE,
)
from moorage.storage.store import StoreError

Q = 1  # a queue id
Q2 = 2


@dataclass
class _Handle:
    when: float
    callback: Callable[[], Any] | None
    order: int
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class ManualLoop:
    """The few loop methods the batch uses; nothing runs until `run` or `advance`."""

    now: float = 100.0
    handles: list[_Handle] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    _order: int = 0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], Any]) -> _Handle:
        self._order += 1
        handle = _Handle(when, callback, self._order)
        self.handles.append(handle)
        return handle

    def call_later(self, delay: float, callback: Callable[[], Any]) -> _Handle:
        return self.call_at(self.now + delay, callback)

    def call_soon(self, callback: Callable[[], Any]) -> _Handle:
        return self.call_at(float("-inf"), callback)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        self.errors.append(context)

    def run(self, iterations: int = 20) -> None:
        """Run up to `iterations` loop iterations of what is due now."""
        for _ in range(iterations):
            due = sorted(
                (h for h in self.handles if not h.cancelled and h.when <= self.now),
                key=lambda h: (h.when, h.order),
            )
            if not due:
                return
            for handle in due:
                self.handles.remove(handle)
                if not handle.cancelled and handle.callback is not None:
                    handle.callback()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.run()

    def next_timer(self) -> float | None:
        timers = [h.when for h in self.handles if not h.cancelled]
        return min(timers) if timers else None


class Harness:
    """A batch wired to a manual loop, with the test playing the writer thread."""

    def __init__(self, **kwargs: Any) -> None:
        self.loop = ManualLoop()
        self.jobs: list[Batch | Read] = []
        self.stats = SQLiteStats()
        self.batch = GatheringBatch(stats=self.stats, submit=self.jobs.append, **kwargs)
        self.batch.loop = self.loop  # type: ignore[assignment]
        self.batch.may_hold = True
        self.fired: list[tuple[str, BaseException | None]] = []

    def recorder(self, name: str) -> Callable[[BaseException | None], None]:
        return lambda error: self.fired.append((name, error))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.fired]

    def batches(self) -> list[Batch]:
        return [job for job in self.jobs if isinstance(job, Batch)]

    def complete(self, error: StoreError | None = None) -> Batch:
        """Play the writer: finish the oldest batch handed off."""
        batch = self.batches()[0]
        self.jobs.remove(batch)
        self.batch.batch_done(batch, error)
        return batch

    def deliver(self, seq: int, queue_id: int = Q) -> None:
        """A persistent message put, enqueued and handed to a consumer."""
        self.batch.put_message(seq, b"m%d" % seq)
        self.batch.enqueue(queue_id, seq, seq, 0.0)
        self.batch.mark_delivered(queue_id, seq, 1)


def kinds(batch: Batch) -> list[int]:
    return [op[0] for segment in batch.segments for op in segment.ops if op is not None]


# -- group commit ----------------------------------------------------------------


def test_one_loop_iteration_is_one_batch() -> None:
    h = Harness()
    for i in range(1, 51):
        h.batch.put_message(i, b"x")
        h.batch.enqueue(Q, i, i, 0.0)
    h.batch.when_durable(h.recorder("confirm"))
    assert h.jobs == []  # nothing leaves before the loop runs
    h.loop.run()
    [batch] = h.batches()
    assert kinds(batch) == [PUT_MESSAGE, ENQUEUE] * 50
    assert h.fired == []  # not before the commit
    assert h.batch.pending
    h.complete()
    assert h.fired == [("confirm", None)]
    assert not h.batch.pending


def test_changes_gather_while_a_batch_is_in_flight_and_go_on_its_completion() -> None:
    h = Harness()
    h.batch.put_message(1, b"x")
    h.batch.when_durable(h.recorder("1"))
    h.loop.run()
    for i in (2, 3):
        h.batch.put_message(i, b"x")
        h.batch.when_durable(h.recorder(str(i)))
        h.loop.run()
    assert len(h.batches()) == 1  # one in flight at a time
    h.complete()
    assert h.names == ["1"]
    h.loop.run()
    [second] = h.batches()
    assert [op[1][0] for op in second.segments[0].ops if op] == [2, 3]
    h.complete()
    assert h.names == ["1", "2", "3"]


def test_flush_delay_widens_the_batch() -> None:
    h = Harness(flush_delay=0.05)
    for i in range(1, 6):
        h.batch.put_message(i, b"x")
        h.loop.run()  # one loop iteration each
    assert h.jobs == []
    h.loop.advance(0.049)
    assert h.jobs == []
    h.loop.advance(0.001)
    [batch] = h.batches()
    assert len(kinds(batch)) == 5


def test_a_read_ends_the_flush_delay_at_once() -> None:
    h = Harness(flush_delay=10.0)
    h.batch.put_message(1, b"x")
    h.batch.add_read(Read(lambda conn: None, None))  # type: ignore[arg-type]
    h.loop.run()
    assert [type(job) for job in h.jobs] == [Batch, Read]


def test_when_durable_with_nothing_pending_fires_at_once() -> None:
    h = Harness()
    h.batch.when_durable(h.recorder("now"))
    assert h.fired == [("now", None)]


def test_a_callback_registered_while_only_a_batch_is_in_flight_joins_it() -> None:
    h = Harness()
    h.batch.put_message(1, b"x")
    h.loop.run()
    h.batch.when_durable(h.recorder("late"))
    assert h.fired == []
    h.complete()
    assert h.fired == [("late", None)]


def test_delivery_marks_ride_along_and_hold_no_callback() -> None:
    h = Harness()
    h.batch.mark_delivered(Q, 7, 2)
    assert not h.batch.pending
    h.batch.when_durable(h.recorder("now"))
    assert h.fired == [("now", None)]
    h.batch.put_message(1, b"x")
    h.loop.run()
    [batch] = h.batches()
    assert batch.segments[0].marks == {(Q, 7): 2}


def test_a_raising_callback_does_not_stop_the_others() -> None:
    h = Harness()
    h.batch.put_message(1, b"x")

    def boom(error: BaseException | None) -> None:
        raise RuntimeError("boom")

    h.batch.when_durable(boom)
    h.batch.when_durable(h.recorder("after"))
    h.loop.run()
    h.complete()
    assert h.names == ["after"]
    assert [e["exception"].args for e in h.loop.errors] == [("boom",)]


def test_a_read_goes_behind_the_gathering_batch() -> None:
    h = Harness()
    h.batch.put_message(1, b"x")
    read = Read(lambda conn: None, None)  # type: ignore[arg-type]
    h.batch.add_read(read)
    h.loop.run()
    assert [type(job) for job in h.jobs] == [Batch, Read]
    h.complete()
    idle_read = Read(lambda conn: None, None)  # type: ignore[arg-type]
    h.batch.add_read(idle_read)  # nothing gathering: straight to the writer
    assert h.jobs == [read, idle_read]


# -- failure and retry -------------------------------------------------------------


def test_a_failed_batch_reports_keeps_its_changes_and_is_retried_first() -> None:
    h = Harness()
    h.batch.put_message(1, b"x")
    h.batch.enqueue(Q, 1, 1, 0.0)
    h.batch.when_durable(h.recorder("first"))
    h.loop.run()
    error = StoreError("disk full")
    h.complete(error)
    assert h.fired == [("first", error)]
    assert h.batch.pending
    h.batch.put_message(2, b"y")
    h.batch.when_durable(h.recorder("second"))
    h.loop.run()
    [retry] = h.batches()
    assert [op[1][0] for op in retry.segments[0].ops if op][:1] == [1]
    assert len(retry.segments) == 2  # the failed changes, then the new ones
    h.complete()
    assert h.names == ["first", "second"]
    assert not h.batch.pending


def test_a_failed_batch_is_retried_by_the_timer_when_nothing_else_happens() -> None:
    h = Harness()
    h.batch.retry_interval = 2.0
    h.batch.put_message(1, b"x")
    h.loop.run()
    h.complete(StoreError("full"))
    h.loop.run()
    assert h.jobs == []
    assert h.loop.next_timer() == pytest.approx(h.loop.now + 2.0)
    h.loop.advance(2.0)
    assert len(h.batches()) == 1


def test_a_failed_expire_is_not_retried() -> None:
    h = Harness()
    h.batch.put_message(1, b"x")
    h.batch.expire(Q, 5.0, 10)
    h.loop.run()
    h.complete(StoreError("full"))
    h.loop.advance(h.batch.retry_interval)
    [retry] = h.batches()
    assert kinds(retry) == [PUT_MESSAGE]


def test_discard_unwritten_counts_what_close_loses() -> None:
    h = Harness()
    h.batch.put_message(1, b"x")
    h.batch.enqueue(Q, 1, 1, 0.0)
    h.loop.run()
    h.complete(StoreError("full"))
    h.batch.cancel_timers()
    assert h.batch.discard_unwritten() == 2
    assert not h.batch.pending


# -- cancellation by acks -----------------------------------------------------------


def test_an_ack_cancels_the_enqueue_and_the_put() -> None:
    h = Harness()
    h.batch.put_message(1, b"consumed at once")
    h.batch.enqueue(Q, 1, 1, 0.0)
    h.batch.ack(Q, 1)
    h.batch.put_message(2, b"fanned out")
    h.batch.enqueue(Q, 2, 2, 0.0)
    h.batch.enqueue(Q2, 1, 2, 0.0)
    h.batch.ack(Q, 2)  # message 2 is still referenced by Q2
    assert h.stats.ops_cancelled == 3
    h.loop.run()
    [batch] = h.batches()
    assert [op for op in batch.segments[0].ops if op] == [
        (PUT_MESSAGE, (2, b"fanned out")),
        (ENQUEUE, (Q2, 1, 2, 0.0)),
    ]


def test_everything_cancelled_confirms_without_a_write() -> None:
    h = Harness()
    h.batch.put_message(1, b"x")
    h.batch.enqueue(Q, 1, 1, 0.0)
    h.batch.when_durable(h.recorder("confirm"))
    h.batch.ack(Q, 1)
    assert h.batch.pending  # a callback is still owed
    h.loop.run()
    assert h.jobs == []
    assert h.fired == [("confirm", None)]


def test_an_ack_of_an_entry_whose_body_was_written_earlier_collects_the_body() -> None:
    h = Harness()
    h.batch.put_message(1, b"x")
    h.loop.run()
    h.complete()
    h.batch.enqueue(Q, 1, 1, 0.0)
    h.batch.ack(Q, 1)
    h.loop.run()
    [batch] = h.batches()
    assert [op for op in batch.segments[0].ops if op] == [(COLLECT_MESSAGE, (1,))]


def test_an_ack_of_a_written_entry_is_a_delete() -> None:
    h = Harness()
    h.batch.mark_delivered(Q, 1, 1)
    h.batch.ack(Q, 1)
    h.loop.run()
    [batch] = h.batches()
    assert [op for op in batch.segments[0].ops if op] == [(ACK, (Q, 1))]
    assert batch.segments[0].marks == {}  # the mark of a removed entry is dropped


def test_ack_range_and_purge_cancel_the_gathered_enqueues_they_cover() -> None:
    h = Harness()
    for seq in (1, 2, 3):
        h.deliver(seq)
    h.deliver(4, Q2)
    h.batch.ack_range(Q, 2, 3)
    h.batch.cancel_queue_entries(Q2)
    h.batch.append(PURGE, (Q2,))
    h.loop.run()
    [batch] = h.batches()
    assert [op for op in batch.segments[0].ops if op] == [
        (PUT_MESSAGE, (1, b"m1")),
        (ENQUEUE, (Q, 1, 1, 0.0)),
        (ACK_RANGE, (Q, 2, 3)),
        (PURGE, (Q2,)),
    ]
    assert batch.segments[0].marks == {(Q, 1): 1}


def test_a_second_put_of_one_message_replaces_the_first() -> None:
    h = Harness()
    h.batch.put_message(1, b"old")
    h.batch.enqueue(Q, 1, 1, 0.0)
    h.batch.put_message(1, b"new")
    h.batch.ack(Q, 1)  # the references moved to the new put: it goes too
    h.loop.run()
    assert h.jobs == []


def test_an_enqueue_of_a_message_never_put_is_refused() -> None:
    h = Harness()
    with pytest.raises(StoreError, match="never put"):
        h.batch.enqueue(Q, 1, 99, 0.0)
    h.batch.put_message(1, b"x")
    h.batch.enqueue(Q, 1, 1, 0.0)
    h.batch.ack(Q, 1)  # the put is dropped from the batch
    with pytest.raises(StoreError, match="never put"):
        h.batch.enqueue(Q, 2, 1, 0.0)


def test_a_retained_reference_pins_the_put() -> None:
    h = Harness()
    h.batch.put_message(1, b"x")
    h.batch.enqueue(Q, 1, 1, 0.0)
    h.batch.put_retained("/", "a/b", 1)
    h.batch.ack(Q, 1)
    h.loop.run()
    [batch] = h.batches()
    assert kinds(batch)[0] == PUT_MESSAGE


def test_an_expire_starts_cancellation_afresh() -> None:
    """A later ack cannot unwrite an enqueue the expire is to see."""
    h = Harness()
    h.batch.put_message(1, b"x")
    h.batch.enqueue(Q, 1, 1, 1.0)
    h.batch.expire(Q, 2.0, 10)
    h.batch.ack(Q, 1)
    h.loop.run()
    [batch] = h.batches()
    assert kinds(batch) == [PUT_MESSAGE, ENQUEUE, EXPIRE, ACK]


# -- the ack window ----------------------------------------------------------------


def windowed(window: float = 0.5, **kwargs: Any) -> Harness:
    h = Harness(ack_window=window, **kwargs)
    h.batch.held_max_age = 30.0
    return h


def test_an_ack_within_the_window_confirms_without_a_write() -> None:
    h = windowed()
    for seq in (1, 2, 3):
        h.deliver(seq)
    h.batch.when_durable(h.recorder("confirm"), removals=False)
    h.loop.run()
    assert h.jobs == []  # held
    assert h.fired == []
    for seq in (1, 2, 3):
        h.batch.ack(Q, seq)
    h.loop.run()
    assert h.fired == [("confirm", None)]
    assert h.jobs == []
    assert h.stats.ops_cancelled == 6


def test_held_callbacks_fire_in_order_as_their_messages_are_acked() -> None:
    h = windowed()
    h.deliver(1)
    h.batch.when_durable(h.recorder("first"), removals=False)
    h.deliver(2)
    h.batch.when_durable(h.recorder("second"), removals=False)
    h.batch.ack(Q, 2)  # the later message first: nothing may fire yet
    h.loop.run()
    assert h.fired == []
    h.batch.ack(Q, 1)
    h.loop.run()
    assert h.names == ["first", "second"]


def test_the_hold_ends_when_the_oldest_callback_is_window_old() -> None:
    h = windowed(0.5)
    h.deliver(1)
    h.batch.when_durable(h.recorder("confirm"), removals=False)
    h.loop.run()
    assert h.loop.next_timer() == pytest.approx(h.loop.now + 0.5)
    h.loop.advance(0.499)
    assert h.jobs == []
    h.loop.advance(0.001)
    [batch] = h.batches()
    assert kinds(batch) == [PUT_MESSAGE, ENQUEUE]
    h.complete()
    assert h.fired == [("confirm", None)]
    h.batch.ack(Q, 1)  # written by then: an ordinary ack (held, as removals are)
    h.loop.run()
    assert h.jobs == []
    h.batch.when_durable(h.recorder("strict"))  # until someone waits for it
    h.loop.run()
    [batch] = h.batches()
    assert kinds(batch) == [ACK]


def test_a_held_batch_without_callbacks_is_written_at_its_max_age() -> None:
    h = windowed(0.5)
    h.batch.held_max_age = 2.0
    h.deliver(1)
    h.loop.run()
    h.loop.advance(1.999)
    assert h.jobs == []
    h.loop.advance(0.001)
    assert len(h.batches()) == 1


def test_a_held_batch_is_written_at_its_max_ops() -> None:
    h = windowed()
    h.batch.held_max_ops = 10
    for seq in range(1, 6):
        h.deliver(seq)
    h.loop.run()
    assert len(h.batches()) == 1  # 10 live changes: not held


@pytest.mark.parametrize(
    "end_the_hold",
    [
        pytest.param(lambda b: b.put_message(9, b"x") or b.enqueue(Q, 9, 9, 0.0), id="undelivered"),
        pytest.param(lambda b: b.append(PUT_EXCHANGE, ("/", "x")), id="topology"),
        pytest.param(lambda b: b.when_durable(lambda e: None), id="strict-callback"),
        pytest.param(lambda b: b.add_read(Read(lambda c: None, None)), id="read"),
        pytest.param(lambda b: b.expire(Q, 1.0, 10), id="expire"),
    ],
)
def test_the_hold_ends_at_the_next_iteration(end_the_hold: Callable[[GatheringBatch], Any]) -> None:
    h = windowed()
    h.deliver(1)
    h.batch.when_durable(h.recorder("confirm"), removals=False)
    h.loop.run()
    assert h.jobs == []  # held
    end_the_hold(h.batch)
    h.loop.run(iterations=1)
    assert len(h.batches()) == 1


def test_a_confirm_passes_over_earlier_acks_but_a_strict_callback_waits() -> None:
    h = windowed()
    h.batch.put_message(1, b"x")
    h.batch.enqueue(Q, 1, 1, 0.0)
    h.loop.run()
    h.complete()
    h.batch.ack(Q, 1)  # a removal of a written entry, in the batch
    h.deliver(2)
    h.batch.when_durable(h.recorder("confirm"), removals=False)
    h.batch.ack(Q, 2)
    h.loop.run()
    assert h.fired == [("confirm", None)]  # the ack of 1 need not be on disk
    assert h.jobs == []  # the ack itself is held
    h.batch.when_durable(h.recorder("strict"))  # a receipt waits for it
    h.loop.run()
    [batch] = h.batches()
    assert kinds(batch) == [ACK]
    assert h.names == ["confirm"]
    h.complete()
    assert h.names == ["confirm", "strict"]


def test_no_held_confirm_fires_while_an_earlier_batch_is_in_flight() -> None:
    h = windowed()
    h.batch.append(PUT_EXCHANGE, ("/", "x"))
    h.loop.run()
    assert len(h.batches()) == 1  # in flight
    h.deliver(1)
    h.batch.when_durable(h.recorder("confirm"), removals=False)
    h.batch.ack(Q, 1)
    h.loop.run()
    assert h.fired == []  # the exchange is not on disk yet
    h.complete()
    h.loop.run()
    assert h.fired == [("confirm", None)]
    assert h.jobs == []


def test_no_hold_once_the_store_closes() -> None:
    h = windowed()
    h.batch.may_hold = False
    h.deliver(1)
    h.loop.run()
    assert len(h.batches()) == 1
