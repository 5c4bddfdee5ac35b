"""Authentication backends: plug-ins found through entry points, tried in configured order.

`auth.backends` names them (default `["internal"]`): each name is an entry
point of the group `moorage.auth` whose object is a factory
`(broker, settings) -> AuthBackend`, `settings` being the `[auth.<name>]`
table of the configuration. Two come with Moorage: `internal`, the users
in the store, and `http`, RabbitMQ's HTTP backend contract
(`broker.auth_http`). A backend that the installed metadata does not list
(a tree used without re-installing) is found among the built-ins by name.

A login tries the backends in order; the first that accepts the
credentials decides who the client is (RabbitMQ's `auth_backends.N`
chain). A backend that refuses, or cannot answer (it is down, it timed
out), passes to the next, with its reason logged; when all refuse, the
login is refused with every reason logged. Authorisation (vhost, resource
and topic permissions) is always the internal store's, for the user name
the chain accepted: RabbitMQ's `auth_backends.1.authn = http` with
`authz = internal`.

With `internal` alone (the default) a login is answered synchronously when
no password needs checking (the credential cache knows it, or the user does
not exist), and otherwise as a task whose hash check runs on a worker thread
(`broker.auth_verify`); with any other backend the adapters' login runs as a
task. Until a task answers, the adapter handles no further frame of that client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Protocol

from moorage.broker.auth import UserDirectory
from moorage.broker.auth_users import Authorizer, User
from moorage.broker.clock import Clock
from moorage.broker.errors import AccessRefused

log = logging.getLogger("moorage.auth")

ENTRY_POINT_GROUP = "moorage.auth"


class Broker(Protocol):
    """What a backend may use of the broker (`broker.broker.Broker` is one)."""

    @property
    def users(self) -> UserDirectory: ...
    @property
    def clock(self) -> Clock: ...


class AuthBackend(Protocol):
    """One link of the authentication chain."""

    name: str

    async def authenticate(
        self, username: str, password: str, *, peer: str
    ) -> tuple[str, tuple[str, ...]]:
        """(user name, tags) these credentials log in as. Raises AccessRefused (the reason)."""
        ...

    async def close(self) -> None:
        """Release what the backend holds (HTTP sessions); called at broker stop."""
        ...


BackendFactory = Callable[["Broker", dict[str, Any]], AuthBackend]


class InternalBackend:
    """The users in the store (`UserDirectory.authenticate`), as a chain link."""

    name = "internal"

    def __init__(self, broker: Broker, settings: dict[str, Any]) -> None:
        self.broker = broker

    async def authenticate(
        self, username: str, password: str, *, peer: str
    ) -> tuple[str, tuple[str, ...]]:
        # the hash is checked off the loop, as without a chain (`broker.auth_verify`)
        user = await self.broker.users.authenticate_async(username, password, from_loopback=True)
        return user.name, user.tags

    async def close(self) -> None:
        return None


def _built_ins() -> dict[str, BackendFactory]:
    from moorage.broker.auth_http import HttpBackend

    return {"internal": InternalBackend, "http": HttpBackend}


def load_backends(
    broker: Broker, names: list[str], settings: dict[str, dict[str, Any]]
) -> list[AuthBackend]:
    """The configured chain, built. Raises ValueError for a name no plug-in has."""
    found: dict[str, BackendFactory] = {
        ep.name: ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name in names
    }
    built_ins = _built_ins()
    chain = []
    for name in names:
        factory = found.get(name) or built_ins.get(name)
        if factory is None:
            raise ValueError(
                f"no authentication backend named '{name}' (entry point group {ENTRY_POINT_GROUP})"
            )
        chain.append(factory(broker, settings.get(name, {})))
    return chain


async def _accepting(
    chain: list[AuthBackend], username: str, password: str, *, peer: str
) -> tuple[AuthBackend, str, tuple[str, ...]]:
    reasons = []
    for backend in chain:
        try:
            name, tags = await backend.authenticate(username, password, peer=peer)
        except AccessRefused as e:
            reasons.append(f"{backend.name}: {e.text}")
        else:
            return backend, name, tags
    log.info("login of %r from %s refused by every backend: %s", username, peer, "; ".join(reasons))
    raise AccessRefused(f"user '{username}' - invalid credentials ({'; '.join(reasons)})")


async def authenticate_chain(
    chain: list[AuthBackend], username: str, password: str, *, peer: str
) -> tuple[str, tuple[str, ...]]:
    """(name, tags) from the first backend that accepts. Raises AccessRefused."""
    _backend, name, tags = await _accepting(chain, username, password, peer=peer)
    return name, tags


async def login_chain(
    broker: Broker, chain: list[AuthBackend], username: str, password: str, *, peer: str
) -> User:
    """The user the first backend that accepts logs in (`user_for`, with the backend's
    `Authorizer` when it authorises too). Raises AccessRefused."""
    backend, name, tags = await _accepting(chain, username, password, peer=peer)
    offer: Callable[..., Authorizer | None] | None = getattr(backend, "authorizer", None)
    authz = offer(name, tags, peer=peer) if offer is not None else None
    return user_for(broker, name, tags, authz)


def user_for(
    broker: Broker, name: str, tags: tuple[str, ...], authz: Authorizer | None = None
) -> User:
    """The user an accepted name acts as: with an `authz`, a user of its own whose checks
    are the backend's; else the store's (its permissions and tags), else a user with
    the backend's tags and no permission (it may open no vhost)."""
    if authz is not None:
        return User(name, None, tags, authz=authz)
    return broker.users.users.get(name) or User(name, None, tags)
