"""Publishing and transactions: the part of a session that puts messages into queues.

Part of `broker.session.Session` (a mixin: the session's own state, no
wrapper, no extra call per message). It owns `publish` (exchange lookup or
the vhost's route cache, routing, one `Queue.publish` per queue reached),
what a publish did (`PublishResult`) and AMQP transactions (`tx.*`).

Ordering rules:
- A confirm (PUBACK, RECEIPT, `basic.ack`) may be sent only once the store
  has the message: `PublishResult.stored` tells the adapter to wait for
  `store.when_durable` first.
- In a transaction, publishes and acks are held until `tx_commit`, then
  applied in the order they were made; `tx_rollback` drops them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from moorage.broker.auth import User
from moorage.broker.auth_users import TopicAccess
from moorage.broker.delayed import delay_of
from moorage.broker.errors import AccessRefused, PreconditionFailed
from moorage.broker.message import Message
from moorage.broker.queue import DUPLICATE, REJECTED, WRITTEN, Queue
from moorage.broker.stats import MessageStats
from moorage.broker.vhost import Exchange, VirtualHost


class PublishingConnection(Protocol):
    """What publishing marks on the client connection (`broker.session.SessionOwner`)."""

    published: bool  # set on the first publish: the memory alarm pauses only publishers


class ReturnSink(Protocol):
    """Where an unroutable mandatory message goes back (`broker.session.DeliverySink`)."""

    def returned(self, message: Message, reply_code: int, reply_text: str) -> None: ...


@dataclass(slots=True)
class PublishResult:
    """What `Session.publish` did with a message.

    Attributes:
        routed: queues the message was routed to (0: unroutable). A message
            held by a delayed exchange counts as routed to 1.
        stored: some copy was written to the store: a confirm (PUBACK,
            RECEIPT) must wait for `store.when_durable`.
        rejected: queues that refused it (`x-overflow: reject-publish`): the
            publisher should get a negative confirm (AMQP `basic.nack`).
        duplicates: FIFO queues that had already seen its deduplication id
            (accepted and confirmed, not queued again).
        delayed: held for later delivery (`x-delay`, `x-delivery-delay`).
        deferred: inside a transaction; nothing is known until `tx_commit`.

    For callers written when `publish` returned a bool, the result is truthy
    exactly when `stored` is.
    """

    routed: int = 0
    stored: bool = False
    rejected: int = 0
    duplicates: int = 0
    delayed: bool = False
    deferred: bool = False

    def __bool__(self) -> bool:
        return self.stored


def _count(result: PublishResult, outcome: int, queue: Queue, message: Message) -> None:
    """Add what `Queue.publish` said (other than ENQUEUED) to a publish's result."""
    if outcome in WRITTEN:
        result.stored = True
        result.delayed |= outcome != 1
    elif outcome == REJECTED:
        result.rejected += 1
    elif outcome == DUPLICATE:
        result.duplicates += 1
        result.stored |= message.persistent and queue.stored
    else:
        result.delayed = True


class SessionPublishing:
    """`publish` and the transaction that may hold it (and acks) back."""

    # the session's state this part reads and writes (set by `Session.__init__`)
    connection: PublishingConnection
    vhost: VirtualHost
    user: User
    sink: ReturnSink
    stats: MessageStats
    _tx: list[Callable[[], Any]] | None

    if TYPE_CHECKING:  # the session's other parts (`broker.session.Session`)

        def _check(self, access: str, name: str, kind: str) -> None: ...
        def check_topic(self, exchange: str, access: TopicAccess, routing_key: str) -> None: ...

    # -- publishing -----------------------------------------------------------------

    def check_exchange(self, name: str) -> None:
        """Raise NotFound unless the session's vhost has an exchange `name`.

        For an adapter that must refuse a missing exchange before it acts on
        it later (a SEND held by a transaction until COMMIT, a SUBSCRIBE that
        declares its queue before binding it).
        """
        self.vhost.lookup_exchange(name)

    def publish(
        self, exchange_name: str, message: Message, *, mandatory: bool = False
    ) -> PublishResult:
        """Route a message to its queues.

        Returns a `PublishResult`: `stored` when the message was written to
        the store (the caller must wait for `store.when_durable` before
        confirming it), `rejected` when a full queue refused it (nack it),
        `routed` how many queues it reached. An unroutable mandatory message
        is handed back through `sink.returned`. Inside a transaction nothing
        happens until `tx_commit` (the result has `deferred` set).
        Raises NotFound (no such exchange), AccessRefused (no write permission,
        internal exchange).

        A repeated (exchange, routing key) takes the vhost's route cache
        (`broker.vhost_routing`): no exchange lookup, no routing; the result, the
        permission check and the effects are the same (proven against a broker
        without the cache in tests/queues/test_publish_to_queue.py).
        """
        route = self.vhost.routes.lookup((exchange_name, message.routing_key))
        if route is not None and self._tx is None:
            self._check("write", exchange_name, "exchange")
            user = self.user
            if user.topic_permissions or user.authz is not None:  # else nothing to check
                self.check_topic(exchange_name, "write", message.routing_key)
            self.connection.published = True
            self.stats.publish += 1
            exchange = route.exchange
            exchange.stats.publish_in += 1
            queues = route.queues
            if len(queues) != 1:
                return self._publish_to(exchange, queues, message, mandatory)
            # `_publish_to` for the usual single queue, inlined: this runs once per message
            exchange.stats.publish_out += 1
            result = PublishResult(routed=1)
            queue = queues[0]
            outcome = queue.publish(message)
            if outcome:
                _count(result, outcome, queue, message)
            return result
        exchange = self.vhost.lookup_exchange(exchange_name)
        self._check("write", exchange_name, "exchange")
        self.check_topic(exchange_name, "write", message.routing_key)
        self.connection.published = True
        if exchange.internal:
            raise AccessRefused(
                f"cannot publish to internal exchange '{exchange_name}' "
                f"in vhost '{self.vhost.name}'"
            )
        if self._tx is not None:
            self._tx.append(lambda: self._route(exchange, message, mandatory))
            return PublishResult(deferred=True)
        return self._route(exchange, message, mandatory)

    def _route(self, exchange: Exchange, message: Message, mandatory: bool) -> PublishResult:
        self.stats.publish += 1
        exchange.stats.publish_in += 1
        if exchange.delayed:
            delay = delay_of(message)
            if delay:
                stored = self.vhost.delay_scheduler(exchange).schedule(message, delay)
                exchange.stats.publish_out += 1
                return PublishResult(routed=1, stored=stored, delayed=True)
        return self._publish_to(exchange, self.vhost.route(exchange, message), message, mandatory)

    def _publish_to(
        self, exchange: Exchange, queues: tuple[Queue, ...], message: Message, mandatory: bool
    ) -> PublishResult:
        if not queues:
            if mandatory:
                self.stats.return_unroutable += 1
                self.sink.returned(message, 312, "NO_ROUTE")
            else:
                self.stats.drop_unroutable += 1
            return PublishResult()
        # one per queue reached, as RabbitMQ counts an exchange's `publish_out` (per
        # queue-exchange pair: a fanout to 3 queues is publish_in 1, publish_out 3)
        exchange.stats.publish_out += len(queues)
        result = PublishResult(routed=len(queues))
        for queue in queues:
            outcome = queue.publish(message)
            if outcome:
                _count(result, outcome, queue, message)
        return result

    def publish_to_queue(self, queue: Queue, message: Message) -> PublishResult:
        """`publish("", message)`, kept for the STOMP adapter's `/queue/` fast path.

        The caller has checked that `queue` is still the vhost's queue named
        `message.routing_key`; the route cache reaches that same queue, so
        this is `publish` (one cached lookup instead of the exchange lookup
        and the routing), with its result, permission check and effects.
        """
        return self.publish("", message)

    # -- transactions -------------------------------------------------------------------

    @property
    def transactional(self) -> bool:
        return self._tx is not None

    def tx_select(self) -> None:
        if self._tx is None:
            self._tx = []

    def tx_commit(self) -> None:
        """Apply held publishes and acks in order. Raises PreconditionFailed outside a tx."""
        if self._tx is None:
            raise PreconditionFailed("channel is not transactional")
        actions, self._tx = self._tx, []
        for action in actions:
            action()

    def tx_rollback(self) -> None:
        """Discard held publishes and acks (deliveries stay unacked)."""
        if self._tx is None:
            raise PreconditionFailed("channel is not transactional")
        self._tx = []
