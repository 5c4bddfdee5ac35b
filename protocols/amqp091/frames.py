"""AMQP 0-9-1 frames on the wire (spec 4.2.3): their constants and every encoder.

A frame is ``type:octet channel:short size:long payload frame-end(0xCE)``;
:data:`FRAME_HEADER` is the one definition of its header in Moorage.

Two families of encoders give the same bytes:

* the general ones, :func:`encode_method` and :func:`encode_content`, marshal
  pamqp methods and properties;
* the fast ones serve the delivery hot path: :func:`encode_deliver` builds
  basic.deliver from pre-encoded shortstrs, :func:`encode_content_frames` the
  content header and body frames from pre-encoded properties, and
  :func:`encode_method` keeps the payloads of the handshake's methods
  (connection.start, tune, open-ok, close-ok, channel.open-ok) instead of
  re-marshalling them per connection or channel.

tests/amqp091/test_wire.py checks every fast encoder against pamqp's own
marshalling, byte for byte.
"""

from __future__ import annotations

import struct
from typing import Final

from pamqp import base, commands, constants, frame, header, heartbeat

from moorage.protocols.amqp091.methods import METHOD_INDEX, marshal_arguments

# Spec 4.2.2: "AMQP" 0 0 9 1
PROTOCOL_HEADER: Final = b"AMQP\x00\x00\x09\x01"

# Spec 4.2.7: type 8, channel 0, size 0, frame-end.
HEARTBEAT_FRAME: Final = heartbeat.Heartbeat.marshal()

# Spec 4.2.3: the general frame header is type:octet channel:short size:long.
FRAME_HEADER: Final = struct.Struct(">BHI")
FRAME_HEADER_SIZE: Final = FRAME_HEADER.size  # 7
FRAME_END: Final = constants.FRAME_END  # 0xCE
FRAME_END_BYTE: Final = bytes((FRAME_END,))
FRAME_OVERHEAD: Final = FRAME_HEADER_SIZE + 1  # header + frame-end octet
# Incoming frames may be this much larger than frame_max: RabbitMQ
# (rabbit_reader's ?FRAME_SIZE_FUDGE) accepts a payload of frame_max octets,
# and clients such as amqpstorm send body frames of exactly that size.
FRAME_SIZE_FUDGE: Final = FRAME_OVERHEAD

CONTENT_METHODS: Final[tuple[type[base.Frame], ...]] = (
    commands.Basic.Publish,  # client -> server
    commands.Basic.Return,  # server -> client
    commands.Basic.Deliver,  # server -> client
    commands.Basic.GetOk,  # server -> client
)
"""Methods that are followed by a content header and body frames (spec 4.2.6)."""

BASIC_CLASS_ID: Final = commands.Basic.frame_id  # 60, the one class with content

_METHOD, _HEADER, _BODY = constants.FRAME_METHOD, constants.FRAME_HEADER, constants.FRAME_BODY
_METHOD_HEAD: Final = struct.Struct(FRAME_HEADER.format + "HH")  # + class id, method id
_DELIVERY_TAG_REDELIVERED: Final = struct.Struct(">QB")
_CONTENT_HEADER_HEAD: Final = struct.Struct(">HHQ")  # class id, weight, body size
_DELIVER_METHOD_ID: Final = commands.Basic.Deliver.index & 0xFFFF  # 60


def shortstr(value: str) -> bytes:
    """Encode an AMQP shortstr (length octet + UTF-8). Raises ValueError over 255 bytes."""
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError("shortstr longer than 255 bytes")
    return bytes((len(raw),)) + raw


def _check_channel(channel: int) -> None:
    if not 0 <= channel <= 0xFFFF:
        raise ValueError(f"channel {channel} outside 0..65535")


# The handshake's own methods are the same for every connection or channel (or
# depend on a few limits): their payloads are kept by value (a bounded cache), so
# a connection opens without pamqp marshalling a start's server properties (some
# 60 us) or a tune again. The key is the arguments, or their repr when one of them
# is a dict (start's server properties).
_CONSTANT_REPLIES: Final = frozenset(
    {
        commands.Connection.Start,
        commands.Connection.Tune,
        commands.Connection.OpenOk,
        commands.Connection.CloseOk,
        commands.Channel.OpenOk,
    }
)
_REPLY_CACHE_LIMIT: Final = 64
_reply_payloads: dict[tuple[type[base.Frame], object], bytes] = {}


def _method_payload(method: base.Frame) -> bytes:
    """Method index and arguments (spec 4.2.4), kept by value for `_CONSTANT_REPLIES`."""
    kind = type(method)
    if kind not in _CONSTANT_REPLIES:
        return METHOD_INDEX.pack(method.index) + marshal_arguments(method)
    values = tuple([getattr(method, name) for name in method.__slots__])
    key: tuple[type[base.Frame], object] = (kind, values)
    try:
        payload = _reply_payloads.get(key)
    except TypeError:  # a dict among the arguments (start's server properties)
        key = (kind, repr(values))
        payload = _reply_payloads.get(key)
    if payload is None:
        payload = METHOD_INDEX.pack(method.index) + marshal_arguments(method)
        if len(_reply_payloads) >= _REPLY_CACHE_LIMIT:
            _reply_payloads.clear()
        _reply_payloads[key] = payload
    return payload


def encode_method(channel: int, method: base.Frame) -> bytes:
    """Return one method frame (spec 4.2.4) carrying ``method`` on ``channel``.

    It does not check that the method belongs on that channel, nor that a
    content-bearing method is followed by content (use :func:`encode_content`).

    pamqp's name validation is skipped: it refuses names RabbitMQ accepts
    (``@`` in Celery's pidbox queues, exchange names over 127 characters), and
    the broker must be able to echo any name a client was allowed to use.

    Raises:
        ValueError: ``channel`` is outside 0..65535, or a string is too long
            for its field.
        TypeError: an argument has a type pamqp cannot encode.
    """
    _check_channel(channel)
    payload = _method_payload(method)
    return (
        FRAME_HEADER.pack(constants.FRAME_METHOD, channel, len(payload)) + payload + FRAME_END_BYTE
    )


def encode_content(
    channel: int,
    method: base.Frame,
    properties: commands.Basic.Properties,
    body: bytes,
    frame_max: int,
) -> bytes:
    """Return the frames of a content-bearing method: method, content header, body frames.

    Spec 4.2.6: one method frame, one content header frame whose ``body_size`` is
    ``len(body)``, then body frames each at most ``frame_max`` octets *in total*
    (payload plus the 8 octets of frame overhead).  ``frame_max`` 0 means
    unlimited: the body goes in a single frame.  An empty body has no body frame.

    The method and content header frames cannot be split: with huge properties
    (a big ``headers`` table) they may exceed ``frame_max``, as with RabbitMQ.  A
    caller that cares compares the first frames' sizes with its ``frame_max``.

    Raises:
        ValueError: ``channel`` is outside 0..65535; ``frame_max`` is 1..8 (no room
            for a payload octet); or pamqp's validation of the method/properties failed.
        TypeError: a method argument or property has a type pamqp cannot encode.
    """
    _check_channel(channel)
    if 0 < frame_max <= FRAME_OVERHEAD:
        raise ValueError(f"frame_max {frame_max} leaves no room for a payload")
    method_frame = frame.marshal(method, channel)
    header_frame = frame.marshal(header.ContentHeader(0, len(body), properties), channel)
    parts: list[bytes | memoryview] = [method_frame, header_frame]
    chunk = frame_max - FRAME_OVERHEAD if frame_max else max(len(body), 1)
    end_octet = constants.FRAME_END_CHAR
    with memoryview(body) as view:
        for offset in range(0, len(body), chunk):
            piece = view[offset : offset + chunk]
            parts += (
                FRAME_HEADER.pack(constants.FRAME_BODY, channel, len(piece)),
                piece,
                end_octet,
            )
        return b"".join(parts)


def _add_content(
    parts: list[bytes], channel: int, properties: bytes, body: bytes, frame_max: int
) -> None:
    """Append the content header frame and the body frames to `parts`."""
    head = _CONTENT_HEADER_HEAD.pack(BASIC_CLASS_ID, 0, len(body)) + properties
    parts += (FRAME_HEADER.pack(_HEADER, channel, len(head)), head, FRAME_END_BYTE)
    if body:
        chunk = (frame_max - FRAME_OVERHEAD) if frame_max else len(body)
        if len(body) <= chunk:
            parts += (FRAME_HEADER.pack(_BODY, channel, len(body)), body, FRAME_END_BYTE)
        else:
            for start in range(0, len(body), chunk):
                piece = body[start : start + chunk]
                parts += (FRAME_HEADER.pack(_BODY, channel, len(piece)), piece, FRAME_END_BYTE)


def encode_content_frames(channel: int, properties: bytes, body: bytes, frame_max: int) -> bytes:
    """The content header frame (with encoded `properties`) and the body frames of at
    most `frame_max` octets each (0: one frame); what :func:`encode_content` gives
    after its method frame, without marshalling the properties again."""
    parts: list[bytes] = []
    _add_content(parts, channel, properties, body, frame_max)
    return b"".join(parts)


def _deliver_parts(
    channel: int,
    consumer_tag: bytes,
    delivery_tag: int,
    redelivered: bool,
    exchange: bytes,
    routing_key: bytes,
) -> list[bytes]:
    payload_len = 4 + len(consumer_tag) + 9 + len(exchange) + len(routing_key)
    return [
        _METHOD_HEAD.pack(_METHOD, channel, payload_len, BASIC_CLASS_ID, _DELIVER_METHOD_ID),
        consumer_tag,
        _DELIVERY_TAG_REDELIVERED.pack(delivery_tag, 1 if redelivered else 0),
        exchange,
        routing_key,
        FRAME_END_BYTE,
    ]


def encode_deliver(
    channel: int,
    consumer_tag: bytes,
    delivery_tag: int,
    redelivered: bool,
    exchange: bytes,
    routing_key: bytes,
) -> bytes:
    """A basic.deliver method frame; string arguments are already shortstr-encoded."""
    return b"".join(
        _deliver_parts(channel, consumer_tag, delivery_tag, redelivered, exchange, routing_key)
    )


def encode_delivery(
    channel: int,
    consumer_tag: bytes,
    delivery_tag: int,
    redelivered: bool,
    exchange: bytes,
    routing_key: bytes,
    properties: bytes,
    body: bytes,
    frame_max: int,
) -> bytes:
    """basic.deliver and its content in one go: :func:`encode_deliver` followed by
    :func:`encode_content_frames`, joined once."""
    parts = _deliver_parts(channel, consumer_tag, delivery_tag, redelivered, exchange, routing_key)
    _add_content(parts, channel, properties, body, frame_max)
    return b"".join(parts)
