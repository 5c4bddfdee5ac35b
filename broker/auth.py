"""Users, password hashes and per-vhost permissions.

Password hashes use RabbitMQ's `rabbit_password_hashing_sha256` format —
base64(salt[4] + sha256(salt + password)) — so hashes exported from
RabbitMQ (`rabbitmqctl export_definitions`) can be pasted into the config.

Permissions are RabbitMQ's three regular expressions per vhost: `configure`
(declare/delete), `write` (publish to an exchange, bind a queue) and `read`
(consume/get/purge a queue, bind from an exchange). The default exchange is
checked under the name `amq.default`, as RabbitMQ does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field
from typing import Literal

from moorage.broker.errors import AccessRefused

Access = Literal["configure", "write", "read"]


def hash_password(password: str, salt: bytes | None = None) -> str:
    """Return a salted SHA-256 hash in RabbitMQ's format."""
    salt = os.urandom(4) if salt is None else salt
    digest = hashlib.sha256(salt + password.encode()).digest()
    return base64.b64encode(salt + digest).decode()


def verify_password(password: str, password_hash: str) -> bool:
    """Check a password against a hash made by `hash_password` (constant time)."""
    try:
        raw = base64.b64decode(password_hash, validate=True)
    except ValueError:
        return False
    if len(raw) != 36:
        return False
    return hmac.compare_digest(hash_password(password, raw[:4]), password_hash)


@dataclass(slots=True)
class Permission:
    """The three permission patterns of one user on one vhost."""

    configure: str = ".*"
    write: str = ".*"
    read: str = ".*"
    _compiled: dict[str, re.Pattern[str]] = field(default_factory=dict, repr=False)

    def allows(self, access: Access, resource: str) -> bool:
        pattern = self._compiled.get(access)
        if pattern is None:
            pattern = self._compiled[access] = re.compile(getattr(self, access))
        # RabbitMQ: an empty pattern grants nothing; otherwise a full match is required.
        return bool(pattern.pattern) and pattern.fullmatch(resource) is not None


@dataclass(slots=True)
class User:
    """A broker user: name, password hash, management tags and permissions."""

    name: str
    password_hash: str | None
    tags: tuple[str, ...] = ()
    permissions: dict[str, Permission] = field(default_factory=dict)
    # AWS access keys (SQS/SNS, SigV4): access key id -> secret, and the vhost each
    # key's queues and topics live in when it is not `/`.
    access_keys: dict[str, str] = field(default_factory=dict)
    access_key_vhosts: dict[str, str] = field(default_factory=dict)

    def check(self, vhost: str, access: Access, resource: str, kind: str = "queue") -> None:
        """Raise AccessRefused unless this user may do `access` on `resource` in `vhost`."""
        permission = self.permissions.get(vhost)
        if permission is None or not permission.allows(access, resource or "amq.default"):
            raise AccessRefused(
                f"access to {kind} '{resource or 'amq.default'}' in vhost '{vhost}' "
                f"refused for user '{self.name}'"
            )


class UserDirectory:
    """The users the broker knows, and who may log in from where."""

    def __init__(
        self,
        users: list[User] | None = None,
        loopback_users: frozenset[str] = frozenset(),
        anonymous: User | None = None,
    ) -> None:
        self.users: dict[str, User] = {u.name: u for u in users or []}
        self.loopback_users = loopback_users
        # The user a client that gives no credentials acts as (ActiveMQ's
        # anonymousAccess; `auth.anonymous_user`); None refuses such clients.
        self.anonymous: User | None = anonymous

    def authenticate(self, username: str, password: str, *, from_loopback: bool) -> User:
        """Return the user whose credentials these are, or raise AccessRefused."""
        user = self.users.get(username)
        if user is None or user.password_hash is None:
            raise AccessRefused(f"user '{username}' - invalid credentials")
        if not verify_password(password, user.password_hash):
            raise AccessRefused(f"user '{username}' - invalid credentials")
        if username in self.loopback_users and not from_loopback:
            raise AccessRefused(f"user '{username}' can only connect via localhost")
        return user

    def authenticate_anonymous(self, *, from_loopback: bool) -> User:
        """The user for a client that sent no credentials, or raise AccessRefused.

        Only when `anonymous` is set; a loopback-only user stays loopback-only.
        """
        user = self.anonymous
        if user is None:
            raise AccessRefused(
                "anonymous login refused: no credentials given and no anonymous user "
                "configured (auth.anonymous_user)"
            )
        if user.name in self.loopback_users and not from_loopback:
            raise AccessRefused(f"user '{user.name}' can only connect via localhost")
        return user

    def find_access_key(self, key_id: str) -> tuple[User, str] | None:
        """The user an AWS access key id belongs to, with its secret; None when unknown.

        The loopback-only rule is the caller's to apply (`loopback_users`), as it
        is for passwords.
        """
        for user in self.users.values():
            secret = user.access_keys.get(key_id)
            if secret is not None:
                return user, secret
        return None

    def may_open(self, user: User, vhost: str) -> bool:
        """True when the user has any permissions on the vhost (RabbitMQ's vhost access)."""
        return vhost in user.permissions
