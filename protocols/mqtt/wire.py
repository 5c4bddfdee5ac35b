"""MQTT packets <-> bytes, statelessly: `encode(packet, version)`, `decode_body(...)`.

The primitive types of section 1.5 (Variable Byte Integer, UTF-8 string,
binary data), the MQTT 5 properties block, and one encoder and decoder per
packet type. The connection state (what may arrive when, the version learnt
from CONNECT, the size limits) is `codec.Connection`'s; the hand-written fast
paths for PUBLISH and PUBACK are in `fast_path.py`.
"""

from __future__ import annotations

import struct
from typing import Any

from moorage.protocols.mqtt.packets import (
    BOOLEAN_BYTES,
    CONNACK_V3_REVERSE,
    MAX_VARINT,
    MQTT_5,
    PROPERTY_BY_ID,
    PROPERTY_TABLE,
    PROTOCOL_NAMES,
    WILL,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    PingReq,
    PingResp,
    Properties,
    PropType,
    ProtocolError,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
    connack_return_code_v3,
    malformed,
    protocol_violation,
    validate_topic_filter,
    validate_topic_name,
)

_P = PacketType

# -- primitive readers and writers ---------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """A Variable Byte Integer (section 1.5.5). Raises ValueError above 268,435,455."""
    if not 0 <= value <= MAX_VARINT:
        raise ValueError(f"variable byte integer out of range: {value}")
    out = bytearray()
    while True:
        byte = value % 128
        value //= 128
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """(value, next position), or None when the integer is not complete yet.

    Raises ProtocolError (malformed) on a fifth byte [MQTT-1.5.5-1].
    """
    value = 0
    for i in range(4):
        if pos + i >= len(data):
            return None
        byte = data[pos + i]
        value += (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise malformed("variable byte integer longer than four bytes")


def encode_string(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    if len(raw) > 0xFFFF:
        raise ValueError("UTF-8 string longer than 65,535 bytes")
    return struct.pack("!H", len(raw)) + raw


def encode_binary(value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError("binary data longer than 65,535 bytes")
    return struct.pack("!H", len(value)) + value


class _Reader:
    """Reads the fields of one packet body; running off its end is a malformed packet."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise malformed("packet shorter than its fields")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def varint(self) -> int:
        decoded = decode_varint(self.data[: self.end], self.pos)
        if decoded is None:
            raise malformed("truncated variable byte integer")
        value, self.pos = decoded
        return value

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        """A UTF-8 Encoded String (section 1.5.4).

        Ill-formed UTF-8, including encoded surrogates U+D800..U+DFFF, is
        malformed [MQTT-1.5.4-1]; so is U+0000 [MQTT-1.5.4-2].
        """
        raw = self.binary()
        try:
            text = raw.decode("utf-8")  # strict: rejects surrogates and overlongs
        except UnicodeDecodeError:
            raise malformed("ill-formed UTF-8 string") from None
        if "\x00" in text:
            raise malformed("U+0000 in a UTF-8 string")
        return text


def _encode_properties(props: Properties, where: Any) -> bytes:
    out = bytearray()
    for pid, name, ptype, allowed in PROPERTY_TABLE:
        value = getattr(props, name)
        if value is None or (isinstance(value, list) and not value):
            continue
        if where not in allowed:
            raise ValueError(f"property {name} not allowed in {where}")
        values = value if isinstance(value, list) else [value]
        for v in values:
            out.append(pid)
            if ptype is PropType.BYTE:
                out.append(v)
            elif ptype is PropType.TWO:
                out += struct.pack("!H", v)
            elif ptype is PropType.FOUR:
                out += struct.pack("!I", v)
            elif ptype is PropType.VARINT:
                out += encode_varint(v)
            elif ptype is PropType.STRING:
                out += encode_string(v)
            elif ptype is PropType.BINARY:
                out += encode_binary(v)
            else:
                out += encode_string(v[0]) + encode_string(v[1])
    return encode_varint(len(out)) + bytes(out)


def _read_value(r: _Reader, ptype: PropType) -> Any:
    if ptype is PropType.BYTE:
        return r.byte()
    if ptype is PropType.TWO:
        return r.u16()
    if ptype is PropType.FOUR:
        return r.u32()
    if ptype is PropType.VARINT:
        return r.varint()
    if ptype is PropType.STRING:
        return r.string()
    if ptype is PropType.BINARY:
        return r.binary()
    return (r.string(), r.string())


def _read_properties(r: _Reader, where: Any) -> Properties:
    """The property list of section 2.2.2; unknown, misplaced or repeated ones are errors."""
    length = r.varint()
    if length > r.remaining():
        raise malformed("property length beyond the packet")
    end = r.pos + length
    sub = _Reader(r.data, r.pos, end)
    props = Properties()
    seen: set[int] = set()
    while sub.remaining():
        pid = sub.varint()
        spec = PROPERTY_BY_ID.get(pid)
        if spec is None or where not in spec[2]:
            raise malformed(f"property 0x{pid:02x} not valid in {where}")
        name, ptype, _ = spec
        value = _read_value(sub, ptype)
        if name in BOOLEAN_BYTES and value > 1:
            raise protocol_violation(f"{name} must be 0 or 1")
        if name == "user_property":
            props.user_property.append(value)
            continue
        if name == "subscription_identifier":
            if value == 0:
                # [MQTT-3.3.4-6], [MQTT-3.8.2-1]
                raise protocol_violation("subscription identifier 0")
            props.subscription_identifier.append(value)
            if where is _P.SUBSCRIBE and len(props.subscription_identifier) > 1:
                raise protocol_violation("more than one subscription identifier")
            continue
        if pid in seen:
            raise protocol_violation(f"property {name} included more than once")  # section 2.2.2.2
        seen.add(pid)
        if name in ("receive_maximum", "topic_alias") and value == 0:
            raise protocol_violation(f"{name} of 0")  # [MQTT-3.3.2-8], section 3.1.2.11.3
        if name == "maximum_packet_size" and value == 0:
            raise protocol_violation("maximum packet size of 0")
        setattr(props, name, value)
    r.pos = end
    return props


# -- encoding -----------------------------------------------------------------------------


def _fixed(ptype: PacketType, flags: int, body: bytes) -> bytes:
    return bytes([ptype << 4 | flags]) + encode_varint(len(body)) + body


def _ack_body(packet_id: int, reason: int, props: Properties, ptype: PacketType, v5: bool) -> bytes:
    body = struct.pack("!H", packet_id)
    if v5:
        encoded = _encode_properties(props, ptype)
        if encoded != b"\x00":
            body += bytes([reason]) + encoded
        elif reason != ReasonCode.SUCCESS:
            body += bytes([reason])  # section 3.4.2.1: reason without properties
    return body


def encode(packet: Packet, version: int) -> bytes:  # noqa: C901 - one branch per packet type
    """The bytes of one packet in protocol `version` (3, 4 or 5).

    In 3.x, properties and reason codes that the version cannot carry are
    left out. Raises ValueError for a packet that cannot be encoded
    (a string over 65,535 bytes, a property not allowed in the packet).
    """
    v5 = version == MQTT_5
    if isinstance(packet, Publish):
        flags = packet.dup << 3 | packet.qos << 1 | packet.retain
        body = encode_string(packet.topic)
        if packet.qos:
            body += struct.pack("!H", packet.packet_id or 0)
        if v5:
            body += _encode_properties(packet.properties, _P.PUBLISH)
        return _fixed(_P.PUBLISH, flags, body + packet.payload)
    if isinstance(packet, PubAck | PubRec | PubComp):
        body = _ack_body(packet.packet_id, packet.reason_code, packet.properties, packet.TYPE, v5)
        return _fixed(packet.TYPE, 0, body)
    if isinstance(packet, PubRel):
        body = _ack_body(packet.packet_id, packet.reason_code, packet.properties, _P.PUBREL, v5)
        return _fixed(_P.PUBREL, 0b0010, body)
    if isinstance(packet, PingReq | PingResp):
        return bytes([packet.TYPE << 4, 0])
    if isinstance(packet, ConnAck):
        if v5:
            body = bytes([packet.session_present, packet.reason_code])
            body += _encode_properties(packet.properties, _P.CONNACK)
        else:
            body = bytes([packet.session_present, connack_return_code_v3(packet.reason_code)])
        return _fixed(_P.CONNACK, 0, body)
    if isinstance(packet, Connect):
        return _encode_connect(packet)
    if isinstance(packet, Subscribe):
        body = struct.pack("!H", packet.packet_id)
        if v5:
            body += _encode_properties(packet.properties, _P.SUBSCRIBE)
        for s in packet.subscriptions:
            options = s.qos
            if v5:
                options |= s.no_local << 2 | s.retain_as_published << 3 | s.retain_handling << 4
            body += encode_string(s.topic_filter) + bytes([options])
        return _fixed(_P.SUBSCRIBE, 0b0010, body)
    if isinstance(packet, SubAck):
        body = struct.pack("!H", packet.packet_id)
        if v5:
            body += _encode_properties(packet.properties, _P.SUBACK)
        return _fixed(_P.SUBACK, 0, body + bytes(packet.reason_codes))
    if isinstance(packet, Unsubscribe):
        body = struct.pack("!H", packet.packet_id)
        if v5:
            body += _encode_properties(packet.properties, _P.UNSUBSCRIBE)
        body += b"".join(encode_string(f) for f in packet.topic_filters)
        return _fixed(_P.UNSUBSCRIBE, 0b0010, body)
    if isinstance(packet, UnsubAck):
        body = struct.pack("!H", packet.packet_id)
        if v5:
            body += _encode_properties(packet.properties, _P.UNSUBACK) + bytes(packet.reason_codes)
        return _fixed(_P.UNSUBACK, 0, body)
    if isinstance(packet, Disconnect | Auth):
        body = b""
        if v5:
            encoded = _encode_properties(packet.properties, packet.TYPE)
            if encoded != b"\x00":
                body = bytes([packet.reason_code]) + encoded
            elif packet.reason_code != 0:
                body = bytes([packet.reason_code])
        return _fixed(packet.TYPE, 0, body)
    raise TypeError(f"not an MQTT packet: {packet!r}")


def _encode_connect(p: Connect) -> bytes:
    version = p.protocol_version
    v5 = version == MQTT_5
    flags = p.clean_start << 1
    if p.will is not None:
        flags |= 0b100 | p.will.qos << 3 | p.will.retain << 5
    if p.password is not None:
        flags |= 0x40
    if p.username is not None:
        flags |= 0x80
    body = encode_string(PROTOCOL_NAMES.get(version, "MQTT")) + bytes([version, flags])
    body += struct.pack("!H", p.keep_alive)
    if v5:
        body += _encode_properties(p.properties, _P.CONNECT)
    body += encode_string(p.client_id)
    if p.will is not None:
        if v5:
            body += _encode_properties(p.will.properties, WILL)
        body += encode_string(p.will.topic) + encode_binary(p.will.payload)
    if p.username is not None:
        body += encode_string(p.username)
    if p.password is not None:
        body += encode_binary(p.password)
    return _fixed(_P.CONNECT, 0, body)


# -- decoding -----------------------------------------------------------------------------

# Required flag nibble per packet type (section 2.1.3); PUBLISH flags are free.
_FIXED_FLAGS = dict.fromkeys(PacketType, 0) | {
    _P.PUBREL: 0b0010,
    _P.SUBSCRIBE: 0b0010,
    _P.UNSUBSCRIBE: 0b0010,
}


def _decode_connect(r: _Reader) -> Connect:
    """CONNECT (section 3.1). Errors are flagged `in_connect` so they are answered by CONNACK."""
    name = r.string()
    version = r.byte()
    if (name, version) not in (("MQIsdp", 3), ("MQTT", 4), ("MQTT", 5)):
        if name not in ("MQTT", "MQIsdp"):
            raise protocol_violation(f"unknown protocol name {name!r}")  # [MQTT-3.1.2-1]
        # [MQTT-3.1.2-2]: answer 0x84 / return code 1, then close
        raise ProtocolError(
            f"unsupported protocol level {version}", ReasonCode.UNSUPPORTED_PROTOCOL_VERSION
        )
    v5 = version == MQTT_5
    flags = r.byte()
    if flags & 0x01:
        raise malformed("reserved CONNECT flag set")  # [MQTT-3.1.2-3]
    will_flag = bool(flags & 0x04)
    will_qos = flags >> 3 & 0x03
    will_retain = bool(flags & 0x20)
    if will_qos == 3:
        raise malformed("will QoS 3")  # [MQTT-3.1.2-14]
    if not will_flag and (will_qos or will_retain):
        raise malformed("will QoS/retain without will flag")  # [MQTT-3.1.2-11], [MQTT-3.1.2-13]
    has_password = bool(flags & 0x40)
    has_username = bool(flags & 0x80)
    if has_password and not has_username and version < MQTT_5:
        raise malformed("password without user name")  # [MQTT-3.1.2-22]
    keep_alive = r.u16()
    props = _read_properties(r, _P.CONNECT) if v5 else Properties()
    client_id = r.string()
    will = None
    if will_flag:
        will_props = _read_properties(r, WILL) if v5 else Properties()
        topic = r.string()
        validate_topic_name(topic)  # [MQTT-3.1.3-11]
        will = Will(topic, r.binary(), will_qos, will_retain, will_props)
    username = r.string() if has_username else None
    password = r.binary() if has_password else None
    if r.remaining():
        raise malformed("trailing bytes after CONNECT payload")
    return Connect(
        client_id, version, bool(flags & 0x02), keep_alive, username, password, will, props
    )


def _check_packet_id(packet_id: int) -> int:
    if packet_id == 0:
        raise malformed("packet identifier 0")  # [MQTT-2.2.1-3]
    return packet_id


def _decode_ack(r: _Reader, ptype: PacketType, v5: bool) -> tuple[int, int, Properties]:
    packet_id = _check_packet_id(r.u16())
    reason: int = ReasonCode.SUCCESS
    props = Properties()
    if v5 and r.remaining():
        reason = r.byte()
        if r.remaining():
            props = _read_properties(r, ptype)
    return packet_id, reason, props


def _decode_publish(r: _Reader, flags: int, v5: bool) -> Publish:
    qos = flags >> 1 & 0x03
    if qos == 3:
        raise malformed("PUBLISH with QoS 3")  # [MQTT-3.3.1-4]
    dup = bool(flags & 0x08)
    if dup and qos == 0:
        raise malformed("DUP flag on a QoS 0 PUBLISH")  # [MQTT-3.3.1-2]
    topic = r.string()
    packet_id = _check_packet_id(r.u16()) if qos else None
    props = _read_properties(r, _P.PUBLISH) if v5 else Properties()
    if topic or props.topic_alias is None:  # empty topic allowed with an alias (5.0)
        validate_topic_name(topic)
    payload = r.take(r.remaining())
    return Publish(topic, payload, qos, bool(flags & 0x01), dup, packet_id, props)


def _decode_subscribe(r: _Reader, v5: bool) -> Subscribe:
    packet_id = _check_packet_id(r.u16())
    props = _read_properties(r, _P.SUBSCRIBE) if v5 else Properties()
    subs: list[Subscription] = []
    while r.remaining():
        topic_filter = r.string()
        options = r.byte()
        qos = options & 0x03
        if qos == 3:
            raise malformed("subscription QoS 3")  # [MQTT-3.8.3-4]
        if (options & 0xC0) if v5 else (options & 0xFC):
            raise malformed("reserved subscription option bits set")  # [MQTT-3.8.3-5]
        retain_handling = options >> 4 & 0x03
        if retain_handling == 3:
            raise protocol_violation("retain handling 3")
        validate_topic_filter(topic_filter)
        no_local = bool(options & 0x04)
        if no_local and topic_filter.startswith("$share/"):
            raise protocol_violation("no local on a shared subscription")  # [MQTT-3.8.3-4]
        subs.append(
            Subscription(topic_filter, qos, no_local, bool(options & 0x08), retain_handling)
        )
    if not subs:
        raise protocol_violation("SUBSCRIBE without topic filters")  # [MQTT-3.8.3-3]
    return Subscribe(packet_id, subs, props)


def _decode_unsubscribe(r: _Reader, v5: bool) -> Unsubscribe:
    packet_id = _check_packet_id(r.u16())
    props = _read_properties(r, _P.UNSUBSCRIBE) if v5 else Properties()
    filters: list[str] = []
    while r.remaining():
        topic_filter = r.string()
        validate_topic_filter(topic_filter)
        filters.append(topic_filter)
    if not filters:
        raise protocol_violation("UNSUBSCRIBE without topic filters")  # [MQTT-3.10.3-2]
    return Unsubscribe(packet_id, filters, props)


def _decode_connack(r: _Reader, v5: bool) -> ConnAck:
    ack_flags = r.byte()
    if ack_flags & 0xFE:
        raise malformed("reserved CONNACK flags set")  # [MQTT-3.2.2-1]
    code = r.byte()
    if v5:
        return ConnAck(bool(ack_flags), code, _read_properties(r, _P.CONNACK))
    if code not in CONNACK_V3_REVERSE:
        raise malformed(f"CONNACK return code {code}")
    return ConnAck(bool(ack_flags), CONNACK_V3_REVERSE[code])


def _decode_suback(r: _Reader, v5: bool) -> SubAck:
    packet_id = _check_packet_id(r.u16())
    props = _read_properties(r, _P.SUBACK) if v5 else Properties()
    return SubAck(packet_id, list(r.take(r.remaining())), props)


def _decode_unsuback(r: _Reader, v5: bool) -> UnsubAck:
    packet_id = _check_packet_id(r.u16())
    if not v5:
        return UnsubAck(packet_id)
    props = _read_properties(r, _P.UNSUBACK)
    return UnsubAck(packet_id, list(r.take(r.remaining())), props)


def _decode_disconnect_or_auth(r: _Reader, ptype: PacketType, v5: bool) -> Disconnect | Auth:
    cls = Disconnect if ptype is _P.DISCONNECT else Auth
    if not v5:
        return cls()
    reason = r.byte() if r.remaining() else 0
    props = _read_properties(r, ptype) if r.remaining() else Properties()
    return cls(reason, props)


_ACK_CLASSES: dict[PacketType, type[PubAck | PubRec | PubRel | PubComp]] = {
    _P.PUBACK: PubAck,
    _P.PUBREC: PubRec,
    _P.PUBREL: PubRel,
    _P.PUBCOMP: PubComp,
}


def decode_body(ptype: PacketType, flags: int, body: bytes, version: int) -> Packet:
    """Decode one packet body whose fixed header was already read.

    Raises ProtocolError (with the reason code to answer) for a malformed or
    illegal packet.
    """
    if ptype is not _P.PUBLISH and flags != _FIXED_FLAGS[ptype]:
        raise malformed(f"bad flags 0x{flags:x} for {ptype.name}")  # [MQTT-2.1.3-1]
    v5 = version == MQTT_5
    if ptype is _P.AUTH and not v5:
        raise malformed("AUTH before MQTT 5")  # reserved in 3.1.1
    r = _Reader(body)
    packet: Packet
    if ptype is _P.PUBLISH:
        return _decode_publish(r, flags, v5)
    if ptype in (_P.PUBACK, _P.PUBREC, _P.PUBREL, _P.PUBCOMP):
        cls: type[PubAck | PubRec | PubRel | PubComp] = _ACK_CLASSES[ptype]
        packet = cls(*_decode_ack(r, ptype, v5))
    elif ptype is _P.CONNECT:
        try:
            packet = _decode_connect(r)
        except ProtocolError as e:
            e.in_connect = True
            raise
    elif ptype is _P.SUBSCRIBE:
        packet = _decode_subscribe(r, v5)
    elif ptype is _P.UNSUBSCRIBE:
        packet = _decode_unsubscribe(r, v5)
    elif ptype is _P.CONNACK:
        packet = _decode_connack(r, v5)
    elif ptype is _P.SUBACK:
        packet = _decode_suback(r, v5)
    elif ptype is _P.UNSUBACK:
        packet = _decode_unsuback(r, v5)
    elif ptype is _P.PINGREQ:
        packet = PingReq()
    elif ptype is _P.PINGRESP:
        packet = PingResp()
    else:
        packet = _decode_disconnect_or_auth(r, ptype, v5)
    if r.remaining():
        raise malformed(f"trailing bytes in {ptype.name}")
    return packet
