"""The one message model shared by every protocol.

Property names follow AMQP 0-9-1 basic properties (as pamqp names them, so
`message_type` is AMQP's `type`). Each adapter documents its own mapping to
and from these fields. A message is immutable once published: the same
object sits in every queue it was routed to, so fan-out costs no copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final

PERSISTENT = 2

EXPIRES_AT_ANNOTATION = "x-expires-at"
"""Annotation: an absolute expiry (wall-clock UNIX seconds) that every queue honours,
like a per-message TTL (MQTT's message expiry interval maps onto it)."""


@dataclass(slots=True)
class Properties:
    """Basic properties; None means absent on the wire."""

    content_type: str | None = None
    content_encoding: str | None = None
    headers: dict[str, Any] | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: datetime | None = None
    message_type: str | None = None
    user_id: str | None = None
    app_id: str | None = None
    cluster_id: str | None = None


PROPERTY_NAMES: tuple[str, ...] = tuple(Properties.__dataclass_fields__)

# The `Message.wire_cache` key of bytes that identify a message's properties:
# equal bytes only for equal properties. The AMQP adapter keeps its encoded
# basic properties under it (they arrive with every AMQP publish); the store's
# encoding caches its share of a message's record by them.
PROPERTIES_FINGERPRINT: Final = "amqp"


@dataclass(slots=True, eq=False)
class Message:
    """A published message: where it was published, its properties and body.

    `store_id` is the id under which the store keeps the body once the message
    has been written (0 = not stored). `wire_cache` lets an adapter keep its
    encoded form of the properties so that fan-out encodes them once; its
    entry `PROPERTIES_FINGERPRINT`, when an adapter sets it, holds bytes that
    identify the properties (equal bytes, equal properties), which the store's
    encoding uses as a cache key (`broker.serialization`).

    `annotations` hold protocol facts that no AMQP property carries (MQTT's
    publisher client id, retain flag, absolute expiry...). They are stored
    with the message and survive a restart, but no adapter sends them as
    headers. Keys are namespaced by their owner (`"mqtt.retain"`); values are
    what an AMQP field table holds (str, int, float, bool, bytes, nested dict
    or list).
    """

    exchange: str
    routing_key: str
    properties: Properties
    body: bytes
    store_id: int = 0
    wire_cache: dict[str, Any] | None = None
    annotations: dict[str, Any] = field(default_factory=dict)

    @property
    def persistent(self) -> bool:
        """Delivery mode 2: the message must survive a restart on a durable queue."""
        return self.properties.delivery_mode == PERSISTENT

    @property
    def size(self) -> int:
        return len(self.body)

    @property
    def headers(self) -> dict[str, Any]:
        """The headers table, or an empty dict (never None)."""
        return self.properties.headers or {}

    def header(self, name: str, default: Any = None) -> Any:
        """One header's value, or `default` when absent."""
        headers = self.properties.headers
        return headers.get(name, default) if headers else default

    def copy(self, **changes: Any) -> Message:
        """A new message with the same content and some fields replaced (never stored yet).

        `properties` may be given whole; headers and annotations are copied so
        the new message can change them without touching this one.
        """
        properties = changes.pop("properties", None)
        if properties is None:
            properties = replace(self.properties)
            if properties.headers is not None:
                properties.headers = dict(properties.headers)
        fields_ = {
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "properties": properties,
            "body": self.body,
            "annotations": dict(self.annotations),
        }
        fields_.update(changes)
        return Message(**fields_)
