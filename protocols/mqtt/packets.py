"""MQTT 3.1, 3.1.1 and 5.0 packets as values: versions, reason codes, properties, packets.

Everything here is data: the packet dataclasses the codec (`codec.py`)
decodes into and encodes from, compared by value; `ReasonCode` with the
spec's text; the MQTT 5 property table (`PROPERTY_TABLE`: identifier, name,
type, the packets that may carry it); `ProtocolError`, which carries the
reason code to answer with; and the topic name and filter rules (section
4.7). No bytes are read or written here (`wire.py` does that).
"""

from __future__ import annotations

import enum
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
CONNACK_V3_REVERSE = {v: k for k, v in _CONNACK_V3.items()}


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


def malformed(message: str) -> ProtocolError:
    """A MALFORMED_PACKET error (0x81): the bytes break the packet's grammar."""
    return ProtocolError(message, ReasonCode.MALFORMED_PACKET)


def protocol_violation(message: str) -> ProtocolError:
    """A PROTOCOL_ERROR (0x82): well-formed, but not allowed here."""
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
WILL = "will"  # pseudo packet: the will properties inside CONNECT

# (id, field name, type, where it may appear) -- table of section 2.2.2.2
PROPERTY_TABLE: tuple[tuple[int, str, PropType, frozenset[Any]], ...] = (
    (0x01, "payload_format_indicator", PropType.BYTE, frozenset({_P.PUBLISH, WILL})),
    (0x02, "message_expiry_interval", PropType.FOUR, frozenset({_P.PUBLISH, WILL})),
    (0x03, "content_type", PropType.STRING, frozenset({_P.PUBLISH, WILL})),
    (0x08, "response_topic", PropType.STRING, frozenset({_P.PUBLISH, WILL})),
    (0x09, "correlation_data", PropType.BINARY, frozenset({_P.PUBLISH, WILL})),
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
    (0x18, "will_delay_interval", PropType.FOUR, frozenset({WILL})),
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
    (0x26, "user_property", PropType.PAIR, frozenset(set(_P) | {WILL})),
    (0x27, "maximum_packet_size", PropType.FOUR, frozenset({_P.CONNECT, _P.CONNACK})),
    (0x28, "wildcard_subscription_available", PropType.BYTE, frozenset({_P.CONNACK})),
    (0x29, "subscription_identifier_available", PropType.BYTE, frozenset({_P.CONNACK})),
    (0x2A, "shared_subscription_available", PropType.BYTE, frozenset({_P.CONNACK})),
)
PROPERTY_BY_ID = {pid: (name, ptype, where) for pid, name, ptype, where in PROPERTY_TABLE}
PROPERTY_BY_NAME = {name: (pid, ptype) for pid, name, ptype, _ in PROPERTY_TABLE}
# Byte properties whose only legal values are 0 and 1.
BOOLEAN_BYTES = frozenset(
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
            for name in PROPERTY_BY_NAME
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


class Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA = Sentinel.NEED_DATA


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
