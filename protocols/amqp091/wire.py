"""Hand-written encoders for the frames the broker sends most: basic.deliver and content.

These avoid pamqp's generic per-field marshalling on the delivery hot path.
`tests/amqp091/test_wire.py` checks that they give byte-identical output to
pamqp for any input, so the general path stays the reference.
"""

from __future__ import annotations

import struct

from pamqp import commands

from broker.message import PROPERTY_NAMES, Message

_FRAME = struct.Struct(">BHI")
_METHOD_HEAD = struct.Struct(">BHIHH")  # frame header + class id + method id
_QB = struct.Struct(">QB")
_HEADER_HEAD = struct.Struct(">HHQ")  # class id, weight, body size
_END = b"\xce"
_METHOD, _HEADER, _BODY = 1, 2, 3


def properties_payload(message: Message) -> bytes:
    """The encoded basic properties of a message, cached on the message for fan-out."""
    cache = message.wire_cache
    if cache is None:
        cache = message.wire_cache = {}
    raw = cache.get("amqp")
    if raw is None:
        props = message.properties
        # cluster_id is deprecated in 0-9-1 and pamqp refuses to send one
        values = {n: getattr(props, n) for n in PROPERTY_NAMES if n != "cluster_id"}
        raw = cache["amqp"] = commands.Basic.Properties(**values).marshal()
    return raw


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
