"""What the management API changes, done as the requesting user through a core session.

Every change (declare, delete, purge, bind, publish, get) runs on a short-lived
`Session` of a connection opened for the request's user, so the core checks
the same vhost and resource permissions it checks for AMQP, MQTT and STOMP; the
API never edits a queue or an exchange itself. Core errors become RabbitMQ's
HTTP answers (`to_http`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web

from moorage.broker.auth import User
from moorage.broker.broker import Broker
from moorage.broker.errors import (
    AccessRefused,
    BrokerError,
    NotAllowed,
    NotFound,
)
from moorage.broker.message import Message, Properties
from moorage.broker.session import Session
from moorage.protocols.management.auth import http_error, not_found

__all__ = ["boolean", "http_error", "message_of", "run", "session", "table", "to_http"]

T = TypeVar("T")


class _NoDeliveries:
    """The sink of a management session: it never consumes, returns or gets cancelled."""

    def deliver(
        self, consumer_tag: str, delivery_tag: int, redelivered: bool, message: Message
    ) -> None:
        raise AssertionError("management sessions do not consume")

    def returned(self, message: Message, reply_code: int, reply_text: str) -> None:
        """An unroutable mandatory publish: the API reports `routed: false` instead."""

    def cancelled(self, consumer_tag: str, error: BrokerError | None) -> None:
        """Never consumes, so nothing to cancel."""


def to_http(error: BrokerError) -> web.HTTPError:
    """A core error as RabbitMQ's management answer."""
    if isinstance(error, NotFound):
        return not_found()
    if isinstance(error, AccessRefused | NotAllowed):
        return http_error(401, "not_authorized", error.text)
    return http_error(400, "bad_request", error.text)


@contextmanager
def session(broker: Broker, user: User, vhost: str, peer: str) -> Iterator[Session]:
    """A session on `vhost` as `user`, closed (with its connection) afterwards."""
    if broker.find_vhost(vhost) is None:
        raise not_found()
    try:
        connection = broker.connect(vhost, user, protocol="http", peer=peer, client=False)
    except BrokerError as e:
        raise to_http(e) from None
    try:
        yield connection.open_session(_NoDeliveries())
    except BrokerError as e:
        raise to_http(e) from None
    finally:
        connection.close()


def run(broker: Broker, user: User, vhost: str, peer: str, action: Callable[[Session], T]) -> T:
    """Run `action` on a fresh session; core errors become HTTP errors."""
    with session(broker, user, vhost, peer) as s:
        return action(s)


# -- request bodies ------------------------------------------------------------------------


def boolean(body: Mapping[str, Any], name: str, default: bool) -> bool:
    """A JSON boolean field; RabbitMQ also accepts "true"/"false" strings."""
    value = body.get(name, default)
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return bool(value == "true")
    raise http_error(400, "bad_request", ["not_boolean", value])


def table(body: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A JSON object field (arguments, headers), {} when absent."""
    value = body.get(name) or {}
    if not isinstance(value, dict):
        raise http_error(400, "bad_request", f"{name} must be an object")
    return value


_PROPERTY_FIELDS = {
    "content_type": str,
    "content_encoding": str,
    "correlation_id": str,
    "reply_to": str,
    "expiration": str,
    "message_id": str,
    "type": str,  # Properties.message_type
    "user_id": str,
    "app_id": str,
    "delivery_mode": int,
    "priority": int,
    "timestamp": int,
}


def message_of(body: Mapping[str, Any]) -> tuple[str, Message]:
    """The routing key and core message of a `publish` request (RabbitMQ's fields)."""
    routing_key = body.get("routing_key")
    payload = body.get("payload")
    encoding = body.get("payload_encoding", "string")
    if not isinstance(routing_key, str) or not isinstance(payload, str):
        raise http_error(400, "bad_request", "routing_key and payload are required strings")
    if encoding == "string":
        data = payload.encode("utf-8")
    elif encoding == "base64":
        try:
            data = base64.b64decode(payload, validate=True)
        except binascii.Error:
            raise http_error(400, "bad_request", "payload is not valid base64") from None
    else:
        raise http_error(400, "bad_request", "payload_encoding must be string or base64")
    props = table(body, "properties")
    values: dict[str, Any] = {}
    for field, kind in _PROPERTY_FIELDS.items():
        if field in props:
            value = props[field]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise http_error(400, "bad_request", f"property {field} has the wrong type")
            values["message_type" if field == "type" else field] = value
    if "timestamp" in values:
        values["timestamp"] = datetime.fromtimestamp(values["timestamp"], UTC)
    headers = props.get("headers")
    if headers is not None:
        if not isinstance(headers, dict):
            raise http_error(400, "bad_request", "headers must be an object")
        values["headers"] = headers
    return routing_key, Message(
        exchange="", routing_key=routing_key, properties=Properties(**values), body=data
    )
