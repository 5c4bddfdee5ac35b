"""The route cache: which queues a publish reaches, remembered per (exchange, routing key).

Theory of operation
-------------------
Routing a message walks the exchange's table, exchange-to-exchange bindings
and alternate exchanges (`VirtualHost.route`). For the exchange types whose
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

from typing import Generic, TypeVar

ROUTE_CACHE_LIMIT = 4096
"""Routes kept per vhost: far more (exchange, key) pairs than a publisher mix of
queues and topics repeats, and a few hundred KiB at most."""

RouteT = TypeVar("RouteT")


class RouteCache(Generic[RouteT]):
    """A bounded map (exchange name, routing key) -> route, cleared on topology changes."""

    __slots__ = ("_routes", "limit")

    def __init__(self, limit: int = ROUTE_CACHE_LIMIT) -> None:
        self.limit = limit
        self._routes: dict[tuple[str, str], RouteT] = {}

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
