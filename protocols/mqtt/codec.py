"""MQTT 3.1, 3.1.1 and 5.0 packets: bytes <-> packets, with no I/O, no clock, no asyncio.

Theory of operation
-------------------
A `Connection` is one side of an MQTT network connection (normally the
server). It has three verbs, as h11 does:

- `receive_data(data)` appends bytes; `receive_data(b"")` means EOF.
- `next_event()` returns the next complete packet, `NEED_DATA` when more bytes
  are needed, or `ConnectionClosed` after a clean EOF.
- `send(packet)` returns the bytes of a packet for the peer.

Every packet starts with a fixed header: one byte of type and flags, then the
Remaining Length as a Variable Byte Integer of at most four bytes
[MQTT-1.5.5-1] (a fifth continuation byte is malformed). As soon as the fixed
header is complete the total size is checked against `max_packet_size`
[MQTT-3.2.2-15] *before* the body is buffered, so an oversized length cannot
make us hold its bytes.

The protocol version is learnt from CONNECT (protocol name `MQIsdp` level 3,
`MQTT` level 4 or `MQTT` level 5); before it, only CONNECT is accepted
[MQTT-3.1.0-1], after it a second CONNECT is a protocol error
[MQTT-3.1.0-2]. The version decides whether packets carry properties and
reason codes (5.0 only).

Every decoding failure raises `ProtocolError`, which carries the MQTT 5 reason
code to send (in CONNACK when the failure is in CONNECT, in DISCONNECT after
it; 3.1.1 just closes the socket). After an error the connection is in ERROR
and refuses further input. Any other exception escaping `next_event` is a bug.

Packets are plain dataclasses (`Connect`, `Publish`, ...), compared by value,
so tests can write `decode(b"...") == [Publish(...)]`. The module-level
`encode(packet, version)` and `decode(data, version)` are the stateless
halves the `Connection` is built from.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar

# -- versions -------------------------------------------------------------------------

MQTT_3_1 = 3
MQTT_3_1_1 = 4
MQTT_5 = 5
PROTOCOL_NAMES = {MQTT_3_1: "MQIsdp", MQTT_3_1_1: "MQTT", MQTT_5: "MQTT"}

MAX_VARINT = 268_435_455  # four bytes of 7 bits [MQTT-1.5.5]
DEFAULT_MAX_PACKET_SIZE = MAX_VARINT + 5


# -- reason codes -----------------------------------------------------------------------


class ReasonCode(enum.IntEnum):
    """MQTT 5.0 reason codes (section 2.4), with the spec's text in `description`.

    0x00 has three names in the spec (Success, Normal disconnection, Granted
    QoS 0); they are aliases here. MQTT 3.1.1's CONNACK return codes and
    SUBACK failure (0x80) are mapped onto these by the codec.
    """

    SUCCESS = 0x00
    NORMAL_DISCONNECTION = 0x00
    GRANTED_QOS_0 = 0x00
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL_MESSAGE = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    RE_AUTHENTICATE = 0x19
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    MESSAGE_RATE_TOO_HIGH = 0x96
    QUOTA_EXCEEDED = 0x97
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    USE_ANOTHER_SERVER = 0x9C
    SERVER_MOVED = 0x9D
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F
    MAXIMUM_CONNECT_TIME = 0xA0
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2

    @property
    def description(self) -> str:
        return _REASON_TEXT[self.value]


_REASON_TEXT: dict[int, str] = {
    0x00: "Success / Normal disconnection / Granted QoS 0",
    0x01: "Granted QoS 1",
    0x02: "Granted QoS 2",
    0x04: "Disconnect with Will Message: the Client wishes to disconnect but requires"
    " that the Server also publishes its Will Message",
    0x10: "No matching subscribers: the message is accepted but there are no subscribers",
    0x11: "No subscription existed: no matching Topic Filter is being used by the Client",
    0x18: "Continue authentication",
    0x19: "Re-authenticate",
    0x80: "Unspecified error: the Server does not wish to reveal the reason for the failure",
    0x81: "Malformed Packet: data within the packet could not be correctly parsed",
    0x82: "Protocol Error: data in the packet does not conform to this specification",
    0x83: "Implementation specific error: the packet is valid but is not accepted",
    0x84: "Unsupported Protocol Version",
    0x85: "Client Identifier not valid",
    0x86: "Bad User Name or Password",
    0x87: "Not authorized",
    0x88: "Server unavailable",
    0x89: "Server busy",
    0x8A: "Banned",
    0x8B: "Server shutting down",
    0x8C: "Bad authentication method",
    0x8D: "Keep Alive timeout: no packet received for 1.5 times the Keep Alive time",
    0x8E: "Session taken over: another Connection using the same ClientID has connected",
    0x8F: "Topic Filter invalid",
    0x90: "Topic Name invalid",
    0x91: "Packet Identifier in use",
    0x92: "Packet Identifier not found",
    0x93: "Receive Maximum exceeded",
    0x94: "Topic Alias invalid",
    0x95: "Packet too large",
    0x96: "Message rate too high",
    0x97: "Quota exceeded",
    0x98: "Administrative action",
    0x99: "Payload format invalid",
    0x9A: "Retain not supported",
    0x9B: "QoS not supported",
    0x9C: "Use another server",
    0x9D: "Server moved",
    0x9E: "Shared Subscriptions not supported",
    0x9F: "Connection rate exceeded",
    0xA0: "Maximum connect time",
    0xA1: "Subscription Identifiers not supported",
    0xA2: "Wildcard Subscriptions not supported",
}

# MQTT 3.1.1 CONNACK return codes (section 3.2.2.3) <-> 5.0 reason codes.
_CONNACK_V3 = {
    ReasonCode.SUCCESS: 0,
    ReasonCode.UNSUPPORTED_PROTOCOL_VERSION: 1,
    ReasonCode.CLIENT_IDENTIFIER_NOT_VALID: 2,
    ReasonCode.SERVER_UNAVAILABLE: 3,
    ReasonCode.BAD_USER_NAME_OR_PASSWORD: 4,
    ReasonCode.NOT_AUTHORIZED: 5,
}
_CONNACK_V3_REVERSE = {v: k for k, v in _CONNACK_V3.items()}


def connack_return_code_v3(reason: int) -> int:
    """The 3.1.1 CONNACK return code closest to a 5.0 reason code."""
    if reason in _CONNACK_V3:
        return _CONNACK_V3[ReasonCode(reason)]
    if reason in (ReasonCode.BANNED, ReasonCode.BAD_AUTHENTICATION_METHOD):
        return 5
    return 3  # server unavailable


class ProtocolError(Exception):
    """The peer broke the protocol. `reason` is the MQTT 5 reason code to answer with.

    `in_connect` is True when the failure was found while decoding CONNECT:
    the answer is then a CONNACK rather than a DISCONNECT [MQTT-4.13.1-1].
    """

    def __init__(
        self,
        message: str,
        reason: ReasonCode = ReasonCode.MALFORMED_PACKET,
        *,
        in_connect: bool = False,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.in_connect = in_connect


def _malformed(message: str) -> ProtocolError:
    return ProtocolError(message, ReasonCode.MALFORMED_PACKET)


def _protocol(message: str) -> ProtocolError:
    return ProtocolError(message, ReasonCode.PROTOCOL_ERROR)


# -- properties -------------------------------------------------------------------------


class PropType(enum.Enum):
    BYTE = "byte"
    TWO = "two-byte integer"
    FOUR = "four-byte integer"
    VARINT = "variable byte integer"
    STRING = "UTF-8 string"
    BINARY = "binary data"
    PAIR = "UTF-8 string pair"


class PacketType(enum.IntEnum):
    """Control packet types, the high nibble of the first byte (section 2.1.2)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


_P = PacketType
_WILL = "will"  # pseudo packet: the will properties inside CONNECT

# (id, field name, type, where it may appear) -- table of section 2.2.2.2
PROPERTY_TABLE: tuple[tuple[int, str, PropType, frozenset[Any]], ...] = (
    (0x01, "payload_format_indicator", PropType.BYTE, frozenset({_P.PUBLISH, _WILL})),
    (0x02, "message_expiry_interval", PropType.FOUR, frozenset({_P.PUBLISH, _WILL})),
    (0x03, "content_type", PropType.STRING, frozenset({_P.PUBLISH, _WILL})),
    (0x08, "response_topic", PropType.STRING, frozenset({_P.PUBLISH, _WILL})),
    (0x09, "correlation_data", PropType.BINARY, frozenset({_P.PUBLISH, _WILL})),
    (0x0B, "subscription_identifier", PropType.VARINT, frozenset({_P.PUBLISH, _P.SUBSCRIBE})),
    (
        0x11,
        "session_expiry_interval",
        PropType.FOUR,
        frozenset({_P.CONNECT, _P.CONNACK, _P.DISCONNECT}),
    ),
    (0x12, "assigned_client_identifier", PropType.STRING, frozenset({_P.CONNACK})),
    (0x13, "server_keep_alive", PropType.TWO, frozenset({_P.CONNACK})),
    (0x15, "authentication_method", PropType.STRING, frozenset({_P.CONNECT, _P.CONNACK, _P.AUTH})),
    (0x16, "authentication_data", PropType.BINARY, frozenset({_P.CONNECT, _P.CONNACK, _P.AUTH})),
    (0x17, "request_problem_information", PropType.BYTE, frozenset({_P.CONNECT})),
    (0x18, "will_delay_interval", PropType.FOUR, frozenset({_WILL})),
    (0x19, "request_response_information", PropType.BYTE, frozenset({_P.CONNECT})),
    (0x1A, "response_information", PropType.STRING, frozenset({_P.CONNACK})),
    (0x1C, "server_reference", PropType.STRING, frozenset({_P.CONNACK, _P.DISCONNECT})),
    (
        0x1F,
        "reason_string",
        PropType.STRING,
        frozenset(
            {
                _P.CONNACK,
                _P.PUBACK,
                _P.PUBREC,
                _P.PUBREL,
                _P.PUBCOMP,
                _P.SUBACK,
                _P.UNSUBACK,
                _P.DISCONNECT,
                _P.AUTH,
            }
        ),
    ),
    (0x21, "receive_maximum", PropType.TWO, frozenset({_P.CONNECT, _P.CONNACK})),
    (0x22, "topic_alias_maximum", PropType.TWO, frozenset({_P.CONNECT, _P.CONNACK})),
    (0x23, "topic_alias", PropType.TWO, frozenset({_P.PUBLISH})),
    (0x24, "maximum_qos", PropType.BYTE, frozenset({_P.CONNACK})),
    (0x25, "retain_available", PropType.BYTE, frozenset({_P.CONNACK})),
    (0x26, "user_property", PropType.PAIR, frozenset(set(_P) | {_WILL})),
    (0x27, "maximum_packet_size", PropType.FOUR, frozenset({_P.CONNECT, _P.CONNACK})),
    (0x28, "wildcard_subscription_available", PropType.BYTE, frozenset({_P.CONNACK})),
    (0x29, "subscription_identifier_available", PropType.BYTE, frozenset({_P.CONNACK})),
    (0x2A, "shared_subscription_available", PropType.BYTE, frozenset({_P.CONNACK})),
)
_PROP_BY_ID = {pid: (name, ptype, where) for pid, name, ptype, where in PROPERTY_TABLE}
_PROP_BY_NAME = {name: (pid, ptype) for pid, name, ptype, _ in PROPERTY_TABLE}
# Byte properties whose only legal values are 0 and 1.
_BOOLEAN_BYTES = frozenset(
    {
        "payload_format_indicator",
        "request_problem_information",
        "request_response_information",
        "maximum_qos",
        "retain_available",
        "wildcard_subscription_available",
        "subscription_identifier_available",
        "shared_subscription_available",
    }
)


@dataclass(slots=True)
class Properties:
    """MQTT 5 properties; None (or an empty list) means absent.

    `subscription_identifier` is a list because a PUBLISH to the client
    carries one per matching subscription [MQTT-3.3.4-3]; `user_property` is a
    list of (name, value) pairs in wire order, duplicates allowed.
    """

    payload_format_indicator: int | None = None
    message_expiry_interval: int | None = None
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    subscription_identifier: list[int] = field(default_factory=list)
    session_expiry_interval: int | None = None
    assigned_client_identifier: str | None = None
    server_keep_alive: int | None = None
    authentication_method: str | None = None
    authentication_data: bytes | None = None
    request_problem_information: int | None = None
    will_delay_interval: int | None = None
    request_response_information: int | None = None
    response_information: str | None = None
    server_reference: str | None = None
    reason_string: str | None = None
    receive_maximum: int | None = None
    topic_alias_maximum: int | None = None
    topic_alias: int | None = None
    maximum_qos: int | None = None
    retain_available: int | None = None
    user_property: list[tuple[str, str]] = field(default_factory=list)
    maximum_packet_size: int | None = None
    wildcard_subscription_available: int | None = None
    subscription_identifier_available: int | None = None
    shared_subscription_available: int | None = None

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in _PROP_BY_NAME
            if getattr(self, name) not in (None, [])
        )
        return f"Properties({shown})"

    def is_empty(self) -> bool:
        return self == Properties()


# -- packets ----------------------------------------------------------------------------


@dataclass(slots=True)
class Will:
    """The will message inside CONNECT."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = field(default_factory=Properties)


@dataclass(slots=True)
class Connect:
    TYPE: ClassVar[PacketType] = PacketType.CONNECT
    client_id: str = ""
    protocol_version: int = MQTT_3_1_1
    clean_start: bool = True  # "Clean Session" in 3.1.1
    keep_alive: int = 0
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: Properties = field(default_factory=Properties)


@dataclass(slots=True)
class ConnAck:
    TYPE: ClassVar[PacketType] = PacketType.CONNACK
    session_present: bool = False
    reason_code: int = ReasonCode.SUCCESS
    properties: Properties = field(default_factory=Properties)


@dataclass(slots=True)
class Publish:
    TYPE: ClassVar[PacketType] = PacketType.PUBLISH
    topic: str = ""
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: Properties = field(default_factory=Properties)


@dataclass(slots=True)
class PubAck:
    TYPE: ClassVar[PacketType] = PacketType.PUBACK
    packet_id: int = 0
    reason_code: int = ReasonCode.SUCCESS
    properties: Properties = field(default_factory=Properties)


@dataclass(slots=True)
class PubRec:
    TYPE: ClassVar[PacketType] = PacketType.PUBREC
    packet_id: int = 0
    reason_code: int = ReasonCode.SUCCESS
    properties: Properties = field(default_factory=Properties)


@dataclass(slots=True)
class PubRel:
    TYPE: ClassVar[PacketType] = PacketType.PUBREL
    packet_id: int = 0
    reason_code: int = ReasonCode.SUCCESS
    properties: Properties = field(default_factory=Properties)


@dataclass(slots=True)
class PubComp:
    TYPE: ClassVar[PacketType] = PacketType.PUBCOMP
    packet_id: int = 0
    reason_code: int = ReasonCode.SUCCESS
    properties: Properties = field(default_factory=Properties)


@dataclass(slots=True)
class Subscription:
    """One topic filter of SUBSCRIBE with its options (section 3.8.3.1)."""

    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@dataclass(slots=True)
class Subscribe:
    TYPE: ClassVar[PacketType] = PacketType.SUBSCRIBE
    packet_id: int = 0
    subscriptions: list[Subscription] = field(default_factory=list)
    properties: Properties = field(default_factory=Properties)


@dataclass(slots=True)
class SubAck:
    TYPE: ClassVar[PacketType] = PacketType.SUBACK
    packet_id: int = 0
    reason_codes: list[int] = field(default_factory=list)
    properties: Properties = field(default_factory=Properties)


@dataclass(slots=True)
class Unsubscribe:
    TYPE: ClassVar[PacketType] = PacketType.UNSUBSCRIBE
    packet_id: int = 0
    topic_filters: list[str] = field(default_factory=list)
    properties: Properties = field(default_factory=Properties)


@dataclass(slots=True)
class UnsubAck:
    TYPE: ClassVar[PacketType] = PacketType.UNSUBACK
    packet_id: int = 0
    reason_codes: list[int] = field(default_factory=list)  # 5.0 only
    properties: Properties = field(default_factory=Properties)


@dataclass(slots=True)
class PingReq:
    TYPE: ClassVar[PacketType] = PacketType.PINGREQ


@dataclass(slots=True)
class PingResp:
    TYPE: ClassVar[PacketType] = PacketType.PINGRESP


@dataclass(slots=True)
class Disconnect:
    TYPE: ClassVar[PacketType] = PacketType.DISCONNECT
    reason_code: int = ReasonCode.NORMAL_DISCONNECTION
    properties: Properties = field(default_factory=Properties)


@dataclass(slots=True)
class Auth:
    TYPE: ClassVar[PacketType] = PacketType.AUTH
    reason_code: int = ReasonCode.SUCCESS
    properties: Properties = field(default_factory=Properties)


Packet = (
    Connect
    | ConnAck
    | Publish
    | PubAck
    | PubRec
    | PubRel
    | PubComp
    | Subscribe
    | SubAck
    | Unsubscribe
    | UnsubAck
    | PingReq
    | PingResp
    | Disconnect
    | Auth
)


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA = _Sentinel.NEED_DATA


@dataclass(slots=True)
class ConnectionClosed:
    """The peer closed its side cleanly, between packets."""


# -- topic names and filters --------------------------------------------------------------


def validate_topic_name(topic: str) -> None:
    """A PUBLISH topic: at least one character [MQTT-4.7.3-1], no wildcards [MQTT-3.3.2-2].

    Raises ProtocolError with TOPIC_NAME_INVALID.
    """
    if not topic:
        raise ProtocolError("empty topic name", ReasonCode.TOPIC_NAME_INVALID)
    if "+" in topic or "#" in topic:
        raise ProtocolError(f"wildcard in topic name {topic!r}", ReasonCode.TOPIC_NAME_INVALID)


def validate_topic_filter(topic_filter: str) -> None:
    """A SUBSCRIBE/UNSUBSCRIBE filter (section 4.7.1).

    At least one character [MQTT-4.7.3-1]; `#` alone in the last level
    [MQTT-4.7.1-1]; `+` alone in its level [MQTT-4.7.1-2]. `$share/` filters
    need a non-empty share name without wildcards and a filter after it
    [MQTT-4.8.2-1], [MQTT-4.8.2-2]. Raises ProtocolError with TOPIC_FILTER_INVALID.
    """
    if not topic_filter:
        raise ProtocolError("empty topic filter", ReasonCode.TOPIC_FILTER_INVALID)
    levels = topic_filter.split("/")
    if topic_filter.startswith("$share/"):
        if len(levels) < 3 or not levels[1] or "+" in levels[1] or "#" in levels[1]:
            raise ProtocolError(
                f"invalid shared subscription {topic_filter!r}", ReasonCode.TOPIC_FILTER_INVALID
            )
        levels = levels[2:]
    for i, level in enumerate(levels):
        if ("#" in level and (level != "#" or i != len(levels) - 1)) or (
            "+" in level and level != "+"
        ):
            raise ProtocolError(
                f"invalid topic filter {topic_filter!r}", ReasonCode.TOPIC_FILTER_INVALID
            )


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
    raise _malformed("variable byte integer longer than four bytes")


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
            raise _malformed("packet shorter than its fields")
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
            raise _malformed("truncated variable byte integer")
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
            raise _malformed("ill-formed UTF-8 string") from None
        if "\x00" in text:
            raise _malformed("U+0000 in a UTF-8 string")
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
        raise _malformed("property length beyond the packet")
    end = r.pos + length
    sub = _Reader(r.data, r.pos, end)
    props = Properties()
    seen: set[int] = set()
    while sub.remaining():
        pid = sub.varint()
        spec = _PROP_BY_ID.get(pid)
        if spec is None or where not in spec[2]:
            raise _malformed(f"property 0x{pid:02x} not valid in {where}")
        name, ptype, _ = spec
        value = _read_value(sub, ptype)
        if name in _BOOLEAN_BYTES and value > 1:
            raise _protocol(f"{name} must be 0 or 1")
        if name == "user_property":
            props.user_property.append(value)
            continue
        if name == "subscription_identifier":
            if value == 0:
                raise _protocol("subscription identifier 0")  # [MQTT-3.3.4-6], [MQTT-3.8.2-1]
            props.subscription_identifier.append(value)
            if where is _P.SUBSCRIBE and len(props.subscription_identifier) > 1:
                raise _protocol("more than one subscription identifier")
            continue
        if pid in seen:
            raise _protocol(f"property {name} included more than once")  # section 2.2.2.2
        seen.add(pid)
        if name in ("receive_maximum", "topic_alias") and value == 0:
            raise _protocol(f"{name} of 0")  # [MQTT-3.3.2-8], section 3.1.2.11.3
        if name == "maximum_packet_size" and value == 0:
            raise _protocol("maximum packet size of 0")
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
            body += _encode_properties(p.will.properties, _WILL)
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
            raise _protocol(f"unknown protocol name {name!r}")  # [MQTT-3.1.2-1]
        # [MQTT-3.1.2-2]: answer 0x84 / return code 1, then close
        raise ProtocolError(
            f"unsupported protocol level {version}", ReasonCode.UNSUPPORTED_PROTOCOL_VERSION
        )
    v5 = version == MQTT_5
    flags = r.byte()
    if flags & 0x01:
        raise _malformed("reserved CONNECT flag set")  # [MQTT-3.1.2-3]
    will_flag = bool(flags & 0x04)
    will_qos = flags >> 3 & 0x03
    will_retain = bool(flags & 0x20)
    if will_qos == 3:
        raise _malformed("will QoS 3")  # [MQTT-3.1.2-14]
    if not will_flag and (will_qos or will_retain):
        raise _malformed("will QoS/retain without will flag")  # [MQTT-3.1.2-11], [MQTT-3.1.2-13]
    has_password = bool(flags & 0x40)
    has_username = bool(flags & 0x80)
    if has_password and not has_username and version < MQTT_5:
        raise _malformed("password without user name")  # [MQTT-3.1.2-22]
    keep_alive = r.u16()
    props = _read_properties(r, _P.CONNECT) if v5 else Properties()
    client_id = r.string()
    will = None
    if will_flag:
        will_props = _read_properties(r, _WILL) if v5 else Properties()
        topic = r.string()
        validate_topic_name(topic)  # [MQTT-3.1.3-11]
        will = Will(topic, r.binary(), will_qos, will_retain, will_props)
    username = r.string() if has_username else None
    password = r.binary() if has_password else None
    if r.remaining():
        raise _malformed("trailing bytes after CONNECT payload")
    return Connect(
        client_id, version, bool(flags & 0x02), keep_alive, username, password, will, props
    )


def _check_packet_id(packet_id: int) -> int:
    if packet_id == 0:
        raise _malformed("packet identifier 0")  # [MQTT-2.2.1-3]
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
        raise _malformed("PUBLISH with QoS 3")  # [MQTT-3.3.1-4]
    dup = bool(flags & 0x08)
    if dup and qos == 0:
        raise _malformed("DUP flag on a QoS 0 PUBLISH")  # [MQTT-3.3.1-2]
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
            raise _malformed("subscription QoS 3")  # [MQTT-3.8.3-4]
        if (options & 0xC0) if v5 else (options & 0xFC):
            raise _malformed("reserved subscription option bits set")  # [MQTT-3.8.3-5]
        retain_handling = options >> 4 & 0x03
        if retain_handling == 3:
            raise _protocol("retain handling 3")
        validate_topic_filter(topic_filter)
        no_local = bool(options & 0x04)
        if no_local and topic_filter.startswith("$share/"):
            raise _protocol("no local on a shared subscription")  # [MQTT-3.8.3-4]
        subs.append(
            Subscription(topic_filter, qos, no_local, bool(options & 0x08), retain_handling)
        )
    if not subs:
        raise _protocol("SUBSCRIBE without topic filters")  # [MQTT-3.8.3-3]
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
        raise _protocol("UNSUBSCRIBE without topic filters")  # [MQTT-3.10.3-2]
    return Unsubscribe(packet_id, filters, props)


def _decode_connack(r: _Reader, v5: bool) -> ConnAck:
    ack_flags = r.byte()
    if ack_flags & 0xFE:
        raise _malformed("reserved CONNACK flags set")  # [MQTT-3.2.2-1]
    code = r.byte()
    if v5:
        return ConnAck(bool(ack_flags), code, _read_properties(r, _P.CONNACK))
    if code not in _CONNACK_V3_REVERSE:
        raise _malformed(f"CONNACK return code {code}")
    return ConnAck(bool(ack_flags), _CONNACK_V3_REVERSE[code])


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
        raise _malformed(f"bad flags 0x{flags:x} for {ptype.name}")  # [MQTT-2.1.3-1]
    v5 = version == MQTT_5
    if ptype is _P.AUTH and not v5:
        raise _malformed("AUTH before MQTT 5")  # reserved in 3.1.1
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
        raise _malformed(f"trailing bytes in {ptype.name}")
    return packet


# -- fast paths (PUBLISH) ------------------------------------------------------------------
#
# The most frequent packet gets a hand-written decoder and encoder beside the
# general ones. They handle the common shape only (no properties, a short
# Remaining Length) and return None for anything else, which then takes the
# general path: that is where every error is raised. tests/mqtt/test_fast_path.py
# proves both paths give the same packets and the same bytes.

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


# -- the connection -----------------------------------------------------------------------


class Role(enum.Enum):
    SERVER = "server"
    CLIENT = "client"


# Which packets each role may receive (section 2.1.2, "Direction of flow").
_RECEIVES: dict[Role, frozenset[PacketType]] = {
    Role.SERVER: frozenset(
        {
            _P.CONNECT,
            _P.PUBLISH,
            _P.PUBACK,
            _P.PUBREC,
            _P.PUBREL,
            _P.PUBCOMP,
            _P.SUBSCRIBE,
            _P.UNSUBSCRIBE,
            _P.PINGREQ,
            _P.DISCONNECT,
            _P.AUTH,
        }
    ),
    Role.CLIENT: frozenset(
        {
            _P.CONNACK,
            _P.PUBLISH,
            _P.PUBACK,
            _P.PUBREC,
            _P.PUBREL,
            _P.PUBCOMP,
            _P.SUBACK,
            _P.UNSUBACK,
            _P.PINGRESP,
            _P.DISCONNECT,
            _P.AUTH,
        }
    ),
}


class CodecState(enum.Enum):
    """AWAIT_CONNECT -> CONNECTED -> (CLOSED | ERROR)."""

    AWAIT_CONNECT = "await-connect"
    CONNECTED = "connected"
    CLOSED = "closed"
    ERROR = "error"


Event = Packet | ConnectionClosed | _Sentinel


class Connection:
    """One side of an MQTT connection, sans-IO.

    Args:
        role: SERVER (decodes client packets) or CLIENT.
        version: the protocol version when known in advance (a client);
            a server learns it from CONNECT.
        max_packet_size: the largest packet accepted, fixed header included.
        max_connect_size: a smaller limit applied before CONNECT (an
            unauthenticated peer cannot make us buffer much).
    """

    def __init__(
        self,
        role: Role = Role.SERVER,
        *,
        version: int | None = None,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        max_connect_size: int = 65536,
    ) -> None:
        self.role = role
        self.version = version if version is not None else MQTT_3_1_1
        self.state = CodecState.AWAIT_CONNECT if role is Role.SERVER else CodecState.CONNECTED
        self.max_packet_size = max_packet_size
        self.max_connect_size = max_connect_size
        self._buffer = bytearray()
        self._eof = False

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the peer; `b""` means the peer closed its side.

        Raises RuntimeError when data arrives after EOF (a bug in the caller).
        """
        if self._eof and data:
            raise RuntimeError("data received after EOF")
        if not data:
            self._eof = True
        else:
            self._buffer += data

    def next_event(self) -> Event:
        """The next packet, `NEED_DATA`, or `ConnectionClosed` after a clean EOF.

        Raises ProtocolError for malformed input or a packet illegal in the
        current state; the connection is then in ERROR and raises again on
        every later call. Any other exception is a bug.
        """
        if self.state is CodecState.ERROR:
            raise ProtocolError("connection is in ERROR state", ReasonCode.PROTOCOL_ERROR)
        try:
            return self._next_event()
        except ProtocolError:
            self.state = CodecState.ERROR
            raise

    def _next_event(self) -> Event:
        buf = self._buffer
        if buf and self.state is CodecState.CONNECTED:
            fast = decode_fast(buf, self.version, self.max_packet_size)
            if fast is not None:
                del buf[: fast[1]]
                return fast[0]
        if not buf:
            if self._eof:
                self.state = CodecState.CLOSED
                return ConnectionClosed()
            return NEED_DATA
        first = buf[0]
        ptype_value = first >> 4
        if ptype_value == 0 or (ptype_value == 15 and self.version != MQTT_5):
            raise _malformed(f"reserved packet type {ptype_value}")  # section 2.1.2
        ptype = PacketType(ptype_value)
        if self.state is CodecState.AWAIT_CONNECT and ptype is not _P.CONNECT:
            raise _protocol(f"{ptype.name} before CONNECT")  # [MQTT-3.1.0-1]
        if ptype not in _RECEIVES[self.role]:
            raise _protocol(f"{ptype.name} is not sent to a {self.role.value}")
        if ptype is _P.CONNECT and self.state is not CodecState.AWAIT_CONNECT:
            raise _protocol("second CONNECT")  # [MQTT-3.1.0-2]
        decoded = decode_varint(buf, 1)
        if decoded is None:
            return self._short()
        length, start = decoded
        limit = (
            self.max_connect_size
            if self.state is CodecState.AWAIT_CONNECT
            else self.max_packet_size
        )
        if start + length > limit:
            raise ProtocolError(
                f"packet of {start + length} bytes exceeds the maximum of {limit}",
                ReasonCode.PACKET_TOO_LARGE,
                in_connect=self.state is CodecState.AWAIT_CONNECT,
            )
        if len(buf) < start + length:
            return self._short()
        body = bytes(buf[start : start + length])
        del buf[: start + length]
        if ptype is _P.CONNECT:
            version = _peek_connect_version(body)
            if version in PROTOCOL_NAMES:
                self.version = version  # so a CONNACK refusing it is in the client's version
            packet = decode_body(ptype, first & 0x0F, body, version)
            assert isinstance(packet, Connect)
            self.version = packet.protocol_version
            self.state = CodecState.CONNECTED
            return packet
        return decode_body(ptype, first & 0x0F, body, self.version)

    def _short(self) -> _Sentinel:
        if self._eof:
            raise _malformed("connection closed in the middle of a packet")
        return NEED_DATA

    def send(self, packet: Packet) -> bytes:
        """The bytes of `packet` in this connection's protocol version.

        Raises ValueError when the packet cannot be encoded.
        """
        if isinstance(packet, Connect):
            self.version = packet.protocol_version
        return encode(packet, self.version)


def _peek_connect_version(body: bytes) -> int:
    """The protocol level byte of a CONNECT body (the properties depend on it)."""
    if len(body) >= 2:
        name_len = int.from_bytes(body[:2], "big")
        if len(body) > 2 + name_len:
            return body[2 + name_len]
    return MQTT_3_1_1


def decode(data: bytes, version: int, role: Role = Role.SERVER) -> list[Packet]:
    """Every packet in `data` (a convenience for tests). Raises ProtocolError.

    A server-role decode expects a CONNECT first unless `version` is given
    and the stream does not start with CONNECT.
    """
    conn = Connection(role, version=version)
    if role is Role.SERVER and data[:1] != b"\x10":
        conn.state = CodecState.CONNECTED
    conn.receive_data(data)
    conn.receive_data(b"")
    packets: list[Packet] = []
    while True:
        event = conn.next_event()
        if isinstance(event, ConnectionClosed):
            return packets
        assert event is not NEED_DATA
        packets.append(event)
