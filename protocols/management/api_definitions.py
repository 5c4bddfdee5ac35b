"""Definitions export and import in RabbitMQ's JSON format, vhost creation, and backups.

`GET /api/definitions` writes what `rabbitmqctl export_definitions` or the
management UI of RabbitMQ 3.x write: vhosts, users (with their password hashes),
permissions, queues, exchanges and bindings; policies, parameters and topic
permissions are empty lists (Moorage has none yet). `POST /api/definitions`
loads such a file — one exported from RabbitMQ included — creating what is
missing: durable queues, exchanges and bindings go to the store before the
answer, like a declare-ok. Users and permissions are added to the running
broker; until users are kept in the store (the Security work) they last until
restart and belong in the configuration file for good. Password hashes are
accepted in RabbitMQ's `rabbit_password_hashing_sha256` format.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from moorage.broker import __version__, overview
from moorage.broker.auth import Permission, User
from moorage.broker.session import Session
from moorage.broker.vhost import STANDARD_EXCHANGES
from moorage.protocols.management import actions
from moorage.protocols.management.auth import Level, http_error, require
from moorage.protocols.management.requests import after_store, body_of, broker_of, ok, user_of
from moorage.storage import StoreError

routes = web.RouteTableDef()

HASHING = "rabbit_password_hashing_sha256"
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
        "users": [
            {
                "name": u.name,
                "password_hash": u.password_hash or "",
                "hashing_algorithm": HASHING,
                "tags": list(u.tags),
                "limits": {},
            }
            for u in (users[n] for n in sorted(users))
        ],
        "vhosts": [{"name": v, "description": "", "tags": [], "metadata": {}} for v in vhosts],
        "permissions": [
            {"user": u.name, "vhost": v, "configure": p.configure, "write": p.write, "read": p.read}
            for u in (users[n] for n in sorted(users))
            for v, p in sorted(u.permissions.items())
            if v in vhosts
        ],
        "topic_permissions": [],
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
    require(user_of(request), Level.ADMINISTRATOR)
    return ok(_export(request, None))


@routes.get("/api/definitions/{vhost}")
async def get_vhost_definitions(request: web.Request) -> web.Response:
    require(user_of(request), Level.ADMINISTRATOR)
    vhost = request.match_info["vhost"]
    if vhost not in broker_of(request).vhosts:
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
    directory = broker_of(request).users
    for item in _items(body, "users"):
        name = _text(item, "name")
        algorithm = item.get("hashing_algorithm", HASHING)
        if algorithm != HASHING:
            raise http_error(
                400, "bad_request", f"user '{name}': unsupported hashing_algorithm {algorithm!r}"
            )
        tags = item.get("tags", [])
        if isinstance(tags, str):  # RabbitMQ 3.8 and older export tags as "a,b"
            tags = [t for t in tags.split(",") if t]
        existing = directory.users.get(name)
        permissions = dict(existing.permissions) if existing is not None else {}
        directory.users[name] = User(
            name, _text(item, "password_hash") or None, tuple(map(str, tags)), permissions
        )
    for item in _items(body, "permissions"):
        user = directory.users.get(_text(item, "user"))
        if user is None:
            raise http_error(400, "bad_request", f"permissions for unknown user {item['user']!r}")
        user.permissions[_text(item, "vhost")] = Permission(
            _text(item, "configure", ".*"), _text(item, "write", ".*"), _text(item, "read", ".*")
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
    admin = user_of(request)
    require(admin, Level.ADMINISTRATOR)
    body = await body_of(request)
    broker = broker_of(request)
    for item in _items(body, "vhosts"):
        broker.add_vhost(_text(item, "name"))
    _import_users(request, body)
    peer = request.remote or ""
    touched: set[str] = set()
    for key, make in (
        ("exchanges", _declare_exchange),
        ("queues", _declare_queue),
        ("bindings", _bind),
    ):
        for item in _items(body, key):
            vhost = _text(item, "vhost", "/")
            actions.run(broker, _importer(admin, vhost), vhost, peer, make(item))
            touched.add(vhost)
    if touched:
        await after_store(request)
    return web.Response(status=204)


def _importer(admin: User, vhost: str) -> User:
    """The administrator with every permission on `vhost`, for an import only."""
    return User(admin.name, None, admin.tags, {vhost: Permission(".*", ".*", ".*")})


@routes.put("/api/vhosts/{vhost}")
async def put_vhost(request: web.Request) -> web.Response:
    require(user_of(request), Level.ADMINISTRATOR)
    broker = broker_of(request)
    name = request.match_info["vhost"]
    existed = name in broker.vhosts
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
    require(user_of(request), Level.ADMINISTRATOR)
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
