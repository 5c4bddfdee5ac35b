"""What every management route needs: the broker, the requesting user, JSON in and out,
and waiting for the store before answering a change."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from moorage.broker import overview
from moorage.broker.auth import User
from moorage.broker.broker import Broker
from moorage.protocols.management.auth import authenticate, http_error, may_see_vhost, not_found

BROKER_KEY: web.AppKey[Broker] = web.AppKey("broker", Broker)


def listening_ports(request: web.Request) -> list[int]:
    """Every port the broker listens on (health checks, the overview)."""
    return sorted(set(broker_of(request).ports.values()))


def broker_of(request: web.Request) -> Broker:
    return request.app[BROKER_KEY]


async def user_of(request: web.Request) -> User:
    """The requesting user (`auth.authenticate`). Raises 401 like RabbitMQ."""
    return await authenticate(request, broker_of(request))


def ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def vhost_of(request: web.Request, user: User) -> str:
    vhost = request.match_info["vhost"]
    if broker_of(request).find_vhost(vhost) is None or not may_see_vhost(user, vhost):
        raise not_found()
    return vhost


async def body_of(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise http_error(400, "bad_request", "not_json") from None
    if not isinstance(data, dict):
        raise http_error(400, "bad_request", "not_json")
    return data


async def after_store(request: web.Request) -> None:
    """Wait until every change queued so far is durable (a declare-ok's promise)."""
    done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    broker_of(request).ordered_replies().send(done.set_result, durable=True)
    error = await done
    if error is not None:
        raise http_error(500, "internal_error", f"the store could not write: {error}")


def visible_vhosts(broker: Broker, user: User) -> list[str]:
    return [v for v in overview.vhost_names(broker) if may_see_vhost(user, v)]


def client_connections(broker: Broker) -> dict[int, overview.ConnectionInfo]:
    """Clients' connections: not the API's own, nor those the broker opened for itself."""
    return {
        c.id: c for c in overview.connections(broker) if c.protocol != "http" and not c.internal
    }
