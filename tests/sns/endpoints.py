"""Real endpoints for SNS tests: an aiohttp HTTP subscriber and an aiosmtpd mail server.

Both run on the test's event loop on free loopback ports and record what they
received; tests wait on those records with generous bounds (never on a
duration).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message as Mail
from typing import Any

from aiohttp import web

WAIT = 30.0  # seconds a condition may take on a loaded machine


async def wait_for(condition: Callable[[], bool], bound: float = WAIT) -> None:
    """Return as soon as `condition()` is true; fail after `bound` seconds."""
    async with asyncio.timeout(bound):
        while not condition():  # noqa: ASYNC110 - the conditions are plain data, no event
            await asyncio.sleep(0.01)


@dataclass
class HttpSubscriber:
    """Records every POST; answers with `status` (a list is consumed one per request)."""

    url: str = ""
    posts: list[tuple[dict[str, str], dict[str, Any] | str]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    status: int = 200

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [
            body
            for headers, body in self.posts
            if headers.get("x-amz-sns-message-type") == kind and isinstance(body, dict)
        ]

    async def handle(self, request: web.Request) -> web.Response:
        text = await request.text()
        try:
            body: dict[str, Any] | str = json.loads(text)
        except ValueError:
            body = text
        self.posts.append(({k.lower(): v for k, v in request.headers.items()}, body))
        status = self.statuses.pop(0) if self.statuses else self.status
        return web.Response(status=status)


@asynccontextmanager
async def http_subscriber(tls: ssl.SSLContext | None = None) -> AsyncIterator[HttpSubscriber]:
    """An HTTP (or, with a server context, HTTPS) subscriber on a free loopback port."""
    subscriber = HttpSubscriber()
    app = web.Application()
    app.router.add_post("/{tail:.*}", subscriber.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    subscriber.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/sns"
    try:
        yield subscriber
    finally:
        await runner.cleanup()


@dataclass
class MailBox:
    """What the SMTP server accepted."""

    port: int = 0
    mails: list[Mail] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.mails.append(message_from_bytes(envelope.content))
        return "250 Message accepted for delivery"


@asynccontextmanager
async def smtp_server() -> AsyncIterator[MailBox]:
    from aiosmtpd.smtp import SMTP

    box = MailBox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(box, hostname="localhost"), "127.0.0.1", 0)
    box.port = server.sockets[0].getsockname()[1]
    try:
        yield box
    finally:
        server.close()
        await server.wait_closed()
