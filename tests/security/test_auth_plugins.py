"""Authentication backends as `moorage.auth` entry points, and the HTTP backend's cache.

The plug-in is a real installed distribution as far as `importlib.metadata`
knows: a `.dist-info` directory with `entry_points.txt` and its module, put
on `sys.path` for the test; the broker finds it by name from `auth.backends`
and chains it before the store. The cache test asks an aiohttp server
in-process and moves the broker's clock (ManualClock) past `cache_ttl`.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pika.exceptions import ProbableAuthenticationError

from moorage.broker.auth import Permission, User, UserDirectory
from moorage.broker.auth_backends import authenticate_chain, load_backends
from moorage.broker.auth_http import HttpBackend
from moorage.broker.clock import ManualClock
from moorage.broker.daemon import StartupError
from moorage.broker.errors import AccessRefused
from tests.helpers import RunningBroker, make_config

pytestmark = pytest.mark.timeout(60)

PLUGIN = "moorage_test_token_auth"


@pytest.fixture
def plugin_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A distribution `moorage-test-token-auth` whose entry point `token` is a backend that
    accepts the password "token-<name>" (tags: plugin)."""
    root = tmp_path / "site"
    dist = root / f"{PLUGIN}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: moorage-test-token-auth\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(f"[moorage.auth]\ntoken = {PLUGIN}:TokenBackend\n")
    (root / f"{PLUGIN}.py").write_text(
        textwrap.dedent("""\
        from moorage.broker.errors import AccessRefused


        class TokenBackend:
            name = "token"

            def __init__(self, broker, settings):
                self.prefix = settings.get("prefix", "token-")

            async def authenticate(self, username, password, *, peer):
                if password != self.prefix + username:
                    raise AccessRefused("not this user's token")
                return username, ("plugin",)

            async def close(self):
                return None
        """)
    )
    monkeypatch.syspath_prepend(str(root))
    yield
    sys.modules.pop(PLUGIN, None)


def _logs_in(broker: RunningBroker, name: str, password: str) -> bool:
    try:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url_for(name, password)))
    except ProbableAuthenticationError:
        return False
    try:
        connection.channel().queue_declare(f"q-{name}")
    finally:
        connection.close()
    return True


def test_an_entry_point_plugin_joins_the_chain_in_order(
    tmp_path: Path, plugin_on_path: None, start_broker: Callable[..., RunningBroker]
) -> None:
    # "p" is in the store without a password: the plug-in vouches for it, the
    # store gives its permissions (authz = internal)
    config = make_config(tmp_path, User("p", None, (), {"/": Permission(".*", ".*", ".*")}))
    config.auth_backends = ["token", "internal"]
    config.auth_settings = {"token": {"prefix": "tk-"}}
    config.failed_login_delay = 0.0  # refusals are part of the test, not their slowdown
    broker = start_broker(config)
    assert [b.name for b in broker.daemon.broker.auth_chain or ()] == ["token", "internal"]
    assert _logs_in(broker, "p", "tk-p")
    assert broker.queue_exists("q-p")
    assert not _logs_in(broker, "p", "token-p")  # the plug-in's own setting was applied
    assert _logs_in(broker, "guest", "guest")  # refused by the plug-in, accepted by the store
    assert not _logs_in(broker, "guest", "tk-nope")


def test_an_unknown_backend_name_stops_the_start(
    tmp_path: Path, start_broker: Callable[..., RunningBroker]
) -> None:
    config = make_config(tmp_path)
    config.auth_backends = ["internal", "ldap"]
    with pytest.raises(StartupError, match="no authentication backend named 'ldap'"):
        start_broker(config)


class _Broker:
    def __init__(self, clock: ManualClock) -> None:
        self.users = UserDirectory()
        self.clock = clock


async def test_http_answers_are_cached_for_cache_ttl_of_the_broker_clock() -> None:
    asked: list[str] = []

    async def user_path(request: web.Request) -> web.Response:
        asked.append(request.query["username"])
        return web.Response(text="allow" if request.query["password"] == "pw" else "deny")

    app = web.Application()
    app.router.add_get("/auth/user", user_path)
    async with TestServer(app, host="127.0.0.1") as server:
        clock = ManualClock()
        url = str(server.make_url("/auth/user"))
        backend = HttpBackend(_Broker(clock), {"user_path": url, "cache_ttl": 30})
        chain = [backend]
        try:
            assert await authenticate_chain(chain, "a", "pw", peer="p") == ("a", ())
            assert await authenticate_chain(chain, "a", "pw", peer="p") == ("a", ())
            assert asked == ["a"]
            with pytest.raises(AccessRefused):  # another password is not the cached one
                await authenticate_chain(chain, "a", "other", peer="p")
            with pytest.raises(AccessRefused):  # and refusals are never cached
                await authenticate_chain(chain, "a", "other", peer="p")
            assert asked == ["a", "a", "a"]
            clock.advance(29.0)
            await authenticate_chain(chain, "a", "pw", peer="p")
            assert len(asked) == 3
            clock.advance(2.0)  # past the TTL: asked again
            await authenticate_chain(chain, "a", "pw", peer="p")
            assert len(asked) == 4
        finally:
            await backend.close()


def test_settings_the_http_backend_does_not_know_are_refused() -> None:
    broker = _Broker(ManualClock())
    with pytest.raises(ValueError, match=r"auth\.http\.scope_path"):
        HttpBackend(broker, {"user_path": "http://127.0.0.1/u", "scope_path": "http://x/r"})
    with pytest.raises(ValueError, match=r"auth\.http\.resource_path"):
        HttpBackend(broker, {"user_path": "http://127.0.0.1/u", "resource_path": "x/r"})
    with pytest.raises(ValueError, match="user_path"):
        HttpBackend(broker, {"user_path": "ftp://x"})
    # the entry point group lists the built-ins (pyproject.toml), found by name either way
    assert [b.name for b in load_backends(broker, ["internal"], {})] == ["internal"]
