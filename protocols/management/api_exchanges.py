"""Management routes for exchanges, publishing and bindings (RabbitMQ's paths and answers)."""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from moorage.broker import overview
from moorage.protocols.management import actions, render
from moorage.protocols.management.auth import may_see_vhost, not_found
from moorage.protocols.management.requests import (
    after_store,
    body_of,
    broker_of,
    ok,
    user_of,
    vhost_of,
)

routes = web.RouteTableDef()


async def _exchange_list(request: web.Request, vhost: str | None) -> web.Response:
    user = await user_of(request)
    if vhost is not None:
        vhost = vhost_of(request, user)
    items = [
        render.exchange(x)
        for x in overview.exchanges(broker_of(request), vhost)
        if may_see_vhost(user, x.vhost)
    ]
    return ok(render.listing(items, request.query))


@routes.get("/api/exchanges")
async def get_exchanges(request: web.Request) -> web.Response:
    return await _exchange_list(request, None)


@routes.get("/api/exchanges/{vhost}")
async def get_vhost_exchanges(request: web.Request) -> web.Response:
    return await _exchange_list(request, request.match_info["vhost"])


@routes.get("/api/exchanges/{vhost}/{name}")
async def get_exchange(request: web.Request) -> web.Response:
    user = await user_of(request)
    name = request.match_info["name"]
    if name == "amq.default":  # the default exchange's name in RabbitMQ's URLs
        name = ""
    info = overview.exchange(broker_of(request), vhost_of(request, user), name)
    if info is None:
        raise not_found()
    return ok(render.exchange(info))


@routes.put("/api/exchanges/{vhost}/{name}")
async def put_exchange(request: web.Request) -> web.Response:
    user = await user_of(request)
    vhost = vhost_of(request, user)
    name = request.match_info["name"]
    body = await body_of(request)
    type_name = body.get("type")
    if not isinstance(type_name, str):
        raise actions.http_error(400, "bad_request", "exchange type is required")
    durable = actions.boolean(body, "durable", True)
    auto_delete = actions.boolean(body, "auto_delete", False)
    internal = actions.boolean(body, "internal", False)
    arguments = actions.table(body, "arguments")
    existed = overview.exchange(broker_of(request), vhost, name) is not None
    actions.run(
        broker_of(request),
        user,
        vhost,
        request.remote or "",
        lambda s: s.declare_exchange(
            name,
            type_name,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            arguments=arguments,
        ),
    )
    await after_store(request)
    return web.Response(status=204 if existed else 201)


@routes.delete("/api/exchanges/{vhost}/{name}")
async def delete_exchange(request: web.Request) -> web.Response:
    user = await user_of(request)
    vhost = vhost_of(request, user)
    name = request.match_info["name"]
    if_unused = request.query.get("if-unused") == "true"
    if overview.exchange(broker_of(request), vhost, name) is None:
        raise not_found()
    actions.run(
        broker_of(request),
        user,
        vhost,
        request.remote or "",
        lambda s: s.delete_exchange(name, if_unused=if_unused),
    )
    await after_store(request)
    return web.Response(status=204)


@routes.post("/api/exchanges/{vhost}/{name}/publish")
async def publish(request: web.Request) -> web.Response:
    """Publish one message; `{"routed": bool}` like RabbitMQ, answered once it is safe."""
    user = await user_of(request)
    vhost = vhost_of(request, user)
    name = request.match_info["name"]
    if name == "amq.default":
        name = ""
    _routing_key, message = actions.message_of(await body_of(request))
    message.exchange = name
    result = actions.run(
        broker_of(request), user, vhost, request.remote or "", lambda s: s.publish(name, message)
    )
    await after_store(request)
    return ok({"routed": bool(result.routed)})


async def _exchange_bindings(request: web.Request, side: str) -> web.Response:
    user = await user_of(request)
    vhost = vhost_of(request, user)
    name = request.match_info["name"]
    if overview.exchange(broker_of(request), vhost, name) is None:
        raise not_found()
    items = [
        render.binding(b)
        for b in overview.bindings(broker_of(request), vhost)
        if (
            b.source == name
            if side == "source"
            else b.destination_type == "exchange" and b.destination == name
        )
    ]
    return ok(render.listing(items, request.query))


@routes.get("/api/exchanges/{vhost}/{name}/bindings/source")
async def get_source_bindings(request: web.Request) -> web.Response:
    return await _exchange_bindings(request, "source")


@routes.get("/api/exchanges/{vhost}/{name}/bindings/destination")
async def get_destination_bindings(request: web.Request) -> web.Response:
    return await _exchange_bindings(request, "destination")


# -- bindings -------------------------------------------------------------------------------


@routes.get("/api/bindings")
async def get_bindings(request: web.Request) -> web.Response:
    user = await user_of(request)
    items = [
        render.binding(b)
        for b in overview.bindings(broker_of(request))
        if may_see_vhost(user, b.vhost)
    ]
    return ok(render.listing(items, request.query))


@routes.get("/api/bindings/{vhost}")
async def get_vhost_bindings(request: web.Request) -> web.Response:
    user = await user_of(request)
    vhost = vhost_of(request, user)
    items = [render.binding(b) for b in overview.bindings(broker_of(request), vhost)]
    return ok(render.listing(items, request.query))


def _kind(letter: str) -> str:
    if letter == "q":
        return "queue"
    if letter == "e":
        return "exchange"
    raise not_found()


def _between(request: web.Request, vhost: str) -> list[overview.BindingInfo]:
    source = request.match_info["source"]
    destination = request.match_info["destination"]
    kind = _kind(request.match_info["kind"])
    return [
        b
        for b in overview.bindings(broker_of(request), vhost)
        if b.source == source and b.destination == destination and b.destination_type == kind
    ]


@routes.get("/api/bindings/{vhost}/e/{source}/{kind}/{destination}")
async def get_bindings_between(request: web.Request) -> web.Response:
    user = await user_of(request)
    vhost = vhost_of(request, user)
    return ok([render.binding(b) for b in _between(request, vhost)])


@routes.post("/api/bindings/{vhost}/e/{source}/{kind}/{destination}")
async def post_binding(request: web.Request) -> web.Response:
    user = await user_of(request)
    vhost = vhost_of(request, user)
    source = request.match_info["source"]
    destination = request.match_info["destination"]
    kind = _kind(request.match_info["kind"])
    body = await body_of(request)
    routing_key = body.get("routing_key", "")
    if not isinstance(routing_key, str):
        raise actions.http_error(400, "bad_request", "routing_key must be a string")
    arguments = actions.table(body, "arguments")
    if kind == "queue":
        actions.run(
            broker_of(request),
            user,
            vhost,
            request.remote or "",
            lambda s: s.bind_queue(destination, source, routing_key, arguments),
        )
    else:
        actions.run(
            broker_of(request),
            user,
            vhost,
            request.remote or "",
            lambda s: s.bind_exchange(destination, source, routing_key, arguments),
        )
    await after_store(request)
    # RabbitMQ's Location: relative to this path, the destination and the quoted key
    key = render.properties_key(routing_key, arguments)
    location = f"{quote(destination, safe='')}/{quote(key, safe='')}"
    return web.Response(status=201, headers={"Location": location})


@routes.get("/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}")
async def get_binding(request: web.Request) -> web.Response:
    user = await user_of(request)
    vhost = vhost_of(request, user)
    for b in _between(request, vhost):
        if render.properties_key(b.routing_key, b.arguments) == request.match_info["props"]:
            return ok(render.binding(b))
    raise not_found()


@routes.delete("/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}")
async def delete_binding(request: web.Request) -> web.Response:
    user = await user_of(request)
    vhost = vhost_of(request, user)
    source = request.match_info["source"]
    destination = request.match_info["destination"]
    kind = _kind(request.match_info["kind"])
    found = [
        b
        for b in _between(request, vhost)
        if render.properties_key(b.routing_key, b.arguments) == request.match_info["props"]
    ]
    if not found:
        raise not_found()
    key, arguments = found[0].routing_key, found[0].arguments
    if kind == "queue":
        actions.run(
            broker_of(request),
            user,
            vhost,
            request.remote or "",
            lambda s: s.unbind_queue(destination, source, key, arguments),
        )
    else:
        actions.run(
            broker_of(request),
            user,
            vhost,
            request.remote or "",
            lambda s: s.unbind_exchange(destination, source, key, arguments),
        )
    await after_store(request)
    return web.Response(status=204)
