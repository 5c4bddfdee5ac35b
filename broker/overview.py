"""Read-only snapshots of the broker's state for operators: the core's side of the
management API, metrics and the command line.

Each function walks the live objects once and returns plain frozen records,
so a caller (the HTTP management adapter, a metrics exporter) never holds or
mutates a queue, an exchange or a session, and never imports them. Counting is
O(entities asked for); nothing here runs on a message path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from typing import TYPE_CHECKING, Any, NamedTuple

from moorage.broker.queue import Queue
from moorage.broker.stats import EMPTY, StatsSnapshot
from moorage.broker.vhost import HIDDEN_QUEUE_PREFIX, Exchange, VirtualHost

if TYPE_CHECKING:
    from moorage.broker.broker import Broker
    from moorage.broker.connection import ClientConnection


INTERNAL_PEER = "internal"  # the peer of connections adapters open for the broker itself


@dataclass(frozen=True)
class QueueInfo:
    vhost: str
    name: str
    durable: bool
    auto_delete: bool
    exclusive: bool
    arguments: dict[str, Any]
    messages_ready: int
    messages_unacknowledged: int
    message_bytes_ready: int
    consumers: int
    owner_connection: int | None  # ClientConnection.id of an exclusive queue's owner
    stats: StatsSnapshot = EMPTY  # message counters and rates (`broker.stats`)

    @property
    def messages(self) -> int:
        return self.messages_ready + self.messages_unacknowledged


@dataclass(frozen=True)
class ExchangeInfo:
    vhost: str
    name: str
    type: str
    durable: bool
    auto_delete: bool
    internal: bool
    arguments: dict[str, Any]
    stats: StatsSnapshot = EMPTY  # publish_in, publish_out


@dataclass(frozen=True)
class BindingInfo:
    vhost: str
    source: str
    destination: str
    destination_type: str  # "queue" or "exchange"
    routing_key: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ConsumerInfo:
    vhost: str
    queue: str
    consumer_tag: str
    ack_required: bool
    exclusive: bool
    prefetch_count: int
    arguments: dict[str, Any]
    connection: int
    channel: int


@dataclass(frozen=True)
class ChannelInfo:
    connection: int
    number: int
    vhost: str
    user: str
    prefetch_count: int
    global_prefetch_count: int
    messages_unacknowledged: int
    consumers: int
    transactional: bool
    stats: StatsSnapshot = EMPTY


@dataclass(frozen=True)
class ConnectionInfo:
    id: int
    protocol: str
    peer: str
    vhost: str
    user: str
    channels: int
    client_properties: dict[str, Any] = field(default_factory=dict)
    stats: StatsSnapshot = EMPTY

    @property
    def internal(self) -> bool:
        """A connection the broker opened for itself (an adapter's `peer="internal"`)."""
        return self.peer == INTERNAL_PEER


def _queue_info(queue: Queue) -> QueueInfo:
    owner = queue.exclusive_owner
    return QueueInfo(
        vhost=queue.vhost.name,
        name=queue.name,
        durable=queue.durable,
        auto_delete=queue.auto_delete,
        exclusive=owner is not None,
        arguments=dict(queue.arguments),
        messages_ready=queue.message_count,
        messages_unacknowledged=queue.unacked,
        message_bytes_ready=queue.ready_bytes + queue.tail_bytes,
        consumers=len(queue.consumers),
        owner_connection=owner.id if owner is not None else None,
        stats=queue.stats.snapshot(),
    )


def _exchange_info(vhost: VirtualHost, exchange: Exchange) -> ExchangeInfo:
    return ExchangeInfo(
        vhost=vhost.name,
        name=exchange.name,
        type=exchange.type_name,
        durable=exchange.durable,
        auto_delete=exchange.auto_delete,
        internal=exchange.internal,
        arguments=dict(exchange.arguments),
        stats=exchange.stats.snapshot(),
    )


def _vhosts(broker: Broker, vhost: str | None) -> list[VirtualHost]:
    if vhost is None:
        return list(broker.vhosts.values())
    found = broker.vhosts.get(vhost)
    return [found] if found is not None else []


def _visible(name: str) -> bool:
    return not name.startswith(HIDDEN_QUEUE_PREFIX)


@dataclass(frozen=True)
class QueueTotals:
    """Sums over many queues, made without a snapshot of each (the overview, /metrics)."""

    queues: int = 0
    messages_ready: int = 0
    messages_unacknowledged: int = 0
    message_bytes_ready: int = 0
    consumers: int = 0  # the queues' own counts: the broker's own consumers too
    published: int = 0  # messages that entered them (`stats.publish`)

    @property
    def messages(self) -> int:
        return self.messages_ready + self.messages_unacknowledged


# what `queue_totals` sums, read in C (`map`) rather than attribute by attribute
_READY = attrgetter("ready")
_TAIL_COUNT = attrgetter("tail_count")
_UNACKED = attrgetter("unacked")
_READY_BYTES = attrgetter("ready_bytes")
_TAIL_BYTES = attrgetter("tail_bytes")
_CONSUMERS = attrgetter("consumers")
_PUBLISHED = attrgetter("stats.publish")
_SESSIONS = attrgetter("sessions")


def queue_totals(broker: Broker, visible: Callable[[str], bool] | None = None) -> QueueTotals:
    """Totals over every queue (of the vhosts `visible` accepts): no records.

    The overview and /metrics ask for these on every poll, so each column is summed
    through `map` (in C) rather than by a Python loop reading every queue's fields."""
    queues = ready = unacked = ready_bytes = consumers = published = 0
    for v in broker.vhosts.values():
        if visible is not None and not visible(v.name):
            continue
        shown = [q for name, q in v.queues.items() if not name.startswith(HIDDEN_QUEUE_PREFIX)]
        queues += len(shown)
        # `Queue.message_count`, without a property call per queue
        ready += sum(map(len, map(_READY, shown))) + sum(map(_TAIL_COUNT, shown))
        unacked += sum(map(_UNACKED, shown))
        ready_bytes += sum(map(_READY_BYTES, shown)) + sum(map(_TAIL_BYTES, shown))
        consumers += sum(map(len, map(_CONSUMERS, shown)))
        published += sum(map(_PUBLISHED, shown))
    return QueueTotals(queues, ready, unacked, ready_bytes, consumers, published)


class ConnectionTotals(NamedTuple):
    """How many client connections, sessions (channels) and consumers there are."""

    connections: int
    channels: int
    consumers: int  # what `consumers` lists: of client connections only


_SESSION_CONSUMERS = attrgetter("consumers")


def client_connection_totals(
    broker: Broker, visible: Callable[[str], bool] | None = None
) -> ConnectionTotals:
    """Client connections, their sessions and their consumers, counted without a record of
    each: not the management API's own (`http`), nor those the broker opened for itself.

    Consumers are counted from the sessions, as `consumers` lists them, so the broker's
    own (an internal connection's, an SQS long poll's) are not; `visible` chooses the
    vhosts whose consumers count (the connections and channels are all counted)."""
    clients = [c for c in broker.connections if c.protocol != "http" and c.peer != INTERNAL_PEER]
    channels = sum(map(len, map(_SESSIONS, clients)))
    shown = clients
    if visible is not None:  # asked once per vhost, not once per connection
        hidden = {v for v in broker.vhosts.values() if not visible(v.name)}
        if hidden:
            shown = [c for c in clients if c.vhost not in hidden]
    sessions = chain.from_iterable(map(_SESSIONS, shown))
    consumers = sum(map(len, map(_SESSION_CONSUMERS, sessions)))
    return ConnectionTotals(len(clients), channels, consumers)


def exchange_count(broker: Broker) -> int:
    """How many exchanges there are, the default ones included."""
    return sum(len(v.exchanges) for v in broker.vhosts.values())


def message_totals(broker: Broker) -> StatsSnapshot:
    """The broker's message counters and rates: every session's, live or closed."""
    return broker.message_totals().snapshot()


def vhost_names(broker: Broker) -> list[str]:
    """Every virtual host, sorted."""
    return sorted(broker.vhosts)


def queues(broker: Broker, vhost: str | None = None) -> list[QueueInfo]:
    """Every queue (of one vhost, or all), in vhost then name order."""
    return [
        _queue_info(q)
        for v in _vhosts(broker, vhost)
        for name, q in sorted(v.queues.items())
        if _visible(name)
    ]


class QueueKey(NamedTuple):
    """A queue's vhost and name: what a page of a long listing is cut from."""

    vhost: str
    name: str


def queue_keys(broker: Broker, vhost: str | None = None) -> list[QueueKey]:
    """Every queue's key, in `queues` order, without a snapshot of each."""
    return [
        QueueKey(v.name, name)
        for v in _vhosts(broker, vhost)
        for name in sorted(v.queues)
        if _visible(name)
    ]


def queue(broker: Broker, vhost: str, name: str) -> QueueInfo | None:
    """One queue, or None."""
    found = broker.vhosts.get(vhost)
    q = found.queues.get(name) if found is not None else None
    return _queue_info(q) if q is not None and _visible(name) else None


def exchanges(broker: Broker, vhost: str | None = None) -> list[ExchangeInfo]:
    """Every exchange (of one vhost, or all), the default exchange included."""
    return [
        _exchange_info(v, x)
        for v in _vhosts(broker, vhost)
        for _n, x in sorted(v.exchanges.items())
    ]


def exchange(broker: Broker, vhost: str, name: str) -> ExchangeInfo | None:
    """One exchange, or None."""
    found = broker.vhosts.get(vhost)
    x = found.exchanges.get(name) if found is not None else None
    return _exchange_info(found, x) if found is not None and x is not None else None


def bindings(broker: Broker, vhost: str | None = None) -> list[BindingInfo]:
    """Every binding, the default exchange's implicit ones first (as RabbitMQ lists them)."""
    out: list[BindingInfo] = []
    for v in _vhosts(broker, vhost):
        for name in sorted(v.queues):
            if _visible(name):
                out.append(BindingInfo(v.name, "", name, "queue", name, {}))
        for xname, x in sorted(v.exchanges.items()):
            for destination, routing_key, arguments in x.router.bindings():
                assert isinstance(destination, Queue | Exchange)
                kind = "queue" if isinstance(destination, Queue) else "exchange"
                out.append(
                    BindingInfo(
                        v.name, xname, destination.name, kind, routing_key, dict(arguments or {})
                    )
                )
    return out


def _sessions(connection: ClientConnection) -> list[Any]:
    return sorted(connection.sessions, key=id)


def connections(broker: Broker) -> list[ConnectionInfo]:
    """Every client connection, oldest first."""
    return [
        ConnectionInfo(
            id=c.id,
            protocol=c.protocol,
            peer=c.peer,
            vhost=c.vhost.name,
            user=c.user.name,
            channels=len(c.sessions),
            client_properties=dict(c.client_properties),
            stats=c.message_totals().snapshot(),
        )
        for c in sorted(broker.connections, key=lambda c: c.id)
    ]


def channels(broker: Broker) -> list[ChannelInfo]:
    """Every session of every connection (an AMQP channel, an MQTT or STOMP session)."""
    out: list[ChannelInfo] = []
    for c in sorted(broker.connections, key=lambda c: c.id):
        for number, s in enumerate(_sessions(c), start=1):
            out.append(
                ChannelInfo(
                    connection=c.id,
                    number=number,
                    vhost=c.vhost.name,
                    user=c.user.name,
                    prefetch_count=s.consumer_prefetch,
                    global_prefetch_count=s.prefetch_count,
                    messages_unacknowledged=len(s.unacked),
                    consumers=len(s.consumers),
                    transactional=s.transactional,
                    stats=s.stats.snapshot(),
                )
            )
    return out


def consumers(broker: Broker, vhost: str | None = None) -> list[ConsumerInfo]:
    """Every consumer (of queues in one vhost, or all)."""
    out: list[ConsumerInfo] = []
    for c in sorted(broker.connections, key=lambda c: c.id):
        for number, s in enumerate(_sessions(c), start=1):
            for consumer in s.consumers.values():
                q = consumer.queue
                if vhost is not None and q.vhost.name != vhost:
                    continue
                out.append(
                    ConsumerInfo(
                        vhost=q.vhost.name,
                        queue=q.name,
                        consumer_tag=consumer.tag,
                        ack_required=not consumer.no_ack,
                        exclusive=consumer.exclusive,
                        prefetch_count=consumer.prefetch,
                        arguments=dict(consumer.arguments),
                        connection=c.id,
                        channel=number,
                    )
                )
    return out
