"""MQTT parity: raw packets against a broker, answers recorded as normalised packets.

The MQTT half of `stream_runner`, with its own small packet builder and
decoder (plain bytes, nothing shared with Moorage's codec, so a codec bug
cannot hide itself): a CONNECT tells the connection which protocol level it
speaks (3.1.1 or 5.0: properties, reason codes); a SUBSCRIBE waits for its
SUBACK, a QoS 1 PUBLISH for PUBACK, QoS 2 for PUBREC, PUBREL for PUBCOMP,
PINGREQ for PINGRESP; a server DISCONNECT (5.0) ends any wait. Packet ids
the broker chooses (on its PUBLISH and PUBREL) and assigned client
identifiers are masked; `reason_string` properties are texts for people,
kept in the transcript and not compared.

The transcripts' `events` come from Mosquitto 2.0 (Debian's `mosquitto`),
the reference CI compares Moorage with.

    python -m tests.parity.mqtt_runner record --port 1883
    python -m tests.parity.mqtt_runner diff --moorage
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.parity.stream_runner import (
    PACKET_LIMIT,
    READ_TIMEOUT,
    ConnectionState,
    Event,
    Runner,
    Transcripts,
    command_line,
    printable,
    shown_hex,
)
from tests.parity.stream_runner import in_process_moorage as stream_moorage

TRANSCRIPTS = Path(__file__).parent / "transcripts" / "mqtt"

# A CONNACK's limits that are each broker's configuration, not its behaviour
# (docs/mqtt-differences.md, "Everywhere"): compared as present, not by value.
CONFIGURED = frozenset({"receive_maximum", "topic_alias_maximum"})
# CONNACK properties whose value here says the same as leaving them out (3.2.2.3).
DEFAULT_VALUES = {
    "retain_available": 1,
    "wildcard_subscription_available": 1,
    "subscription_identifier_available": 1,
    "shared_subscription_available": 1,
    "maximum_qos": 2,
}

MAX_PACKET_SIZE = PACKET_LIMIT  # Mosquitto runs with `max_packet_size 1048576`

TYPES = {
    1: "CONNECT",
    2: "CONNACK",
    3: "PUBLISH",
    4: "PUBACK",
    5: "PUBREC",
    6: "PUBREL",
    7: "PUBCOMP",
    8: "SUBSCRIBE",
    9: "SUBACK",
    10: "UNSUBSCRIBE",
    11: "UNSUBACK",
    12: "PINGREQ",
    13: "PINGRESP",
    14: "DISCONNECT",
    15: "AUTH",
}

# MQTT 5 properties (2.2.2.2): id -> (name, type).
PROPERTIES: dict[int, tuple[str, str]] = {
    0x01: ("payload_format_indicator", "byte"),
    0x02: ("message_expiry_interval", "four"),
    0x03: ("content_type", "str"),
    0x08: ("response_topic", "str"),
    0x09: ("correlation_data", "bin"),
    0x0B: ("subscription_identifier", "varint"),
    0x11: ("session_expiry_interval", "four"),
    0x12: ("assigned_client_identifier", "str"),
    0x13: ("server_keep_alive", "two"),
    0x15: ("authentication_method", "str"),
    0x16: ("authentication_data", "bin"),
    0x17: ("request_problem_information", "byte"),
    0x18: ("will_delay_interval", "four"),
    0x19: ("request_response_information", "byte"),
    0x1A: ("response_information", "str"),
    0x1C: ("server_reference", "str"),
    0x1F: ("reason_string", "str"),
    0x21: ("receive_maximum", "two"),
    0x22: ("topic_alias_maximum", "two"),
    0x23: ("topic_alias", "two"),
    0x24: ("maximum_qos", "byte"),
    0x25: ("retain_available", "byte"),
    0x26: ("user_property", "pair"),
    0x27: ("maximum_packet_size", "four"),
    0x28: ("wildcard_subscription_available", "byte"),
    0x29: ("subscription_identifier_available", "byte"),
    0x2A: ("shared_subscription_available", "byte"),
}
_BY_NAME = {name: (pid, kind) for pid, (name, kind) in PROPERTIES.items()}
REPEATABLE = frozenset({"user_property", "subscription_identifier"})


# -- building packets (the client's side) ---------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack(">H", len(data)) + data


def props(values: dict[str, Any] | None) -> bytes:
    """MQTT 5 properties with their length; `user_property` a list of pairs."""
    out = b""
    for name, value in (values or {}).items():
        pid, kind = _BY_NAME[name]
        items = value if name in REPEATABLE and isinstance(value, list) else [value]
        for item in items:
            out += varint(pid)
            if kind == "byte":
                out += bytes([item])
            elif kind == "two":
                out += struct.pack(">H", item)
            elif kind == "four":
                out += struct.pack(">I", item)
            elif kind == "varint":
                out += varint(item)
            elif kind == "pair":
                out += utf8(item[0]) + utf8(item[1])
            else:
                out += utf8(item)
    return varint(len(out)) + out


def packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + varint(len(body)) + body


def connect(
    client_id: str = "",
    *,
    v5: bool = False,
    clean: bool = True,
    keepalive: int = 60,
    user: str | None = "guest",
    password: str | None = "guest",
    will: tuple[str, bytes, int, bool] | None = None,
    will_props: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    level: int | None = None,
    name: bytes = b"MQTT",
    flags: int | None = None,
) -> bytes:
    """A CONNECT (3.1.1 unless `v5`); `flags` overrides the connect flags byte as is."""
    bits = (0x02 if clean else 0) | (0x80 if user is not None else 0)
    bits |= 0x40 if password is not None else 0
    payload = utf8(client_id)
    if will is not None:
        topic, message, qos, retain = will
        bits |= 0x04 | qos << 3 | (0x20 if retain else 0)
        payload += (props(will_props) if v5 else b"") + utf8(topic) + utf8(message)
    if user is not None:
        payload += utf8(user)
    if password is not None:
        payload += utf8(password)
    header = utf8(name) + bytes([level or (5 if v5 else 4), bits if flags is None else flags])
    header += struct.pack(">H", keepalive) + (props(properties) if v5 else b"")
    return packet(1, 0, header + payload)


def publish(
    topic: str,
    payload: bytes = b"m",
    *,
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    packet_id: int = 1,
    v5: bool = False,
    properties: dict[str, Any] | None = None,
) -> bytes:
    flags = (0x08 if dup else 0) | qos << 1 | (0x01 if retain else 0)
    body = utf8(topic) + (struct.pack(">H", packet_id) if qos else b"")
    body += (props(properties) if v5 else b"") + payload
    return packet(3, flags, body)


def subscribe(
    packet_id: int,
    *filters: tuple[str, int],
    v5: bool = False,
    properties: dict[str, Any] | None = None,
) -> bytes:
    """SUBSCRIBE with (filter, options byte) pairs (3.1.1: the options are the QoS)."""
    body = struct.pack(">H", packet_id) + (props(properties) if v5 else b"")
    for topic, options in filters:
        body += utf8(topic) + bytes([options])
    return packet(8, 2, body)


def unsubscribe(packet_id: int, *filters: str, v5: bool = False) -> bytes:
    body = struct.pack(">H", packet_id) + (props(None) if v5 else b"")
    return packet(10, 2, body + b"".join(utf8(f) for f in filters))


def ack(kind: str, packet_id: int | None = None, reason: int | None = None) -> Any:
    """PUBACK/PUBREC/PUBREL/PUBCOMP for `packet_id`, or (None) for the last id the broker
    used on this connection (a callable the runner fills in)."""
    number = {"PUBACK": 4, "PUBREC": 5, "PUBREL": 6, "PUBCOMP": 7}[kind]
    flags = 2 if kind == "PUBREL" else 0

    def build(pid: int) -> bytes:
        return packet(
            number, flags, struct.pack(">H", pid) + (bytes([reason]) if reason is not None else b"")
        )

    if packet_id is not None:
        return build(packet_id)

    def from_state(state: ConnectionState) -> bytes:
        return build(int(state.memory.get("pid", 0)))

    return from_state


PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"


def disconnect_v5(reason: int, properties: dict[str, Any] | None = None) -> bytes:
    return packet(14, 0, bytes([reason]) + props(properties))


# -- reading packets (the broker's side) ------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def left(self) -> int:
        return len(self.data) - self.at

    def take(self, n: int) -> bytes:
        if self.left() < n:
            raise ValueError("short packet")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def two(self) -> int:
        value: int = struct.unpack(">H", self.take(2))[0]
        return value

    def four(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    def text(self) -> str:
        return self.take(self.two()).decode("utf-8", errors="backslashreplace")

    def properties(self) -> dict[str, Any]:
        end = self.varint() + self.at
        out: dict[str, Any] = {}
        while self.at < end:
            pid = self.varint()
            name, kind = PROPERTIES.get(pid, (f"unknown_{pid:#x}", "bin"))
            value: Any
            if kind == "byte":
                value = self.byte()
            elif kind == "two":
                value = self.two()
            elif kind == "four":
                value = self.four()
            elif kind == "varint":
                value = self.varint()
            elif kind == "pair":
                value = [self.text(), self.text()]
            elif kind == "bin":
                value = self.take(self.two()).hex()
            else:
                value = self.text()
            if name in REPEATABLE:
                out.setdefault(name, []).append(value)
            else:
                out[name] = value
        return out


def _connack(event: Event, r: _Reader, flags: int, v5: bool) -> None:
    event["session_present"] = bool(r.byte() & 1)
    event["reason"] = r.byte()
    if v5 and r.left():
        event["properties"] = r.properties()


def _publish(event: Event, r: _Reader, flags: int, v5: bool) -> None:
    qos = flags >> 1 & 3
    event.update(topic=r.text(), qos=qos, retain=bool(flags & 1), dup=bool(flags & 8))
    if qos:
        event["packet_id"] = r.two()
    if v5:
        event["properties"] = r.properties()
    event["payload"] = printable(r.take(r.left()))


def _pub_ack(event: Event, r: _Reader, flags: int, v5: bool) -> None:
    """PUBACK, PUBREC, PUBREL, PUBCOMP: a packet id, then (5.0) a reason and properties."""
    event["packet_id"] = r.two()
    if r.left():
        event["reason"] = r.byte()
    if r.left():
        event["properties"] = r.properties()


def _sub_ack(event: Event, r: _Reader, flags: int, v5: bool) -> None:
    """SUBACK (reason codes in both versions) and UNSUBACK (reason codes in 5.0)."""
    event["packet_id"] = r.two()
    if v5:
        event["properties"] = r.properties()
    if event["recv"] == "SUBACK" or v5:
        event["reasons"] = list(r.take(r.left()))


def _disconnect(event: Event, r: _Reader, flags: int, v5: bool) -> None:
    if r.left():
        event["reason"] = r.byte()
    if r.left():
        event["properties"] = r.properties()


_DECODERS = {2: _connack, 3: _publish, 4: _pub_ack, 5: _pub_ack, 6: _pub_ack, 7: _pub_ack}
_DECODERS.update({9: _sub_ack, 11: _sub_ack, 14: _disconnect})


def decode(kind: int, flags: int, body: bytes, v5: bool) -> Event:
    """One packet from the broker as an event (what it holds, by name); fixed header
    flags are recorded where they are not the ones the packet type must have."""
    event: Event = {"recv": TYPES.get(kind, f"type-{kind}")}
    if kind != 3 and flags != (2 if kind in (6, 8, 10) else 0):
        event["flags"] = flags
    r = _Reader(body)
    try:
        decoder = _DECODERS.get(kind)
        if decoder is not None:
            decoder(event, r, flags, v5)
        if r.left():
            event["trailing"] = r.take(r.left()).hex()
    except ValueError:
        event["malformed"] = body.hex()
    return event


class MqttDialect:
    """MQTT packets for `stream_runner`."""

    name = "mqtt"
    error_kinds = frozenset({"DISCONNECT"})
    delivery_kinds = frozenset({"PUBLISH"})

    def parse(self, buffer: bytes, state: ConnectionState) -> tuple[Event | None, int] | None:
        if len(buffer) < 2:
            return None
        length, shift, at = 0, 0, 1
        while True:
            if at >= len(buffer):
                return None
            byte = buffer[at]
            length |= (byte & 0x7F) << shift
            at += 1
            if not byte & 0x80 or at > 4:
                break
            shift += 7
        if len(buffer) < at + length:
            return None
        first = buffer[0]
        event = decode(
            first >> 4, first & 0x0F, buffer[at : at + length], bool(state.memory.get("v5"))
        )
        return event, at + length

    def describe(self, data: bytes, state: ConnectionState) -> Event:
        kind = data[0] >> 4 if data else 0
        if kind == 1 and len(data) > 2:
            # The protocol level after the length and the protocol name: 5 is MQTT 5.
            at = 1
            while at < len(data) and data[at] & 0x80:
                at += 1
            at += 1
            if len(data) >= at + 2:
                name_len = struct.unpack_from(">H", data, at)[0]
                level_at = at + 2 + name_len
                state.memory["v5"] = len(data) > level_at and data[level_at] == 5
        return {
            "send": TYPES.get(kind, f"type-{kind}") if data else "(empty)",
            "hex": shown_hex(data),
        }

    def replies(self, data: bytes) -> tuple[str, ...]:
        if not data:
            return ()
        kind, qos = data[0] >> 4, data[0] >> 1 & 3
        return {
            1: ("CONNACK",),
            3: {1: ("PUBACK",), 2: ("PUBREC",)}.get(qos, ()),
            6: ("PUBCOMP",),
            8: ("SUBACK",),
            10: ("UNSUBACK",),
            12: ("PINGRESP",),
        }.get(kind, ())

    def observe(self, event: Event, state: ConnectionState) -> None:
        if event["recv"] in ("PUBLISH", "PUBREL") and "packet_id" in event:
            state.memory["pid"] = event["packet_id"]

    def goodbye(self) -> tuple[bytes, tuple[str, ...]]:
        return DISCONNECT, ()

    def normalise(self, event: Event) -> Event | None:
        out = dict(event)
        if out["recv"] in ("PUBLISH", "PUBREL") and "packet_id" in out:
            out["packet_id"] = "*"
        properties = dict(out.get("properties", {}))
        properties.pop("reason_string", None)
        if "assigned_client_identifier" in properties:
            properties["assigned_client_identifier"] = "*"
        if out["recv"] == "CONNACK":
            for name in CONFIGURED & properties.keys():
                properties[name] = "*"
            for name, value in DEFAULT_VALUES.items():
                if properties.get(name) == value:
                    del properties[name]
        if "properties" in out:
            out["properties"] = properties
        return out


MQTT_TRANSCRIPTS = Transcripts(TRANSCRIPTS, MqttDialect())


def server_version(host: str, port: int) -> str:
    """Mosquitto and Moorage name themselves in `$SYS/broker/version`."""
    with contextlib.closing(socket.create_connection((host, port), timeout=READ_TIMEOUT)) as sock:
        sock.sendall(connect("p-version") + subscribe(1, ("$SYS/broker/version", 0)))
        buf = b""
        with contextlib.suppress(TimeoutError):  # a broker that keeps its version to itself
            while b"version" not in buf.split(b"$SYS/broker/version", 1)[-1]:
                data = sock.recv(65536)
                if not data:
                    break
                buf += data
    text = buf.decode(errors="replace")
    for word in ("mosquitto", "moorage"):
        at = text.lower().find(word)
        if at != -1:
            return "".join(ch for ch in text[at:] if ch.isprintable()).replace("version ", "")
    return "unknown"


@contextlib.contextmanager
def in_process_moorage() -> Iterator[int]:
    """An in-process Moorage (`stream_runner.in_process_moorage`); yields its MQTT port."""
    with stream_moorage() as ports:
        yield ports["mqtt"]


def runner() -> Runner:
    from tests.parity.mqtt_scenarios import SCENARIOS

    return Runner(
        prog="python -m tests.parity.mqtt_runner",
        transcripts=MQTT_TRANSCRIPTS,
        scenarios=SCENARIOS,
        references=("mosquitto",),
        moorage=in_process_moorage,
        version=server_version,
    )


def main(argv: list[str] | None = None) -> int:
    return command_line(runner(), argv)


if __name__ == "__main__":
    from tests.parity import mqtt_runner

    sys.exit(mqtt_runner.main())
