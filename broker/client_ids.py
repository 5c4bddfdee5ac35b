"""Which live connection holds each client id, per protocol, owned by the broker.

MQTT and STOMP (ActiveMQ's `client-id`) both allow one live connection per
client id on a broker. What happens to a second one is each protocol's rule
and stays in its adapter: MQTT takes over (the old holder is disconnected,
[MQTT-3.1.4-3]), ActiveMQ refuses the newcomer (InvalidClientIDException).
This registry only keeps the map honest: `claim` says who held the id before,
and `release` frees an id only for the connection that holds it, so a
connection that was taken over cannot free its successor's claim on the way
out. One registry per protocol lives on the broker (`Broker.client_ids`), not
in a module-level global, so several brokers in one process (tests, embedding)
never see each other's clients.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class ClientIds(Generic[T]):
    """Client id -> the connection that holds it, for one protocol."""

    __slots__ = ("_holders",)

    def __init__(self) -> None:
        self._holders: dict[str, T] = {}

    def holder(self, client_id: str) -> T | None:
        """The connection holding `client_id`, or None."""
        return self._holders.get(client_id)

    def claim(self, client_id: str, connection: T) -> T | None:
        """Make `connection` the holder; returns the previous holder (None if free)."""
        previous = self._holders.get(client_id)
        self._holders[client_id] = connection
        return None if previous is connection else previous

    def release(self, client_id: str, connection: T) -> bool:
        """Free `client_id` if `connection` holds it; False (and nothing changes) otherwise."""
        if self._holders.get(client_id) is not connection:
            return False
        del self._holders[client_id]
        return True

    def __len__(self) -> int:
        return len(self._holders)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._holders))
