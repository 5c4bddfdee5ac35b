"""Double header values (what Java and Node clients send) reach consumers unchanged.

pamqp would re-encode them as 32-bit floats: 0.1 became 0.10000000149011612
and 1e300 closed the publisher's connection. A raw client publishes a table
of doubles; the consumer must get the same bits, live and after a restart
that reads the persistent message back from the store.
"""

from __future__ import annotations

import struct

from pamqp import body as pamqp_body
from pamqp import commands, header

from tests.helpers import RawClient, make_config

DOUBLES = {"tenth": 0.1, "huge": 1e300, "tiny": 5e-324, "nested": {"list": [2.5, -0.1]}}


def double_table() -> bytes:
    """`DOUBLES` encoded as Java's client does: every float a `d` (keys in order)."""

    def value(v: object) -> bytes:
        if isinstance(v, float):
            return b"d" + struct.pack(">d", v)
        if isinstance(v, list):
            data = b"".join(value(i) for i in v)
            return b"A" + struct.pack(">I", len(data)) + data
        assert isinstance(v, dict)
        return b"F" + table(v)

    def table(t: dict[str, object]) -> bytes:
        data = b"".join(bytes((len(k),)) + k.encode() + value(v) for k, v in sorted(t.items()))
        return struct.pack(">I", len(data)) + data

    return table(DOUBLES)


def publish_doubles(client: RawClient, queue: str, body: bytes) -> None:
    props = struct.pack(">H", 0x2000 | 0x1000) + double_table() + b"\x02"  # headers, persistent
    payload = struct.pack(">HHQ", 60, 0, len(body)) + props
    client.send_frame(1, commands.Basic.Publish(exchange="", routing_key=queue))
    client.send(struct.pack(">BHI", 2, 1, len(payload)) + payload + b"\xce")
    client.send(struct.pack(">BHI", 3, 1, len(body)) + body + b"\xce")


def get_headers(client: RawClient, queue: str) -> dict[str, object]:
    client.send_frame(1, commands.Basic.Get(queue=queue, no_ack=True))
    client.expect(commands.Basic.GetOk)
    content = client.expect(header.ContentHeader)
    client.expect(pamqp_body.ContentBody)
    return dict(content.properties.headers)


def test_double_headers_are_delivered_exactly_live_and_after_a_restart(start_broker, tmp_path):
    config = make_config(tmp_path / "data")
    config.storage.backend = "sqlite"
    config.storage.durability = "nosync"
    first = start_broker(config)
    with RawClient(first.port) as client:
        client.handshake()
        client.open_channel(1)
        client.send_frame(1, commands.Queue.Declare(queue="doubles", durable=True))
        client.expect(commands.Queue.DeclareOk)
        client.send_frame(1, commands.Confirm.Select())
        client.expect(commands.Confirm.SelectOk)
        publish_doubles(client, "doubles", b"live")
        publish_doubles(client, "doubles", b"stored")
        while client.expect(commands.Basic.Ack).delivery_tag < 2:
            pass  # both are on disk once the second is confirmed
        assert get_headers(client, "doubles") == DOUBLES
    first.stop()
    second = start_broker(config)
    with RawClient(second.port) as client:
        client.handshake()
        client.open_channel(1)
        assert get_headers(client, "doubles") == DOUBLES
