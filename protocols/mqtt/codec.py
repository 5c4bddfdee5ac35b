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

The codec is four modules, and this one is its public face (every name a
user needs is importable from here): `packets.py` holds the packets as
values (reason codes, properties, topic rules), `wire.py` the stateless
bytes <-> packet functions, `fast_path.py` the hand-written PUBLISH/PUBACK
encoders and decoders, and this module the `Connection` state machine. None
of them imports the broker core or the store.
"""

from __future__ import annotations

import enum

from moorage.protocols.mqtt.fast_path import (
    decode_fast,
    decode_puback_fast,
    decode_publish_fast,
    encode_puback_fast,
    encode_publish_fast,
)
from moorage.protocols.mqtt.packets import (
    DEFAULT_MAX_PACKET_SIZE,
    MAX_VARINT,
    MQTT_3_1,
    MQTT_3_1_1,
    MQTT_5,
    NEED_DATA,
    PROPERTY_TABLE,
    PROTOCOL_NAMES,
    Auth,
    ConnAck,
    Connect,
    ConnectionClosed,
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
    Sentinel,
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
from moorage.protocols.mqtt.wire import (
    decode_body,
    decode_varint,
    encode,
    encode_binary,
    encode_string,
    encode_varint,
)

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "MAX_VARINT",
    "MQTT_3_1",
    "MQTT_3_1_1",
    "MQTT_5",
    "NEED_DATA",
    "PROPERTY_TABLE",
    "PROTOCOL_NAMES",
    "Auth",
    "CodecState",
    "ConnAck",
    "Connect",
    "Connection",
    "ConnectionClosed",
    "Disconnect",
    "Event",
    "Packet",
    "PacketType",
    "PingReq",
    "PingResp",
    "PropType",
    "Properties",
    "ProtocolError",
    "PubAck",
    "PubComp",
    "PubRec",
    "PubRel",
    "Publish",
    "ReasonCode",
    "Role",
    "SubAck",
    "Subscribe",
    "Subscription",
    "UnsubAck",
    "Unsubscribe",
    "Will",
    "connack_return_code_v3",
    "decode",
    "decode_body",
    "decode_fast",
    "decode_puback_fast",
    "decode_publish_fast",
    "decode_varint",
    "encode",
    "encode_binary",
    "encode_puback_fast",
    "encode_publish_fast",
    "encode_string",
    "encode_varint",
    "validate_topic_filter",
    "validate_topic_name",
]

_P = PacketType

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


Event = Packet | ConnectionClosed | Sentinel


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
            raise malformed(f"reserved packet type {ptype_value}")  # section 2.1.2
        ptype = PacketType(ptype_value)
        if self.state is CodecState.AWAIT_CONNECT and ptype is not _P.CONNECT:
            raise protocol_violation(f"{ptype.name} before CONNECT")  # [MQTT-3.1.0-1]
        if ptype not in _RECEIVES[self.role]:
            raise protocol_violation(f"{ptype.name} is not sent to a {self.role.value}")
        if ptype is _P.CONNECT and self.state is not CodecState.AWAIT_CONNECT:
            raise protocol_violation("second CONNECT")  # [MQTT-3.1.0-2]
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

    def _short(self) -> Sentinel:
        if self._eof:
            raise malformed("connection closed in the middle of a packet")
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
