"""A user and what it may do: per-vhost permissions and topic permissions.

Permissions are RabbitMQ's three regular expressions per vhost: `configure`
(declare/delete), `write` (publish to an exchange, bind a queue) and `read`
(consume/get/purge a queue, bind from an exchange). The default exchange is
checked under the name `amq.default`, as RabbitMQ does.

Topic permissions are RabbitMQ's topic authorisation: per vhost and
exchange, a `write` and a `read` regular expression that a routing key must
match (searched, not anchored, as RabbitMQ's `re:run` does), with the
variables `{username}`, `{vhost}` and `{client_id}` replaced before
matching. They apply to topic exchanges only: a publish (write) and a queue
binding or subscription (read). An exchange without a topic permission for
the user is not restricted (RabbitMQ's default).

A `User` is changed in place when an operator changes it (the user
directory does that), and `version` goes up at every change, so that
sessions which cached permission checks drop them (`Session._check`).

A user that an authentication backend both authenticated and authorises
(RabbitMQ's `authz = http`, `broker.auth_http`) carries that backend's
`Authorizer` in `authz`: its vhost, resource and topic checks are the
backend's, and `permissions` / `topic_permissions` stay empty. A backend may
not have the answer at hand: it then raises `PermissionPending` (before the
caller has done anything) and the caller asks again once it has come, when
it is in the backend's cache. Users of the internal store have no `authz`
and never see `PermissionPending`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from moorage.broker.errors import AccessRefused

Access = Literal["configure", "write", "read"]
TopicAccess = Literal["write", "read"]


class PermissionPending(Exception):
    """A permission check whose answer a backend has not given yet (`User.authz`).

    Raised before the call that checks has done anything. The caller must
    handle nothing more of that client until `then`'s callback runs, and then
    make the same call again: the answer is in the backend's cache by then
    (a service that is down or too slow answers "refused"). Not a
    `BrokerError`: code that maps refusals to the wire must let it through.

    Attributes:
        waiting: what is being asked (for logs).
        retry: what the caller must do again, when the place that raised knows
            better than the place that catches (a STOMP SEND taken from the
            codec's buffer without a frame of its own).
    """

    def __init__(self, answers: list[asyncio.Future[None]], waiting: str) -> None:
        super().__init__(waiting)
        self.answers = answers
        self.waiting = waiting
        self.retry: object | None = None

    @staticmethod
    def combined(pending: list[PermissionPending]) -> PermissionPending:
        """One wait for several checks' answers."""
        return PermissionPending(
            [a for p in pending for a in p.answers], "; ".join(p.waiting for p in pending)
        )

    def then(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the event loop) once every answer has come."""
        left = [len(self.answers)]

        def one(_answer: asyncio.Future[None]) -> None:
            left[0] -= 1
            if left[0] == 0:
                callback()

        for answer in self.answers:
            answer.add_done_callback(one)


class Authorizer(Protocol):
    """The checks of a user that a backend authorises (`User.authz`, `broker.auth_http`).

    Each raises AccessRefused (refused) or PermissionPending (ask again later);
    returning means allowed.
    """

    def check_vhost(self, user: User, vhost: str) -> None: ...

    def check_resource(
        self, user: User, vhost: str, access: Access, resource: str, kind: str
    ) -> None: ...

    def check_topic(
        self,
        user: User,
        vhost: str,
        exchange: str,
        access: TopicAccess,
        routing_key: str,
        client_id: str,
        shown_as: str | None,
    ) -> None: ...


@dataclass(slots=True)
class Permission:
    """The three permission patterns of one user on one vhost."""

    configure: str = ".*"
    write: str = ".*"
    read: str = ".*"
    _compiled: dict[str, re.Pattern[str]] = field(default_factory=dict, repr=False, compare=False)

    def allows(self, access: Access, resource: str) -> bool:
        pattern = self._compiled.get(access)
        if pattern is None:
            pattern = self._compiled[access] = re.compile(getattr(self, access))
        # RabbitMQ: an empty pattern grants nothing; otherwise a full match is required.
        return bool(pattern.pattern) and pattern.fullmatch(resource) is not None


@dataclass(slots=True)
class TopicPermission:
    """The write and read routing-key patterns of one user on one exchange."""

    write: str = ".*"
    read: str = ".*"
    _compiled: dict[tuple[str, str], re.Pattern[str]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def allows(self, access: TopicAccess, routing_key: str, variables: dict[str, str]) -> bool:
        """Whether the routing key matches the pattern, with the variables expanded.

        As RabbitMQ: an empty pattern grants nothing, the match is a search
        (anchor with `^` and `$`), and variable values are escaped so that a
        client id cannot widen the pattern.
        """
        source = getattr(self, access)
        if not source:
            return False
        expanded = expand_variables(source, variables)
        pattern = self._compiled.get((access, expanded))
        if pattern is None:
            if len(self._compiled) > 256:
                self._compiled.clear()
            pattern = self._compiled[(access, expanded)] = re.compile(expanded)
        return pattern.search(routing_key) is not None


def expand_variables(pattern: str, variables: dict[str, str]) -> str:
    """Replace `{username}`, `{vhost}` and `{client_id}` with their (escaped) values."""
    for name, value in variables.items():
        pattern = pattern.replace("{" + name + "}", re.escape(value))
    return pattern


@dataclass(slots=True, eq=False)
class User:
    """A broker user: name, password hash, management tags and permissions.

    `hashing_algorithm` is "" when the hash says what it is (see
    `auth_hashing.algorithm_of`). `attributes` holds what a user carries beyond
    RabbitMQ's fields (JSON-encodable; stored opaquely with the user).
    """

    name: str
    password_hash: str | None
    tags: tuple[str, ...] = ()
    permissions: dict[str, Permission] = field(default_factory=dict)
    hashing_algorithm: str = ""
    topic_permissions: dict[tuple[str, str], TopicPermission] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    authz: Authorizer | None = None  # the backend that authorises this user (None: the store)

    def check(self, vhost: str, access: Access, resource: str, kind: str = "queue") -> None:
        """Raise AccessRefused unless this user may do `access` on `resource` in `vhost`.

        A user with `authz` may raise PermissionPending instead (see above).
        """
        if self.authz is not None:
            self.authz.check_resource(self, vhost, access, resource or "amq.default", kind)
            return
        permission = self.permissions.get(vhost)
        if permission is None or not permission.allows(access, resource or "amq.default"):
            raise AccessRefused(
                f"access to {kind} '{resource or 'amq.default'}' in vhost '{vhost}' "
                f"refused for user '{self.name}'"
            )

    def check_topic(
        self,
        vhost: str,
        exchange: str,
        access: TopicAccess,
        routing_key: str,
        *,
        client_id: str = "",
        shown_as: str | None = None,
    ) -> None:
        """Raise AccessRefused unless the topic permission on `exchange` allows the key.

        Call it for topic exchanges only. `shown_as` is the topic as the
        client wrote it (an MQTT topic), for the error text. A user with
        `authz` may raise PermissionPending instead (see above).
        """
        if self.authz is not None:
            self.authz.check_topic(self, vhost, exchange, access, routing_key, client_id, shown_as)
            return
        permission = self.topic_permissions.get((vhost, exchange))
        if permission is None:
            return
        variables = {"username": self.name, "vhost": vhost, "client_id": client_id}
        if not permission.allows(access, routing_key, variables):
            raise AccessRefused(
                f"{access} access to topic '{shown_as if shown_as is not None else routing_key}'"
                f" in exchange '{exchange}' in vhost '{vhost}' refused for user '{self.name}'"
            )

    def changed(self) -> None:
        """Note a change, so that cached permission checks are dropped."""
        self.version += 1

    # AWS access keys (SQS/SNS, SigV4) live in `attributes["access_keys"]` as
    # {key id: {"secret": ..., "vhost": ...}}, so they are stored and replicated
    # with the user. SigV4 needs the secret itself: it is kept as given.

    @property
    def access_keys(self) -> dict[str, str]:
        """Access key id -> secret."""
        keys = self.attributes.get("access_keys", {})
        return {key_id: str(entry["secret"]) for key_id, entry in keys.items()}

    @property
    def access_key_vhosts(self) -> dict[str, str]:
        """Access key id -> the vhost its queues and topics live in."""
        keys = self.attributes.get("access_keys", {})
        return {key_id: str(entry.get("vhost", "/")) for key_id, entry in keys.items()}

    def add_access_key(self, key_id: str, secret: str, vhost: str = "/") -> None:
        """Give the user an AWS access key (replacing one with the same id)."""
        keys = dict(self.attributes.get("access_keys", {}))
        keys[key_id] = {"secret": secret, "vhost": vhost}
        self.attributes["access_keys"] = keys
