"""Management routes that describe the node, and the empty lists of what Moorage has none of.

`rabbitmqadmin list nodes` reads `/api/nodes`: Moorage is one node, whose
memory, file descriptors and alarm state are reported with RabbitMQ's field
names. Policies, operator policies and runtime parameters do not exist in
Moorage (queue features are set with `x-` arguments); their lists answer
empty, as a RabbitMQ without any does, so tools that list them carry on.
"""

from __future__ import annotations

import os
import resource
from typing import Any

from aiohttp import web

from moorage.broker.broker import Broker
from moorage.protocols.management import render
from moorage.protocols.management.auth import Level, not_found, require
from moorage.protocols.management.metrics import rss_bytes
from moorage.protocols.management.requests import broker_of, ok, user_of, vhost_of

routes = web.RouteTableDef()

STARTED_KEY = web.AppKey("started", float)  # the broker clock's monotonic time at start


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def node_json(broker: Broker, uptime: float) -> dict[str, Any]:
    fd_total = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return {
        "name": render.NODE,
        "type": "disc",
        "running": True,
        "os_pid": str(os.getpid()),
        "uptime": int(uptime * 1000),
        "mem_used": rss_bytes(),
        "mem_limit": broker.memory.watermark,
        "mem_alarm": broker.flow.memory_alarm,
        "disk_free_alarm": False,
        "fd_used": _open_fds(),
        "fd_total": fd_total if fd_total != resource.RLIM_INFINITY else 0,
        "processors": os.cpu_count() or 1,
    }


def _uptime(request: web.Request) -> float:
    broker = broker_of(request)
    started = request.app.get(STARTED_KEY, broker.clock.monotonic())
    return max(0.0, broker.clock.monotonic() - started)


@routes.get("/api/nodes")
async def get_nodes(request: web.Request) -> web.Response:
    require(await user_of(request), Level.MONITORING)
    return ok(render.listing([node_json(broker_of(request), _uptime(request))], request.query))


@routes.get("/api/nodes/{name}")
async def get_node(request: web.Request) -> web.Response:
    require(await user_of(request), Level.MONITORING)
    if request.match_info["name"] != render.NODE:
        raise not_found()
    return ok(node_json(broker_of(request), _uptime(request)))


async def _nothing(request: web.Request) -> web.Response:
    user = await user_of(request)
    if "vhost" in request.match_info:
        vhost_of(request, user)
    return ok([])


for _path in (
    "/api/policies",
    "/api/policies/{vhost}",
    "/api/operator-policies",
    "/api/operator-policies/{vhost}",
    "/api/parameters",
    "/api/parameters/{component}",
    "/api/parameters/{component}/{vhost}",
):
    routes.get(_path)(_nothing)
