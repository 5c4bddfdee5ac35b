"""The gathering batch: what the loop collects for the next transaction, and when it goes.

Owns the loop-side half of group commit: the operations gathered since the
last hand-off, their cancellation, the ack-window hold, the `when_durable`
callbacks and their order, and the retry of a failed batch. It runs on the
event loop only and never touches SQLite: it hands a `Batch` (and the reads
queued behind it; both defined in `jobs`) to `submit`, the writer thread's
job queue, and learns the outcome through `batch_done`. The loop it
schedules on is an input, so a test can drive it with a manual clock and no
thread (`tests/storage/test_batch.py`).

Group commit
------------
Every mutating call appends one small tuple to the gathering batch and, unless
a flush is already scheduled, schedules one with `loop.call_soon` (or
`loop.call_later(flush_delay)`). So everything the broker does in one loop
iteration ends up in one batch. Only one batch is in flight: while the writer
works, the next batch keeps gathering, and it is handed off as soon as the
previous one completes. The slower the disk, the bigger the batches. Nothing
bounds the gathering batch: the broker bounds it by waiting for confirms
(publisher flow control), not the store.

`flush_delay` is the group-commit window (mosquitto's `flush_period`): 0
writes at the next loop iteration; a positive value waits that many seconds
first, trading confirm latency for bigger batches.

Reads are queued *behind* every change made before them: a read forces the
gathering batch out at once and is submitted right after it.

Cancellation
------------
An `ack` of an entry whose `enqueue` is still in the gathering batch (not
yet handed to the writer) deletes both operations from the batch, and the
message's `put_message` too when no other operation of the batch references
it. A message consumed and acked within one group-commit window therefore
never touches the disk. `ack_range`, `purge_queue`, `delete_queue` and
`delete_vhost` cancel the batch's enqueues of the entries they remove in the
same way (and still run their DELETE, for what earlier batches wrote).
`stats.ops_cancelled` counts what was dropped.

`expire` is an operation of the gathering batch like any other, and a
barrier for the writer (see `statements.py`). At the call the batch's
cancellation maps are reset, as at a flush, so a later `ack` cannot unwrite an
enqueue the expire was to see (the count it returns is then exactly
`MemoryStore`'s). If the batch fails, the expire is removed from the changes
kept for the retry (its caller got the `StoreError`; nobody would hear a
second result).

`mark_delivered` only records a redelivery flag: it rides along with the
next batch and never holds up `when_durable` (a crash loses at most a flag).

Ack window (`ack_window`, seconds, 0 = off)
-------------------------------------------
Most persistent messages of a busy broker go straight to a consumer and are
acked milliseconds later, so writing them only to delete them again is most
of the disk work. RabbitMQ confirms such a message on the consumer's ack and
never writes it. Here the batch is *held* while every live change in it is a
message out to a consumer (its put and an enqueue that `mark_delivered`
reported; the core reports every delivery of a persistent entry that awaits
an ack) or an entry removal. An ack then cancels the write as above, and a
`when_durable` callback fires as soon as every change queued before it is
cancelled: the publisher's confirm follows the ack. Any other change (an
enqueue nobody was given, topology, sessions, a read, an expire) ends the
hold at the next loop iteration, and so does a callback that also waits for
removals (every caller but publisher confirms: a declare-ok, a tx.commit-ok
or a receipt is not held back), the oldest waiting callback turning
`ack_window` old, the batch turning `held_max_age` old or holding
`held_max_ops` live changes: then the batch is written as usual. A crash
during a hold loses only what no callback has reported durable.

Ordering rules
--------------
- Callbacks run on the loop, in registration order, each *after* the commit
  of every change queued before it returned (in "fsync" mode: after the WAL
  was fsynced), or once those changes were all cancelled.
- A held callback only fires while no earlier batch is in flight or failed,
  so a confirm never overtakes an unwritten message.
- `when_durable(removals=False)` (publisher confirms) also passes over acks
  queued before it, which only decide whether a message is redelivered after
  a crash; every other caller waits for them.
- A failed batch is rolled back by the writer; every callback of that batch
  is called with the `StoreError`, and its operations are kept, in order, at
  the head of the next batch, tried at the next flush (any new change, a
  `when_durable`, or a timer every `retry_interval` seconds). `pending` stays
  true until they are written, and every callback registered meanwhile gets
  the error too if the retry fails again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from moorage.storage.sqlite.jobs import Batch, DurabilityGate, Read, Segment, SQLiteStats
from moorage.storage.sqlite.statements import (
    ACK,
    ACK_RANGE,
    COLLECT_MESSAGE,
    ENQUEUE,
    EXPIRE,
    HOT_KINDS,
    PUT_MESSAGE,
    PUT_RETAINED,
    REMOVAL_KINDS,
    ExpireResult,
    Op,
    Params,
)
from moorage.storage.store import DurabilityCallback, StoreError

# re-exported: they were defined here before `jobs` held them
__all__ = ["Batch", "DurabilityGate", "GatheringBatch", "Read", "SQLiteStats", "Segment"]


@dataclass(slots=True)
class _Waiting:
    """A `when_durable` callback of the gathering batch, and what it waits for."""

    callback: DurabilityCallback
    mark: int
    """How many ops the batch had when it was registered: it waits for those."""
    removals: bool
    since: float
    """loop.time() of the registration."""


class GatheringBatch:
    """The operations gathered on the loop for the next transaction (see the module docs).

    Args:
        stats: the store's counters (`ops_cancelled` is counted here).
        submit: hands a job to the writer thread, which runs jobs in order.
        flush_delay: group-commit window in seconds.
        ack_window: seconds a delivered message may wait for its ack; 0: off.

    `loop` is set by the store when it opens; until then nothing is scheduled.
    Every method runs on that loop.
    """

    retry_interval: float = 1.0
    """Seconds between retries of a failed batch while nothing else triggers a flush."""
    marks_flush_threshold: int = 10_000
    """Gathered delivery marks that force a flush even with no other change."""
    held_max_age: float = 1.0
    """Seconds a batch held for acks may gather before it is written all the same."""
    held_max_ops: int = 50_000
    """Live operations past which a held batch is written all the same."""

    def __init__(
        self,
        *,
        stats: SQLiteStats,
        submit: Callable[[Batch | Read], None],
        flush_delay: float = 0.0,
        ack_window: float = 0.0,
    ) -> None:
        self.stats = stats
        self.flush_delay = flush_delay
        self.ack_window = ack_window
        self.loop: asyncio.AbstractEventLoop | None = None
        self.may_hold = False
        """False until the store is open and again from `close()` on: no hold then."""
        self.closed = False
        """Set once the writer is gone: nothing is handed off any more."""
        self.max_put_id = 0
        """The highest message id ever put (stored ones included)."""
        self.gate: DurabilityGate | None = None
        """Set while the store is replicated: successful callbacks go through it."""
        self._submit = submit

        self._ops: list[Op | None] = []
        self._marks: dict[tuple[int, int], int] = {}
        self._callbacks: list[_Waiting] = []
        self._reads: list[Read] = []
        self._live = 0  # ops in self._ops that are not cancelled
        # The ack window (see the module docs):
        self._urgent = 0  # ops of kinds that are never held
        self._undelivered: set[tuple[int, int]] = set()  # enqueues not out to a consumer
        self._settled = 0  # ops before this index are cancelled or removals
        self._cancelled_prefix = 0  # ops before this index are cancelled
        self._held_since: float | None = None  # when this batch was first held
        self._holding = False  # the flush handle is the end of a hold
        # Cancellation:
        self._enqueued: dict[tuple[int, int], int] = {}  # (queue_id, seq) -> op index
        self._batch_puts: dict[int, list[int]] = {}  # message id -> [op index, enqueues]
        self._dropped: set[int] = set()  # messages whose put this batch cancelled
        # Failed operations, written ahead of the gathering batch:
        self._retry: list[Segment] = []
        self._inflight: Batch | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._flush_is_delayed = False
        self._retry_handle: asyncio.TimerHandle | None = None

    # -- operations ----------------------------------------------------------

    def append(self, kind: int, params: Params) -> None:
        """Add one operation; schedule a flush, or look again at a running hold."""
        self._ops.append((kind, params))
        self._live += 1
        if kind not in HOT_KINDS:
            self._urgent += 1
        if self._flush_handle is None:
            self.schedule_flush()
        elif self._holding and (kind == ENQUEUE or kind not in HOT_KINDS):
            # Look again at the next iteration: an enqueue that is not
            # delivered by then, or an urgent change, ends the hold.
            self.schedule_flush(immediate=True)

    def put_message(self, message_id: int, data: bytes) -> None:
        """Add a message body; a second put of the same id in this batch replaces the first."""
        previous = self._batch_puts.get(message_id)
        enqueues = 0
        if previous is not None:  # put twice in one batch: the last body wins
            self._ops[previous[0]] = None
            self._live -= 1
            enqueues = previous[1]
        self._batch_puts[message_id] = [len(self._ops), enqueues]
        self._dropped.discard(message_id)
        self.max_put_id = max(self.max_put_id, message_id)
        self.append(PUT_MESSAGE, (message_id, data))

    def _reference(self, message_id: int) -> None:
        """Count a reference to a message put in this batch; refuse one known never put.

        The check is cheap and partial: it knows ids above the highest id
        ever put and messages dropped in this batch.
        """
        put = self._batch_puts.get(message_id)
        if put is None:
            if message_id > self.max_put_id or message_id in self._dropped:
                raise StoreError(f"message {message_id} was never put")
        else:
            put[1] += 1

    def enqueue(self, queue_id: int, seq: int, message_id: int, expires_at: float) -> None:
        """Add an entry. Raises StoreError if the message is known never to have been put."""
        self._reference(message_id)
        key = (queue_id, seq)
        self._enqueued[key] = len(self._ops)
        if self.ack_window:
            self._undelivered.add(key)
        self.append(ENQUEUE, (queue_id, seq, message_id, expires_at))

    def put_retained(self, vhost: str, topic: str, message_id: int) -> None:
        """Add a retained reference; it pins a put of this batch against cancellation."""
        self._reference(message_id)  # never decremented: not cancellable
        self.append(PUT_RETAINED, (vhost, topic, message_id))

    def ack(self, queue_id: int, seq: int) -> None:
        """Remove an entry: cancel its enqueue if it is still here, else add the delete."""
        key = (queue_id, seq)
        if key in self._enqueued:
            self._cancel_enqueue(key)
        else:
            self._marks.pop(key, None)
            self.append(ACK, key)

    def ack_range(self, queue_id: int, first_seq: int, last_seq: int) -> None:
        """Cancel the gathered enqueues in the range and add the range delete (a barrier)."""

        def in_range(key: tuple[int, int]) -> bool:
            return key[0] == queue_id and first_seq <= key[1] <= last_seq

        for key in [k for k in self._enqueued if in_range(k)]:
            self._cancel_enqueue(key)
        for key in [k for k in self._marks if in_range(k)]:
            del self._marks[key]
        self.append(ACK_RANGE, (queue_id, first_seq, last_seq))

    def mark_delivered(self, queue_id: int, seq: int, delivery_count: int) -> None:
        """Record a delivery count (rides along); the entry counts as out to a consumer."""
        key = (queue_id, seq)
        self._marks[key] = delivery_count
        self._undelivered.discard(key)
        if len(self._marks) >= self.marks_flush_threshold:
            self.schedule_flush()

    def cancel_queue_entries(self, queue_id: int) -> None:
        """Cancel every gathered enqueue and mark of a queue about to be purged or deleted."""
        for key in [k for k in self._enqueued if k[0] == queue_id]:
            self._cancel_enqueue(key)
        for key in [k for k in self._marks if k[0] == queue_id]:
            del self._marks[key]

    def expire(self, queue_id: int, now: float, limit: int) -> ExpireResult:
        """Add an expire (a barrier) and start the cancellation maps afresh.

        Later acks must not cancel (unwrite) enqueues the expire is to see,
        nor a later put_message cancel an earlier put: as if the batch had
        been flushed here. The writer leaves the deleted count in the result.
        """
        result = ExpireResult()
        self.append(EXPIRE, (queue_id, float(now), int(limit), result))
        self._enqueued, self._batch_puts = {}, {}
        self._undelivered = set()
        return result

    def _cancel_enqueue(self, key: tuple[int, int]) -> None:
        """Drop a not-yet-written enqueue, and its message's put if nothing else uses it."""
        index = self._enqueued.pop(key)
        op = self._ops[index]
        assert op is not None
        assert op[0] == ENQUEUE
        self._ops[index] = None
        self._live -= 1
        self.stats.ops_cancelled += 1
        self._marks.pop(key, None)
        self._undelivered.discard(key)
        if self._holding and (self._callbacks or not self._live):
            self.schedule_flush(immediate=True)  # callbacks may be settled now
        message_id: int = op[1][2]
        put = self._batch_puts.get(message_id)
        if put is None:
            # The body was written by an earlier batch: if this entry was its
            # last reference it has to go, as after a written ack.
            self.append(COLLECT_MESSAGE, (message_id,))
            return
        put[1] -= 1
        if put[1] == 0:
            self._ops[put[0]] = None
            self._live -= 1
            self.stats.ops_cancelled += 1
            del self._batch_puts[message_id]
            self._dropped.add(message_id)

    # -- callbacks and reads -------------------------------------------------

    def when_durable(self, callback: DurabilityCallback, *, removals: bool = True) -> None:
        """Call `callback(None)` once every change added so far is committed or cancelled.

        See `Store.when_durable`; with `removals=False` the acks added so far
        need not be committed. Called at once when nothing is pending.
        """
        if self._live or self._retry or self._callbacks:
            assert self.loop is not None
            self._callbacks.append(_Waiting(callback, len(self._ops), removals, self.loop.time()))
            if self._flush_handle is None:
                self.schedule_flush()
            elif self._holding and (removals or len(self._callbacks) == 1):
                self.schedule_flush(immediate=True)  # the hold ends now, or sooner
        elif self._inflight is not None and self._inflight.holds:
            self._inflight.callbacks.append(callback)
        elif self.gate is not None:
            self.gate.release([callback], None)
        else:
            callback(None)

    def add_read(self, read: Read) -> None:
        """Submit `read` behind every change added so far (forcing the batch out)."""
        if self._live or self._marks or self._retry or self._callbacks:
            self._reads.append(read)
            self.schedule_flush(immediate=True)
        else:  # behind any batch in flight, which is all it has to see
            self._submit(read)

    @property
    def pending(self) -> bool:
        """True while some change (other than a delivery mark) is not yet committed."""
        return bool(
            self._live
            or self._retry
            or self._callbacks
            or (self._inflight is not None and self._inflight.holds)
            or (self.gate is not None and self.gate.pending)
        )

    # -- hand-off ------------------------------------------------------------

    def schedule_flush(self, *, immediate: bool = False) -> None:
        """Arrange for `flush` to run (unless a batch is in flight: its completion will)."""
        loop = self.loop
        if loop is None or self._inflight is not None:
            return
        if self._flush_handle is not None:
            if not (immediate and self._flush_is_delayed):
                return
            self._flush_handle.cancel()
        self._holding = False
        if self.flush_delay > 0 and not immediate:
            self._flush_handle = loop.call_later(self.flush_delay, self.flush)
            self._flush_is_delayed = True
        else:
            self._flush_handle = loop.call_soon(self.flush)
            self._flush_is_delayed = False

    def flush(self) -> None:
        """Hand the gathering batch (after any failed one) to the writer, unless it is held."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._holding = False
        if self._inflight is not None or self.closed:
            return
        if self.ack_window and self._live and self._hold():
            return
        callbacks = [waiting.callback for waiting in self._callbacks]
        reads = self._reads
        segments = list(self._retry)
        if self._live or self._marks:
            segments.append(Segment(self._ops, self._marks))
        holds = bool(self._live or self._retry)
        self._ops, self._marks, self._callbacks, self._reads = [], {}, [], []
        self._live = self._urgent = self._settled = self._cancelled_prefix = 0
        self._enqueued, self._batch_puts, self._dropped = {}, {}, set()
        self._undelivered = set()
        self._held_since = None
        self._retry = []
        if segments:
            self._inflight = Batch(segments, callbacks, holds)
            self._submit(self._inflight)
        for read in reads:  # behind the batch, so they see it
            self._submit(read)
        if not segments:
            # Everything was cancelled: nothing to wait for.
            self._release(callbacks, None)

    def _hold(self) -> bool:
        """Fire the callbacks that cancellations settled; True if the rest may wait for acks.

        A batch is held only while each of its live changes is a message
        out to a consumer (its put and enqueue), or the removal of an entry,
        while every callback waiting for it is a confirm (`removals=False`),
        and only until its oldest waiting callback is `ack_window` old, it
        is `held_max_age` old, or it has `held_max_ops` live changes.
        """
        self._fire_settled()
        if (
            self._urgent
            or self._undelivered
            or self._reads
            or self._retry
            or not self.may_hold
            or self._live >= self.held_max_ops
            or any(waiting.removals for waiting in self._callbacks)
        ):
            return False
        assert self.loop is not None
        now = self.loop.time()
        if self._held_since is None:
            self._held_since = now
        deadline = self._held_since + self.held_max_age
        if self._callbacks:
            deadline = min(deadline, self._callbacks[0].since + self.ack_window)
        if now >= deadline:
            return False
        if self._flush_handle is not None:  # scheduled by a callback just fired
            self._flush_handle.cancel()
        self._flush_handle = self.loop.call_at(deadline, self.flush)
        self._flush_is_delayed = self._holding = True
        return True

    def _fire_settled(self) -> None:
        """Call, in order, the leading callbacks whose changes were all cancelled.

        Only while nothing older is unwritten: no batch in flight that
        callbacks wait for, no failed batch to retry. A callback registered
        with `removals=False` also passes over entry removals (acks).
        """
        if not self._callbacks or self._retry or (self._inflight and self._inflight.holds):
            return
        ops = self._ops
        end = len(ops)
        cancelled = self._cancelled_prefix
        while cancelled < end and ops[cancelled] is None:
            cancelled += 1
        self._cancelled_prefix = cancelled
        settled = max(self._settled, cancelled)
        while settled < end:
            op = ops[settled]
            if op is not None and op[0] not in REMOVAL_KINDS:
                break
            settled += 1
        self._settled = settled
        ready = 0
        for waiting in self._callbacks:
            if waiting.mark > (cancelled if waiting.removals else settled):
                break
            ready += 1
        if ready:
            fired = self._callbacks[:ready]
            del self._callbacks[:ready]
            self._release([waiting.callback for waiting in fired], None)

    def batch_done(self, batch: Batch, error: StoreError | None) -> None:
        """On the loop: a batch committed or failed. Run its callbacks, send the next."""
        self._inflight = None
        if error is not None and batch.holds:
            # Keep the failed changes, in order, ahead of what gathered since.
            # (A batch of delivery marks only is dropped: they may be lost.)
            # An `expire` is not retried: its caller was told it failed.
            for segment in batch.segments:
                ops = segment.ops
                for i, op in enumerate(ops):
                    if op is not None and op[0] == EXPIRE:
                        ops[i] = None
            self._retry = [
                s for s in batch.segments if s.marks or any(op is not None for op in s.ops)
            ]
        if error is None:
            self._release(batch.callbacks, batch.number)
        else:
            self._fire(batch.callbacks, error)
        if self.closed:
            return
        if (
            self._live
            or self._callbacks
            or self._reads
            or (len(self._marks) >= self.marks_flush_threshold)
        ):
            self.schedule_flush()
        elif self._retry and self.loop is not None:
            if self._retry_handle is not None:
                self._retry_handle.cancel()
            self._retry_handle = self.loop.call_later(self.retry_interval, self.schedule_flush)

    def _release(self, callbacks: list[DurabilityCallback], after: int | None) -> None:
        """Successful callbacks: now, or through the gate (after batch `after`)."""
        if self.gate is None:
            self._fire(callbacks, None)
        elif callbacks or after is not None:
            self.gate.release(callbacks, after)

    def _fire(self, callbacks: list[DurabilityCallback], error: StoreError | None) -> None:
        """Call each callback in order; one raising must not stop the others."""
        for callback in callbacks:
            try:
                callback(error)
            except Exception as exc:  # noqa: BLE001 - reported to the loop's handler
                assert self.loop is not None
                self.loop.call_exception_handler(
                    {"message": "exception in a when_durable callback", "exception": exc}
                )

    # -- closing -------------------------------------------------------------

    def cancel_timers(self) -> None:
        """Cancel the scheduled flush and retry (the store is closing)."""
        for handle in (self._flush_handle, self._retry_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._retry_handle = None

    def discard_unwritten(self) -> int:
        """Forget the changes of a failed batch that were never written; return how many."""
        lost = sum(1 for s in self._retry for op in s.ops if op is not None)
        self._retry = []
        return lost
