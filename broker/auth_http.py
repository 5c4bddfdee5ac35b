"""RabbitMQ's HTTP authentication backend contract (`rabbitmq_auth_backend_http`), as a
`moorage.auth` plug-in.

Settings (`[auth.http]`): `user_path` (the URL asked), `http_method` ("get",
the default, sends the parameters in the query string; "post" sends them as
a form body), `cache_ttl` (seconds an "allow" is remembered, RabbitMQ's
`rabbitmq_auth_backend_cache`; 0 = not at all) and `request_timeout`
(seconds; default 5).

The request carries `username` and `password`; the answer is a 200 whose
body is `deny`, `allow`, or `allow` followed by tags (`allow administrator
management`). Anything else — another status, another body, a connection
refused, a timeout — refuses the login with a logged reason, and the chain
goes on to the next backend. Only "allow" answers are cached, keyed by user
name and a keyed digest of the password (never the password): a refusal is
asked again, and counts towards the brute-force delay as any refusal does.

Not consulted yet: RabbitMQ's `vhost_path`, `resource_path` and
`topic_path`; permissions come from the users in the store (RabbitMQ's
`authn = http`, `authz = internal`), so the configuration refuses those keys
rather than ignore them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from typing import Any, Protocol

import aiohttp

from moorage.broker.clock import Clock
from moorage.broker.errors import AccessRefused

log = logging.getLogger("moorage.auth")

SETTINGS = {"user_path", "http_method", "cache_ttl", "request_timeout"}


class Broker(Protocol):
    """What this backend uses of the broker: its clock (for the cache). Declared here,
    not imported from `auth_backends`, which imports this module (no import cycle)."""

    @property
    def clock(self) -> Clock: ...


class HttpBackend:
    """Asks an HTTP service whether a user name and password may log in."""

    name = "http"

    def __init__(self, broker: Broker, settings: dict[str, Any]) -> None:
        unknown = set(settings) - SETTINGS
        if unknown:
            raise ValueError(f"unknown or unsupported key 'auth.http.{sorted(unknown)[0]}'")
        self.user_path = str(settings.get("user_path", ""))
        if not self.user_path.startswith(("http://", "https://")):
            raise ValueError("auth.http.user_path must be an http:// or https:// URL")
        self.method = str(settings.get("http_method", "get")).lower()
        if self.method not in ("get", "post"):
            raise ValueError("auth.http.http_method must be 'get' or 'post'")
        self.cache_ttl = float(settings.get("cache_ttl", 10.0))
        self.timeout = float(settings.get("request_timeout", 5.0))
        self.clock = broker.clock
        self._session: aiohttp.ClientSession | None = None
        self._cache: dict[tuple[str, bytes], tuple[float, tuple[str, ...]]] = {}
        self._key = os.urandom(32)
        self.requests = 0  # asked of the service (not answered from the cache)

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
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[(username, digest)] = (now + self.cache_ttl, tags)
        return username, tags

    async def _ask(self, params: dict[str, str]) -> str:
        """The service's answer text. Raises AccessRefused when there is none."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        self.requests += 1
        try:
            if self.method == "get":
                request = self._session.get(self.user_path, params=params)
            else:
                request = self._session.post(self.user_path, data=params)
            async with request as response:
                text = await response.text()
                if response.status != 200:
                    raise AccessRefused(f"the HTTP backend answered status {response.status}")
                return text.strip()
        except (TimeoutError, aiohttp.ClientError, UnicodeDecodeError) as e:
            reason = f"the HTTP backend {self.user_path} cannot be asked: {e!r}"
            log.warning("%s", reason)
            raise AccessRefused(reason) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
