"""Valid client frame sequences per protocol: what the fuzzer mutates.

Each sequence is what a real client sends over one connection (handshake,
then the verbs the adapters serve), one bytes object per frame, so that
mutations can work on frame boundaries (repeat, reorder, splice) as well as
on bytes (bit flips, truncation, length fields).
"""

from __future__ import annotations

import struct

from pamqp import body, commands, frame, header


def amqp() -> list[bytes]:
    def method(channel: int, value: object) -> bytes:
        return bytes(frame.marshal(value, channel))  # type: ignore[arg-type]

    payload = b"fuzz body"
    return [
        b"AMQP\x00\x00\x09\x01",
        method(
            0,
            commands.Connection.StartOk(
                client_properties={"product": "fuzz", "capabilities": {"publisher_confirms": True}},
                mechanism="PLAIN",
                response="\0guest\0guest",
                locale="en_US",
            ),
        ),
        method(0, commands.Connection.TuneOk(channel_max=16, frame_max=131072, heartbeat=0)),
        method(0, commands.Connection.Open(virtual_host="/")),
        method(1, commands.Channel.Open()),
        method(1, commands.Confirm.Select()),
        method(1, commands.Exchange.Declare(exchange="fuzz.x", exchange_type="topic")),
        method(1, commands.Queue.Declare(queue="fuzz.q", auto_delete=True)),
        method(1, commands.Queue.Bind(queue="fuzz.q", exchange="fuzz.x", routing_key="a.#")),
        method(1, commands.Basic.Qos(prefetch_count=10)),
        method(1, commands.Basic.Publish(exchange="fuzz.x", routing_key="a.b")),
        bytes(
            frame.marshal(
                header.ContentHeader(
                    0,
                    len(payload),
                    commands.Basic.Properties(
                        content_type="text/plain", headers={"k": "v", "n": 1}, delivery_mode=2
                    ),
                ),
                1,
            )
        ),
        bytes(frame.marshal(body.ContentBody(payload), 1)),
        method(1, commands.Basic.Consume(queue="fuzz.q", consumer_tag="c1")),
        method(1, commands.Basic.Ack(delivery_tag=1)),
        method(1, commands.Basic.Get(queue="fuzz.q")),
        method(1, commands.Basic.Nack(delivery_tag=2, requeue=True)),
        method(1, commands.Basic.Cancel(consumer_tag="c1")),
        method(1, commands.Tx.Select()),
        method(1, commands.Queue.Purge(queue="fuzz.q")),
        method(
            1, commands.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
        ),
        method(
            0, commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
        ),
    ]


def _text(s: str | bytes) -> bytes:
    data = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(data)) + data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, rest: bytes) -> bytes:
    return bytes([first]) + _varint(len(rest)) + rest


def mqtt(version: int) -> list[bytes]:
    props = b"\x00" if version == 5 else b""
    connect_props = b"\x05\x11\x00\x00\x00\x3c" if version == 5 else b""  # session expiry 60
    will_props = b"\x00" if version == 5 else b""
    return [
        _packet(
            0x10,
            _text("MQTT")
            + bytes([version, 0xC6])  # user, password, will (QoS 0), clean
            + struct.pack("!H", 30)
            + connect_props
            + _text(f"fuzz-{version}")
            + will_props
            + _text("will/t")
            + _text(b"gone")
            + _text("guest")
            + _text("guest"),
        ),
        _packet(0x82, struct.pack("!H", 1) + props + _text("a/+/c") + b"\x01"),
        _packet(0x82, struct.pack("!H", 2) + props + _text("$share/g/x/#") + b"\x02"),
        _packet(0x30, _text("a/b/c") + props + b"qos0"),
        _packet(0x32, _text("a/b/c") + struct.pack("!H", 3) + props + b"qos1"),
        _packet(0x34, _text("a/b/c") + struct.pack("!H", 4) + props + b"qos2"),
        _packet(0x62, struct.pack("!H", 4)),  # PUBREL
        _packet(0x31, _text("r/t") + props + b"retained"),
        _packet(0x40, struct.pack("!H", 1)),  # PUBACK of a delivery
        _packet(0x50, struct.pack("!H", 2)),  # PUBREC
        _packet(0x70, struct.pack("!H", 2)),  # PUBCOMP
        b"\xc0\x00",  # PINGREQ
        _packet(0xA2, struct.pack("!H", 5) + props + _text("a/+/c")),
        b"\xe0\x00",  # DISCONNECT
    ]


def _stomp(command: str, headers: dict[str, str], payload: bytes = b"") -> bytes:
    lines = [command] + [f"{k}:{v}" for k, v in headers.items()]
    return ("\n".join(lines) + "\n\n").encode() + payload + b"\x00"


def stomp() -> list[bytes]:
    return [
        _stomp(
            "CONNECT",
            {"accept-version": "1.0,1.1,1.2", "host": "/", "login": "guest", "passcode": "guest"},
        ),
        _stomp("SUBSCRIBE", {"id": "1", "destination": "/queue/fuzz", "ack": "client-individual"}),
        _stomp("SUBSCRIBE", {"id": "2", "destination": "/topic/a.b", "selector": "n > 1"}),
        _stomp(
            "SEND",
            {"destination": "/queue/fuzz", "content-length": "5", "n": "2", "receipt": "r1"},
            b"he\x00lo",
        ),
        _stomp("SEND", {"destination": "/topic/a.b", "persistent": "true"}, b"text body"),
        _stomp("BEGIN", {"transaction": "t1"}),
        _stomp("SEND", {"destination": "/queue/fuzz", "transaction": "t1"}, b"in tx"),
        _stomp("COMMIT", {"transaction": "t1"}),
        _stomp("ACK", {"id": "1"}),
        _stomp("NACK", {"id": "2"}),
        b"\n",  # a heart-beat
        _stomp("UNSUBSCRIBE", {"id": "2"}),
        _stomp("DISCONNECT", {"receipt": "bye"}),
    ]


CORPORA = {
    "amqp": [amqp()],
    "mqtt": [mqtt(4), mqtt(5)],
    "stomp": [stomp()],
}
"""Each protocol's valid sequences (MQTT: 3.1.1 and 5.0)."""
