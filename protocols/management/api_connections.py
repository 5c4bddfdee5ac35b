"""Management routes for connections, channels, consumers, users and permissions.

Every protocol's clients appear here, each connection with its protocol named
(AMQP 0-9-1, MQTT, STOMP); an MQTT or STOMP session is one channel. Users and
permissions are read-only until the store keeps users (the Security work).

DELETE on a connection closes it with its protocol's own close
(`ClientConnection.force_close`): AMQP `connection.close` 320
`CONNECTION_FORCED - <reason>`, MQTT 5 DISCONNECT 0x98 (3.1.1: the socket
closes), STOMP an ERROR frame. The reason is RabbitMQ's: the `X-Reason`
header, or "Closed via management plugin".
"""

from __future__ import annotations

from typing import Any

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
    user = user_of(request)
    items = [
        render.connection(c)
        for c in client_connections(broker_of(request)).values()
        if _may_see(user, c)
    ]
    return ok(render.listing(items, request.query))


@routes.get("/api/vhosts/{vhost}/connections")
async def get_vhost_connections(request: web.Request) -> web.Response:
    user = user_of(request)
    vhost = vhost_of(request, user)
    items = [
        render.connection(c)
        for c in client_connections(broker_of(request)).values()
        if c.vhost == vhost and _may_see(user, c)
    ]
    return ok(render.listing(items, request.query))


@routes.get("/api/connections/{name}")
async def get_connection(request: web.Request) -> web.Response:
    user = user_of(request)
    for c in client_connections(broker_of(request)).values():
        if render.connection_name(c) == request.match_info["name"] and _may_see(user, c):
            return ok(render.connection(c))
    raise not_found()


DEFAULT_CLOSE_REASON = "Closed via management plugin"  # RabbitMQ's, when no X-Reason


@routes.delete("/api/connections/{name}")
async def delete_connection(request: web.Request) -> web.Response:
    """Close a connection: its own user may, an administrator may close any (RabbitMQ
    lets monitoring users too; closing is not monitoring, so Moorage does not)."""
    user = user_of(request)
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
    user = user_of(request)
    connections = client_connections(broker_of(request))
    items = [
        render.channel(ch, connections[ch.connection])
        for ch in overview.channels(broker_of(request))
        if ch.connection in connections and _may_see(user, connections[ch.connection])
    ]
    return ok(render.listing(items, request.query))


def _consumers(request: web.Request, vhost: str | None) -> web.Response:
    user = user_of(request)
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
    return _consumers(request, None)


@routes.get("/api/consumers/{vhost}")
async def get_vhost_consumers(request: web.Request) -> web.Response:
    return _consumers(request, request.match_info["vhost"])


# -- users and permissions (administrators) ---------------------------------------------------


def _user_json(user: User) -> dict[str, Any]:
    return {
        "name": user.name,
        "password_hash": user.password_hash or "",
        "hashing_algorithm": "rabbit_password_hashing_sha256",
        "tags": list(user.tags),
        "limits": {},
    }


@routes.get("/api/users")
async def get_users(request: web.Request) -> web.Response:
    require(user_of(request), Level.ADMINISTRATOR)
    users = broker_of(request).users.users
    return ok(render.listing([_user_json(users[n]) for n in sorted(users)], request.query))


@routes.get("/api/users/{name}")
async def get_user(request: web.Request) -> web.Response:
    require(user_of(request), Level.ADMINISTRATOR)
    found = broker_of(request).users.users.get(request.match_info["name"])
    if found is None:
        raise not_found()
    return ok(_user_json(found))


def _permissions(user: User) -> list[dict[str, Any]]:
    return [
        {
            "user": user.name,
            "vhost": vhost,
            "configure": p.configure,
            "write": p.write,
            "read": p.read,
        }
        for vhost, p in sorted(user.permissions.items())
    ]


@routes.get("/api/permissions")
async def get_permissions(request: web.Request) -> web.Response:
    require(user_of(request), Level.ADMINISTRATOR)
    users = broker_of(request).users.users
    return ok([p for n in sorted(users) for p in _permissions(users[n])])


@routes.get("/api/users/{name}/permissions")
async def get_user_permissions(request: web.Request) -> web.Response:
    require(user_of(request), Level.ADMINISTRATOR)
    found = broker_of(request).users.users.get(request.match_info["name"])
    if found is None:
        raise not_found()
    return ok(_permissions(found))
