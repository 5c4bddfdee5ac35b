"""Management routes for queues: list, declare, delete, purge, get messages, bindings."""

from __future__ import annotations

import base64
from typing import Any

from aiohttp import web

from moorage.broker import overview
from moorage.protocols.management import actions, render
from moorage.protocols.management.auth import http_error, may_see_vhost, not_found
from moorage.protocols.management.requests import (
    after_store,
    body_of,
    broker_of,
    ok,
    user_of,
    vhost_of,
)

routes = web.RouteTableDef()

# -- queues -----------------------------------------------------------------------------------


async def _queue_list(request: web.Request, vhost: str | None) -> web.Response:
    user = await user_of(request)
    broker = broker_of(request)
    if vhost is not None:
        vhost = vhost_of(request, user)
    query = request.query
    if "page" in query and not query.get("sort"):
        # a page of a long list: snapshot only the queues on it
        keys = [k for k in overview.queue_keys(broker, vhost) if may_see_vhost(user, k.vhost)]

        def render_key(key: overview.QueueKey) -> dict[str, Any]:
            info = overview.queue(broker, key.vhost, key.name)
            assert info is not None  # the key was read in this same call
            return render.queue(info)

        return ok(render.rendered_listing(keys, query, render_key))
    records = [q for q in overview.queues(broker, vhost) if may_see_vhost(user, q.vhost)]
    return ok(render.rendered_listing(records, query, render.queue))


@routes.get("/api/queues")
async def get_queues(request: web.Request) -> web.Response:
    return await _queue_list(request, None)


@routes.get("/api/queues/{vhost}")
async def get_vhost_queues(request: web.Request) -> web.Response:
    return await _queue_list(request, request.match_info["vhost"])


@routes.get("/api/queues/{vhost}/{name}")
async def get_queue(request: web.Request) -> web.Response:
    user = await user_of(request)
    info = overview.queue(broker_of(request), vhost_of(request, user), request.match_info["name"])
    if info is None:
        raise not_found()
    return ok(render.queue(info))


@routes.put("/api/queues/{vhost}/{name}")
async def put_queue(request: web.Request) -> web.Response:
    user = await user_of(request)
    vhost = vhost_of(request, user)
    name = request.match_info["name"]
    body = await body_of(request)
    existed = overview.queue(broker_of(request), vhost, name) is not None
    durable = actions.boolean(body, "durable", True)
    auto_delete = actions.boolean(body, "auto_delete", False)
    arguments = actions.table(body, "arguments")
    actions.run(
        broker_of(request),
        user,
        vhost,
        request.remote or "",
        lambda s: s.declare_queue(
            name, durable=durable, auto_delete=auto_delete, arguments=arguments
        ),
    )
    await after_store(request)
    return web.Response(status=204 if existed else 201)


@routes.delete("/api/queues/{vhost}/{name}")
async def delete_queue(request: web.Request) -> web.Response:
    user = await user_of(request)
    vhost = vhost_of(request, user)
    name = request.match_info["name"]
    if_empty = request.query.get("if-empty") == "true"
    if_unused = request.query.get("if-unused") == "true"
    if overview.queue(broker_of(request), vhost, name) is None:
        raise not_found()
    actions.run(
        broker_of(request),
        user,
        vhost,
        request.remote or "",
        lambda s: s.delete_queue(name, if_empty=if_empty, if_unused=if_unused),
    )
    await after_store(request)
    return web.Response(status=204)


@routes.delete("/api/queues/{vhost}/{name}/contents")
async def purge_queue(request: web.Request) -> web.Response:
    user = await user_of(request)
    vhost = vhost_of(request, user)
    name = request.match_info["name"]
    actions.run(
        broker_of(request), user, vhost, request.remote or "", lambda s: s.purge_queue(name)
    )
    await after_store(request)
    return web.Response(status=204)


@routes.post("/api/queues/{vhost}/{name}/get")
async def get_messages(request: web.Request) -> web.Response:
    """RabbitMQ's get: `count`, `ackmode` (ack_requeue_true/false, reject_requeue_true/false),
    `encoding` (auto or base64), `truncate`. Requeued messages are marked redelivered."""
    user = await user_of(request)
    vhost = vhost_of(request, user)
    name = request.match_info["name"]
    body = await body_of(request)
    count = _number(body.get("count", 1))
    ackmode = body.get("ackmode", "ack_requeue_true")
    encoding = body.get("encoding", "auto")
    truncate = _number(body.get("truncate"))
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise http_error(400, "bad_request", "count must be a positive integer")
    if ackmode not in (
        "ack_requeue_true",
        "ack_requeue_false",
        "reject_requeue_true",
        "reject_requeue_false",
    ):
        raise http_error(400, "bad_request", f"unknown ackmode {ackmode!r}")
    if encoding not in ("auto", "base64"):
        raise http_error(400, "bad_request", "encoding must be auto or base64")
    requeue = ackmode.endswith("true")
    out: list[dict[str, Any]] = []
    with actions.session(broker_of(request), user, vhost, request.remote or "") as s:
        tags = []
        for _ in range(count):
            got = s.get(name)
            if got is None:
                break
            tag, redelivered, message, left = got
            tags.append(tag)
            out.append(_got_message(message, redelivered, left, encoding, truncate))
        for tag in tags:
            if requeue:
                s.nack(tag, requeue=True)
            else:
                s.ack(tag)
    await after_store(request)
    return ok(out)


def _number(value: object) -> object:
    """rabbitmqadmin sends numbers as strings ("count": "1"); RabbitMQ accepts both."""
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def _got_message(
    message: Any, redelivered: bool, left: int, encoding: str, truncate: object
) -> dict[str, Any]:
    body: bytes = message.body
    if isinstance(truncate, int) and not isinstance(truncate, bool) and truncate >= 0:
        body = body[:truncate]
    payload: str
    payload_encoding = "string"
    if encoding == "base64":
        payload, payload_encoding = base64.b64encode(body).decode(), "base64"
    else:
        try:
            payload = body.decode("utf-8")
        except UnicodeDecodeError:
            payload, payload_encoding = base64.b64encode(body).decode(), "base64"
    props = message.properties
    properties: dict[str, Any] = {}
    for field in (
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "user_id",
        "app_id",
    ):
        value = getattr(props, field)
        if value is not None:
            properties[field] = value
    if props.message_type is not None:
        properties["type"] = props.message_type
    if props.timestamp is not None:
        properties["timestamp"] = int(props.timestamp.timestamp())
    if props.headers:
        properties["headers"] = render.plain(props.headers)
    return {
        "payload_bytes": len(message.body),
        "redelivered": redelivered,
        "exchange": message.exchange,
        "routing_key": message.routing_key,
        "message_count": left,
        "properties": properties,
        "payload": payload,
        "payload_encoding": payload_encoding,
    }


@routes.get("/api/queues/{vhost}/{name}/bindings")
async def get_queue_bindings(request: web.Request) -> web.Response:
    user = await user_of(request)
    vhost = vhost_of(request, user)
    name = request.match_info["name"]
    if overview.queue(broker_of(request), vhost, name) is None:
        raise not_found()
    items = [
        render.binding(b)
        for b in overview.bindings(broker_of(request), vhost)
        if b.destination_type == "queue" and b.destination == name
    ]
    return ok(render.listing(items, request.query))
