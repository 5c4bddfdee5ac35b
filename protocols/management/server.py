"""The management HTTP listener: one aiohttp application on the daemon's `http` port,
serving the API, the metrics and the web UI (static files in `ui/`, at `/`).

Registered as the `http` protocol plug-in, so `--http-port N` (default 15672)
starts it like any other listener. The application is served through
`loop.create_server`, so the daemon gets the same `asyncio.Server` handle it
gets from the TCP protocols (closing, port discovery, TLS later).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from moorage.broker.broker import Broker
from moorage.protocols.management import (
    api_connections,
    api_definitions,
    api_exchanges,
    api_node,
    api_overview,
    api_queues,
    api_users,
    metrics,
)
from moorage.protocols.management.auth import client_peer, not_found
from moorage.protocols.management.requests import BROKER_KEY

MAX_BODY = 16 * 1024 * 1024  # a publish through the API is at most 16 MiB
UI_DIR = Path(__file__).parent / "ui"
# The UI loads only its own files: no inline script, nothing from elsewhere.
UI_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(UI_DIR / "index.html", headers=UI_HEADERS)


@web.middleware
async def _ui_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    response = await handler(request)
    if request.path.startswith("/ui/"):
        response.headers.update(UI_HEADERS)
    return response


@web.middleware
async def slow_refusals(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """A refused login's 401 waits out the address's brute-force delay (`broker.auth_guard`)."""
    try:
        return await handler(request)
    except web.HTTPUnauthorized as e:
        if e.text is not None and "Login failed" in e.text:
            broker = request.app[BROKER_KEY]
            delay = broker.refusal_delay(client_peer(request))
            if delay > 0:
                await broker.clock.sleep(delay)
        raise


@web.middleware
async def _json_404(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own errors (unknown path, wrong method, body too large) as JSON, like
    RabbitMQ's: 404 `Object Not Found`, others `{"error": <reason>, "reason": <text>}`."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status == 401 and request.headers.get("X-Requested-With") == "XMLHttpRequest":
            # The web UI's requests: no WWW-Authenticate, or the browser would open its
            # own login dialog over the UI's form (and headless ones would hang).
            e.headers.pop("WWW-Authenticate", None)
        if e.content_type == "application/json" or e.status < 400:
            raise
        if e.status == 404:
            raise not_found() from None
        e.text = json.dumps({"error": e.reason.lower().replace(" ", "_"), "reason": e.reason})
        e.content_type = "application/json"
        raise


def build_app(broker: Broker) -> web.Application:
    """The management application for `broker` (also usable in an aiohttp test client)."""
    app = web.Application(
        client_max_size=MAX_BODY, middlewares=[slow_refusals, _json_404, _ui_headers]
    )
    app.router.add_get("/", _index)
    app.router.add_static("/ui/", UI_DIR, follow_symlinks=False)
    app[BROKER_KEY] = broker
    app[api_node.STARTED_KEY] = broker.clock.monotonic()
    for module in (
        api_overview,
        api_queues,
        api_exchanges,
        api_connections,
        api_definitions,
        api_users,
        api_node,
        metrics,
    ):
        app.add_routes(module.routes)
    return app


class ManagementListener:
    """A running management listener (the daemon's `Listener` shape)."""

    def __init__(self, runner: web.AppRunner, server: asyncio.base_events.Server) -> None:
        self.runner = runner
        self.server = server

    def _handlers(self) -> list[RequestHandler]:
        web_server = self.runner.server
        return list(web_server.connections) if web_server is not None else []

    def shutdown_connections(self, reason: str) -> None:
        """Close every HTTP connection (requests in flight are cut, as at any restart)."""
        for handler in self._handlers():
            handler.force_close()
            if handler.transport is not None:
                handler.transport.close()

    def connection_count(self) -> int:
        return len(self._handlers())


class ManagementPlugin:
    """The `http` listener of the daemon."""

    name = "http"

    async def start(
        self, broker: Broker, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> ManagementListener:
        runner = web.AppRunner(build_app(broker), access_log=None, handle_signals=False)
        await runner.setup()
        assert runner.server is not None
        loop = asyncio.get_running_loop()
        server = await loop.create_server(runner.server, host, port, ssl=ssl_context)
        return ManagementListener(runner, server)


plugin = ManagementPlugin()
