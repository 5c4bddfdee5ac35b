"""Hand-written encoders for the frames the broker sends most: basic.deliver and content.

These avoid pamqp's generic per-field marshalling on the delivery hot path.
`tests/amqp091/test_wire.py` checks that they give byte-identical output to
pamqp for any input, so the general path stays the reference.
"""

from __future__ import annotations

import struct
from typing import Any

from pamqp import commands

from moorage.broker.field_table import field_table, has_float
from moorage.broker.message import PROPERTY_NAMES, Message

_FRAME = struct.Struct(">BHI")
_METHOD_HEAD = struct.Struct(">BHIHH")  # frame header + class id + method id
_QB = struct.Struct(">QB")
_HEADER_HEAD = struct.Struct(">HHQ")  # class id, weight, body size
_END = b"\xce"
_METHOD, _HEADER, _BODY = 1, 2, 3


# cluster_id is deprecated in 0-9-1 and pamqp refuses to send one
_SENT_NAMES = tuple(n for n in PROPERTY_NAMES if n != "cluster_id")
_PAYLOAD_CACHE_LIMIT = 1024
# Encoded properties by their values, for messages that arrive without their AMQP
# bytes (read back from the store, published over MQTT or STOMP): they repeat
# as much as publishers' property sets do. Only sets without headers (a dict) are
# kept, so every key is hashable.
_payloads: dict[tuple[Any, ...], bytes] = {}


def properties_payload(message: Message) -> bytes:
    """The encoded basic properties of a message, cached on the message for fan-out."""
    cache = message.wire_cache
    if cache is None:
        cache = message.wire_cache = {}
    raw = cache.get("amqp")
    if raw is None:
        props = message.properties
        values = tuple(getattr(props, n) for n in _SENT_NAMES)
        if props.headers is None:
            raw = _payloads.get(values)
            if raw is None:
                raw = _marshal(values)
                if len(_payloads) >= _PAYLOAD_CACHE_LIMIT:
                    _payloads.clear()
                _payloads[values] = raw
        else:
            raw = _marshal(values)
        cache["amqp"] = raw
    return raw


def _marshal(values: tuple[Any, ...]) -> bytes:
    return marshal_properties(
        commands.Basic.Properties(**dict(zip(_SENT_NAMES, values, strict=True)))
    )


_FLAGS = struct.Struct(">H")
_HEADERS_FLAG = 0x2000
_BEFORE_HEADERS = (0x8000, 0x4000)  # content_type, content_encoding: short strings


def marshal_properties(properties: commands.Basic.Properties) -> bytes:
    """`properties.marshal()`, but a float in the headers is sent as a double.

    pamqp would send it as a 32-bit float (`broker.field_table`). Such
    properties are marshalled without their headers, and the headers table
    encoded by `field_table` goes in its place, after the two short strings
    that precede it.
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


def content_frames(channel: int, message: Message, frame_max: int) -> bytes:
    """Content header frame plus body frames of at most `frame_max` bytes each."""
    body = message.body
    props = properties_payload(message)
    header = _HEADER_HEAD.pack(60, 0, len(body)) + props
    parts = [_FRAME.pack(_HEADER, channel, len(header)), header, _END]
    if body:
        chunk = (frame_max - 8) if frame_max else len(body)
        if len(body) <= chunk:
            parts += (_FRAME.pack(_BODY, channel, len(body)), body, _END)
        else:
            for start in range(0, len(body), chunk):
                piece = body[start : start + chunk]
                parts += (_FRAME.pack(_BODY, channel, len(piece)), piece, _END)
    return b"".join(parts)


def deliver_frame(
    channel: int,
    consumer_tag: bytes,
    delivery_tag: int,
    redelivered: bool,
    exchange: bytes,
    routing_key: bytes,
) -> bytes:
    """A basic.deliver method frame; string arguments are already shortstr-encoded."""
    payload_len = 4 + len(consumer_tag) + 9 + len(exchange) + len(routing_key)
    return b"".join(
        (
            _METHOD_HEAD.pack(_METHOD, channel, payload_len, 60, 60),
            consumer_tag,
            _QB.pack(delivery_tag, 1 if redelivered else 0),
            exchange,
            routing_key,
            _END,
        )
    )


def shortstr(value: str) -> bytes:
    """Encode an AMQP shortstr (length octet + UTF-8). Raises ValueError over 255 bytes."""
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError("shortstr longer than 255 bytes")
    return bytes((len(raw),)) + raw
