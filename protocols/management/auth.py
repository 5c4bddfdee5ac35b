"""HTTP basic authentication against the broker's users, and RabbitMQ's user tags.

RabbitMQ's management tags, in increasing power: `management` (the objects of
the user's own vhosts), `policymaker`, `monitoring` (every vhost, connection
and channel, read-only), `administrator` (everything, users and permissions
included). A user with none of them may not use the HTTP API (401, as
RabbitMQ answers). Errors have RabbitMQ's body, `{"error": .., "reason": ..}`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import json

from aiohttp import web

from moorage.broker.auth import User
from moorage.broker.broker import Broker
from moorage.broker.errors import AccessRefused, NotServing

REALM = 'Basic realm="Moorage Management"'


class Level(enum.IntEnum):
    """What a request needs; a user's tags give it a level."""

    MANAGEMENT = 1
    POLICYMAKER = 2
    MONITORING = 3
    ADMINISTRATOR = 4


_TAG_LEVELS = {
    "management": Level.MANAGEMENT,
    "policymaker": Level.POLICYMAKER,
    "monitoring": Level.MONITORING,
    "administrator": Level.ADMINISTRATOR,
}

_ERRORS: dict[int, type[web.HTTPError]] = {
    400: web.HTTPBadRequest,
    401: web.HTTPUnauthorized,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    415: web.HTTPUnsupportedMediaType,
    500: web.HTTPInternalServerError,
    503: web.HTTPServiceUnavailable,
}


def level_of(user: User) -> int:
    """The highest management level the user's tags give (0: no API access)."""
    return max((_TAG_LEVELS.get(tag, 0) for tag in user.tags), default=0)


def http_error(status: int, error: str, reason: object) -> web.HTTPError:
    """An aiohttp exception carrying RabbitMQ's JSON error body."""
    headers = {"WWW-Authenticate": REALM} if status == 401 else None
    return _ERRORS[status](
        text=json.dumps({"error": error, "reason": reason}),
        content_type="application/json",
        headers=headers,
    )


def not_found() -> web.HTTPError:
    """RabbitMQ's 404 for a missing vhost, queue, exchange, user or route."""
    return http_error(404, "Object Not Found", "Not Found")


async def authenticate(request: web.Request, broker: Broker) -> User:
    """The user of a request's basic credentials. Raises 401 like RabbitMQ.

    A password the credential cache does not know is checked off the event
    loop (`Broker.login`), so a login does not stall the other clients."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise http_error(401, "not_authorized", "Login failed")
    try:
        text = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise http_error(401, "not_authorized", "Login failed") from None
    username, _, password = text.partition(":")
    try:
        user = await broker.login(
            username,
            password,
            from_loopback=is_loopback(request.remote or ""),
            peer=client_peer(request),
        )
    except NotServing as e:  # a standby of a replicated pair (docs/failover.md)
        raise http_error(503, "standby", e.text) from None
    except AccessRefused:
        raise http_error(401, "not_authorized", "Login failed") from None
    if level_of(user) == 0:
        raise http_error(401, "not_authorized", "Not management user")
    return user


def client_peer(request: web.Request) -> str:
    """The client as the brute-force guard counts it ("[host]:port", `broker.auth_guard`)."""
    return f"[{request.remote or 'unknown'}]:0"


def is_loopback(address: str) -> bool:
    """Whether a peer address is a loopback address (guest logs in from there only)."""
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def require(user: User, level: Level) -> None:
    """Raise 401 (RabbitMQ's answer) unless the user's tags reach `level`."""
    if level_of(user) < level:
        raise http_error(401, "not_authorized", f"Not {level.name.lower()} user")


def may_see_vhost(user: User, vhost: str) -> bool:
    """Monitoring and administrator users see every vhost; others only their own."""
    return level_of(user) >= Level.MONITORING or vhost in user.permissions
