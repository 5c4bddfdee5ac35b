"""The core's `Message` and `Properties` <-> AMQP 0-9-1 basic properties and routes.

The core's property names are AMQP's (as pamqp names them), so the mapping
is field for field. What this module adds is caching on the message: a
message fanned out to many consumers is encoded once, in
``Message.wire_cache``:

* ``PROPERTIES_FINGERPRINT`` (``"amqp"``): the encoded basic properties. A
  message published over AMQP arrives with them (the codec's canonical
  re-encoding); any other message gets them from
  :func:`~moorage.protocols.amqp091.properties.encode_properties`.
* ``"amqp-route"``: the exchange and routing key as shortstrs, for
  basic.deliver.

This is the adapter's side of the codec: the codec itself knows no `Message`.
"""

from __future__ import annotations

from typing import Final

from pamqp import commands

from moorage.broker.message import PROPERTIES_FINGERPRINT, Message, Properties
from moorage.protocols.amqp091.frames import shortstr
from moorage.protocols.amqp091.properties import SENT_PROPERTY_NAMES, encode_properties

PROPERTIES_KEY: Final = PROPERTIES_FINGERPRINT  # the core caches its store encoding by them
ROUTE_KEY: Final = "amqp-route"


def to_properties(p: commands.Basic.Properties) -> Properties:
    """pamqp basic properties -> the core's message properties (same field names).

    The headers table is copied: decoded properties are shared through the
    codec's cache.
    """
    return Properties(
        p.content_type,
        p.content_encoding,
        None if p.headers is None else dict(p.headers),
        p.delivery_mode,
        p.priority,
        p.correlation_id,
        p.reply_to,
        p.expiration,
        p.message_id,
        p.timestamp,
        p.message_type,
        p.user_id,
        p.app_id,
        p.cluster_id,
    )


def properties_payload(message: Message) -> bytes:
    """The encoded basic properties of a message, cached on the message for fan-out."""
    cache = message.wire_cache
    if cache is None:
        cache = message.wire_cache = {}
    raw: bytes | None = cache.get(PROPERTIES_KEY)
    if raw is None:
        props = message.properties
        raw = cache[PROPERTIES_KEY] = encode_properties(
            tuple(getattr(props, n) for n in SENT_PROPERTY_NAMES)
        )
    return raw


def route(message: Message) -> tuple[bytes, bytes]:
    """The message's exchange and routing key as shortstrs, cached on the message."""
    cache = message.wire_cache
    if cache is None:
        cache = message.wire_cache = {}
    encoded: tuple[bytes, bytes] | None = cache.get(ROUTE_KEY)
    if encoded is None:
        encoded = cache[ROUTE_KEY] = (shortstr(message.exchange), shortstr(message.routing_key))
    return encoded
