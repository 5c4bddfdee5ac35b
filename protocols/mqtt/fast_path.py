"""Hand-written encoders and decoders for the most frequent packets (PUBLISH, PUBACK).


The most frequent packet gets a hand-written decoder and encoder beside the
general ones. They handle the common shape only (no properties, a short
Remaining Length) and return None for anything else, which then takes the
general path: that is where every error is raised. tests/mqtt/test_fast_path.py
proves both paths give the same packets and the same bytes.
"""

from __future__ import annotations

from moorage.protocols.mqtt.packets import (
    MQTT_5,
    PacketType,
    PubAck,
    Publish,
)
from moorage.protocols.mqtt.wire import (
    encode_string,
    encode_varint,
)

_TOPIC_PREFIX_CACHE: dict[str, bytes] = {}
_TOPIC_CACHE_LIMIT = 4096


def decode_publish_fast(
    buf: bytes | bytearray, version: int, max_packet_size: int
) -> tuple[Publish, int] | None:
    """The PUBLISH at the start of `buf` and its size in bytes, or None.

    None means "use the general path": the packet is incomplete, too large,
    malformed, has a Remaining Length over two bytes, an empty topic, or
    (5.0) any property. A packet returned equals what `decode_body` returns.
    """
    n = len(buf)
    if n < 4:
        return None
    first = buf[0]
    qos = first >> 1 & 0x03
    if qos == 3 or (not qos and first & 0x08):
        return None
    length = buf[1]
    pos = 2
    if length & 0x80:
        second = buf[2]
        if second & 0x80:
            return None
        length = (length & 0x7F) | second << 7
        pos = 3
    end = pos + length
    if end > n or end > max_packet_size:
        return None
    p = pos + 2 + (buf[pos] << 8 | buf[pos + 1])
    if p == pos + 2 or p > end:
        return None
    try:
        topic = buf[pos + 2 : p].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "+" in topic or "#" in topic or "\x00" in topic:
        return None
    packet_id = None
    if qos:
        if p + 2 > end:
            return None
        packet_id = buf[p] << 8 | buf[p + 1]
        if not packet_id:
            return None
        p += 2
    if version == MQTT_5:
        if p >= end or buf[p]:
            return None
        p += 1
    packet = Publish(topic, bytes(buf[p:end]), qos, bool(first & 0x01), bool(first & 0x08))
    packet.packet_id = packet_id
    return packet, end


def decode_fast(
    buf: bytes | bytearray, version: int, max_packet_size: int
) -> tuple[Publish | PubAck, int] | None:
    """The PUBLISH or PUBACK starting `buf` (after CONNECT), or None: see below."""
    first = buf[0]
    if first >> 4 == 3:
        return decode_publish_fast(buf, version, max_packet_size)
    if first == 0x40:
        return decode_puback_fast(buf, max_packet_size)
    return None


def decode_puback_fast(buf: bytes | bytearray, max_packet_size: int) -> tuple[PubAck, int] | None:
    """The PUBACK at the start of `buf` and its size, or None (general path).

    Only the short form: Remaining Length 2, a packet id and nothing else
    (any version; 5.0 then means Success without properties).
    """
    if len(buf) < 4 or buf[0] != 0x40 or buf[1] != 2 or max_packet_size < 4:
        return None
    packet_id = buf[2] << 8 | buf[3]
    if not packet_id:
        return None
    return PubAck(packet_id), 4


def encode_publish_fast(
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    dup: bool,
    packet_id: int | None,
    version: int,
) -> bytes:
    """`encode(Publish(topic, payload, qos, retain, dup, packet_id), version)`, faster.

    For a PUBLISH without properties (5.0 then carries a zero property
    length). The encoded topic is cached per topic. Raises ValueError as
    `encode` does.
    """
    encoded = _TOPIC_PREFIX_CACHE.get(topic)
    if encoded is None:
        encoded = encode_string(topic)
        if len(_TOPIC_PREFIX_CACHE) >= _TOPIC_CACHE_LIMIT:
            _TOPIC_PREFIX_CACHE.clear()
        _TOPIC_PREFIX_CACHE[topic] = encoded
    length = len(encoded) + len(payload)
    if qos:
        length += 2
        encoded += (packet_id or 0).to_bytes(2, "big")
    if version == MQTT_5:
        length += 1
        encoded += b"\x00"
    first = 0x30 | dup << 3 | qos << 1 | retain
    if length < 0x80:
        return bytes((first, length)) + encoded + payload
    if length < 0x4000:
        return bytes((first, length & 0x7F | 0x80, length >> 7)) + encoded + payload
    return bytes((first,)) + encode_varint(length) + encoded + payload


def encode_puback_fast(packet_id: int) -> bytes:
    """`encode(PubAck(packet_id), version)` for 3.1 and 3.1.1, faster.

    A successful 3.x PUBACK is four fixed bytes: type, Remaining Length 2,
    the packet identifier (section 3.4). MQTT 5 goes through `encode`.
    Proven equal by `tests/mqtt/test_fast_path.py`.
    """
    return _PUBACK_V3_HEADER + packet_id.to_bytes(2, "big")


_PUBACK_V3_HEADER = bytes((PacketType.PUBACK << 4, 2))
