"""Permission checks: the part of a session that asks whether its user may do something.

Part of `broker.session.Session` (a mixin: the session's own state, no
wrapper, no extra call per check).

`_check` remembers each (access, name, kind) answer of the store for the
session's life (dropped when an operator changes the user): this is the hot
path, one dict lookup. A user that a backend authorises
(`User.authz`, `broker.auth_http`) bypasses that memory: each check goes to
the backend, whose cache has a TTL, and may raise `PermissionPending`
(`broker.auth_users`) before the call has done anything; the adapter then
holds the client's frames until it is answered and makes the same call
again. Its sessions also take `_check_topic_authz` as `check_topic`, so the
store users' shortcut (no topic permissions: nothing to check) stays as it
was. `ask_ahead` lets an adapter whose one frame makes several calls (an
MQTT SUBSCRIBE) get every pending answer before the first call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from moorage.broker.auth import User
from moorage.broker.auth_users import Access, PermissionPending, TopicAccess
from moorage.broker.errors import AccessRefused
from moorage.broker.vhost import VirtualHost


class CheckedConnection(Protocol):
    """What the checks read of the client connection (`broker.session.SessionOwner`)."""

    client_properties: dict[str, Any]  # "client_id" fills topic permissions' {client_id}


class SessionPermissions:
    """`_check` (configure/write/read), `check_topic` and `ask_ahead`."""

    # the session's state this part reads and writes (set by `Session.__init__`)
    connection: CheckedConnection
    vhost: VirtualHost
    user: User
    _permitted: dict[tuple[str, str, str], bool]
    _permitted_version: int

    def _check(self, access: str, name: str, kind: str) -> None:
        if self._permitted_version != self.user.version:  # changed by an operator
            self._permitted.clear()
            self._permitted_version = self.user.version
        key = (access, name, kind)
        ok = self._permitted.get(key)
        if ok is None:
            if self.user.authz is not None:  # the backend's, and its cache (see the top)
                self.user.check(self.vhost.name, access, name, kind)  # type: ignore[arg-type]
                return
            try:
                self.user.check(self.vhost.name, access, name, kind)  # type: ignore[arg-type]
                ok = True
            except AccessRefused:
                ok = False
            self._permitted[key] = ok
        if not ok:
            self.user.check(self.vhost.name, access, name, kind)  # type: ignore[arg-type]

    def check_topic(self, exchange: str, access: TopicAccess, routing_key: str) -> None:
        """The user's topic permission on a topic exchange (RabbitMQ's topic authorisation).

        Raises AccessRefused. Nothing to check (and nearly free) for a user
        without topic permissions, or an exchange that is not a topic exchange.
        """
        if not self.user.topic_permissions:
            return
        found = self.vhost.exchanges.get(exchange)
        if found is None or found.type_name != "topic":
            return
        client_id = str(self.connection.client_properties.get("client_id", ""))
        self.user.check_topic(self.vhost.name, exchange, access, routing_key, client_id=client_id)

    def _check_topic_authz(self, exchange: str, access: TopicAccess, routing_key: str) -> None:
        """`check_topic` for a user a backend authorises: asked even without topic
        permissions in the store. Raises AccessRefused, PermissionPending."""
        found = self.vhost.exchanges.get(exchange)
        if found is None or found.type_name != "topic":
            return
        client_id = str(self.connection.client_properties.get("client_id", ""))
        self.user.check_topic(self.vhost.name, exchange, access, routing_key, client_id=client_id)

    def ask_ahead(
        self,
        checks: Sequence[tuple[Access, str, str]],
        topics: Sequence[tuple[str, TopicAccess, str]] = (),
    ) -> None:
        """Make these (access, name, kind) and (exchange, access, routing key) checks now,
        for a frame that makes several calls: so that the backend's answers are all in
        before the first call does anything. Refusals are ignored (the calls make the
        checks again and refuse then). Nothing for a user of the store.

        Raises PermissionPending for every answer not in the backend's cache yet.
        """
        if self.user.authz is None:
            return
        pending: list[PermissionPending] = []
        for access, name, kind in checks:
            try:
                self._check(access, name, kind)
            except PermissionPending as e:
                pending.append(e)
            except AccessRefused:
                pass
        for exchange, topic_access, routing_key in topics:
            try:
                self.check_topic(exchange, topic_access, routing_key)
            except PermissionPending as e:
                pending.append(e)
            except AccessRefused:
                pass
        if pending:
            raise PermissionPending.combined(pending)
