"""Management routes for users, permissions and topic permissions (`whoami` is in
`api_overview`).

Shapes and answers are RabbitMQ's (3.10): `PUT /api/users/{name}` takes
`password`, or `password_hash` with `hashing_algorithm` (RabbitMQ's SHA-256,
SHA-512 and MD5 names, or `moorage_password_hashing_scrypt`), and `tags` as
a comma-separated string or a list; it answers 201 when it created the user
and 204 when it changed one. `PUT /api/permissions/{vhost}/{user}` takes
`configure`, `write` and `read`; `PUT /api/topic-permissions/{vhost}/{user}`
takes `exchange`, `write` and `read`. A change is written to the store
before the answer, and takes effect at once, for connected clients too.
Every route needs the `administrator` tag.

Errors: 401 without valid credentials or the tag, 404 for an unknown user,
vhost or permission, 400 for a body that is not JSON, misses a key, has a
hash of no known format or a pattern that is not a regular expression, or
names a user that does not exist.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from moorage.broker.auth import Permission, TopicPermission, User
from moorage.broker.auth_hashing import ALGORITHMS, SCRYPT, HashFormatError, algorithm_of
from moorage.protocols.management import render
from moorage.protocols.management.auth import Level, http_error, not_found, require
from moorage.protocols.management.requests import after_store, body_of, broker_of, ok, user_of

routes = web.RouteTableDef()


# -- JSON shapes (shared with definitions export and import) -----------------------------------


def user_json(user: User) -> dict[str, Any]:
    """A user as RabbitMQ's API and definitions show one."""
    algorithm = SCRYPT
    if user.password_hash:
        try:
            algorithm = algorithm_of(user.password_hash, user.hashing_algorithm)
        except HashFormatError:
            algorithm = user.hashing_algorithm or SCRYPT
    return {
        "name": user.name,
        "password_hash": user.password_hash or "",
        "hashing_algorithm": algorithm,
        "tags": list(user.tags),
        "limits": {},
    }


def permissions_json(user: User, vhosts: set[str] | None = None) -> list[dict[str, Any]]:
    return [
        {"user": user.name, "vhost": v, "configure": p.configure, "write": p.write, "read": p.read}
        for v, p in sorted(user.permissions.items())
        if vhosts is None or v in vhosts
    ]


def topic_permissions_json(user: User, vhosts: set[str] | None = None) -> list[dict[str, Any]]:
    return [
        {"user": user.name, "vhost": v, "exchange": x, "write": p.write, "read": p.read}
        for (v, x), p in sorted(user.topic_permissions.items())
        if vhosts is None or v in vhosts
    ]


def text(item: dict[str, Any], key: str, default: str | None = None) -> str:
    """A string field of a request body, or 400."""
    value = item.get(key, default)
    if not isinstance(value, str):
        raise http_error(400, "bad_request", f"'{key}' must be a string")
    return value


def tags_of(item: dict[str, Any]) -> list[str] | None:
    """`tags` as a comma-separated string or a list (None when absent), or 400."""
    tags = item.get("tags")
    if tags is None:
        return None
    if isinstance(tags, str):
        return [t.strip() for t in tags.split(",") if t.strip()]
    if isinstance(tags, list) and all(isinstance(t, str) for t in tags):
        return [t.strip() for t in tags if t.strip()]
    raise http_error(400, "bad_request", "'tags' must be a comma-separated string or a list")


def pattern(item: dict[str, Any], key: str, default: str | None = None) -> str:
    """A permission pattern: a string that compiles as a regular expression, or 400."""
    value = text(item, key, default)
    try:
        re.compile(value)
    except re.error as e:
        raise http_error(400, "bad_request", f"'{key}' is not a regular expression: {e}") from None
    return value


def apply_user(request: web.Request, name: str, item: dict[str, Any]) -> bool:
    """Create or change a user from a RabbitMQ user object; True if it is new. Raises 400."""
    if not name:
        raise http_error(400, "bad_request", "a user needs a name")
    directory = broker_of(request).users
    created = name not in directory.users
    tags = tags_of(item)
    algorithm = text(item, "hashing_algorithm", "")
    if algorithm and algorithm not in ALGORITHMS:
        raise http_error(400, "bad_request", f"unsupported hashing_algorithm '{algorithm}'")
    try:
        if "password" in item:
            directory.put_user(name, password=text(item, "password"), tags=tags)
        elif "password_hash" in item:
            directory.put_user(
                name,
                password_hash=text(item, "password_hash"),
                hashing_algorithm=algorithm,
                tags=tags if tags is not None else ([] if created else None),
            )
        else:
            # RabbitMQ: a user made without either has no password (it cannot
            # log in with one); an existing user keeps its password.
            directory.put_user(
                name,
                password_hash="" if created else None,
                tags=tags if tags is not None else ([] if created else None),
            )
    except HashFormatError as e:
        raise http_error(400, "bad_request", str(e)) from None
    return created


# -- users ------------------------------------------------------------------------------------


@routes.get("/api/users")
async def get_users(request: web.Request) -> web.Response:
    require(await user_of(request), Level.ADMINISTRATOR)
    users = broker_of(request).users.users
    return ok(render.listing([user_json(users[n]) for n in sorted(users)], request.query))


@routes.get("/api/users/{name}")
async def get_user(request: web.Request) -> web.Response:
    require(await user_of(request), Level.ADMINISTRATOR)
    return ok(user_json(_user(request)))


@routes.put("/api/users/{name}")
async def put_user(request: web.Request) -> web.Response:
    require(await user_of(request), Level.ADMINISTRATOR)
    created = apply_user(request, request.match_info["name"], await body_of(request))
    await after_store(request)
    return web.Response(status=201 if created else 204)


@routes.delete("/api/users/{name}")
async def delete_user(request: web.Request) -> web.Response:
    require(await user_of(request), Level.ADMINISTRATOR)
    if not broker_of(request).users.delete_user(request.match_info["name"]):
        raise not_found()
    await after_store(request)
    return web.Response(status=204)


@routes.post("/api/users/bulk-delete")
async def bulk_delete_users(request: web.Request) -> web.Response:
    require(await user_of(request), Level.ADMINISTRATOR)
    names = (await body_of(request)).get("users")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise http_error(400, "bad_request", "'users' must be a list of names")
    for name in names:
        broker_of(request).users.delete_user(name)
    await after_store(request)
    return web.Response(status=204)


def _user(request: web.Request) -> User:
    found = broker_of(request).users.users.get(request.match_info["name"])
    if found is None:
        raise not_found()
    return found


@routes.get("/api/users/{name}/permissions")
async def get_user_permissions(request: web.Request) -> web.Response:
    require(await user_of(request), Level.ADMINISTRATOR)
    return ok(permissions_json(_user(request)))


@routes.get("/api/users/{name}/topic-permissions")
async def get_user_topic_permissions(request: web.Request) -> web.Response:
    require(await user_of(request), Level.ADMINISTRATOR)
    return ok(topic_permissions_json(_user(request)))


# -- permissions --------------------------------------------------------------------------------


@routes.get("/api/permissions")
async def get_permissions(request: web.Request) -> web.Response:
    require(await user_of(request), Level.ADMINISTRATOR)
    users = broker_of(request).users.users
    return ok([p for n in sorted(users) for p in permissions_json(users[n])])


def _vhost_user(request: web.Request) -> tuple[str, str]:
    """(vhost, user) of a permission route: 404 for an unknown vhost, 400 for a user."""
    vhost, name = request.match_info["vhost"], request.match_info["user"]
    broker = broker_of(request)
    if broker.find_vhost(vhost) is None:
        raise not_found()
    if name not in broker.users.users:
        raise http_error(400, "bad_request", f"no_such_user: '{name}'")
    return vhost, name


@routes.get("/api/permissions/{vhost}/{user}")
async def get_permission(request: web.Request) -> web.Response:
    require(await user_of(request), Level.ADMINISTRATOR)
    found = broker_of(request).users.users.get(request.match_info["user"])
    vhost = request.match_info["vhost"]
    if found is None or vhost not in found.permissions:
        raise not_found()
    return ok(permissions_json(found, {vhost})[0])


@routes.put("/api/permissions/{vhost}/{user}")
async def put_permission(request: web.Request) -> web.Response:
    require(await user_of(request), Level.ADMINISTRATOR)
    body = await body_of(request)
    vhost, name = _vhost_user(request)
    for key in ("configure", "write", "read"):
        if key not in body:
            raise http_error(400, "bad_request", f"missing key '{key}'")
    directory = broker_of(request).users
    created = vhost not in directory.users[name].permissions
    directory.set_permission(
        name,
        vhost,
        Permission(pattern(body, "configure"), pattern(body, "write"), pattern(body, "read")),
    )
    await after_store(request)
    return web.Response(status=201 if created else 204)


@routes.delete("/api/permissions/{vhost}/{user}")
async def delete_permission(request: web.Request) -> web.Response:
    require(await user_of(request), Level.ADMINISTRATOR)
    vhost, name = request.match_info["vhost"], request.match_info["user"]
    if not broker_of(request).users.clear_permission(name, vhost):
        raise not_found()
    await after_store(request)
    return web.Response(status=204)


# -- topic permissions --------------------------------------------------------------------------


@routes.get("/api/topic-permissions")
async def get_topic_permissions(request: web.Request) -> web.Response:
    require(await user_of(request), Level.ADMINISTRATOR)
    users = broker_of(request).users.users
    return ok([p for n in sorted(users) for p in topic_permissions_json(users[n])])


@routes.get("/api/topic-permissions/{vhost}/{user}")
async def get_topic_permission(request: web.Request) -> web.Response:
    require(await user_of(request), Level.ADMINISTRATOR)
    found = broker_of(request).users.users.get(request.match_info["user"])
    listed = topic_permissions_json(found, {request.match_info["vhost"]}) if found else []
    if not listed:
        raise not_found()
    return ok(listed)


@routes.put("/api/topic-permissions/{vhost}/{user}")
async def put_topic_permission(request: web.Request) -> web.Response:
    require(await user_of(request), Level.ADMINISTRATOR)
    body = await body_of(request)
    vhost, name = _vhost_user(request)
    for key in ("exchange", "write", "read"):
        if key not in body:
            raise http_error(400, "bad_request", f"missing key '{key}'")
    exchange = text(body, "exchange")
    directory = broker_of(request).users
    created = (vhost, exchange) not in directory.users[name].topic_permissions
    directory.set_topic_permission(
        name, vhost, exchange, TopicPermission(pattern(body, "write"), pattern(body, "read"))
    )
    await after_store(request)
    return web.Response(status=201 if created else 204)


@routes.delete("/api/topic-permissions/{vhost}/{user}")
async def delete_topic_permission(request: web.Request) -> web.Response:
    """Every topic permission of the user on the vhost, or one exchange's (`?exchange=`)."""
    require(await user_of(request), Level.ADMINISTRATOR)
    vhost, name = request.match_info["vhost"], request.match_info["user"]
    exchange = request.query.get("exchange")
    if not broker_of(request).users.clear_topic_permission(name, vhost, exchange):
        raise not_found()
    await after_store(request)
    return web.Response(status=204)
