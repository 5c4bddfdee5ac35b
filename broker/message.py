"""The one message model shared by every protocol.

Property names follow AMQP 0-9-1 basic properties (as pamqp names them, so
`message_type` is AMQP's `type`). Each adapter documents its own mapping to
and from these fields. A message is immutable once published: the same
object sits in every queue it was routed to, so fan-out costs no copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

PERSISTENT = 2


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


@dataclass(slots=True, eq=False)
class Message:
    """A published message: where it was published, its properties and body.

    `store_id` is the id under which the store keeps the body once the message
    has been written (0 = not stored). `wire_cache` lets an adapter keep its
    encoded form of the properties so that fan-out encodes them once.
    """

    exchange: str
    routing_key: str
    properties: Properties
    body: bytes
    store_id: int = 0
    wire_cache: dict[str, Any] | None = None

    @property
    def persistent(self) -> bool:
        """Delivery mode 2: the message must survive a restart on a durable queue."""
        return self.properties.delivery_mode == PERSISTENT

    @property
    def size(self) -> int:
        return len(self.body)
