"""RabbitMQ's HTTP authentication and authorisation backend contract
(`rabbitmq_auth_backend_http`), as a `moorage.auth` plug-in.

Settings (`[auth.http]`): `user_path`, `vhost_path`, `resource_path`,
`topic_path` (the URLs asked; only `user_path` is required), `http_method`
("get", the default, sends the parameters in the query string; "post" sends
them as a form body), `cache_ttl` (seconds an answer is remembered,
RabbitMQ's `rabbitmq_auth_backend_cache`; 0 = not at all) and
`request_timeout` (seconds; default 5).

Authentication (`user_path`): the request carries `username` and
`password`; the answer is a 200 whose body is `deny`, `allow`, or `allow`
followed by tags (`allow administrator management`). Anything else — another
status, another body, a connection refused, a timeout — refuses the login
with a logged reason, and the chain goes on to the next backend. Only
"allow" answers are cached, keyed by user name and a keyed digest of the
password (never the password): a refusal is asked again, and counts towards
the brute-force delay as any refusal does.

Authorisation (RabbitMQ's `authn = http`, `authz = http`): a user that this
backend authenticated is authorised by the service for every kind of check
whose path is configured, with RabbitMQ's parameters:

- `vhost_path` (opening a vhost): `username`, `vhost`, `ip`;
- `resource_path` (configure/write/read on an exchange or queue):
  `username`, `vhost`, `resource` (`exchange`, `queue`), `name`,
  `permission` (`configure`, `write`, `read`);
- `topic_path` (a routing key on a topic exchange, `broker.auth_users`):
  `username`, `vhost`, `resource` (`topic`), `name` (the exchange),
  `permission` (`write`, `read`), `routing_key`, and `variable_map.username`,
  `variable_map.vhost`, `variable_map.client_id`.

The answer is `allow` or `deny`; anything else, or no answer (service down,
`request_timeout` passed), refuses, with the reason logged. A kind of check
whose path is not configured stays internal: the permissions the store gives
a user of that name (none if it has no such user; a user without topic
permissions in the store is not restricted by topic, as RabbitMQ's default).
Users that another backend of the chain authenticated (the store) keep the
store's permissions for every check.

Answers are cached for `cache_ttl` seconds of the broker's clock, keyed by
the URL and every parameter, at most `CACHE_LIMIT` of them (the cache is
emptied when full). A check the cache cannot answer raises
`PermissionPending` (`broker.auth_users`) while one request per distinct
question is made; the adapter holds that client's frames until it is
answered, then handles the same frame again. So that the frame finds the
answers it waited for, every answer is kept at least `SETTLE` x
`request_timeout` seconds, even with a smaller `cache_ttl`; a failure (no
answer, or one that is neither `allow` nor `deny`) is kept only that long, so a
service that comes back is asked again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from typing import Any, Protocol

import aiohttp

from moorage.broker.auth import UserDirectory
from moorage.broker.auth_users import Access, PermissionPending, TopicAccess, User
from moorage.broker.clock import Clock
from moorage.broker.errors import AccessRefused

log = logging.getLogger("moorage.auth")

PATHS = ("user_path", "vhost_path", "resource_path", "topic_path")
SETTINGS = {*PATHS, "http_method", "cache_ttl", "request_timeout"}

CACHE_LIMIT = 10_000
"""Answers kept at most (per cache: logins, and authorisation questions)."""

SETTLE = 4
"""Request timeouts an authorisation answer is kept at least (see `_answer`): the
longest chain of checks one call makes one after another (a STOMP SUBSCRIBE to a
topic: write on its queue, read on the exchange, the topic, read to consume)."""

Params = tuple[tuple[str, str], ...]


class Broker(Protocol):
    """What this backend uses of the broker: its clock (for the caches) and its users
    (the internal permissions of a kind of check without a path). Declared here,
    not imported from `auth_backends`, which imports this module (no import cycle)."""

    @property
    def clock(self) -> Clock: ...
    @property
    def users(self) -> UserDirectory: ...


class HttpBackend:
    """Asks an HTTP service whether a user may log in, and what it may do."""

    name = "http"

    def __init__(self, broker: Broker, settings: dict[str, Any]) -> None:
        unknown = set(settings) - SETTINGS
        if unknown:
            raise ValueError(f"unknown or unsupported key 'auth.http.{sorted(unknown)[0]}'")
        self.user_path = str(settings.get("user_path", ""))
        if not self.user_path.startswith(("http://", "https://")):
            raise ValueError("auth.http.user_path must be an http:// or https:// URL")
        for key in PATHS[1:]:
            url = str(settings.get(key, ""))
            if url and not url.startswith(("http://", "https://")):
                raise ValueError(f"auth.http.{key} must be an http:// or https:// URL")
        self.vhost_path = str(settings.get("vhost_path", ""))
        self.resource_path = str(settings.get("resource_path", ""))
        self.topic_path = str(settings.get("topic_path", ""))
        self.method = str(settings.get("http_method", "get")).lower()
        if self.method not in ("get", "post"):
            raise ValueError("auth.http.http_method must be 'get' or 'post'")
        self.cache_ttl = float(settings.get("cache_ttl", 10.0))
        self.timeout = float(settings.get("request_timeout", 5.0))
        self.clock = broker.clock
        self.users = broker.users
        self._session: aiohttp.ClientSession | None = None
        self._cache: dict[tuple[str, bytes], tuple[float, tuple[str, ...]]] = {}
        self._key = os.urandom(32)
        self.requests = 0  # asked of the service (not answered from the cache)
        # authorisation: (url, params) -> (expiry on the clock, allowed)
        self._answers: dict[tuple[str, Params], tuple[float, bool]] = {}
        self._asking: dict[tuple[str, Params], asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def authorizer(
        self, name: str, tags: tuple[str, ...], *, peer: str
    ) -> HttpAuthorization | None:
        """What authorises a user this backend authenticated: None when no authorisation
        path is configured (the store's permissions then apply, `authz = internal`)."""
        if not (self.vhost_path or self.resource_path or self.topic_path):
            return None
        return HttpAuthorization(self, peer)

    def decide(self, url: str, params: Params) -> bool:
        """The service's answer to one question, from the cache.

        Raises PermissionPending while it is being asked (one request per
        distinct question, however many clients wait for it).
        """
        key = (url, params)
        hit = self._answers.get(key)
        if hit is not None and self.clock.monotonic() < hit[0]:
            return hit[1]
        if self._closed:
            return False
        asking = self._asking.get(key)
        if asking is None:
            loop = asyncio.get_running_loop()
            asking = self._asking[key] = loop.create_future()
            task = loop.create_task(self._answer(key, asking))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        raise PermissionPending([asking], f"{url} {dict(params)}")

    async def _answer(self, key: tuple[str, Params], asking: asyncio.Future[None]) -> None:
        """Ask the service, keep its answer, wake the waiting checks: whatever happens
        (a failure is kept as a refusal), so that no client waits beyond the timeout."""
        url, params = key
        allowed = cacheable = False
        try:
            answer = await self._ask(dict(params), url)
            allowed = answer.lower() == "allow"
            cacheable = allowed or answer.lower() == "deny"
            if not cacheable:
                log.warning("the HTTP backend %s answered %r: refused", url, answer[:40])
        except AccessRefused:  # logged by `_ask`
            pass
        except Exception:  # a bug here must refuse, not leave clients waiting
            log.exception("asking the HTTP backend %s failed: refused", url)
        finally:
            self._asking.pop(key, None)
            # Kept at least `SETTLE` request timeouts, whatever `cache_ttl` says: a
            # frame whose checks wait for the service one after another, handled
            # again after each answer, must still find the first answers then.
            settle = SETTLE * self.timeout
            ttl = max(self.cache_ttl, settle) if cacheable else settle
            if len(self._answers) >= CACHE_LIMIT:
                self._answers.clear()
            self._answers[key] = (self.clock.monotonic() + ttl, allowed)
            if not asking.done():
                asking.set_result(None)

    async def authenticate(
        self, username: str, password: str, *, peer: str
    ) -> tuple[str, tuple[str, ...]]:
        digest = hmac.new(self._key, password.encode(), hashlib.sha256).digest()
        cached = self._cache.get((username, digest))
        now = self.clock.monotonic()
        if cached is not None and now < cached[0]:
            return username, cached[1]
        answer = await self._ask({"username": username, "password": password})
        words = answer.split()
        if not words or words[0].lower() != "allow":
            raise AccessRefused(f"the HTTP backend answered {answer[:40]!r}")
        tags = tuple(words[1:])
        if self.cache_ttl > 0:
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            self._cache[(username, digest)] = (now + self.cache_ttl, tags)
        return username, tags

    async def _ask(self, params: dict[str, str], url: str = "") -> str:
        """The service's answer text (to `url`, default `user_path`). Raises
        AccessRefused when there is none."""
        url = url or self.user_path
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        self.requests += 1
        try:
            if self.method == "get":
                request = self._session.get(url, params=params)
            else:
                request = self._session.post(url, data=params)
            async with request as response:
                text = await response.text()
                if response.status != 200:
                    log.warning("the HTTP backend %s answered status %d", url, response.status)
                    raise AccessRefused(f"the HTTP backend answered status {response.status}")
                return text.strip()
        except (TimeoutError, aiohttp.ClientError, UnicodeDecodeError) as e:
            reason = f"the HTTP backend {url} cannot be asked: {e!r}"
            log.warning("%s", reason)
            raise AccessRefused(reason) from None

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for asking in list(self._asking.values()):
            if not asking.done():
                asking.set_result(None)  # the waiting clients are refused (`_closed`)
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpAuthorization:
    """The checks of one login that the HTTP backend authorises (`User.authz`).

    A kind of check without a path is the store's: the permissions of the
    store's user of that name, looked up at each check (so an operator's
    change applies at once).
    """

    def __init__(self, backend: HttpBackend, peer: str) -> None:
        self.backend = backend
        host = peer.rpartition(":")[0] if ":" in peer else peer
        self.ip = host.strip("[]")  # "[::1]:5672" -> "::1"

    def _internal(self, user: User) -> User | None:
        return self.backend.users.users.get(user.name)

    def check_vhost(self, user: User, vhost: str) -> None:
        backend = self.backend
        if backend.vhost_path:
            params = (("username", user.name), ("vhost", vhost), ("ip", self.ip))
            allowed = backend.decide(backend.vhost_path, params)
        else:
            internal = self._internal(user)
            allowed = internal is not None and backend.users.may_open(internal, vhost)
        if not allowed:
            raise AccessRefused(f"access to vhost '{vhost}' refused for user '{user.name}'")

    def check_resource(
        self, user: User, vhost: str, access: Access, resource: str, kind: str
    ) -> None:
        backend = self.backend
        if not backend.resource_path:
            internal = self._internal(user)
            if internal is not None:
                internal.check(vhost, access, resource, kind)
                return
            allowed = False
        else:
            params = (
                ("username", user.name),
                ("vhost", vhost),
                ("resource", kind),
                ("name", resource),
                ("permission", access),
            )
            allowed = backend.decide(backend.resource_path, params)
        if not allowed:
            raise AccessRefused(
                f"access to {kind} '{resource}' in vhost '{vhost}' refused for user '{user.name}'"
            )

    def check_topic(
        self,
        user: User,
        vhost: str,
        exchange: str,
        access: TopicAccess,
        routing_key: str,
        client_id: str,
        shown_as: str | None,
    ) -> None:
        backend = self.backend
        if not backend.topic_path:
            internal = self._internal(user)
            if internal is not None:
                internal.check_topic(
                    vhost, exchange, access, routing_key, client_id=client_id, shown_as=shown_as
                )
            return
        params = (
            ("username", user.name),
            ("vhost", vhost),
            ("resource", "topic"),
            ("name", exchange),
            ("permission", access),
            ("routing_key", routing_key),
            ("variable_map.username", user.name),
            ("variable_map.vhost", vhost),
            ("variable_map.client_id", client_id),
        )
        if not backend.decide(backend.topic_path, params):
            raise AccessRefused(
                f"{access} access to topic '{shown_as if shown_as is not None else routing_key}'"
                f" in exchange '{exchange}' in vhost '{vhost}' refused for user '{user.name}'"
            )
