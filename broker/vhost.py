"""Virtual hosts: the namespace of exchanges, queues and the bindings between them.

Rooms: this module owns declaring and deleting exchanges and queues and the
bindings between them (a queue writes its own entries to the store through
`broker.serialization.store_entry`). `Exchange` is `broker.exchange`; routing (the route cache,
delayed exchanges) is `broker.vhost_routing`, a mixin of `VirtualHost`
sharing its state with no call in between.

Ordering rules: every topology change (declare, delete, bind, unbind) clears
the route cache (`routes`) before the next publish can route.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from typing import Any

from moorage.broker.arguments import parse_queue_arguments
from moorage.broker.delayed import DelayScheduler
from moorage.broker.errors import (
    AccessRefused,
    CommandInvalid,
    NotFound,
    PreconditionFailed,
    ResourceLocked,
)
from moorage.broker.exchange import DELAYED_EXCHANGE_TYPE, STANDARD_EXCHANGES, Exchange
from moorage.broker.exchange_types import EXCHANGE_TYPES
from moorage.broker.message import Message
from moorage.broker.queue import Queue, QueueOwner
from moorage.broker.retained import RetainedMessages
from moorage.broker.serialization import encode_arguments, store_body
from moorage.broker.services import BrokerServices
from moorage.broker.vhost_routing import CachedRoute, RouteCache, VhostRouting
from moorage.storage import BindingRecord, ExchangeRecord, QueueRecord, Store

__all__ = [  # re-exported: they were born here
    "DELAYED_EXCHANGE_TYPE",
    "STANDARD_EXCHANGES",
    "CachedRoute",
    "Exchange",
]

# Queue arguments whose values must match on redeclaration (RabbitMQ's list);
# any other argument is accepted and ignored when comparing.
EQUIVALENT_QUEUE_ARGS = frozenset(
    {
        "x-expires",
        "x-message-ttl",
        "x-dead-letter-exchange",
        "x-dead-letter-routing-key",
        "x-max-length",
        "x-max-length-bytes",
        "x-max-priority",
        "x-overflow",
        "x-queue-type",
        "x-single-active-consumer",
        "x-delivery-limit",
        "x-consumer-timeout",
        "x-delivery-delay",
        "x-content-based-deduplication",
    }
)

HIDDEN_QUEUE_PREFIX = "amq.moorage."  # store queues the core keeps for itself


def _inequivalent(
    what: str, name: str, vhost: str, arg: str, received: Any, current: Any
) -> PreconditionFailed:
    return PreconditionFailed(
        f"inequivalent arg '{arg}' for {what} '{name}' in vhost '{vhost}': "
        f"received '{_fmt(received)}' but current is '{_fmt(current)}'"
    )


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "none" if value is None else str(value)


def _stored(entity: Queue | Exchange) -> bool:
    """Is this queue or exchange kept in the store? (Exclusive queues never are.)"""
    return entity.stored if isinstance(entity, Queue) else entity.durable


def server_queue_name() -> str:
    """A server-named queue, `amq.gen-` plus 22 random url-safe characters."""
    return "amq.gen-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


class VirtualHost(VhostRouting):
    """One vhost: its exchanges, queues and bindings, kept in memory and in the store."""

    def __init__(self, broker: BrokerServices, name: str) -> None:
        self.broker = broker
        self.name = name
        self.routes: RouteCache[CachedRoute] = RouteCache()
        """Routes by (exchange, routing key); cleared by every topology change below."""
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, Queue] = {}
        self.exchanges[""] = Exchange("", "direct", durable=True)
        for xname, xtype in STANDARD_EXCHANGES:
            self.exchanges[xname] = Exchange(xname, xtype, durable=True)
        self.delay_schedulers: dict[str, DelayScheduler] = {}  # delayed exchanges, by name
        self.retained = RetainedMessages(self)  # MQTT's retained messages, by topic

    # -- exchanges ----------------------------------------------------------------

    def lookup_exchange(self, name: str) -> Exchange:
        try:
            return self.exchanges[name]
        except KeyError:
            raise NotFound(f"no exchange '{name}' in vhost '{self.name}'") from None

    def find_exchange(self, name: str) -> Exchange | None:
        """The exchange `name`, or None."""
        return self.exchanges.get(name)

    @staticmethod
    def check_not_default_exchange(name: str) -> None:
        """The default exchange cannot be declared, deleted or bound (RabbitMQ: 403)."""
        if name == "":
            raise AccessRefused("operation not permitted on the default exchange")

    def check_exchange_deletion(self, name: str) -> None:
        """Neither the default exchange nor an `amq.*` one may be deleted (RabbitMQ: 403)."""
        self.check_not_default_exchange(name)
        if name.startswith("amq."):
            raise AccessRefused(
                f"deletion of system exchange '{name}' in vhost '{self.name}' not allowed"
            )

    @staticmethod
    def check_exchange_type(type_name: str, arguments: Mapping[str, Any] | None) -> None:
        """An exchange.declare's type must be known, whether or not the exchange exists.

        RabbitMQ checks the type first of all: an unknown one is a connection
        error (503 COMMAND_INVALID) even when redeclaring an existing exchange.
        """
        if type_name == DELAYED_EXCHANGE_TYPE:
            inner = (arguments or {}).get("x-delayed-type")
            if inner not in EXCHANGE_TYPES:  # the plugin's check and text
                raise PreconditionFailed(
                    "Invalid argument, 'x-delayed-type' must be an existing exchange type"
                )
        elif type_name not in EXCHANGE_TYPES:
            raise CommandInvalid(f"unknown exchange type '{type_name}'")

    @staticmethod
    def check_name(kind: str, name: str) -> None:
        """Clients may not create (nor redeclare) queues or exchanges named `amq.*`."""
        if name.startswith("amq."):
            raise AccessRefused(f"{kind} name '{name}' contains reserved prefix 'amq.*'")

    def declare_exchange(
        self,
        name: str,
        type_name: str,
        *,
        durable: bool = True,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, Any] | None = None,
        passive: bool = False,
    ) -> Exchange:
        """Create an exchange or check that an existing one is equivalent.

        Checks in RabbitMQ's order: the default exchange (403, even passive),
        then for a passive declare only existence (404); else the type
        (503 if unknown), then for a new exchange the reserved `amq.*` prefix
        (403), for an existing one equivalence (406).
        """
        self.check_not_default_exchange(name)
        existing = self.exchanges.get(name)
        if passive:
            if existing is None:
                raise NotFound(f"no exchange '{name}' in vhost '{self.name}'")
            return existing
        self.check_exchange_type(type_name, arguments)
        if existing is None:
            self.check_name("exchange", name)
            try:
                exchange = Exchange(
                    name,
                    type_name,
                    durable=durable,
                    auto_delete=auto_delete,
                    internal=internal,
                    arguments=dict(arguments or {}),
                )
            except KeyError:
                raise CommandInvalid(f"unknown exchange type '{type_name}'") from None
            self.exchanges[name] = exchange
            self.routes.clear()  # (no route changes before it has a binding: kept simple)
            if durable:
                self.broker.store.put_exchange(self._exchange_record(exchange))
            return exchange
        for arg, received, current in (
            ("type", type_name, existing.type_name),
            ("durable", durable, existing.durable),
            ("auto_delete", auto_delete, existing.auto_delete),
            ("internal", internal, existing.internal),
            (
                "alternate-exchange",
                (arguments or {}).get("alternate-exchange"),
                existing.arguments.get("alternate-exchange"),
            ),
        ):
            if received != current:
                raise _inequivalent("exchange", name, self.name, arg, received, current)
        return existing

    def _exchange_record(self, x: Exchange) -> ExchangeRecord:
        return ExchangeRecord(
            self.name, x.name, x.type_name, x.auto_delete, x.internal, encode_arguments(x.arguments)
        )

    def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        """Delete an exchange; a missing one is not an error (RabbitMQ 3.x)."""
        self.check_exchange_deletion(name)
        exchange = self.exchanges.get(name)
        if exchange is None:
            return
        if if_unused and not exchange.router.is_empty():
            raise PreconditionFailed(f"exchange '{name}' in vhost '{self.name}' in use")
        self._remove_exchange(exchange)

    def _remove_exchange(self, exchange: Exchange) -> None:
        del self.exchanges[exchange.name]
        self.routes.clear()
        scheduler = self.delay_schedulers.pop(exchange.name, None)
        if scheduler is not None:
            scheduler.close(delete=True)
        for dest, _key, _args in exchange.router.bindings():
            if isinstance(dest, Queue):
                dest.sources.discard(exchange)
        # bindings with this exchange as destination
        for other in self.exchanges.values():
            other.router.unbind_all(exchange)
        if exchange.durable:
            self.broker.store.delete_exchange(self.name, exchange.name)

    # -- queues -------------------------------------------------------------------

    def lookup_queue(self, name: str) -> Queue:
        try:
            return self.queues[name]
        except KeyError:
            raise NotFound(f"no queue '{name}' in vhost '{self.name}'") from None

    def find_queue(self, name: str) -> Queue | None:
        """The queue `name`, or None."""
        return self.queues.get(name)

    def all_queues(self) -> list[Queue]:
        """Every queue (a copy: safe to keep iterating while queues come and go)."""
        return list(self.queues.values())

    def declare_queue(
        self,
        name: str,
        *,
        owner: QueueOwner | None,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
        passive: bool = False,
    ) -> tuple[Queue, bool]:
        """Create a queue or check an existing one; returns (queue, created).

        Checks in RabbitMQ's order. Passive: existence (404), then another
        connection's exclusive queue (405). Otherwise: the reserved `amq.*`
        prefix (403, also for an existing server-named queue), then for an
        existing queue strict exclusivity (405 unless `exclusive` names the
        same owner: another connection's queue, or a redeclaration whose
        exclusive flag differs), then equivalence of durable, auto_delete
        and the arguments (406).
        """
        arguments = dict(arguments or {})
        if name and not passive:
            self.check_name("queue", name)
        existing = self.queues.get(name) if name else None
        if existing is not None:
            if passive:
                self.check_exclusive(existing, owner)
                existing.touch()
                return existing, False
            self.check_exclusive(existing, owner if exclusive else None, strict=True)
            parse_queue_arguments(
                arguments, queue=name, vhost=self.name, durable=durable, exclusive=exclusive
            )
            for arg, received, current in (
                ("durable", durable, existing.durable),
                ("auto_delete", auto_delete, existing.auto_delete),
            ):
                if received != current:
                    raise _inequivalent("queue", name, self.name, arg, received, current)
            for arg in EQUIVALENT_QUEUE_ARGS:
                if arguments.get(arg) != existing.arguments.get(arg):
                    raise _inequivalent(
                        "queue",
                        name,
                        self.name,
                        arg,
                        arguments.get(arg),
                        existing.arguments.get(arg),
                    )
            existing.touch()
            return existing, False
        if passive:
            raise NotFound(f"no queue '{name}' in vhost '{self.name}'")
        if not name:
            name = server_queue_name()
        self.broker.resource_limits.check_queue(self.name, len(self.queues), name)
        options = parse_queue_arguments(
            arguments, queue=name, vhost=self.name, durable=durable, exclusive=exclusive
        )
        queue = Queue(
            self,
            name,
            durable=durable,
            exclusive_owner=owner if exclusive else None,
            auto_delete=auto_delete,
            arguments=arguments,
            options=options,
        )
        self.queues[name] = queue
        self.routes.clear()  # the default exchange reaches it now
        if exclusive and owner is not None:
            owner.exclusive_queues.append(queue)
        if queue.stored:
            self.broker.store.put_queue(
                QueueRecord(self.name, name, auto_delete, encode_arguments(arguments))
            )
        return queue, True

    def check_exclusive(
        self, queue: Queue, connection: QueueOwner | None, *, strict: bool = False
    ) -> None:
        """Raise ResourceLocked when an exclusive queue is used by another connection.

        `strict` (a redeclaration, `rabbit_amqqueue:check_exclusive_access/3`):
        `connection` is the owner the declaration asks for (None: not
        exclusive) and must be the queue's owner exactly.
        """
        owner = queue.exclusive_owner
        if owner is not connection and (strict or owner is not None):
            raise ResourceLocked(
                f"cannot obtain exclusive access to locked queue '{queue.name}' in vhost "
                f"'{self.name}'. It could be originally declared on another connection or "
                "the exclusive property value does not match that of the original declaration."
            )

    def delete_queue(self, name: str, *, if_unused: bool = False, if_empty: bool = False) -> int:
        """Delete a queue; returns the number of ready messages it held."""
        queue = self.lookup_queue(name)
        if if_unused and queue.consumers:
            raise PreconditionFailed(f"queue '{name}' in vhost '{self.name}' in use")
        if if_empty and queue.ready:
            raise PreconditionFailed(f"queue '{name}' in vhost '{self.name}' not empty")
        count = queue.message_count
        del self.queues[name]
        self.routes.clear()
        queue.deleted = True
        queue.deleted_now()
        for exchange in list(queue.sources):
            exchange.router.unbind_all(queue)
            self._maybe_auto_delete(exchange)
        queue.sources.clear()
        queue._generation += 1
        if queue.stored:
            self.broker.store.delete_queue(self.name, name)
        queue.ready.clear()
        queue.tail.clear()
        queue.ready_bytes = queue.tail_count = 0
        for consumer in list(queue.consumers):
            consumer.session.consumer_cancelled(consumer, None)
        queue.consumers.clear()
        if queue.exclusive_owner is not None:
            owned = queue.exclusive_owner.exclusive_queues
            if queue in owned:
                owned.remove(queue)
        return count

    # -- bindings -----------------------------------------------------------------

    def bind(
        self,
        exchange: Exchange,
        destination: Queue | Exchange,
        routing_key: str,
        arguments: Mapping[str, Any],
        *,
        owner: QueueOwner | None = None,
    ) -> None:
        """Bind `destination` to `exchange` (idempotent).

        The binding is validated before the exclusive-queue check, as in
        RabbitMQ. `owner` is the binding connection (None: the broker itself).
        Raises PreconditionFailed, ResourceLocked.
        """
        try:
            exchange.router.validate_binding(routing_key, arguments)
        except ValueError as e:
            raise PreconditionFailed(str(e)) from None
        if owner is not None and isinstance(destination, Queue):
            self.check_exclusive(destination, owner)
        if exchange.router.bind(destination, routing_key, arguments):
            self.routes.clear()
            if isinstance(destination, Queue):
                destination.sources.add(exchange)
            if _stored(exchange) and _stored(destination):
                self.broker.store.put_binding(
                    self._binding_record(exchange, destination, routing_key, arguments)
                )

    def unbind(
        self,
        exchange: Exchange,
        destination: Queue | Exchange,
        routing_key: str,
        arguments: Mapping[str, Any],
    ) -> None:
        """Remove a binding; a missing binding is not an error (RabbitMQ 3.x)."""
        if exchange.router.unbind(destination, routing_key, arguments):
            self.routes.clear()
            if isinstance(destination, Queue) and not any(
                d is destination for d, _, _ in exchange.router.bindings()
            ):
                destination.sources.discard(exchange)
            if _stored(exchange) and _stored(destination):
                self.broker.store.delete_binding(
                    self._binding_record(exchange, destination, routing_key, arguments)
                )
            self._maybe_auto_delete(exchange)

    def _maybe_auto_delete(self, exchange: Exchange) -> None:
        if exchange.auto_delete and exchange.router.is_empty() and exchange.name in self.exchanges:
            self._remove_exchange(exchange)

    def _binding_record(
        self,
        source: Exchange,
        destination: Queue | Exchange,
        routing_key: str,
        arguments: Mapping[str, Any],
    ) -> BindingRecord:
        kind = "queue" if isinstance(destination, Queue) else "exchange"
        return BindingRecord(
            self.name, source.name, destination.name, kind, routing_key, encode_arguments(arguments)
        )

    # -- persistence helpers used by queues ----------------------------------------

    @property
    def store(self) -> Store:
        return self.broker.store

    def store_body(self, message: Message) -> int:
        """Write a message body to the store once (`broker.serialization.store_body`)."""
        return store_body(self.broker, message)

    # -- redrive ----------------------------------------------------------------------

    def redrive(self, source: str, destination: str | None = None, limit: int = 0) -> int:
        """Move ready dead letters from queue `source` back to where they died (SQS redrive).

        Each message goes to `destination` when given, else to the queue named
        by its most recent `x-death` entry (messages without one stay).
        Messages keep their `x-death` history. Only entries in memory are
        moved (call again for a paged-out backlog); `limit` > 0 caps the count.
        Returns how many moved. Raises NotFound for a missing queue.
        """
        dlq = self.lookup_queue(source)
        target = self.lookup_queue(destination) if destination is not None else None
        moved = 0
        for entry in list(dlq.ready):
            if limit and moved >= limit:
                break
            to = target
            if to is None:
                deaths = entry.message.header("x-death") or ()
                last = deaths[0] if deaths and isinstance(deaths[0], dict) else None
                to = self.queues.get(str(last.get("queue"))) if last else None
            if to is None or to is dlq:
                continue
            dlq.ready.remove_entry(entry, False)
            dlq.ready_bytes -= len(entry.message.body)
            message = entry.message.copy()
            to.publish(message)
            if entry.persisted:
                self.broker.store.ack(self.name, dlq.name, entry.seq)
            moved += 1
        return moved
