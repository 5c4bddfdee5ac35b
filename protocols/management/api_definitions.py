"""Definitions export and import in RabbitMQ's JSON format, vhost creation, and backups.

`GET /api/definitions` writes what `rabbitmqctl export_definitions` or the
management UI of RabbitMQ 3.x write: vhosts, users (with their password hashes),
permissions, topic permissions, queues, exchanges and bindings; policies and
parameters are empty lists (Moorage has none yet). `POST /api/definitions`
loads such a file — one exported from RabbitMQ included — creating what is
missing: users, permissions, topic permissions and durable queues, exchanges
and bindings go to the store before the answer, like a declare-ok. A user of
the file replaces a user of the same name (as RabbitMQ's import does).
Password hashes are accepted in RabbitMQ's SHA-256, SHA-512 and MD5 formats
(`hashing_algorithm`) and in Moorage's scrypt; a RabbitMQ hash is upgraded
to scrypt at the user's next successful login.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from moorage.broker import __version__, overview
from moorage.broker.auth import Permission, TopicPermission, User
from moorage.broker.session import Session
from moorage.broker.vhost import STANDARD_EXCHANGES
from moorage.protocols.management import actions
from moorage.protocols.management.api_users import (
    apply_user,
    pattern,
    permissions_json,
    topic_permissions_json,
    user_json,
)
from moorage.protocols.management.auth import Level, http_error, require
from moorage.protocols.management.requests import after_store, body_of, broker_of, ok, user_of
from moorage.storage import StoreError

routes = web.RouteTableDef()

_BUILT_IN_EXCHANGES = {"", *(name for name, _type in STANDARD_EXCHANGES)}


def _export(request: web.Request, vhost: str | None) -> dict[str, Any]:
    broker = broker_of(request)
    users = broker.users.users
    vhosts = [vhost] if vhost is not None else overview.vhost_names(broker)
    return {
        "rabbit_version": "3.10.8",
        "rabbitmq_version": "3.10.8",
        "product_name": "Moorage",
        "product_version": __version__,
        "users": [user_json(users[n]) for n in sorted(users)],
        "vhosts": [{"name": v, "description": "", "tags": [], "metadata": {}} for v in vhosts],
        "permissions": [p for n in sorted(users) for p in permissions_json(users[n], set(vhosts))],
        "topic_permissions": [
            p for n in sorted(users) for p in topic_permissions_json(users[n], set(vhosts))
        ],
        "parameters": [],
        "global_parameters": [],
        "policies": [],
        "queues": [
            {
                "name": q.name,
                "vhost": q.vhost,
                "durable": q.durable,
                "auto_delete": q.auto_delete,
                "arguments": q.arguments,
            }
            for v in vhosts
            for q in overview.queues(broker, v)
            if not q.exclusive
        ],
        "exchanges": [
            {
                "name": x.name,
                "vhost": x.vhost,
                "type": x.type,
                "durable": x.durable,
                "auto_delete": x.auto_delete,
                "internal": x.internal,
                "arguments": x.arguments,
            }
            for v in vhosts
            for x in overview.exchanges(broker, v)
            if x.name not in _BUILT_IN_EXCHANGES
        ],
        "bindings": [
            {
                "source": b.source,
                "vhost": b.vhost,
                "destination": b.destination,
                "destination_type": b.destination_type,
                "routing_key": b.routing_key,
                "arguments": b.arguments,
            }
            for v in vhosts
            for b in overview.bindings(broker, v)
            if b.source != ""
        ],
    }


@routes.get("/api/definitions")
async def get_definitions(request: web.Request) -> web.Response:
    require(await user_of(request), Level.ADMINISTRATOR)
    return ok(_export(request, None))


@routes.get("/api/definitions/{vhost}")
async def get_vhost_definitions(request: web.Request) -> web.Response:
    require(await user_of(request), Level.ADMINISTRATOR)
    vhost = request.match_info["vhost"]
    if broker_of(request).find_vhost(vhost) is None:
        raise http_error(404, "Object Not Found", "Not Found")
    return ok(_export(request, vhost))


def _items(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = body.get(key) or []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise http_error(400, "bad_request", f"'{key}' must be a list of objects")
    return items


def _text(item: dict[str, Any], key: str, default: str | None = None) -> str:
    value = item.get(key, default)
    if not isinstance(value, str):
        raise http_error(400, "bad_request", f"'{key}' must be a string in {item!r}")
    return value


def _import_users(request: web.Request, body: dict[str, Any]) -> None:
    """Users, then permissions and topic permissions, through the user directory."""
    directory = broker_of(request).users
    for item in _items(body, "users"):
        apply_user(request, _text(item, "name"), item)
    for key in ("permissions", "topic_permissions"):
        for item in _items(body, key):
            name = _text(item, "user")
            if name not in directory.users:
                raise http_error(400, "bad_request", f"{key} for unknown user {name!r}")
            vhost = _text(item, "vhost", "/")
            if key == "permissions":
                directory.set_permission(
                    name,
                    vhost,
                    Permission(
                        pattern(item, "configure", ".*"),
                        pattern(item, "write", ".*"),
                        pattern(item, "read", ".*"),
                    ),
                )
            else:
                directory.set_topic_permission(
                    name,
                    vhost,
                    _text(item, "exchange", ""),
                    TopicPermission(pattern(item, "write", ".*"), pattern(item, "read", ".*")),
                )


def _declare_exchange(item: dict[str, Any]) -> Callable[[Session], object]:
    name, type_name = _text(item, "name"), _text(item, "type")
    durable = actions.boolean(item, "durable", True)
    auto_delete = actions.boolean(item, "auto_delete", False)
    internal = actions.boolean(item, "internal", False)
    arguments = actions.table(item, "arguments")
    return lambda s: s.declare_exchange(
        name,
        type_name,
        durable=durable,
        auto_delete=auto_delete,
        internal=internal,
        arguments=arguments,
    )


def _declare_queue(item: dict[str, Any]) -> Callable[[Session], object]:
    name = _text(item, "name")
    durable = actions.boolean(item, "durable", True)
    auto_delete = actions.boolean(item, "auto_delete", False)
    arguments = actions.table(item, "arguments")
    return lambda s: s.declare_queue(
        name, durable=durable, auto_delete=auto_delete, arguments=arguments
    )


def _bind(item: dict[str, Any]) -> Callable[[Session], object]:
    source, destination = _text(item, "source"), _text(item, "destination")
    routing_key = _text(item, "routing_key", "")
    arguments = actions.table(item, "arguments")
    if _text(item, "destination_type", "queue") == "queue":
        return lambda s: s.bind_queue(destination, source, routing_key, arguments)
    return lambda s: s.bind_exchange(destination, source, routing_key, arguments)


@routes.post("/api/definitions")
async def post_definitions(request: web.Request) -> web.Response:
    """Load definitions. The administrator imports as the broker itself (every vhost in
    the file, whatever its own permissions), as RabbitMQ's import does."""
    admin = await user_of(request)
    require(admin, Level.ADMINISTRATOR)
    body = await body_of(request)
    broker = broker_of(request)
    for item in _items(body, "vhosts"):
        broker.add_vhost(_text(item, "name"))
    _import_users(request, body)
    peer = request.remote or ""
    for key, make in (
        ("exchanges", _declare_exchange),
        ("queues", _declare_queue),
        ("bindings", _bind),
    ):
        for item in _items(body, key):
            vhost = _text(item, "vhost", "/")
            actions.run(broker, _importer(admin, vhost), vhost, peer, make(item))
    await after_store(request)
    return web.Response(status=204)


def _importer(admin: User, vhost: str) -> User:
    """The administrator with every permission on `vhost`, for an import only."""
    return User(admin.name, None, admin.tags, {vhost: Permission(".*", ".*", ".*")})


@routes.put("/api/vhosts/{vhost}")
async def put_vhost(request: web.Request) -> web.Response:
    require(await user_of(request), Level.ADMINISTRATOR)
    broker = broker_of(request)
    name = request.match_info["vhost"]
    existed = broker.find_vhost(name) is not None
    broker.add_vhost(name)
    return web.Response(status=204 if existed else 201)


@routes.get("/api/backup")
async def get_backup(request: web.Request) -> web.StreamResponse:
    """A consistent copy of the running store as a SQLite file (administrator).

    The store writes the copy next to itself (same file system, so no /tmp
    size limit), it is streamed, then deleted. A broker started with the file
    as its `moorage.db` recovers everything that was confirmed before the
    request. The memory store has nothing to copy: 400.
    """
    require(await user_of(request), Level.ADMINISTRATOR)
    broker = broker_of(request)
    location = broker.store_location
    if location is None:
        raise http_error(400, "bad_request", "the memory store keeps nothing on disk to back up")
    with tempfile.TemporaryDirectory(prefix=".backup-", dir=location) as folder:
        path = Path(folder) / "moorage.db"
        try:
            size = await broker.backup(path)
        except StoreError as e:
            raise http_error(500, "internal_error", str(e)) from None
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/vnd.sqlite3",
                "Content-Disposition": 'attachment; filename="moorage.db"',
                "Content-Length": str(size),
            }
        )
        await response.prepare(request)
        with path.open("rb") as copy:
            while chunk := copy.read(1 << 20):
                await response.write(chunk)
        await response.write_eof()
        return response
