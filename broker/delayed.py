"""Delayed delivery: the `x-delayed-message` exchange type and `x-delivery-delay`.

Theory of operation
-------------------
A `DelayScheduler` holds messages until they are due and then hands each one
to its `release` callback: a delayed exchange routes it (with its
`x-delayed-type` routing table), a queue with `x-delivery-delay` enqueues it.

Millions of delayed messages with bounded memory: a persistent message on a
durable exchange or queue is written to a hidden store queue
(`amq.moorage.delay.x.<exchange>` or `amq.moorage.delay.q.<queue>`) whose
*seq is the due time*: `due_ms << 21 | counter`. The store reads a queue back
in seq order, so reading it from the start yields messages in due order, and
the scheduler keeps only a window of the earliest ones in memory:

- `window`: persistent entries, sorted by seq; it holds *every* stored entry
  with seq <= `horizon` (and maybe some later ones). Past `WINDOW_MAX` the
  latest are dropped from memory (they stay on disk) and `horizon` moves
  down; when the window runs low and `horizon` is finite, the next batch is
  read from the store (`after_seq=horizon`), skipping seqs already loaded.
- `transient`: a heap of entries that are not stored; they are never paged.

One loop timer is armed for the earliest due time; when it fires the due
messages are released (at most `RELEASE_BATCH` per loop iteration) and their
store entries acked -- after the released copies are queued, so a crash in
between redelivers rather than loses. Recovery after a restart is an empty
window with `horizon` = -1: the first refill reads the earliest due entries.

The counter makes seqs unique unless more than 2**21 messages with the same
due millisecond are scheduled between two uses of the same counter value;
delays are capped at 2**32-1 ms (as the RabbitMQ plugin does).
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import logging
from collections.abc import Callable

from moorage.broker.clock import Timer
from moorage.broker.message import Message
from moorage.broker.serialization import decode_message, encode_message
from moorage.broker.services import BrokerServices

log = logging.getLogger("moorage.delayed")

DELAY_HEADER = "x-delay"
DELAY_STORE_PREFIX = "amq.moorage.delay."
WINDOW_MAX = 4096  # stored delayed messages kept in memory per scheduler
REFILL_LOW = 1024  # read more when fewer than this are loaded
REFILL_BATCH = 2048
RELEASE_BATCH = 2000  # released per loop iteration before yielding
_COUNTER_BITS = 21
_counter = itertools.count()


def delay_of(message: Message) -> int:
    """The `x-delay` header in ms (0 when absent, negative or not a number)."""
    value = message.header(DELAY_HEADER)
    if value is None or isinstance(value, bool):
        return 0
    try:
        delay = int(value)
    except (TypeError, ValueError):
        return 0
    return delay if delay > 0 else 0


def due_seq(due: float) -> int:
    """A store seq that sorts by due time (wall-clock seconds)."""
    due_ms = min(max(int(due * 1000), 0), (1 << 42) - 1)
    return (due_ms << _COUNTER_BITS) | (next(_counter) & ((1 << _COUNTER_BITS) - 1))


def seq_due(seq: int) -> float:
    """The due time (wall-clock seconds) encoded in a seq."""
    return (seq >> _COUNTER_BITS) / 1000.0


class _Delayed:
    __slots__ = ("message", "seq", "stored")

    def __init__(self, seq: int, message: Message, stored: bool) -> None:
        self.seq = seq
        self.message = message
        self.stored = stored

    def __lt__(self, other: _Delayed) -> bool:
        return self.seq < other.seq


class DelayScheduler:
    """Messages waiting for their due time, for one delayed exchange or delayed queue."""

    def __init__(
        self,
        broker: BrokerServices,
        vhost: str,
        store_name: str,
        release: Callable[[Message], None],
        *,
        stored: bool,
    ) -> None:
        self.broker = broker
        self.clock = broker.clock
        self.vhost = vhost
        self.store_name = store_name
        self.release = release
        self.stored = stored
        self.window: list[_Delayed] = []  # stored entries, sorted by seq
        self.loaded: set[int] = set()  # seqs in window
        self.transient: list[_Delayed] = []  # heap
        self.horizon: float = float("inf")  # every stored entry <= horizon is in window
        self.on_disk = 0  # stored entries not in memory (an estimate after recovery)
        self.peak_loaded = 0  # for tests and metrics: the most stored entries held in memory
        self.closed = False
        self._timer: Timer | None = None
        self._timer_due = 0.0
        self._refilling = False
        self._generation = 0
        if stored:
            from moorage.storage import QueueRecord

            broker.store.put_queue(QueueRecord(vhost, store_name))

    @property
    def count(self) -> int:
        """Messages waiting (in memory and on disk)."""
        return len(self.window) + len(self.transient) + self.on_disk

    # -- scheduling ---------------------------------------------------------------

    def schedule(self, message: Message, delay_ms: int) -> bool:
        """Hold `message` for `delay_ms`; True when it was written to the store."""
        due = self.clock.wall() + delay_ms / 1000.0
        seq = due_seq(due)
        stored = self.stored and message.persistent
        item = _Delayed(seq, message, stored)
        if not stored:
            heapq.heappush(self.transient, item)
        else:
            broker = self.broker
            store = broker.store
            if not message.store_id:
                message.store_id = broker.next_message_id()
                data = encode_message(message)
                store.put_message(message.store_id, data)
                broker.flow.wrote(len(data))
            store.enqueue(self.vhost, self.store_name, seq, message.store_id)
            if seq <= self.horizon or self._refilling:
                self._load(item)
                self._trim()
            else:
                self.on_disk += 1
        self._arm()
        return stored

    def _load(self, item: _Delayed) -> None:
        bisect.insort(self.window, item)
        self.loaded.add(item.seq)
        if len(self.window) > self.peak_loaded:
            self.peak_loaded = len(self.window)

    def _trim(self) -> None:
        """Keep at most WINDOW_MAX stored entries in memory; the latest go back to disk only."""
        window = self.window
        while len(window) > WINDOW_MAX:
            item = window.pop()
            self.loaded.discard(item.seq)
            self.on_disk += 1
            self.horizon = min(self.horizon, item.seq - 1)

    # -- timer ------------------------------------------------------------------

    def _next_due(self) -> float | None:
        candidates = []
        if self.window:
            candidates.append(self.window[0].seq)
        if self.transient:
            candidates.append(self.transient[0].seq)
        return seq_due(min(candidates)) if candidates else None

    def _arm(self) -> None:
        if self.closed:
            return
        due = self._next_due()
        if due is None:
            if self.horizon != float("inf") and not self._refilling:
                self._refill()
            return
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()
        self._timer_due = due
        self._timer = self.clock.call_later(due - self.clock.wall(), self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self.closed:
            return
        now_seq = (int(self.clock.wall() * 1000) + 1) << _COUNTER_BITS
        released = 0
        store = self.broker.store
        while released < RELEASE_BATCH:
            w = self.window[0] if self.window else None
            t = self.transient[0] if self.transient else None
            item = w if t is None or (w is not None and w.seq < t.seq) else t
            if item is None or item.seq >= now_seq:
                break
            if item is w:
                self.window.pop(0)
                self.loaded.discard(item.seq)
            else:
                heapq.heappop(self.transient)
            try:
                self.release(item.message)
            except Exception:
                log.exception("cannot release a delayed message from %s", self.store_name)
            if item.stored:
                store.ack(self.vhost, self.store_name, item.seq)
            released += 1
        if len(self.window) < REFILL_LOW and self.horizon != float("inf") and not self._refilling:
            self._refill()
        if released >= RELEASE_BATCH:
            asyncio.get_running_loop().call_soon(self._fire)
        else:
            self._arm()

    # -- paging -----------------------------------------------------------------

    def _refill(self) -> None:
        self._refilling = True
        asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        generation = self._generation
        store = self.broker.store
        after = self.horizon if self.horizon != float("inf") else -1
        try:
            batch = await store.read_queue(self.vhost, self.store_name, int(after), REFILL_BATCH)
        except Exception:
            self._refilling = False
            if not self.closed:
                log.exception("cannot read delayed messages of %s", self.store_name)
            return
        self._refilling = False
        if generation != self._generation or self.closed:
            return
        for stored in batch:
            if stored.seq in self.loaded:
                continue
            message = decode_message(stored.data)
            message.store_id = stored.message_id
            self._load(_Delayed(stored.seq, message, True))
            self.on_disk = max(self.on_disk - 1, 0)
        if len(batch) < REFILL_BATCH:
            self.horizon = float("inf")
            self.on_disk = 0
        else:
            self.horizon = batch[-1].seq
        self._trim()
        self._arm()

    async def recover(self) -> None:
        """After a restart: the stored entries are all on disk; read the earliest."""
        count, _size, _max = await self.broker.store.queue_stats(self.vhost, self.store_name)
        if count:
            self.on_disk = count
            self.horizon = -1
            self._refilling = True
            await self._read()

    def close(self, *, delete: bool) -> None:
        """Stop the timer; with `delete`, drop every held message (store included)."""
        self.closed = True
        self._generation += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if delete:
            self.window.clear()
            self.loaded.clear()
            self.transient.clear()
            self.on_disk = 0
            if self.stored:
                self.broker.store.delete_queue(self.vhost, self.store_name)
