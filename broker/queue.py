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
RAM; the rest waits in `tail`, mostly as runs of seqs in the store, and is
read back ahead of the consumers (`broker.queue_paging`).

Features (docs/queue-arguments.md): a queue's validated arguments are its
`options` (`broker.arguments.QueueOptions`). They cost only when set:

- `publish` takes the original path unless the queue has a feature that acts
  on publish (TTL, limits, FIFO, priorities, delivery delay) or the message
  carries an `expiration` or an `x-expires-at` annotation (`_plain_publish`);
  other annotations (MQTT's publisher id, retain flag) do not affect a queue.
- `dispatch` takes the original round-robin loop unless something changes
  who gets what: single active consumer, consumer priorities or filters,
  priorities, FIFO groups, or entries that may expire (`_plain_dispatch`).
  The other path (`_dispatch_featured`) asks the ready structure
  (`broker.ready`) for the next entry and picks a consumer for it.
- Priority, FIFO and length-limited queues keep every ready entry in memory
  (they need to see all of them to choose or drop one): they never page.
  TTL, dead-lettering, delivery limits, SAC and consumer timeouts page as
  plain queues do; entries read back keep their expiry time.

Rooms: this module owns publishing and taking entries (publish, get), the
consumers and dispatch (never re-entrant: `_dispatching`). What becomes of
an entry after delivery or without one (requeue, settle, reject, drop,
purge) is `broker.queue_settling`, paging `broker.queue_paging`, expiry
(TTL, `x-expires`) `broker.queue_expiry`, length limits and
`x-delivery-delay` `broker.queue_limits`: mixins of `Queue`, sharing its
state with no call in between. Dead-lettering is `broker.dead_letter`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from moorage.broker.arguments import QueueOptions
from moorage.broker.clock import Timer
from moorage.broker.dead_letter import dead_letter
from moorage.broker.delayed import DelayScheduler
from moorage.broker.entry import DiskRange, QueueEntry
from moorage.broker.errors import BrokerError
from moorage.broker.fifo import Deduplicator, FifoReady, deduplication_id, group_of
from moorage.broker.message import EXPIRES_AT_ANNOTATION, Message
from moorage.broker.queue_expiry import QueueExpiry
from moorage.broker.queue_limits import DELAYED, DELAYED_STORED, QueueLimits
from moorage.broker.queue_paging import REFILL_BATCH, QueuePaging
from moorage.broker.queue_settling import QueueSettling
from moorage.broker.ready import PlainReady, PriorityReady, ReadyEntries
from moorage.broker.serialization import store_entry
from moorage.broker.services import BrokerServices
from moorage.broker.stats import MessageStats

# What `Queue.publish` says happened to a message.
ENQUEUED = 0  # queued, not written to the store
STORED = 1  # queued and written: a confirm must wait for `when_durable`
REJECTED = 2  # refused by `x-overflow: reject-publish(-dlx)`: the publisher gets a nack
DUPLICATE = 3  # FIFO deduplication: accepted, confirmed, not queued again
# DELAYED_STORED = 4 and DELAYED = 5: held by `x-delivery-delay` (`broker.queue_limits`)
WRITTEN = frozenset({STORED, DELAYED_STORED})

__all__ = [  # re-exported: they were born here
    "DELAYED",
    "DELAYED_STORED",
    "REFILL_BATCH",
    "DiskRange",
    "QueueEntry",
]


class QueueHost(Protocol):
    """What a queue needs of its vhost (`broker.vhost.VirtualHost`)."""

    @property
    def name(self) -> str: ...
    @property
    def broker(self) -> BrokerServices: ...
    @property
    def queues(self) -> Mapping[str, Queue]: ...
    def delete_queue(self, name: str) -> int: ...
    def route_from(self, exchange: str, message: Message) -> tuple[Queue, ...]:
        """The queues `message` reaches from the exchange named so (none if there is none)."""
        ...


class ConsumingSession(Protocol):
    """What a queue needs of the session a consumer belongs to (`broker.session.Session`)."""

    def can_deliver(self) -> bool: ...
    def deliver(self, consumer: Consumer, entry: QueueEntry) -> None: ...
    def consumer_cancelled(self, consumer: Consumer, error: BrokerError | None) -> None: ...


class QueueOwner(Protocol):
    """The client connection an exclusive queue belongs to (`broker.broker.ClientConnection`)."""

    id: int  # the connection's number, for operators' views (`broker.overview`)
    exclusive_queues: list[Queue]


class Consumer:
    """A subscription of one session to one queue."""

    __slots__ = (
        "arguments",
        "exclusive",
        "filter",
        "held",
        "no_ack",
        "prefetch",
        "priority",
        "queue",
        "session",
        "tag",
        "unacked",
    )

    def __init__(
        self,
        tag: str,
        queue: Queue,
        session: ConsumingSession,
        *,
        no_ack: bool,
        prefetch: int,
        exclusive: bool = False,
        arguments: dict[str, Any] | None = None,
        priority: int = 0,
        filter: Callable[[Message], bool] | None = None,
    ) -> None:
        self.tag = tag
        self.queue = queue
        self.session = session
        self.no_ack = no_ack
        self.prefetch = prefetch  # 0 = unlimited
        self.exclusive = exclusive
        self.arguments = arguments or {}
        self.priority = priority  # x-priority: higher goes first while it has credit
        self.filter = filter  # None accepts everything
        self.unacked = 0
        # True: no deliveries until `start()`, even when a publish dispatches the queue
        # first (a STOMP SUBSCRIBE whose RECEIPT waits for the store must reach the
        # client before the subscription's first MESSAGE). Set by the adapter.
        self.held = False

    def has_credit(self) -> bool:
        """May this consumer receive one more message now?"""
        if self.held or (self.prefetch and self.unacked >= self.prefetch and not self.no_ack):
            return False
        return self.session.can_deliver()

    def start(self) -> None:
        """Begin deliveries: call after the adapter has announced the consumer."""
        self.held = False
        self.queue.dispatch()


class Queue(QueueExpiry, QueuePaging, QueueLimits, QueueSettling):
    """A queue in one vhost. Created through `VirtualHost.declare_queue`."""

    vhost: QueueHost

    def __init__(
        self,
        vhost: QueueHost,
        name: str,
        *,
        durable: bool,
        exclusive_owner: QueueOwner | None,
        auto_delete: bool,
        arguments: dict[str, Any],
        options: QueueOptions | None = None,
    ) -> None:
        self.vhost = vhost
        self.clock = vhost.broker.clock
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = arguments
        self.options = options = options if options is not None else QueueOptions()
        self.ready: ReadyEntries
        if options.fifo:
            self.ready = FifoReady()
        elif options.max_priority is not None:
            self.ready = PriorityReady(options.max_priority)
        else:
            self.ready = PlainReady()
        self.ready_bytes = 0
        self.tail: deque[QueueEntry | DiskRange] = deque()
        self.tail_count = 0
        self.tail_bytes = 0  # bodies of the transient entries kept in `tail`
        self.tail_entries = 0  # how many those are
        self.paged_body_size = 0  # body size of recent paged entries: sizes refill reads
        self.stored = durable and exclusive_owner is None
        self.memory_limit = vhost.broker.limits.queue_memory_limit
        if options.in_memory:
            self.memory_limit = 1 << 62  # never page (see the module docstring)
        self.consumers: list[Consumer] = []
        # delivered, not yet acked (`Session` deliver, get, `_forget`), or in flight
        # for a poller (`PullReceiver` `_hold`, `_release`)
        self.unacked = 0
        self.stats = MessageStats()  # publish, deliver, get, redeliver, ack (`broker.stats`)
        self.deleted = False
        self._had_consumers = False
        self._next_seq = itertools.count(1).__next__
        self._turn = 0
        self._dispatching = False
        self._refill_task: asyncio.Task[None] | None = None
        self._generation = 0  # bumped by purge/delete so an in-flight refill is dropped
        # exchanges that hold a binding to this queue, for cleanup on delete
        self.sources: set[Any] = set()
        # features
        self._may_expire = options.message_ttl is not None
        self._expiry_timer: Timer | None = None
        self._expiry_due = 0.0
        self._unused_timer: Timer | None = None
        self._filters = 0  # consumers with a filter
        self._prioritised = False  # some consumer has a non-zero x-priority
        self._plain_publish = not (
            options.message_ttl is not None
            or vhost.broker.retention
            or options.limited
            or options.fifo
            or options.max_priority is not None
            or options.delivery_delay
        )
        self._plain_dispatch = True
        self._update_dispatch_mode()
        self.dedup: Deduplicator | None = None
        if options.fifo:
            self.dedup = Deduplicator(vhost, name, stored=self.stored)
        self.delays: DelayScheduler | None = None  # for x-delivery-delay, made on first use
        self.consumer_timeout: float = (options.consumer_timeout or 0) / 1000.0
        if not self.consumer_timeout:
            self.consumer_timeout = getattr(vhost.broker.limits, "consumer_timeout", 0) / 1000.0
        self.touch()

    def __repr__(self) -> str:
        return f"<Queue {self.vhost.name!r}/{self.name!r}>"

    @property
    def may_expire(self) -> bool:
        """Can any entry of this queue expire (queue TTL, or one published with an expiry)?"""
        return self._may_expire

    @property
    def message_count(self) -> int:
        """Messages ready for delivery, in memory or paged out (queue.declare-ok)."""
        return len(self.ready) + self.tail_count

    def memory_bytes(self, entry_overhead: int) -> int:
        """RAM held by ready messages: bodies + `entry_overhead` each (broker.memory)."""
        in_memory = len(self.ready) + self.tail_entries
        return self.ready_bytes + self.tail_bytes + in_memory * entry_overhead

    def _update_dispatch_mode(self) -> None:
        options = self.options
        self._plain_dispatch = not (
            self._may_expire
            or options.single_active_consumer
            or options.fifo
            or options.max_priority is not None
            or self._filters
            or self._prioritised
        )

    # -- publishing -------------------------------------------------------------

    def publish(self, message: Message, *, delayed: bool = False) -> int:
        """Append a message and deliver it if a consumer has credit.

        Returns what happened (module constants): ENQUEUED, STORED (a confirm
        must then wait for the store's `when_durable`), REJECTED (a full
        queue with `reject-publish`), DUPLICATE (FIFO deduplication),
        DELAYED/DELAYED_STORED (held by `x-delivery-delay`). `delayed` is
        True when a delay scheduler releases the message (counted on its way in).
        """
        if not delayed:
            self.stats.publish += 1
        annotations = message.annotations
        if (
            not self._plain_publish
            or message.properties.expiration is not None
            or (annotations and EXPIRES_AT_ANNOTATION in annotations)
        ):
            return self._publish_featured(message, delayed)
        persisted = self.stored and message.persistent
        entry = QueueEntry(self._next_seq(), message, persisted)
        if persisted:
            store_entry(self.vhost.broker, self.vhost.name, self.name, entry)
        if self.tail or (persisted and self.ready_bytes > self.memory_limit):
            self._page_out(entry)
            return STORED if persisted else ENQUEUED
        self.ready.append(entry)
        self.ready_bytes += len(message.body)
        if self.consumers:
            self.dispatch()
        return STORED if persisted else ENQUEUED

    def _publish_featured(self, message: Message, delayed: bool) -> int:
        options = self.options
        if options.delivery_delay and not delayed:
            return self._delay(message, options.delivery_delay)
        dedup_key = None
        if self.dedup is not None:
            dedup_key = deduplication_id(message, options.content_based_deduplication)
            if dedup_key is not None and self.dedup.is_duplicate(dedup_key):
                return DUPLICATE
        size = len(message.body)
        if options.limited and options.overflow != "drop-head" and self._full(size):
            if options.overflow == "reject-publish-dlx":
                dead_letter(self, message, "maxlen")
            return REJECTED
        persisted = self.stored and message.persistent
        expires_at = self._expiry_of(message)
        entry = QueueEntry(self._next_seq(), message, persisted, 0, expires_at)
        if options.fifo:
            entry.group = group_of(message)
        elif options.max_priority is not None:
            entry.priority = min(message.properties.priority or 0, options.max_priority)
        if persisted:
            store_entry(self.vhost.broker, self.vhost.name, self.name, entry)
        if dedup_key is not None and self.dedup is not None:
            self.dedup.record(dedup_key)
        if expires_at and not self._may_expire:
            self._may_expire = True
            self._update_dispatch_mode()
        if self.tail or (persisted and self.ready_bytes > self.memory_limit):
            self._page_out(entry)
        else:
            self.ready.append(entry)
            self.ready_bytes += size
            if self.consumers:
                self.dispatch()
        if expires_at:
            self._schedule_expiry()
        if options.limited:
            self._enforce_limits()
        return STORED if persisted else ENQUEUED

    # -- delivering -------------------------------------------------------------

    def dispatch(self) -> None:
        """Deliver ready entries to consumers with credit, in turn."""
        if self._dispatching or self.deleted:
            return
        if not self._plain_dispatch:
            self._dispatching = True
            try:
                self._dispatch_featured()
            finally:
                self._dispatching = False
        else:
            self._dispatching = True
            try:
                ready, consumers = self.ready, self.consumers
                while ready and consumers:
                    count = len(consumers)
                    for _ in range(count):
                        consumer = consumers[self._turn % count]
                        self._turn += 1
                        if consumer.has_credit():
                            entry = ready.popleft()  # type: ignore[attr-defined]
                            self.ready_bytes -= len(entry.message.body)
                            consumer.session.deliver(consumer, entry)
                            break
                    else:
                        break  # nobody has credit
            finally:
                self._dispatching = False
        if self.tail and self.ready_bytes < self.memory_limit // 2:
            before = len(self.ready)
            self._refill()
            if len(self.ready) > before and self.consumers:
                # transient entries kept in `tail` moved to `ready` synchronously:
                # deliver them now (no later event may come to dispatch them)
                self.dispatch()

    def _dispatch_featured(self) -> None:
        ready = self.ready
        if self._filters:
            self._dispatch_filtered()
            return
        may_expire = self._may_expire
        now = self.clock.wall() if may_expire else 0.0
        while self.consumers:
            entry = ready.peek()
            if entry is None:
                break
            if may_expire and entry.expires_at and entry.expires_at <= now:
                self._drop(entry, "expired")
                continue
            consumer = self._pick_consumer(None)
            if consumer is None:
                break
            ready.remove_entry(entry, True)
            self.ready_bytes -= len(entry.message.body)
            consumer.session.deliver(consumer, entry)

    def _dispatch_filtered(self) -> None:
        """Each ready entry goes to the next consumer with credit that accepts it."""
        ready = self.ready
        now = self.clock.wall() if self._may_expire else 0.0
        for entry in ready.candidates():
            if not any(c.has_credit() for c in self._eligible()):
                break
            if now and entry.expires_at and entry.expires_at <= now:
                if entry is ready.peek():
                    self._drop(entry, "expired")
                continue
            consumer = self._pick_consumer(entry)
            if consumer is None:
                continue  # nobody wants it now: it stays ready
            ready.remove_entry(entry, True)
            self.ready_bytes -= len(entry.message.body)
            consumer.session.deliver(consumer, entry)

    def _eligible(self) -> list[Consumer]:
        consumers = self.consumers
        if self.options.single_active_consumer:
            return consumers[:1]
        return consumers

    def _pick_consumer(self, entry: QueueEntry | None) -> Consumer | None:
        """The next consumer with credit (and whose filter accepts `entry`), or None.

        Single active consumer: only the first consumer. Consumer priorities:
        the highest priority level with a willing consumer, round-robin
        within the level (`consumers` is kept sorted by priority).
        """
        consumers = self.consumers
        if not consumers:
            return None
        if self.options.single_active_consumer:
            active = consumers[0]
            if active.has_credit() and (
                entry is None or active.filter is None or active.filter(entry.message)
            ):
                return active
            return None
        n = len(consumers)
        start = 0
        while start < n:
            level = consumers[start].priority
            end = start
            while end < n and consumers[end].priority == level:
                end += 1
            width = end - start
            for k in range(width):
                consumer = consumers[start + (self._turn + k) % width]
                if consumer.has_credit() and (
                    entry is None or consumer.filter is None or consumer.filter(entry.message)
                ):
                    self._turn += k + 1
                    return consumer
            start = end
        return None

    def get(self) -> QueueEntry | None:
        """Take the next ready entry for basic.get, or None when none is in memory.

        Right after a restart or under heavy paging, entries still being read
        back from the store are not yet in memory: `reading_back` tells when.
        """
        self.touch()
        ready = self.ready
        entry = ready.peek()
        if self._may_expire:
            now = self.clock.wall()
            while entry is not None and entry.expires_at and entry.expires_at <= now:
                self._drop(entry, "expired")
                entry = ready.peek()
        if entry is None:
            if self.tail:
                self._refill()
            return None
        ready.remove_entry(entry, True)
        self.ready_bytes -= len(entry.message.body)
        if self.tail and self.ready_bytes < self.memory_limit // 2:
            self._refill()
        return entry

    def deleted_now(self) -> None:
        """Called by `VirtualHost.delete_queue`: stop timers, drop delayed and dedup state."""
        for timer in (self._expiry_timer, self._unused_timer):
            if timer is not None:
                timer.cancel()
        self._expiry_timer = self._unused_timer = None
        if self.delays is not None:
            self.delays.close(delete=True)
        if self.dedup is not None:
            self.dedup.delete()

    # -- consumers --------------------------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
        self.consumers.append(consumer)
        self._had_consumers = True
        if consumer.filter is not None:
            self._filters += 1
        if consumer.priority:
            self._prioritised = True
        if self._prioritised:
            first = self.consumers[0] if self.options.single_active_consumer else None
            self.consumers.sort(key=lambda c: -c.priority)
            if first is not None:  # the active consumer stays active
                self.consumers.remove(first)
                self.consumers.insert(0, first)
        self._update_dispatch_mode()
        self.touch()

    def remove_consumer(self, consumer: Consumer) -> None:
        """Remove a consumer; an auto-delete queue goes with its last one."""
        if consumer in self.consumers:
            active = self.consumers[0] is consumer
            self.consumers.remove(consumer)
            if consumer.filter is not None:
                self._filters -= 1
            if self.options.single_active_consumer and active and self._prioritised:
                self.consumers.sort(key=lambda c: -c.priority)  # the next active: highest
            self._update_dispatch_mode()
            if self.options.single_active_consumer and active and self.consumers:
                self.dispatch()  # fail over to the next consumer
        if self.auto_delete and self._had_consumers and not self.consumers and not self.deleted:
            self.vhost.delete_queue(self.name)
        elif not self.consumers:
            self.touch()
