"""Queues: an ordered log of entries, a ready part and consumers served in turn.

Theory of operation
-------------------
`ready` holds entries in publish order (by `seq`). `dispatch` hands ready
entries to consumers round-robin while some consumer has credit (its own
prefetch and its session's). A delivered entry leaves the queue and lives in
the consuming session's unacked map until it is acked (`settle`), rejected
(`settle`, or dead-lettered later) or requeued (`requeue`, which puts it back
in seq order with its delivery count raised so it goes out `redelivered`).

Persistence: an entry is written to the store only when the queue is stored
(durable and not exclusive) and the message persistent (`persisted`). The
message body is put once per message, whatever the number of queues it
reaches (`Message.store_id`).

Paging: a stored queue keeps at most `memory_limit` bytes of ready bodies in
RAM. Past that, new persistent entries are written to the store only and
represented in `tail` by a `DiskRange` (a run of seqs, a few bytes whatever
its length); transient entries keep their place in `tail` as themselves, so
order is kept. When `ready` falls under half the limit, `_refill` reads the
next batch back from the store, ahead of the consumers. Recovery after a
restart is the same mechanism: each stored queue starts as one DiskRange.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.connection import ClientConnection
    from broker.session import Session
    from broker.vhost import VirtualHost

from broker.message import Message
from broker.serialization import decode_message

log = logging.getLogger("moorage.queue")

REFILL_BATCH = 1000  # entries read back from the store at a time


class DiskRange:
    """Entries `first..last` (by seq) that are in the store but not in memory."""

    __slots__ = ("count", "first", "last")

    def __init__(self, first: int, last: int, count: int) -> None:
        self.first = first
        self.last = last
        self.count = count


class QueueEntry:
    """One message's place in one queue."""

    __slots__ = ("delivery_count", "message", "persisted", "seq")

    def __init__(
        self, seq: int, message: Message, persisted: bool, delivery_count: int = 0
    ) -> None:
        self.seq = seq
        self.message = message
        self.persisted = persisted
        self.delivery_count = delivery_count


class Consumer:
    """A subscription of one session to one queue."""

    __slots__ = (
        "arguments",
        "exclusive",
        "no_ack",
        "prefetch",
        "queue",
        "session",
        "tag",
        "unacked",
    )

    def __init__(
        self,
        tag: str,
        queue: Queue,
        session: Session,
        *,
        no_ack: bool,
        prefetch: int,
        exclusive: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.tag = tag
        self.queue = queue
        self.session = session
        self.no_ack = no_ack
        self.prefetch = prefetch  # 0 = unlimited
        self.exclusive = exclusive
        self.arguments = arguments or {}
        self.unacked = 0

    def has_credit(self) -> bool:
        """May this consumer receive one more message now?"""
        if self.prefetch and self.unacked >= self.prefetch and not self.no_ack:
            return False
        return self.session.can_deliver()

    def start(self) -> None:
        """Begin deliveries: call after the adapter has announced the consumer."""
        self.queue.dispatch()


class Queue:
    """A queue in one vhost. Created through `VirtualHost.declare_queue`."""

    def __init__(
        self,
        vhost: VirtualHost,
        name: str,
        *,
        durable: bool,
        exclusive_owner: ClientConnection | None,
        auto_delete: bool,
        arguments: dict[str, Any],
    ) -> None:
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = arguments
        self.ready: deque[QueueEntry] = deque()
        self.ready_bytes = 0
        self.tail: deque[QueueEntry | DiskRange] = deque()
        self.tail_count = 0
        self.stored = durable and exclusive_owner is None
        self.memory_limit = vhost.broker.limits.queue_memory_limit
        self.consumers: list[Consumer] = []
        self.unacked = 0
        self.deleted = False
        self._had_consumers = False
        self._next_seq = itertools.count(1).__next__
        self._turn = 0
        self._dispatching = False
        self._refill_task: asyncio.Task[None] | None = None
        self._generation = 0  # bumped by purge/delete so an in-flight refill is dropped
        # exchanges that hold a binding to this queue, for cleanup on delete
        self.sources: set[Any] = set()

    def __repr__(self) -> str:
        return f"<Queue {self.vhost.name!r}/{self.name!r}>"

    @property
    def message_count(self) -> int:
        """Messages ready for delivery, in memory or paged out (queue.declare-ok)."""
        return len(self.ready) + self.tail_count

    def set_next_seq(self, seq: int) -> None:
        """Continue numbering after `seq` (used by recovery)."""
        self._next_seq = itertools.count(seq + 1).__next__

    # -- publishing -------------------------------------------------------------

    def publish(self, message: Message) -> bool:
        """Append a message and deliver it if a consumer has credit.

        Returns True when the entry was written to the store: a confirm for it
        must then wait for the store's `when_durable`.
        """
        persisted = self.stored and message.persistent
        entry = QueueEntry(self._next_seq(), message, persisted)
        if persisted:
            self.vhost.store_entry(self.name, entry)
        if self.tail or (persisted and self.ready_bytes > self.memory_limit):
            self._page_out(entry)
            return persisted
        self.ready.append(entry)
        self.ready_bytes += len(message.body)
        if self.consumers:
            self.dispatch()
        return persisted

    def _page_out(self, entry: QueueEntry) -> None:
        """Keep an entry out of memory (persistent) or behind the paged ones (transient)."""
        self.tail_count += 1
        tail = self.tail
        if not entry.persisted:
            tail.append(entry)
            return
        last = tail[-1] if tail else None
        if isinstance(last, DiskRange):
            last.last = entry.seq
            last.count += 1
        else:
            tail.append(DiskRange(entry.seq, entry.seq, 1))

    def recover(self, count: int, max_seq: int) -> None:
        """After a restart: `count` stored entries up to `max_seq` wait in the store."""
        self.set_next_seq(max_seq)
        if count:
            self.tail.append(DiskRange(1, max_seq, count))
            self.tail_count += count

    async def preload(self) -> None:
        """Read the first batch of a recovered queue before clients connect."""
        self._refill()
        if self._refill_task is not None:
            await self._refill_task

    def _refill(self) -> None:
        """Bring tail entries into memory while under half the memory limit."""
        tail = self.tail
        while tail and self.ready_bytes < self.memory_limit // 2 and self._refill_task is None:
            head = tail[0]
            if isinstance(head, QueueEntry):
                tail.popleft()
                self.tail_count -= 1
                self.ready.append(head)
                self.ready_bytes += len(head.message.body)
            else:
                self._refill_task = asyncio.get_running_loop().create_task(self._read_range(head))

    async def _read_range(self, head: DiskRange) -> None:
        generation = self._generation
        store = self.vhost.broker.store
        try:
            if store.pending:  # the range may still sit in an unwritten batch
                done: asyncio.Future[BaseException | None] = (
                    asyncio.get_running_loop().create_future()
                )
                store.when_durable(lambda error: done.done() or done.set_result(error))
                await done
            stored = await store.read_queue(
                self.vhost.name, self.name, head.first - 1, REFILL_BATCH
            )
        except Exception:
            log.exception("cannot read queue %s back from the store", self.name)
            self._refill_task = None
            return
        self._refill_task = None
        if generation != self._generation or not self.tail or self.tail[0] is not head:
            return
        loaded = 0
        for item in stored:
            if item.seq > head.last:
                break
            message = decode_message(item.data)
            message.store_id = item.message_id
            self.ready.append(QueueEntry(item.seq, message, True, item.delivery_count))
            self.ready_bytes += len(message.body)
            head.first = item.seq + 1
            loaded += 1
        head.count -= loaded
        self.tail_count -= loaded
        if loaded == 0 or head.count <= 0 or head.first > head.last:
            # exhausted (entries may have expired on disk: trust the store, not the count)
            self.tail.popleft()
            self.tail_count -= max(head.count, 0)
        self.dispatch()
        self._refill()

    # -- delivering -------------------------------------------------------------

    def dispatch(self) -> None:
        """Deliver ready entries to consumers with credit, in turn."""
        if self._dispatching or self.deleted:
            return
        self._dispatching = True
        try:
            ready, consumers = self.ready, self.consumers
            while ready and consumers:
                count = len(consumers)
                for _ in range(count):
                    consumer = consumers[self._turn % count]
                    self._turn += 1
                    if consumer.has_credit():
                        entry = ready.popleft()
                        self.ready_bytes -= len(entry.message.body)
                        consumer.session.deliver(consumer, entry)
                        break
                else:
                    break  # nobody has credit
        finally:
            self._dispatching = False
        if self.tail and self.ready_bytes < self.memory_limit // 2:
            self._refill()

    def get(self) -> QueueEntry | None:
        """Take the next ready entry for basic.get, or None when none is in memory.

        Right after a restart or under heavy paging, entries still being read
        back from the store are not yet visible to basic.get.
        """
        if not self.ready:
            if self.tail:
                self._refill()
            return None
        entry = self.ready.popleft()
        self.ready_bytes -= len(entry.message.body)
        if self.tail and self.ready_bytes < self.memory_limit // 2:
            self._refill()
        return entry

    def requeue(self, entries: Iterable[QueueEntry]) -> None:
        """Put delivered entries back in seq order, to be delivered again."""
        back = sorted(entries, key=lambda e: e.seq)
        if not back or self.deleted:
            return
        if not self.ready or back[-1].seq < self.ready[0].seq:
            self.ready.extendleft(reversed(back))
        else:
            merged = sorted(itertools.chain(self.ready, back), key=lambda e: e.seq)
            self.ready = deque(merged)
        self.ready_bytes += sum(len(e.message.body) for e in back)
        self.dispatch()

    def settle(self, entry: QueueEntry) -> None:
        """Forget an entry for good: acked, or rejected without requeue."""
        if entry.persisted and not self.deleted:
            self.vhost.remove_entry(self.name, entry)

    def purge(self) -> int:
        """Drop every ready entry, in memory or paged out; returns how many."""
        count = self.message_count
        self._generation += 1
        store = self.vhost.broker.store
        for entry in self.ready:
            if entry.persisted:
                self.vhost.remove_entry(self.name, entry)
        for item in self.tail:
            if isinstance(item, DiskRange):
                store.ack_range(self.vhost.name, self.name, item.first, item.last)
        self.ready.clear()
        self.tail.clear()
        self.ready_bytes = self.tail_count = 0
        return count

    # -- consumers --------------------------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
        self.consumers.append(consumer)
        self._had_consumers = True

    def remove_consumer(self, consumer: Consumer) -> None:
        """Remove a consumer; an auto-delete queue goes with its last one."""
        if consumer in self.consumers:
            self.consumers.remove(consumer)
        if self.auto_delete and self._had_consumers and not self.consumers and not self.deleted:
            self.vhost.delete_queue(self.name)
