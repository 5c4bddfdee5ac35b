"""Per-vhost and per-user resource limits, with RabbitMQ's names and semantics.

RabbitMQ's `rabbitmqctl set_vhost_limits` and `set_user_limits`, set in the
configuration file instead (`[vhost_limits."/"]`, `[user_limits.NAME]`, see
`config/moorage.toml`):

| limit | of | counts | refused with |
|---|---|---|---|
| `max-connections` | vhost | client connections to the vhost, all protocols | 530 NOT_ALLOWED |
| `max-queues` | vhost | queues of the vhost, all protocols (MQTT sessions' too) | 406 |
| `max-connections` | user | the user's client connections, all protocols | 530 NOT_ALLOWED |
| `max-channels` | user | the user's AMQP channels over all its connections | 530 NOT_ALLOWED |

As in RabbitMQ a negative value (or leaving a limit out) means no limit and
0 allows none. The texts are RabbitMQ's, so scripts that match them carry
on. Each protocol maps the refusal onto its own answer: AMQP closes the
connection (`connection.close` 530, also for a channel over the user's limit,
as RabbitMQ does) or, for a queue, the channel (406); MQTT answers CONNACK
0x97 "quota exceeded" (3.1.1: 3, server unavailable) and STOMP an ERROR
frame. Only AMQP has channels: an MQTT or STOMP connection counts towards
`max-connections`, not `max-channels`.

Counting is done when a limit applies (a vhost or user with no limit costs
one dictionary lookup), over the broker's live connections.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from moorage.broker.errors import NotAllowed, PreconditionFailed

UNLIMITED = -1


class LimitExceeded(NotAllowed):
    """A connection or channel over a vhost or user limit (530 NOT_ALLOWED, hard)."""


class QueueLimitExceeded(PreconditionFailed):
    """A queue over its vhost's `max-queues` (406, closes the channel)."""


@dataclass(slots=True)
class VhostLimits:
    max_connections: int = UNLIMITED
    max_queues: int = UNLIMITED


@dataclass(slots=True)
class UserLimits:
    max_connections: int = UNLIMITED
    max_channels: int = UNLIMITED


_VHOST_KEYS = {"max-connections": "max_connections", "max-queues": "max_queues"}
_USER_KEYS = {"max-connections": "max_connections", "max-channels": "max_channels"}


def _parse(table: Any, keys: dict[str, str], what: str, cls: type[Any]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ValueError(f"'{what}' must be a table")
    parsed: dict[str, Any] = {}
    for name, limits in table.items():
        if not isinstance(limits, dict):
            raise ValueError(f"'{what}.{name}' must be a table")
        values = {}
        for key, value in limits.items():
            if key not in keys:
                raise ValueError(f"unknown key '{what}.{name}.{key}' (one of {sorted(keys)})")
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{what}.{name}.{key} must be an integer, not {value!r}")
            values[keys[key]] = value
        parsed[str(name)] = cls(**values)
    return parsed


def parse_vhost_limits(table: Any) -> dict[str, VhostLimits]:
    """`[vhost_limits]` of the configuration file. Raises ValueError."""
    return _parse(table, _VHOST_KEYS, "vhost_limits", VhostLimits)


def parse_user_limits(table: Any) -> dict[str, UserLimits]:
    """`[user_limits]` of the configuration file. Raises ValueError."""
    return _parse(table, _USER_KEYS, "user_limits", UserLimits)


def _reached(limit: int, count: int) -> bool:
    return limit >= 0 and count >= limit


@dataclass(slots=True)
class ResourceLimits:
    """The configured limits, and the checks the core makes against them."""

    vhosts: Mapping[str, VhostLimits] = field(default_factory=dict)
    users: Mapping[str, UserLimits] = field(default_factory=dict)

    def check_connection(self, vhost: str, user: str, connections: Iterable[Any]) -> None:
        """Before a client connection to `vhost` as `user` is opened. Raises LimitExceeded.

        `connections` are the broker's open client connections (`.vhost.name`,
        `.user.name`).
        """
        vhost_limit = self.vhosts.get(vhost, VhostLimits()).max_connections
        user_limit = self.users.get(user, UserLimits()).max_connections
        if vhost_limit < 0 and user_limit < 0:
            return
        in_vhost = of_user = 0
        for connection in connections:
            in_vhost += connection.vhost.name == vhost
            of_user += connection.user.name == user
        if _reached(vhost_limit, in_vhost):
            raise LimitExceeded(
                f"access to vhost '{vhost}' refused for user '{user}': "
                f"connection limit ({vhost_limit}) is reached"
            )
        if _reached(user_limit, of_user):
            raise LimitExceeded(
                f"Connection refused for user '{user}'. "
                f"User connection limit ({user_limit}) is reached"
            )

    def check_channel(self, user: str, channels: Iterable[int]) -> None:
        """Before an AMQP channel of `user` opens; `channels` counts the user's open
        channels per connection. Raises LimitExceeded."""
        limit = self.users.get(user, UserLimits()).max_channels
        if limit >= 0 and sum(channels) >= limit:
            raise LimitExceeded(
                f"number of channels opened for user '{user}' has reached "
                f"the maximum allowed user limit of ({limit})"
            )

    def check_queue(self, vhost: str, queues: int, name: str) -> None:
        """Before a new queue `name` is created in `vhost`, which has `queues`.
        Raises QueueLimitExceeded."""
        limit = self.vhosts.get(vhost, VhostLimits()).max_queues
        if _reached(limit, queues):
            raise QueueLimitExceeded(
                f"cannot declare queue '{name}': queue limit in vhost '{vhost}' ({limit}) "
                "is reached"
            )
