"""Queues: an ordered log of entries, a ready part and consumers served in turn.

Theory of operation
-------------------
`ready` holds entries in publish order (by `seq`). `dispatch` hands ready
entries to consumers round-robin while some consumer has credit (its own
prefetch and its session's). A delivered entry leaves the queue and lives in
the consuming session's unacked map until it is acked (`settle`), rejected
(`settle`, or dead-lettered later) or requeued (`requeue`, which puts it back
in seq order with its delivery count raised so it goes out `redelivered`).

Persistence: an entry is written to the store only when the queue is durable
and the message persistent (`persisted`). The message body is put once per
message, whatever the number of queues it reaches (`Message.store_id`).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.connection import ClientConnection
    from broker.session import Session
    from broker.vhost import VirtualHost

from broker.message import Message


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
        self.consumers: list[Consumer] = []
        self.unacked = 0
        self.deleted = False
        self._had_consumers = False
        self._next_seq = itertools.count(1).__next__
        self._turn = 0
        self._dispatching = False
        # exchanges that hold a binding to this queue, for cleanup on delete
        self.sources: set[Any] = set()

    def __repr__(self) -> str:
        return f"<Queue {self.vhost.name!r}/{self.name!r}>"

    @property
    def message_count(self) -> int:
        """Messages ready for delivery (what queue.declare-ok reports)."""
        return len(self.ready)

    def set_next_seq(self, seq: int) -> None:
        """Continue numbering after `seq` (used by recovery)."""
        self._next_seq = itertools.count(seq + 1).__next__

    # -- publishing -------------------------------------------------------------

    def publish(self, message: Message) -> bool:
        """Append a message and deliver it if a consumer has credit.

        Returns True when the entry was written to the store: a confirm for it
        must then wait for the store's `when_durable`.
        """
        persisted = self.durable and message.persistent
        entry = QueueEntry(self._next_seq(), message, persisted)
        if persisted:
            self.vhost.store_entry(self.name, entry)
        self.ready.append(entry)
        if self.consumers:
            self.dispatch()
        return persisted

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
                        consumer.session.deliver(consumer, ready.popleft())
                        break
                else:
                    return  # nobody has credit
        finally:
            self._dispatching = False

    def get(self) -> QueueEntry | None:
        """Take the next ready entry for basic.get, or None when empty."""
        return self.ready.popleft() if self.ready else None

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
        self.dispatch()

    def settle(self, entry: QueueEntry) -> None:
        """Forget an entry for good: acked, or rejected without requeue."""
        if entry.persisted and not self.deleted:
            self.vhost.remove_entry(self.name, entry)

    def purge(self) -> int:
        """Drop every ready entry; returns how many were dropped."""
        count = len(self.ready)
        if self.durable:
            for entry in self.ready:
                if entry.persisted:
                    self.vhost.remove_entry(self.name, entry)
        self.ready.clear()
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
