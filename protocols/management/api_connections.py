"""Management routes for connections, channels and consumers.

Every protocol's clients appear here, each connection with its protocol named
(AMQP 0-9-1, MQTT, STOMP); an MQTT or STOMP session is one channel. Users and
permissions are in `api_users`.

DELETE on a connection closes it with its protocol's own close
(`ClientConnection.force_close`): AMQP `connection.close` 320
`CONNECTION_FORCED - <reason>`, MQTT 5 DISCONNECT 0x98 (3.1.1: the socket
closes), STOMP an ERROR frame. The reason is RabbitMQ's: the `X-Reason`
header, or "Closed via management plugin".
"""

from __future__ import annotations

from aiohttp import web

from moorage.broker import overview
from moorage.broker.auth import User
from moorage.protocols.management import render
from moorage.protocols.management.auth import Level, level_of, may_see_vhost, not_found, require
from moorage.protocols.management.requests import (
    broker_of,
    client_connections,
    ok,
    user_of,
    vhost_of,
)

routes = web.RouteTableDef()


def _may_see(user: User, info: overview.ConnectionInfo) -> bool:
    """Monitoring users see every connection; others only their own."""
    return info.user == user.name or level_of(user) >= Level.MONITORING


@routes.get("/api/connections")
async def get_connections(request: web.Request) -> web.Response:
    user = await user_of(request)
    items = [
        render.connection(c)
        for c in client_connections(broker_of(request)).values()
        if _may_see(user, c)
    ]
    return ok(render.listing(items, request.query))


@routes.get("/api/vhosts/{vhost}/connections")
async def get_vhost_connections(request: web.Request) -> web.Response:
    user = await user_of(request)
    vhost = vhost_of(request, user)
    items = [
        render.connection(c)
        for c in client_connections(broker_of(request)).values()
        if c.vhost == vhost and _may_see(user, c)
    ]
    return ok(render.listing(items, request.query))


@routes.get("/api/connections/{name}")
async def get_connection(request: web.Request) -> web.Response:
    user = await user_of(request)
    for c in client_connections(broker_of(request)).values():
        if render.connection_name(c) == request.match_info["name"] and _may_see(user, c):
            return ok(render.connection(c))
    raise not_found()


DEFAULT_CLOSE_REASON = "Closed via management plugin"  # RabbitMQ's, when no X-Reason


@routes.delete("/api/connections/{name}")
async def delete_connection(request: web.Request) -> web.Response:
    """Close a connection: its own user may, an administrator may close any (RabbitMQ
    lets monitoring users too; closing is not monitoring, so Moorage does not)."""
    user = await user_of(request)
    broker = broker_of(request)
    for c in client_connections(broker).values():
        if render.connection_name(c) != request.match_info["name"] or not _may_see(user, c):
            continue
        if c.user != user.name:
            require(user, Level.ADMINISTRATOR)
        reason = request.headers.get("X-Reason") or DEFAULT_CLOSE_REASON
        broker.close_connection(c.id, reason)
        return web.Response(status=204)
    raise not_found()


@routes.get("/api/channels")
async def get_channels(request: web.Request) -> web.Response:
    user = await user_of(request)
    connections = client_connections(broker_of(request))
    items = [
        render.channel(ch, connections[ch.connection])
        for ch in overview.channels(broker_of(request))
        if ch.connection in connections and _may_see(user, connections[ch.connection])
    ]
    return ok(render.listing(items, request.query))


async def _consumers(request: web.Request, vhost: str | None) -> web.Response:
    user = await user_of(request)
    if vhost is not None:
        vhost = vhost_of(request, user)
    connections = client_connections(broker_of(request))
    items = [
        render.consumer(c, connections[c.connection])
        for c in overview.consumers(broker_of(request), vhost)
        if c.connection in connections and may_see_vhost(user, c.vhost)
    ]
    return ok(render.listing(items, request.query))


@routes.get("/api/consumers")
async def get_consumers(request: web.Request) -> web.Response:
    return await _consumers(request, None)


@routes.get("/api/consumers/{vhost}")
async def get_vhost_consumers(request: web.Request) -> web.Response:
    return await _consumers(request, request.match_info["vhost"])
