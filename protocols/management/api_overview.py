"""Management routes for the overview, the caller, vhosts and health checks."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from moorage.broker import __version__, overview
from moorage.broker.broker import Broker
from moorage.broker.stats import CHANNEL_FIELDS
from moorage.protocols.management import render
from moorage.protocols.management.auth import http_error, may_see_vhost
from moorage.protocols.management.requests import (
    broker_of,
    listening_ports,
    ok,
    user_of,
    vhost_of,
    visible_vhosts,
)

routes = web.RouteTableDef()

# -- overview, whoami, vhosts, health ---------------------------------------------------------


@routes.get("/api/overview")
async def get_overview(request: web.Request) -> web.Response:
    user = await user_of(request)
    broker = broker_of(request)

    def visible(vhost: str) -> bool:
        return may_see_vhost(user, vhost)

    queues = overview.queue_totals(broker, visible)
    connections = overview.client_connection_totals(broker, visible)
    failover = {} if broker.failover_status is None else {"failover": broker.failover_status()}
    return ok(
        {
            **failover,
            "management_version": __version__,
            "product_name": "Moorage",
            "product_version": __version__,
            "rabbitmq_version": "3.10.8",  # the API level this one follows (for tooling)
            "cluster_name": render.NODE,
            "node": render.NODE,
            "exchange_types": [
                {"name": t, "description": "", "enabled": True}
                for t in ("direct", "fanout", "headers", "topic", "x-delayed-message")
            ],
            "message_stats": overview.message_totals(broker).message_stats(CHANNEL_FIELDS),
            "queue_totals": {
                "messages": queues.messages,
                "messages_ready": queues.messages_ready,
                "messages_unacknowledged": queues.messages_unacknowledged,
            },
            "object_totals": {
                "connections": connections.connections,
                "channels": connections.channels,
                "consumers": connections.consumers,  # as /api/consumers lists them
                "exchanges": overview.exchange_count(broker),
                "queues": queues.queues,
            },
            "listeners": [
                {"node": render.NODE, "protocol": "tcp", "port": port}
                for port in listening_ports(request)
            ],
        }
    )


@routes.get("/api/whoami")
async def get_whoami(request: web.Request) -> web.Response:
    user = await user_of(request)
    return ok({"name": user.name, "tags": list(user.tags)})


def _vhost_json(broker: Broker, name: str) -> dict[str, Any]:
    queues = overview.queues(broker, name)
    return {
        "name": name,
        "description": "",
        "tags": [],
        "tracing": False,
        "messages": sum(q.messages for q in queues),
        "messages_ready": sum(q.messages_ready for q in queues),
        "messages_unacknowledged": sum(q.messages_unacknowledged for q in queues),
    }


@routes.get("/api/vhosts")
async def get_vhosts(request: web.Request) -> web.Response:
    user = await user_of(request)
    broker = broker_of(request)
    items = [_vhost_json(broker, v) for v in visible_vhosts(broker, user)]
    return ok(render.listing(items, request.query))


@routes.get("/api/vhosts/{vhost}")
async def getvhost_of(request: web.Request) -> web.Response:
    user = await user_of(request)
    return ok(_vhost_json(broker_of(request), vhost_of(request, user)))


@routes.get("/api/health/checks/alarms")
async def get_alarms(request: web.Request) -> web.Response:
    await user_of(request)
    broker = broker_of(request)
    alarms = list(broker.flow.alarms)  # "memory", "disk"
    if alarms:
        return ok(
            {"status": "failed", "reason": "resource alarm(s) in effect", "alarms": alarms}, 503
        )
    return ok({"status": "ok"})


@routes.get("/api/health/checks/port-listener/{port}")
async def get_port_listener(request: web.Request) -> web.Response:
    await user_of(request)
    try:
        port = int(request.match_info["port"])
    except ValueError:
        raise http_error(400, "bad_request", "port must be an integer") from None
    ports = listening_ports(request)
    if port in ports:
        return ok({"status": "ok", "port": port})
    return ok(
        {"status": "failed", "reason": "No active listener", "missing": port, "ports": ports}, 503
    )


@routes.get("/api/extensions")
async def get_extensions(request: web.Request) -> web.Response:
    await user_of(request)
    return ok([])
