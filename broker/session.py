"""Sessions: the small API every protocol adapter drives, one per AMQP channel.

A session belongs to a client connection and talks back to its adapter
through a `DeliverySink`. It owns the delivery tags and the unacked map of
its deliveries, the channel-wide prefetch and flow control.

Ordering constraints:
- `consume` registers the consumer but delivers nothing; the adapter must
  announce the consumer on the wire (e.g. `basic.consume-ok`) and then call
  `Consumer.start()`, so no delivery can overtake the announcement.
- A delivery is recorded in `unacked` *before* the sink is called, so an ack
  that the sink's client sends back at once always finds it.

Rooms: this module owns topology calls, consuming, deliveries and acks and
the session's lifetime. Publishing and transactions are
`broker.session_publishing`, consumer timeouts `broker.session_timeouts`,
permission checks `broker.session_permissions`: mixins of `Session`, sharing
its state with no call in between.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from moorage.broker.auth import User
from moorage.broker.clock import Timer
from moorage.broker.entry import QueueEntry
from moorage.broker.errors import (
    AccessRefused,
    BrokerError,
    NotAllowed,
    PreconditionFailed,
)
from moorage.broker.memory import ENTRY_OVERHEAD
from moorage.broker.message import Message
from moorage.broker.queue import Consumer, Queue
from moorage.broker.replies import OrderedReplies
from moorage.broker.session_permissions import SessionPermissions
from moorage.broker.session_publishing import PublishResult, SessionPublishing
from moorage.broker.session_timeouts import SessionTimeouts
from moorage.broker.stats import MessageStats
from moorage.broker.unacked import Unacked
from moorage.broker.vhost import Exchange, VirtualHost

__all__ = ["PublishResult"]  # re-exported: it was born here

_consumer_ids = itertools.count(1)


class DeliverySink(Protocol):
    """What the core calls on an adapter (implemented by each protocol's adapter)."""

    def deliver(
        self, consumer_tag: str, delivery_tag: int, redelivered: bool, message: Message
    ) -> None:
        """Send one message to the client for the consumer `consumer_tag`."""

    def returned(self, message: Message, reply_code: int, reply_text: str) -> None:
        """A mandatory message could not be routed: give it back to its publisher."""

    def cancelled(self, consumer_tag: str, error: BrokerError | None) -> None:
        """The broker ended a consumer (its queue was deleted)."""


class SessionOwner(Protocol):
    """The client connection a session belongs to (`broker.broker.ClientConnection`)."""

    id: int
    exclusive_queues: list[Queue]
    published: bool  # set on the first publish: the memory alarm pauses only publishers
    client_properties: dict[str, Any]  # "client_id" fills topic permissions' {client_id}

    @property
    def vhost(self) -> VirtualHost: ...
    @property
    def user(self) -> User: ...

    def ordered_replies(self) -> OrderedReplies:
        """A new ordered stream of replies that wait for the store (`broker.replies`)."""
        ...


class Session(SessionPublishing, SessionTimeouts, SessionPermissions):
    """One logical channel of a client connection onto a vhost."""

    connection: SessionOwner
    sink: DeliverySink

    def __init__(self, connection: SessionOwner, sink: DeliverySink) -> None:
        self.connection = connection
        self.vhost = connection.vhost
        self.clock = connection.vhost.broker.clock
        self.user = connection.user
        self.sink = sink
        self.consumers: dict[str, Consumer] = {}
        self.unacked: dict[int, Unacked] = {}
        self.prefetch_count = 0  # channel-wide limit (basic.qos global=true); 0 = none
        self.consumer_prefetch = 0  # default for new consumers (basic.qos global=false)
        self.flow = True  # client-side flow (channel.flow) and transport writability
        self.closed = False
        self._next_tag = itertools.count(1).__next__
        self._tx: list[Callable[[], Any]] | None = None
        self._permitted: dict[tuple[str, str, str], bool] = {}
        self._permitted_version = self.user.version
        if self.user.authz is not None:  # the backend's topic checks (see the top)
            self.check_topic = self._check_topic_authz  # type: ignore[method-assign]
        # consumer timeouts: (deadline, delivery tag), armed only when a queue has one
        self._deadlines: list[tuple[float, int]] = []
        self._deadline_timer: Timer | None = None
        self._timed_out: set[int] = set()
        self._memory = connection.vhost.broker.memory  # counts what `unacked` holds
        self.stats = MessageStats()  # this channel's message counters (`broker.stats`)

    # -- topology -------------------------------------------------------------------

    def declare_exchange(
        self,
        name: str,
        type_name: str = "direct",
        *,
        passive: bool = False,
        durable: bool = True,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> Exchange:
        """Declare an exchange.

        Checks in RabbitMQ's order: the type (CommandInvalid), the default
        exchange (AccessRefused), the configure permission, then what
        `VirtualHost.declare_exchange` checks. A passive declare needs no
        permission. Raises NotFound, AccessRefused, PreconditionFailed,
        CommandInvalid.
        """
        if not passive:
            self.vhost.check_exchange_type(type_name, arguments)
            self.vhost.check_not_default_exchange(name)
            self._check("configure", name, "exchange")
        return self.vhost.declare_exchange(
            name,
            type_name,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            arguments=arguments,
            passive=passive,
        )

    def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        """Delete an exchange; a missing one is not an error (RabbitMQ 3.x).

        Checks in RabbitMQ's order: the reserved names (`""`, `amq.*`), then
        the configure permission, then `if_unused`. Raises AccessRefused,
        PreconditionFailed.
        """
        self.vhost.check_exchange_deletion(name)
        self._check("configure", name, "exchange")
        self.vhost.delete_exchange(name, if_unused=if_unused)

    def declare_queue(
        self,
        name: str,
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> tuple[Queue, int, int]:
        """Declare a queue; returns (queue, ready messages, consumers).

        Raises NotFound (passive, missing), AccessRefused, ResourceLocked
        (another connection's exclusive queue), PreconditionFailed (inequivalent).
        """
        if not passive and name:
            self.vhost.check_name("queue", name)  # before the permission, as RabbitMQ
            self._check("configure", name, "queue")
        queue, _created = self.vhost.declare_queue(
            name,
            owner=self.connection,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=arguments,
            passive=passive,
        )
        return queue, queue.message_count, len(queue.consumers)

    def delete_queue(self, name: str, *, if_unused: bool = False, if_empty: bool = False) -> int:
        """Delete a queue; returns how many ready messages went with it.

        A queue that does not exist (or was just auto-deleted) counts as
        deleted with 0 messages, as in RabbitMQ 3.x. Checks in RabbitMQ's
        order: configure permission, then exclusive ownership, then
        `if_unused` / `if_empty`. Raises AccessRefused, ResourceLocked,
        PreconditionFailed.
        """
        self._check("configure", name, "queue")
        queue = self.vhost.queues.get(name)
        if queue is None:
            return 0
        self.vhost.check_exclusive(queue, self.connection)
        return self.vhost.delete_queue(name, if_unused=if_unused, if_empty=if_empty)

    def purge_queue(self, name: str) -> int:
        """Drop a queue's ready messages; returns how many."""
        queue = self._queue_for("read", name)
        return queue.purge()

    # Bindings check in RabbitMQ's order (`rabbit_channel:binding_action`): write
    # permission on the destination, neither end the default exchange, read
    # permission on the source, the source exists, the destination exists, the
    # binding is valid, the destination queue is not another connection's
    # exclusive queue. Unbinding what does not exist (binding, queue or
    # exchange) is not an error.

    def bind_queue(
        self, queue: str, exchange: str, routing_key: str, arguments: Mapping[str, Any]
    ) -> None:
        """queue.bind. Raises AccessRefused, NotFound, PreconditionFailed, ResourceLocked."""
        self._check("write", queue, "queue")
        self.vhost.check_not_default_exchange(exchange)
        self._check("read", exchange, "exchange")
        source = self.vhost.lookup_exchange(exchange)
        q = self.vhost.lookup_queue(queue)
        self.check_topic(exchange, "read", routing_key)
        self.vhost.bind(source, q, routing_key, arguments, owner=self.connection)

    def unbind_queue(
        self, queue: str, exchange: str, routing_key: str, arguments: Mapping[str, Any]
    ) -> None:
        """queue.unbind; a missing queue, exchange or binding is not an error."""
        self._check("write", queue, "queue")
        self.vhost.check_not_default_exchange(exchange)
        self._check("read", exchange, "exchange")
        source = self.vhost.exchanges.get(exchange)
        q = self.vhost.queues.get(queue)
        if source is None or q is None:
            return
        self.vhost.check_exclusive(q, self.connection)
        self.vhost.unbind(source, q, routing_key, arguments)

    def bind_exchange(
        self, destination: str, source: str, routing_key: str, arguments: Mapping[str, Any]
    ) -> None:
        """exchange.bind. Raises AccessRefused, NotFound, PreconditionFailed."""
        self._check("write", destination, "exchange")
        self.vhost.check_not_default_exchange(destination)
        self.vhost.check_not_default_exchange(source)
        self._check("read", source, "exchange")
        src = self.vhost.lookup_exchange(source)
        dest = self.vhost.lookup_exchange(destination)
        self.vhost.bind(src, dest, routing_key, arguments)

    def unbind_exchange(
        self, destination: str, source: str, routing_key: str, arguments: Mapping[str, Any]
    ) -> None:
        """exchange.unbind; a missing exchange or binding is not an error."""
        self._check("write", destination, "exchange")
        self.vhost.check_not_default_exchange(destination)
        self.vhost.check_not_default_exchange(source)
        self._check("read", source, "exchange")
        src = self.vhost.exchanges.get(source)
        dest = self.vhost.exchanges.get(destination)
        if src is None or dest is None:
            return
        self.vhost.unbind(src, dest, routing_key, arguments)

    def _queue_for(self, access: str, name: str) -> Queue:
        """The queue `name`, checked in RabbitMQ's order: permission, existence, exclusivity."""
        self._check(access, name, "queue")
        queue = self.vhost.lookup_queue(name)
        self.vhost.check_exclusive(queue, self.connection)
        return queue

    # -- consuming --------------------------------------------------------------------

    def consume(
        self,
        queue_name: str,
        consumer_tag: str = "",
        *,
        no_ack: bool = False,
        exclusive: bool = False,
        arguments: Mapping[str, Any] | None = None,
        filter: Callable[[Message], bool] | None = None,
    ) -> Consumer:
        """Subscribe to a queue; call `Consumer.start()` once the client knows the tag.

        `arguments` may hold `x-priority` (an integer; higher-priority
        consumers get messages while they have credit). `filter`, when
        given, chooses the messages this consumer accepts; a ready message
        no consumer accepts stays ready (STOMP selectors).
        Raises NotFound, AccessRefused (permission, or an exclusive consumer
        already there), ResourceLocked, NotAllowed (tag in use on this channel),
        PreconditionFailed (a malformed `x-priority`).
        """
        queue = self._queue_for("read", queue_name)
        if not consumer_tag:
            consumer_tag = f"amq.ctag-{next(_consumer_ids)}-{id(self):x}"
        if consumer_tag in self.consumers:
            raise NotAllowed(f"attempt to reuse consumer tag '{consumer_tag}'")
        if queue.consumers and (exclusive or any(c.exclusive for c in queue.consumers)):
            raise AccessRefused(
                f"queue '{queue_name}' in vhost '{self.vhost.name}' in exclusive use"
            )
        arguments = dict(arguments or {})
        priority = arguments.get("x-priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise PreconditionFailed(
                f"invalid arg 'x-priority' for consumer '{consumer_tag}': must be an integer"
            )
        consumer = Consumer(
            consumer_tag,
            queue,
            self,
            no_ack=no_ack,
            prefetch=self.consumer_prefetch,
            exclusive=exclusive,
            arguments=arguments,
            priority=priority,
            filter=filter,
        )
        self.consumers[consumer_tag] = consumer
        queue.add_consumer(consumer)
        return consumer

    def cancel(self, consumer_tag: str) -> bool:
        """End a consumer; False if the tag is unknown (not an error in AMQP)."""
        consumer = self.consumers.pop(consumer_tag, None)
        if consumer is None:
            return False
        consumer.queue.remove_consumer(consumer)
        return True

    def consumer_cancelled(self, consumer: Consumer, error: BrokerError | None) -> None:
        """Called by a queue that ends one of our consumers (queue deleted)."""
        if self.consumers.pop(consumer.tag, None) is not None:
            self.sink.cancelled(consumer.tag, error)

    def can_deliver(self) -> bool:
        """Channel-level credit: flow is on and the channel prefetch is not exhausted."""
        return self.flow and (not self.prefetch_count or len(self.unacked) < self.prefetch_count)

    def deliver(self, consumer: Consumer, entry: QueueEntry) -> None:
        """Hand an entry to a consumer (called by `Queue.dispatch`)."""
        tag = self._next_tag()
        redelivered = entry.delivery_count > 0
        entry.delivery_count += 1
        queue = consumer.queue
        stats, queue_stats = self.stats, queue.stats
        if redelivered:
            stats.redeliver += 1
            queue_stats.redeliver += 1
        if consumer.no_ack:
            stats.deliver_no_ack += 1
            queue_stats.deliver_no_ack += 1
            queue.settle(entry)
        else:
            stats.deliver += 1
            queue_stats.deliver += 1
            self.unacked[tag] = Unacked(entry, queue, consumer)
            self._memory.unacked_bytes += len(entry.message.body) + ENTRY_OVERHEAD
            consumer.unacked += 1
            queue.unacked += 1
            if entry.persisted:
                queue.vhost.broker.store.mark_delivered(
                    queue.vhost.name, queue.name, entry.seq, entry.delivery_count
                )
            if queue.consumer_timeout:
                self._watch(tag, queue.consumer_timeout)
        self.sink.deliver(consumer.tag, tag, redelivered, entry.message)

    def get(
        self, queue_name: str, *, no_ack: bool = False
    ) -> tuple[int, bool, Message, int] | None:
        """basic.get: (delivery tag, redelivered, message, messages left) or None if empty."""
        queue = self._queue_for("read", queue_name)
        entry = queue.get()
        if entry is None:
            return None
        tag = self._next_tag()
        redelivered = entry.delivery_count > 0
        entry.delivery_count += 1
        stats, queue_stats = self.stats, queue.stats
        if redelivered:
            stats.redeliver += 1
            queue_stats.redeliver += 1
        if no_ack:
            stats.get_no_ack += 1
            queue_stats.get_no_ack += 1
            queue.settle(entry)
        else:
            stats.get += 1
            queue_stats.get += 1
            self.unacked[tag] = Unacked(entry, queue, None)
            self._memory.unacked_bytes += len(entry.message.body) + ENTRY_OVERHEAD
            queue.unacked += 1
            if queue.consumer_timeout:
                self._watch(tag, queue.consumer_timeout)
        return tag, redelivered, entry.message, queue.message_count

    def read_back(self, queue_name: str) -> asyncio.Task[None] | None:
        """After `get` found nothing: the read that brings paged-out entries back, if any."""
        return self._queue_for("read", queue_name).reading_back()

    def qos(self, prefetch_count: int, *, global_: bool = False) -> None:
        """basic.qos with RabbitMQ's meaning of `global` (channel-wide when true)."""
        if global_:
            self.prefetch_count = prefetch_count
            for queue in self._consumed_queues():
                queue.dispatch()
        else:
            self.consumer_prefetch = prefetch_count

    def set_flow(self, active: bool) -> None:
        """Stop or resume deliveries (channel.flow, or the transport's write buffer)."""
        self.flow = active
        if active:
            for queue in self._consumed_queues():
                queue.dispatch()

    def _consumed_queues(self) -> list[Queue]:
        return list({c.queue: None for c in self.consumers.values()})

    # -- acknowledgements -------------------------------------------------------------

    def _take(self, delivery_tag: int, multiple: bool) -> list[Unacked]:
        """Remove and return the unacked deliveries an ack/nack refers to."""
        unacked = self.unacked
        if multiple:
            if delivery_tag == 0:
                taken = list(unacked.values())
                unacked.clear()
                return taken
            if delivery_tag not in unacked and not any(t <= delivery_tag for t in unacked):
                if self._timed_out and any(t <= delivery_tag for t in self._timed_out):
                    self._timed_out = {t for t in self._timed_out if t > delivery_tag}
                    return []
                raise PreconditionFailed(f"unknown delivery tag {delivery_tag}")
            taken = []
            for tag in list(unacked):
                if tag > delivery_tag:
                    break
                taken.append(unacked.pop(tag))
            return taken
        item = unacked.pop(delivery_tag, None)
        if item is None:
            if delivery_tag in self._timed_out:
                self._timed_out.discard(delivery_tag)
                return []  # returned to its queue by the consumer timeout: nothing to do
            raise PreconditionFailed(f"unknown delivery tag {delivery_tag}")
        return [item]

    def ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        """Acknowledge deliveries. Raises PreconditionFailed for an unknown tag."""
        if self._tx is not None:
            self._validate_tag(delivery_tag, multiple)
            self._tx.append(lambda: self._settle(self._take(delivery_tag, multiple), requeue=None))
            return
        self._settle(self._take(delivery_tag, multiple), requeue=None)

    def nack(self, delivery_tag: int, *, multiple: bool = False, requeue: bool = True) -> None:
        """Reject deliveries (basic.nack / basic.reject), requeueing them or dropping them."""
        if self._tx is not None:
            self._validate_tag(delivery_tag, multiple)
            self._tx.append(
                lambda: self._settle(self._take(delivery_tag, multiple), requeue=requeue)
            )
            return
        self._settle(self._take(delivery_tag, multiple), requeue=requeue)

    def _validate_tag(self, delivery_tag: int, multiple: bool) -> None:
        if delivery_tag in self._timed_out:
            return
        if delivery_tag not in self.unacked and not (
            multiple and (delivery_tag == 0 or self.unacked)
        ):
            raise PreconditionFailed(f"unknown delivery tag {delivery_tag}")

    def _settle(self, items: list[Unacked], *, requeue: bool | None) -> None:
        """Finish deliveries: ack (requeue=None), requeue (True) or drop (False)."""
        touched: dict[Queue, list[QueueEntry]] = {}
        self._forget(items)
        if requeue is None:
            self.stats.ack += len(items)
        for item in items:
            if item.consumer is not None:
                item.consumer.unacked -= 1
            if requeue:
                touched.setdefault(item.queue, []).append(item.entry)
            elif requeue is None:
                item.queue.stats.ack += 1
                item.queue.settle(item.entry)
                touched.setdefault(item.queue, [])
            else:
                item.queue.reject(item.entry)
                touched.setdefault(item.queue, [])
        for queue, entries in touched.items():
            if entries:
                queue.requeue(entries)  # dispatches
            else:
                queue.dispatch()
        if self.prefetch_count and len(self.unacked) + len(items) >= self.prefetch_count:
            # the channel-wide limit held every queue back and credit came back:
            # every queue we consume from may send (below it, none was waiting on us)
            for queue in self._consumed_queues():
                if queue not in touched:
                    queue.dispatch()

    def _forget(self, items: list[Unacked]) -> None:
        """`items` left `unacked` (every way out passes here): they no longer count as
        unacked memory, nor as their queues' unacknowledged messages."""
        if items:
            size = 0
            for item in items:
                size += len(item.entry.message.body)
                item.queue.unacked -= 1
            self._memory.unacked_bytes -= len(items) * ENTRY_OVERHEAD + size

    def recover(self) -> None:
        """basic.recover(requeue=true): every unacked delivery goes back to its queue."""
        items = list(self.unacked.values())
        self.unacked.clear()
        self._settle(items, requeue=True)

    # -- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """End the session: cancel its consumers, requeue its unacked deliveries."""
        if self.closed:
            return
        self.closed = True
        self._tx = None
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._deadlines.clear()
        for tag in list(self.consumers):
            self.cancel(tag)
        items = list(self.unacked.values())
        self.unacked.clear()
        self._forget(items)
        by_queue: dict[Queue, list[QueueEntry]] = {}
        for item in items:
            if item.consumer is not None:
                item.consumer.unacked -= 1
            by_queue.setdefault(item.queue, []).append(item.entry)
        for queue, entries in by_queue.items():
            queue.requeue(entries)
