"""A SUBSCRIBE's RECEIPT comes before the subscription's first MESSAGE, also when it waits.

RabbitMQ and ActiveMQ send the RECEIPT first; a client that subscribes, waits
for the receipt and only then counts what arrives must miss nothing. The
parity transcript `subscribe_receipt_before_messages` covers a queue that
already holds messages (memory store); this test covers the other path: a
SUBSCRIBE that declares a durable queue on SQLite, whose RECEIPT waits for
the store, pipelined with a SEND to that queue in the same write — the
message is routed before the declaration is on disk, and still must not
overtake the RECEIPT.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.broker.embedded import EmbeddedBroker, embedded_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def stomp_port(tmp_path: Path) -> Iterator[int]:
    config = embedded_config(protocols=("stomp",), storage="sqlite", data_dir=tmp_path)
    with EmbeddedBroker(config) as broker:
        yield broker.ports["stomp"]


def frames(sock: socket.socket, count: int) -> list[bytes]:
    """The next `count` frames (heart-beat EOLs skipped), each up to its NUL."""
    buffer = b""
    out: list[bytes] = []
    while len(out) < count:
        data = sock.recv(65536)
        assert data, f"closed after {out}"
        buffer += data
        while b"\0" in buffer:
            frame, buffer = buffer.split(b"\0", 1)
            out.append(frame.lstrip(b"\r\n"))
    return out


def test_receipt_of_a_durable_subscribe_comes_before_its_first_message(stomp_port: int) -> None:
    with socket.create_connection(("127.0.0.1", stomp_port), timeout=10) as sock:
        sock.sendall(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0")
        (connected,) = frames(sock, 1)
        assert connected.startswith(b"CONNECTED\n")
        sock.sendall(
            b"SUBSCRIBE\ndestination:/queue/receipt-order\nid:0\nreceipt:sub\n\n\0"
            b"SEND\ndestination:/queue/receipt-order\n\nfirst\0"
            b"SEND\ndestination:/queue/receipt-order\npersistent:true\n\nsecond\0"
        )
        receipt, first, second = frames(sock, 3)
        assert receipt.startswith(b"RECEIPT\n")
        assert b"receipt-id:sub" in receipt
        assert first.startswith(b"MESSAGE\n")
        assert first.endswith(b"\n\nfirst")
        assert second.startswith(b"MESSAGE\n")
        assert second.endswith(b"\n\nsecond")
