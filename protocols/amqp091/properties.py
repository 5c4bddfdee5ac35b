"""Basic properties on the wire (spec 4.2.6.1): pamqp's encoding, with doubles kept.

Two things here, both about encoding a property set and neither about the
broker's message model (the adapter's `mapping` translates that):

* :func:`marshal_properties` is ``properties.marshal()``, except that a
  float in the headers goes out as a double (``moorage.field_table`` says why).
* :func:`encode_properties` encodes a property set given as a tuple of values
  in :data:`SENT_PROPERTY_NAMES` order, once per distinct set: messages that
  arrive without their AMQP bytes (read back from the store, published over
  MQTT or STOMP) repeat as few property sets as their publishers do.

tests/amqp091/test_wire.py checks both against pamqp byte for byte.
"""

from __future__ import annotations

import struct
from typing import Any, Final

from pamqp import commands

from moorage.field_table import field_table, has_float

PROPERTY_NAMES: Final[tuple[str, ...]] = tuple(commands.Basic.Properties.__slots__)
"""Basic property names in wire order, as pamqp names them (``message_type`` is ``type``)."""

SENT_PROPERTY_NAMES: Final = tuple(n for n in PROPERTY_NAMES if n != "cluster_id")
"""What a server sends: cluster_id is deprecated in 0-9-1 and pamqp refuses to send one."""

_HEADERS_AT: Final = SENT_PROPERTY_NAMES.index("headers")
_PAYLOAD_CACHE_LIMIT: Final = 1024
# Encoded properties by their values. Only sets without headers (a dict) are kept,
# so every key is hashable.
_payloads: dict[tuple[Any, ...], bytes] = {}


def encode_properties(values: tuple[Any, ...]) -> bytes:
    """The encoded basic properties whose values, in :data:`SENT_PROPERTY_NAMES`
    order, are `values` (None: absent).

    Raises:
        ValueError, TypeError: a value pamqp cannot encode.
    """
    if values[_HEADERS_AT] is not None:
        return _marshal(values)
    raw = _payloads.get(values)
    if raw is None:
        raw = _marshal(values)
        if len(_payloads) >= _PAYLOAD_CACHE_LIMIT:
            _payloads.clear()
        _payloads[values] = raw
    return raw


def _marshal(values: tuple[Any, ...]) -> bytes:
    return marshal_properties(
        commands.Basic.Properties(**dict(zip(SENT_PROPERTY_NAMES, values, strict=True)))
    )


_FLAGS: Final = struct.Struct(">H")
_HEADERS_FLAG: Final = 0x2000
_BEFORE_HEADERS: Final = (0x8000, 0x4000)  # content_type, content_encoding: short strings


def marshal_properties(properties: commands.Basic.Properties) -> bytes:
    """`properties.marshal()`, but a float in the headers is sent as a double.

    pamqp would send it as a 32-bit float (`moorage.field_table`). Such
    properties are marshalled without their headers, and the headers table
    encoded by `field_table` goes in its place, after the two short strings
    that precede it.

    Raises:
        ValueError, TypeError: what pamqp raises for a value it cannot encode.
    """
    headers = properties.headers
    if not headers or not has_float(headers):
        return properties.marshal()
    values = {name: getattr(properties, name) for name in PROPERTY_NAMES if name != "headers"}
    raw = commands.Basic.Properties(**values).marshal()
    (flags,) = _FLAGS.unpack_from(raw)
    offset = _FLAGS.size
    for flag in _BEFORE_HEADERS:
        if flags & flag:
            offset += 1 + raw[offset]
    return _FLAGS.pack(flags | _HEADERS_FLAG) + raw[2:offset] + field_table(headers) + raw[offset:]
