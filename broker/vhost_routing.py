"""Routing: which queues a message published to an exchange reaches, in one vhost.

Part of `broker.vhost.VirtualHost` (a mixin: the vhost's own state, no
wrapper, no extra call per message). Routing follows RabbitMQ: the default
exchange (`""`) delivers to the queue named by the routing key; other
exchanges ask their type plug-in (`broker.exchange_types`) for destinations,
following exchange-to-exchange bindings (each exchange visited once) and an
exchange's `alternate-exchange` when it routes the message nowhere.

A message published to an `x-delayed-message` exchange with a positive
`x-delay` header is first held by the exchange's `DelayScheduler`
(`broker.delayed`, made here on first use) and routed when due.

Ordering rules:
- A route that depends on the routing key alone is cached
  (`RouteCache`, as `CachedRoute`) for a live, non-internal, non-delayed
  exchange; every topology change in `broker.vhost` clears the cache, so a
  cached route is always the route `_walk` would find.
- Each queue is reached once per message, whatever the number of paths.

The route cache
---------------
Routing a message walks the exchange's table, exchange-to-exchange bindings
and alternate exchanges (`VhostRouting.route`). For the exchange types whose
answer depends on the routing key alone (direct, fanout, topic and the
default exchange) the answer is the same for every message with the same
(exchange, routing key) until the topology changes, so the vhost keeps it
here and `Session.publish` takes it without looking the exchange up again.

- What is cached: the exchange object and the queues, in routing order
  (`CachedRoute`). Routes that depend on headers (a headers exchange met
  anywhere on the walk), and publishes to internal or delayed exchanges
  (which `Session.publish` treats apart), are never cached.
- Invalidation: every change of the vhost's topology (exchange declared or
  deleted, queue declared or deleted, binding added or removed, the restored
  topology at start) clears the whole cache, synchronously, before anything
  else can publish. Changes are rare next to publishes; a precise
  invalidation would cost more to keep right than the misses cost.
- Bound: at most `limit` routes (MQTT topics carrying a device id can make
  routing keys without end); when full, the cache is cleared and refills
  with what is published next. `limit=0` turns it off (the twin-broker
  tests compare both ways).

The cache holds values of any type: `VirtualHost` stores its `CachedRoute`s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from moorage.broker.delayed import DELAY_STORE_PREFIX, DelayScheduler
from moorage.broker.exchange import Exchange
from moorage.broker.message import Message
from moorage.broker.queue import Queue
from moorage.broker.services import BrokerServices

ROUTE_CACHE_LIMIT = 4096
"""Routes kept per vhost: far more (exchange, key) pairs than a publisher mix of
queues and topics repeats, and a few hundred KiB at most."""

RouteT = TypeVar("RouteT")


class RouteCache(Generic[RouteT]):
    """A bounded map (exchange name, routing key) -> route, cleared on topology changes."""

    __slots__ = ("_routes", "limit", "lookup")

    def __init__(self, limit: int = ROUTE_CACHE_LIMIT) -> None:
        self.limit = limit
        self._routes: dict[tuple[str, str], RouteT] = {}
        self.lookup: Callable[[tuple[str, str]], RouteT | None] = self._routes.get
        """`get` keyed by the (exchange, routing key) tuple, with no Python call in
        between (the publish hot path, `Session.publish`)."""

    def __len__(self) -> int:
        return len(self._routes)

    def get(self, exchange: str, routing_key: str) -> RouteT | None:
        """The route remembered for this pair, or None."""
        return self._routes.get((exchange, routing_key))

    def put(self, exchange: str, routing_key: str, route: RouteT) -> None:
        """Remember a route (clears everything first when the cache is full)."""
        routes = self._routes
        if len(routes) >= self.limit:
            if not self.limit:
                return
            routes.clear()
        routes[(exchange, routing_key)] = route

    def clear(self) -> None:
        """The topology changed: forget every route."""
        self._routes.clear()


class CachedRoute:
    """Where messages published to `exchange` with one routing key go (`RouteCache`)."""

    __slots__ = ("exchange", "queues")

    def __init__(self, exchange: Exchange, queues: tuple[Queue, ...]) -> None:
        self.exchange = exchange
        self.queues = queues


class VhostRouting:
    """Routing from an exchange to queues, with the route cache and delayed exchanges."""

    # the vhost's state this part reads and writes (set by `VirtualHost.__init__`)
    broker: BrokerServices
    name: str
    routes: RouteCache[CachedRoute]
    exchanges: dict[str, Exchange]
    queues: dict[str, Queue]
    delay_schedulers: dict[str, DelayScheduler]

    # -- routing ------------------------------------------------------------------

    def route(self, exchange: Exchange, message: Message) -> tuple[Queue, ...]:
        """Every queue `message` reaches from `exchange`, each once, through the route
        cache (`RouteCache`) when the route depends on the routing key alone."""
        routing_key = message.routing_key
        cached = self.routes.get(exchange.name, routing_key)
        if cached is not None and cached.exchange is exchange:
            return cached.queues
        queues, by_key = self._walk(exchange, message)
        if (
            by_key
            and not exchange.internal
            and not exchange.delayed
            and self.exchanges.get(exchange.name) is exchange
        ):
            self.routes.put(exchange.name, routing_key, CachedRoute(exchange, queues))
        return queues

    def _walk(self, exchange: Exchange, message: Message) -> tuple[tuple[Queue, ...], bool]:
        """The queues `message` reaches from `exchange`, and whether every exchange on
        the way routed by the routing key alone (the route may then be cached)."""
        if exchange.name == "":
            queue = self.queues.get(message.routing_key)
            return ((queue,) if queue is not None else ()), True
        routing_key = message.routing_key
        headers = message.properties.headers
        found: dict[Queue, None] = {}
        seen = {exchange}
        pending = [exchange]
        by_key = True
        while pending:
            current = pending.pop()
            by_key = by_key and current.router.routes_by_key
            destinations = current.router.route(routing_key, headers)
            if not destinations:
                alternate = current.alternate
                if alternate is not None:
                    ae = self.exchanges.get(alternate)
                    if ae is not None and ae not in seen:
                        seen.add(ae)
                        pending.append(ae)
                continue
            for dest in destinations:
                if isinstance(dest, Queue):
                    found[dest] = None
                elif isinstance(dest, Exchange) and dest not in seen:
                    seen.add(dest)
                    pending.append(dest)
        return tuple(found), by_key

    def route_from(self, exchange: str, message: Message) -> tuple[Queue, ...]:
        """Every queue `message` reaches from the exchange named `exchange` (none if
        there is no such exchange)."""
        source = self.exchanges.get(exchange)
        return () if source is None else self.route(source, message)

    # -- delayed delivery -----------------------------------------------------------

    def delay_scheduler(self, exchange: Exchange) -> DelayScheduler:
        """The scheduler of a delayed exchange (made on first use)."""
        scheduler = self.delay_schedulers.get(exchange.name)
        if scheduler is None:
            name = exchange.name

            def release(message: Message) -> None:
                current = self.exchanges.get(name)
                if current is not None:
                    for queue in self.route(current, message):
                        queue.publish(message)

            scheduler = self.delay_schedulers[name] = DelayScheduler(
                self.broker,
                self.name,
                DELAY_STORE_PREFIX + "x." + name,
                release,
                stored=exchange.durable,
            )
        return scheduler
