"""The user directory: who the users are, who may log in from where, and changing them.

Theory of operation
-------------------
Users, their permissions and topic permissions live in the store (so they
survive restarts and replicate with it); the directory holds them in memory
and writes every change through to the store. `open(store)` at start-up
loads them, and seeds the store from the configuration:

- on the first start (the store has no seed digest), the configuration's
  users are written to the store;
- later, the configuration's users are applied again only when they have
  changed since they were last applied (their digest differs). This is
  RabbitMQ's `load_definitions` with `definitions.skip_if_unchanged`: an
  unchanged file never undoes what was changed through the API or CLI.
  SIGHUP (`reconfigure`) applies the same rule.

The file owns the users it lists (marked `origin = "config"` in their
attributes): applying it creates or replaces each of them with its
password, tags, permissions and topic permissions exactly as written, and
deletes a user that an earlier version of the file listed and this one does
not, so that removing a user from the file revokes it. Users created through
the API, the CLI or a definitions import are never touched by the file.

A directory made without a seed digest (tests, the embedded broker) applies
its users at every `open`.

Credentials: new passwords are hashed with scrypt (`auth_hashing`); hashes
in RabbitMQ's formats are accepted and replaced by scrypt at the next
successful login. A successful check is remembered for `cache_ttl` seconds
of the broker's clock after its last use, keyed by user, stored hash and a keyed digest of the
password (never the password), so that a reconnect storm does not re-run
scrypt; a change of password changes the stored hash and so misses the
cache. Failures are never cached.

The check itself runs off the event loop (`auth_verify`): the broker asks
`authenticate_cached` first, which answers at once whatever needs no hash
(a remembered password, an unknown user, a user without a password), and
otherwise awaits `authenticate_async`, which checks the hash on a small
pool of threads, one check for all the logins that bring the same
credentials at once, and then updates the cache and upgrades the hash on
the loop. `verify` is the function the threads call (`verify_password`;
tests wrap it). `authenticate` does the same synchronously, on the calling
thread, for tools and tests that have no loop to keep free.

Changes made while clients are connected take effect at once: a changed
user is updated in place and its `version` goes up, so sessions drop their
cached permission checks. A deleted user loses every permission, so its
open connections can do nothing more (they stay open until they close).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from collections.abc import Iterable
from typing import Any

from moorage.broker.auth_hashing import (
    SCRYPT,
    algorithm_of,
    check_hash,
    hash_password,
    verify_password,
)
from moorage.broker.auth_users import (
    Access,
    Permission,
    PermissionPending,
    TopicPermission,
    User,
)
from moorage.broker.auth_verify import Outcome, Verifier, Verify, check
from moorage.broker.clock import SYSTEM_CLOCK, Clock
from moorage.broker.errors import AccessRefused
from moorage.storage.store import (
    PermissionRecord,
    Store,
    TopicPermissionRecord,
    UserRecord,
    UserTables,
)

__all__ = [
    "Access",
    "Permission",
    "PermissionPending",
    "TopicPermission",
    "User",
    "UserDirectory",
    "hash_password",
    "verify_password",
]

log = logging.getLogger("moorage.auth")

CREDENTIAL_CACHE_TTL = 15.0
"""Seconds a verified password is remembered (RabbitMQ's auth cache default: 15 s)."""

CONFIG_ORIGIN = "config"
"""`attributes["origin"]` of the users the configuration file owns."""

_CACHE_LIMIT = 10_000  # entries; the cache is emptied when full


class UserDirectory:
    """The users the broker knows, and who may log in from where."""

    def __init__(
        self,
        users: list[User] | None = None,
        loopback_users: frozenset[str] = frozenset(),
        anonymous: User | str | None = None,
        *,
        seed: str | None = None,
        cache_ttl: float = CREDENTIAL_CACHE_TTL,
    ) -> None:
        self.users: dict[str, User] = {u.name: u for u in users or []}
        self.loopback_users = loopback_users
        # The user a client that gives no credentials acts as (ActiveMQ's
        # anonymousAccess; `auth.anonymous_user`); "" refuses such clients.
        self.anonymous_name = anonymous.name if isinstance(anonymous, User) else anonymous or ""
        self.seed = seed
        self.cache_ttl = cache_ttl
        self.clock: Clock = SYSTEM_CLOCK
        self._configured = list(users or [])
        self._store: Store | None = None
        self._cache: dict[tuple[str, str, bytes], float] = {}  # -> expiry on self.clock
        self._cache_key = os.urandom(32)
        self.verify: Verify = verify_password
        """What checks a password against its stored hash, on a worker thread: a seam
        for tests (a wrapper that counts the checks or holds one)."""
        self._verifier = Verifier()

    @property
    def anonymous(self) -> User | None:
        """The user of clients that send no credentials (None: they are refused)."""
        return self.users.get(self.anonymous_name) if self.anonymous_name else None

    @anonymous.setter
    def anonymous(self, user: User | None) -> None:
        self.anonymous_name = user.name if user is not None else ""

    # -- start-up and reload --------------------------------------------------------------

    async def open(self, store: Store, clock: Clock = SYSTEM_CLOCK) -> None:
        """Load the users from the store and seed it from the configuration (see above)."""
        self._store = store
        self.clock = clock
        tables = await store.load_users()
        self.users = _users_of(tables)
        self._apply_configured(tables.seed)

    def reconfigure(
        self,
        users: list[User],
        seed: str | None,
        loopback_users: frozenset[str],
        anonymous_name: str,
    ) -> bool:
        """SIGHUP: new loopback and anonymous rules; the file's users if they changed.

        Returns whether the users were applied.
        """
        self.loopback_users = loopback_users
        self.anonymous_name = anonymous_name
        previous = self.seed
        self._configured = list(users)
        self.seed = seed
        return self._apply_configured(previous)

    def _apply_configured(self, applied: str | None) -> bool:
        if self.seed is not None and applied == self.seed:
            return False
        listed = {u.name for u in self._configured}
        for user in list(self.users.values()):
            if user.attributes.get("origin") == CONFIG_ORIGIN and user.name not in listed:
                self.delete_user(user.name)
                log.warning("user '%s' deleted: no longer in the configuration", user.name)
        for user in self._configured:
            self.put_user(
                user.name,
                password_hash=user.password_hash or "",
                hashing_algorithm=user.hashing_algorithm,
                tags=user.tags,
                attributes={**user.attributes, "origin": CONFIG_ORIGIN},
            )
            current = self.users[user.name]
            for vhost in set(current.permissions) - set(user.permissions):
                self.clear_permission(user.name, vhost)
            for vhost, permission in user.permissions.items():
                self.set_permission(user.name, vhost, permission)
            for vhost, exchange in set(current.topic_permissions) - set(user.topic_permissions):
                self.clear_topic_permission(user.name, vhost, exchange)
            for (vhost, exchange), topic in user.topic_permissions.items():
                self.set_topic_permission(user.name, vhost, exchange, topic)
        if self.seed is not None and self._store is not None:
            self._store.put_users_seed(self.seed)
        return True

    # -- authentication -------------------------------------------------------------------

    def authenticate(self, username: str, password: str, *, from_loopback: bool) -> User:
        """Return the user whose credentials these are, or raise AccessRefused.

        On a cache miss the hash is checked on the calling thread: for tools and
        tests; the broker's loop uses `authenticate_cached` and `authenticate_async`.
        """
        user, key = self._lookup(username, password)
        if not self._cached(key):
            outcome = check(self.verify, password, key[1], user.hashing_algorithm)
            if not self._settle(user, key, outcome):
                raise _invalid(username)
        return self._admit(user, from_loopback)

    def authenticate_cached(
        self, username: str, password: str, *, from_loopback: bool
    ) -> User | None:
        """The answer when no hash needs checking, else None (`authenticate_async`).

        Returns the user when the password is remembered (the cache); raises
        AccessRefused for an unknown user, a user without a password, or a
        remembered password of a loopback-only user from afar.
        """
        user, key = self._lookup(username, password)
        if not self._cached(key):
            return None
        return self._admit(user, from_loopback)

    async def authenticate_async(
        self, username: str, password: str, *, from_loopback: bool
    ) -> User:
        """As `authenticate`, with the hash checked on a worker thread (`auth_verify`).

        Logins with the same credentials while a check runs share it. The cache
        update and the hash upgrade happen on the loop thread, once per check.
        Raises AccessRefused.
        """
        user, key = self._lookup(username, password)
        if not self._cached(key):
            stored, algorithm, verify = key[1], user.hashing_algorithm, self.verify

            def work() -> Outcome:
                return check(verify, password, stored, algorithm)

            def settle(outcome: Outcome) -> bool:
                return self._settle(user, key, outcome)

            if not await self._verifier.verified(key, work, settle):
                raise _invalid(username)
        return self._admit(user, from_loopback)

    @property
    def verifying(self) -> int:
        """Password checks running off the loop now (each may answer several logins)."""
        return self._verifier.running

    def close(self) -> None:
        """Cancel the password checks in progress and stop their threads (broker stop)."""
        self._verifier.close()

    def _lookup(self, username: str, password: str) -> tuple[User, tuple[str, str, bytes]]:
        """The user and its cache key; AccessRefused when it has no password to check."""
        user = self.users.get(username)
        if user is None or not user.password_hash:
            raise _invalid(username)
        digest = hmac.new(self._cache_key, password.encode(), hashlib.sha256).digest()
        return user, (user.name, user.password_hash, digest)

    def _cached(self, key: tuple[str, str, bytes]) -> bool:
        now = self.clock.monotonic()
        expires = self._cache.get(key)
        if expires is None or now >= expires:
            return False
        # Renewed at each use: a client (or the web UI) that logs in more often
        # than `cache_ttl` never pays scrypt again; a new password misses anyway.
        self._cache[key] = now + self.cache_ttl
        return True

    def _settle(self, user: User, key: tuple[str, str, bytes], outcome: Outcome) -> bool:
        """After a check (on the loop thread): remember a match and upgrade its hash."""
        if not outcome.matches:
            return False
        name, stored, digest = key
        if self.users.get(name) is not user or user.password_hash != stored:
            return False  # deleted, or its password changed while the check ran
        if outcome.upgraded is not None:
            # The one moment the password was in hand: store it as scrypt (hashed
            # by the check, on its thread).
            self.put_user(name, password_hash=outcome.upgraded, hashing_algorithm=SCRYPT)
            log.info("password hash of user '%s' upgraded to scrypt", name)
            key = (name, outcome.upgraded, digest)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = self.clock.monotonic() + self.cache_ttl
        return True

    def _admit(self, user: User, from_loopback: bool) -> User:
        if user.name in self.loopback_users and not from_loopback:
            raise AccessRefused(f"user '{user.name}' can only connect via localhost")
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

    def authenticate_identity(self, identity: str | None, *, from_loopback: bool) -> User:
        """The user a verified client certificate names, or raise AccessRefused.

        No password is checked: the TLS handshake proved the identity.
        """
        if identity is None:
            raise AccessRefused("no verified client certificate, or it names no user")
        user = self.users.get(identity)
        if user is None:
            raise AccessRefused(f"user '{identity}' (from the client certificate) does not exist")
        if identity in self.loopback_users and not from_loopback:
            raise AccessRefused(f"user '{identity}' can only connect via localhost")
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
        """True when the user has any permissions on the vhost (RabbitMQ's vhost access).

        A user that a backend authorises (`User.authz`) asks the backend, and may
        raise PermissionPending (`broker.auth_users`).
        """
        if user.authz is not None:
            try:
                user.authz.check_vhost(user, vhost)
            except AccessRefused:
                return False
            return True
        return vhost in user.permissions

    # -- changes (the management API, the CLI, definitions import) ------------------------

    def put_user(
        self,
        name: str,
        *,
        password: str | None = None,
        password_hash: str | None = None,
        hashing_algorithm: str = "",
        tags: Iterable[str] | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> User:
        """Create or update a user, and write it to the store.

        `password` is hashed with scrypt; `password_hash` is taken as it is
        (RabbitMQ's formats or ours). With neither, an existing user keeps
        its password and a new one cannot log in with a password (RabbitMQ's
        passwordless user). Tags and attributes left out are kept.

        Raises:
            ValueError (HashFormatError): an unusable hash or algorithm.
        """
        if password is not None:
            new_hash: str | None = hash_password(password)
            algorithm = SCRYPT
        elif password_hash is not None:
            new_hash = password_hash
            algorithm = check_hash(password_hash, hashing_algorithm) if password_hash else ""
        else:
            new_hash = None
            algorithm = ""
        user = self.users.get(name)
        if user is None:
            user = self.users[name] = User(name, new_hash, hashing_algorithm=algorithm)
        elif new_hash is not None or password_hash is not None:
            user.password_hash, user.hashing_algorithm = new_hash, algorithm
        if tags is not None:
            user.tags = tuple(tags)
        if attributes is not None:
            user.attributes = dict(attributes)
        user.changed()
        if self._store is not None:
            self._store.put_user(user_record(user))
        return user

    def delete_user(self, name: str) -> bool:
        """Delete a user (False if unknown); its open connections lose every permission."""
        user = self.users.pop(name, None)
        if user is None:
            return False
        user.permissions = {}
        user.topic_permissions = {}
        user.password_hash = None
        user.changed()
        if self._store is not None:
            self._store.delete_user(name)
        return True

    def set_permission(self, name: str, vhost: str, permission: Permission) -> None:
        """Give a user its configure/write/read patterns on a vhost. Raises KeyError."""
        user = self.users[name]
        user.permissions = {**user.permissions, vhost: permission}
        user.changed()
        if self._store is not None:
            self._store.put_permission(
                PermissionRecord(
                    vhost, name, permission.configure, permission.write, permission.read
                )
            )

    def clear_permission(self, name: str, vhost: str) -> bool:
        """Take a user's permissions on a vhost away (False if it had none)."""
        user = self.users.get(name)
        if user is None or vhost not in user.permissions:
            return False
        user.permissions = {v: p for v, p in user.permissions.items() if v != vhost}
        user.changed()
        if self._store is not None:
            self._store.delete_permission(vhost, name)
        return True

    def set_topic_permission(
        self, name: str, vhost: str, exchange: str, permission: TopicPermission
    ) -> None:
        """Give a user write/read routing-key patterns on an exchange. Raises KeyError."""
        user = self.users[name]
        user.topic_permissions = {**user.topic_permissions, (vhost, exchange): permission}
        user.changed()
        if self._store is not None:
            self._store.put_topic_permission(
                TopicPermissionRecord(vhost, name, exchange, permission.write, permission.read)
            )

    def clear_topic_permission(self, name: str, vhost: str, exchange: str | None = None) -> bool:
        """Take a user's topic permissions on one exchange (or all of a vhost's) away."""
        user = self.users.get(name)
        if user is None:
            return False
        gone = [k for k in user.topic_permissions if k[0] == vhost and exchange in (None, k[1])]
        if not gone:
            return False
        user.topic_permissions = {k: p for k, p in user.topic_permissions.items() if k not in gone}
        user.changed()
        if self._store is not None:
            for _vhost, gone_exchange in gone:
                self._store.delete_topic_permission(vhost, name, gone_exchange)
        return True

    def vhost_deleted(self, vhost: str) -> None:
        """Forget every permission on a deleted vhost (the store drops them with it)."""
        for user in self.users.values():
            if vhost in user.permissions or any(k[0] == vhost for k in user.topic_permissions):
                user.permissions = {v: p for v, p in user.permissions.items() if v != vhost}
                user.topic_permissions = {
                    k: p for k, p in user.topic_permissions.items() if k[0] != vhost
                }
                user.changed()


def _invalid(username: str) -> AccessRefused:
    return AccessRefused(f"user '{username}' - invalid credentials")


def user_record(user: User) -> UserRecord:
    """The store's record of a user (permissions are stored separately).

    `attributes` are stored as JSON; the algorithm is always stored by name.
    """
    algorithm = ""
    if user.password_hash:
        try:
            algorithm = algorithm_of(user.password_hash, user.hashing_algorithm)
        except ValueError:
            algorithm = user.hashing_algorithm
    attributes = json.dumps(user.attributes, sort_keys=True).encode() if user.attributes else b""
    return UserRecord(user.name, user.password_hash or "", algorithm, user.tags, attributes)


def _users_of(tables: UserTables) -> dict[str, User]:
    users: dict[str, User] = {}
    for record in tables.users:
        attributes = json.loads(record.attributes) if record.attributes else {}
        users[record.name] = User(
            record.name,
            record.password_hash or None,
            record.tags,
            hashing_algorithm=record.hashing_algorithm,
            attributes=attributes if isinstance(attributes, dict) else {},
        )
    for p in tables.permissions:
        if p.user in users:
            users[p.user].permissions[p.vhost] = Permission(p.configure, p.write, p.read)
    for t in tables.topic_permissions:
        if t.user in users:
            users[t.user].topic_permissions[(t.vhost, t.exchange)] = TopicPermission(
                t.write, t.read
            )
    return users
