"""stomp.py (and raw sockets) against the STOMP listener, for STOMP 1.0, 1.1 and 1.2."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import pika
import pytest

from tests.stomp.conftest import Client, RawStomp, StompBroker

VERSIONS = ["1.0", "1.1", "1.2"]
NACK_VERSIONS = ["1.1", "1.2"]  # 1.0 has no NACK


ClientFactory = Callable[..., Client]


@pytest.mark.parametrize("version", VERSIONS)
def test_send_subscribe_auto(stomp_client: ClientFactory, version: str) -> None:
    c = stomp_client(version)
    c.subscribe("/queue/auto", id="s1", ack="auto")
    for i in range(3):
        c.send("/queue/auto", f"m{i}", headers={"x-custom": "a:b"})
    frames = c.collector.wait_messages(3)
    assert [f.body for f in frames] == ["m0", "m1", "m2"]
    h = frames[0].headers
    assert h["destination"] == "/queue/auto"
    assert h["subscription"] == "s1"
    assert h["x-custom"] == "a:b"
    assert "message-id" in h


@pytest.mark.parametrize("version", VERSIONS)
def test_client_ack_is_cumulative(
    stomp_client: ClientFactory, stomp_broker: StompBroker, version: str
) -> None:
    c = stomp_client(version)
    c.subscribe("/queue/cumulative", id="s1", ack="client")
    for i in range(3):
        c.send("/queue/cumulative", f"m{i}")
    frames = c.collector.wait_messages(3)
    c.ack(frames[1])  # acks m0 and m1
    c.sync()
    c.disconnect()
    d = stomp_client(version)
    d.subscribe("/queue/cumulative", id="s2", ack="client-individual")
    (again,) = d.collector.wait_messages(1)
    assert again.body == "m2"
    assert again.headers.get("redelivered") == "true"
    d.sync()
    assert d.collector.bodies == ["m2"]


@pytest.mark.parametrize("version", VERSIONS)
def test_client_individual_ack(stomp_client: ClientFactory, version: str) -> None:
    c = stomp_client(version)
    c.subscribe("/queue/individual", id="s1", ack="client-individual")
    for i in range(3):
        c.send("/queue/individual", f"m{i}")
    frames = c.collector.wait_messages(3)
    c.ack(frames[1], receipt="acked")
    assert c.collector.wait(lambda: "acked" in c.collector.receipts)
    c.disconnect()
    d = stomp_client(version)
    d.subscribe("/queue/individual", id="s2", ack="auto")
    assert [f.body for f in d.collector.wait_messages(2)] == ["m0", "m2"]


@pytest.mark.parametrize("version", NACK_VERSIONS)
def test_nack_redelivers(stomp_client: ClientFactory, version: str) -> None:
    c = stomp_client(version)
    c.subscribe("/queue/nack", id="s1", ack="client-individual")
    c.send("/queue/nack", "again")
    (first,) = c.collector.wait_messages(1)
    assert first.headers["redelivered"] == "false"  # always sent, as RabbitMQ does
    c.nack(first)
    second = c.collector.wait_messages(2)[1]
    assert second.body == "again"
    assert second.headers["redelivered"] == "true"
    c.ack(second)


@pytest.mark.parametrize("version", VERSIONS)
def test_transactions_commit_and_abort(stomp_client: ClientFactory, version: str) -> None:
    c = stomp_client(version)
    c.subscribe("/queue/tx", id="s1", ack="client-individual")
    c.begin("t1")
    c.send("/queue/tx", "aborted", transaction="t1")
    c.abort("t1")
    c.begin("t2")
    c.send("/queue/tx", "committed-1", transaction="t2")
    c.send("/queue/tx", "committed-2", transaction="t2")
    c.sync()
    assert c.collector.bodies == []  # nothing before COMMIT
    c.commit("t2")
    frames = c.collector.wait_messages(2)
    assert [f.body for f in frames] == ["committed-1", "committed-2"]
    # an ACK in an aborted transaction leaves the message unacknowledged
    c.begin("t3")
    c.ack(frames[0], transaction="t3")
    c.abort("t3")
    c.begin("t4")
    c.ack(frames[1], transaction="t4")
    c.commit("t4", receipt="t4-done")
    assert c.collector.wait(lambda: "t4-done" in c.collector.receipts)
    c.disconnect()
    d = stomp_client(version)
    d.subscribe("/queue/tx", id="s2", ack="auto")
    d.sync()
    assert d.collector.wait_messages(1)[0].body == "committed-1"
    assert d.collector.bodies == ["committed-1"]


@pytest.mark.parametrize("version", VERSIONS)
def test_receipts(stomp_client: ClientFactory, version: str) -> None:
    c = stomp_client(version)
    c.subscribe("/queue/receipts", id="s1", receipt="r-sub")
    c.send("/queue/receipts", "p", headers={"persistent": "true"}, receipt="r-send")
    c.unsubscribe("s1", receipt="r-unsub")
    assert c.collector.wait(lambda: len(c.collector.receipts) == 3)
    assert c.collector.receipts == ["r-sub", "r-send", "r-unsub"]
    c.disconnect(receipt="bye")  # stomp.py waits for the DISCONNECT receipt


def test_pipelined_sends_with_receipts_in_one_write(
    stomp_client: ClientFactory, raw: Callable[[], RawStomp]
) -> None:
    """A producer's SENDs written at once, with the same headers each time (the
    adapter's repeat path) and receipts among them (written before the rest of
    the read is handled): each receipt comes once, in order, and a subscriber
    gets every message, in order, headers included."""
    consumer = stomp_client("1.2")
    consumer.subscribe("/queue/pipelined", id="s")
    consumer.sync()
    client = raw()
    client.connect()
    frames = []
    for i in range(200):
        receipt = f"\nreceipt:r{i}" if i in (60, 199) else ""
        frames.append(
            f"SEND\ndestination:/queue/pipelined\ncontent-length:4\npad:xxxx{receipt}\n\n"
            f"{i:04d}\x00".encode()
        )
    client.send(b"".join(frames))
    data = b""
    while data.count(b"RECEIPT") < 2:
        chunk = client.sock.recv(65536)
        assert chunk, data
        data += chunk
    assert data == b"RECEIPT\nreceipt-id:r60\n\n\x00RECEIPT\nreceipt-id:r199\n\n\x00"
    messages = consumer.collector.wait_messages(200)
    assert [m.body for m in messages] == [f"{i:04d}" for i in range(200)]
    assert {m.headers["pad"] for m in messages} == {"xxxx"}


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_heartbeats_flow_both_ways(stomp_client: ClientFactory, version: str) -> None:
    # 1 s beats: stomp.py gives the broker 1.5 intervals before it calls the link
    # dead, the broker gives the client 2; 200 ms left too little for a loaded machine.
    c = stomp_client(version, heartbeats=(1000, 1000))
    assert c.collector.wait(lambda: c.collector.heartbeats >= 2, timeout=30)
    assert c.is_connected()


def test_silent_client_is_disconnected(raw: Callable[[], RawStomp]) -> None:
    client = raw()
    connected = client.connect(heart_beat="150,0")
    assert b"heart-beat:0,150" in connected
    assert client.read_until_closed() == b""  # closed for silence, within the timeout


@pytest.mark.parametrize("version", VERSIONS)
def test_temp_queue_request_reply(stomp_client: ClientFactory, version: str) -> None:
    server = stomp_client(version)
    server.subscribe("/queue/rpc", id="rpc", ack="auto")
    requester = stomp_client(version)
    requester.send(
        "/queue/rpc", "ping", headers={"reply-to": "/temp-queue/replies", "correlation-id": "c1"}
    )
    (request,) = server.collector.wait_messages(1)
    reply_to = request.headers["reply-to"]
    assert reply_to.startswith("/reply-queue/amq.gen-")
    server.send(reply_to, "pong", headers={"correlation-id": request.headers["correlation-id"]})
    (reply,) = requester.collector.wait_messages(1)
    assert reply.body == "pong"
    assert reply.headers["subscription"] == "/temp-queue/replies"
    assert reply.headers["correlation-id"] == "c1"


@pytest.mark.parametrize("version", VERSIONS)
def test_topic_selectors(stomp_client: ClientFactory, version: str) -> None:
    c = stomp_client(version)
    c.subscribe(
        "/topic/sel.colors",
        id="red",
        ack="client-individual",
        headers={"selector": "color = 'red' AND size > 3"},
    )
    c.subscribe("/topic/sel.*", id="all", ack="auto", headers={"selector": "color IS NOT NULL"})
    c.sync()
    c.send("/topic/sel.colors", "small-red", headers={"color": "red", "size": "2"})
    c.send("/topic/sel.colors", "big-red", headers={"color": "red", "size": "10"})
    c.send("/topic/sel.colors", "big-blue", headers={"color": "blue", "size": "10"})
    c.send("/topic/sel.colors", "no-color")
    c.collector.wait_messages(4)
    c.sync()
    by_sub: dict[str, list[str]] = {}
    for f in c.collector.messages:
        by_sub.setdefault(f.headers["subscription"], []).append(f.body)
    assert by_sub == {"red": ["big-red"], "all": ["small-red", "big-red", "big-blue"]}


@pytest.mark.parametrize("version", VERSIONS)
def test_durable_topic_subscription(
    stomp_client: ClientFactory, stomp_broker: StompBroker, version: str
) -> None:
    sub = {"activemq.subscriptionName": "news-sub"}
    a = stomp_client(version, headers={"client-id": "reader"})
    a.subscribe("/topic/news", id="n", ack="client-individual", headers=sub)
    a.send("/topic/news", "while-here")
    (first,) = a.collector.wait_messages(1)
    a.ack(first)
    a.sync()
    a.disconnect()
    publisher = stomp_client(version)
    publisher.send("/topic/news", "while-away-1", headers={"persistent": "true"})
    publisher.send("/topic/news", "while-away-2", receipt="sent")
    assert publisher.collector.wait(lambda: "sent" in publisher.collector.receipts)
    b = stomp_client(version, headers={"client-id": "reader"})
    b.subscribe("/topic/news", id="n", ack="auto", headers=sub)
    assert [f.body for f in b.collector.wait_messages(2)] == ["while-away-1", "while-away-2"]
    # UNSUBSCRIBE naming the durable subscription ends it
    b.unsubscribe("n", headers=sub, receipt="gone")
    assert b.collector.wait(lambda: "gone" in b.collector.receipts)
    assert not stomp_broker.queue_exists("stomp-subscription-reader-news-sub")


@pytest.mark.parametrize("version", VERSIONS)
def test_interop_amqp_to_stomp_topic(
    stomp_client: ClientFactory, stomp_broker: StompBroker, version: str
) -> None:
    c = stomp_client(version)
    c.subscribe("/topic/interop.#", id="t", ack="auto")
    c.sync()
    params = pika.ConnectionParameters("127.0.0.1", stomp_broker.amqp_port)
    with pika.BlockingConnection(params) as amqp:
        ch = amqp.channel()
        ch.basic_publish(
            "amq.topic",
            "interop.a.b",
            b"from-amqp",
            pika.BasicProperties(
                content_type="text/plain",
                correlation_id="corr",
                headers={"x-origin": "pika", "n": 7},
                delivery_mode=2,
                priority=3,
            ),
        )
    (frame,) = c.collector.wait_messages(1)
    h = frame.headers
    assert frame.body == "from-amqp"
    assert h["destination"] == "/topic/interop.a.b"
    assert h["content-type"] == "text/plain"
    assert h["correlation-id"] == "corr"
    assert h["x-origin"] == "pika"
    assert h["n"] == "7"
    assert h["persistent"] == "true"
    assert h["priority"] == "3"


@pytest.mark.parametrize("version", VERSIONS)
def test_interop_amqp_typed_headers_as_stomp_text(
    stomp_client: ClientFactory, stomp_broker: StompBroker, version: str
) -> None:
    """AMQP's typed header values read as the core's one text rule (`broker.header_values`)."""
    c = stomp_client(version)
    c.subscribe("/topic/typed", id="t", ack="auto")
    c.sync()
    params = pika.ConnectionParameters("127.0.0.1", stomp_broker.amqp_port)
    with pika.BlockingConnection(params) as amqp:
        amqp.channel().basic_publish(
            "amq.topic",
            "typed",
            b"typed",
            pika.BasicProperties(
                timestamp=1700000000,
                headers={
                    "at": datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
                    "yes": True,
                    "no": False,
                    "raw": b"caf\xc3\xa9",
                    "price": Decimal("12.50"),
                    "nested": {"a": 1},
                },
            ),
        )
    (frame,) = c.collector.wait_messages(1)
    h = frame.headers
    assert h["timestamp"] == "1700000000"  # epoch seconds, the property
    assert h["at"] == "1700000000"  # and a timestamp header alike
    assert h["yes"] == "true"
    assert h["no"] == "false"
    assert h["raw"] == "café"
    assert h["price"] == "12.5"  # pika sends the normalized decimal (125, 1 place)
    assert "nested" not in h  # a table has no text form


@pytest.mark.parametrize("version", VERSIONS)
def test_interop_stomp_to_amqp_queue(
    stomp_client: ClientFactory, stomp_broker: StompBroker, version: str
) -> None:
    c = stomp_client(version)
    c.send(
        "/queue/to-amqp",
        "from-stomp",
        content_type="application/json",
        headers={"persistent": "true", "priority": "5", "x-trace": "t1", "type": "order"},
        receipt="sent",
    )
    assert c.collector.wait(lambda: "sent" in c.collector.receipts)
    params = pika.ConnectionParameters("127.0.0.1", stomp_broker.amqp_port)
    with pika.BlockingConnection(params) as amqp:
        method, props, body = amqp.channel().basic_get("to-amqp", auto_ack=True)
    assert method is not None
    assert body == b"from-stomp"
    assert props.content_type == "application/json"
    assert props.delivery_mode == 2
    assert props.priority == 5
    assert props.type == "order"
    assert props.headers == {"x-trace": "t1"}


def test_vhost_from_host_header(stomp_client: ClientFactory, stomp_broker: StompBroker) -> None:
    c = stomp_client("1.2")  # stomp.py sends host:127.0.0.1 -> the default vhost
    c.send("/queue/in-default", "x", receipt="r")
    assert c.collector.wait(lambda: "r" in c.collector.receipts)
    assert stomp_broker.queue_exists("in-default", "/")


# -- errors: ERROR frame + close, and nobody else is affected -------------------------------

ERROR_CASES = [
    (b"SEND\ndestination:/queue/x\n\nbefore-connect\x00", b"not connected", False),
    (b"FOO\n\n\x00", b"unknown command", True),
    (b"SEND\n\nno destination\x00", b"missing 'destination' header", True),
    (b"SUBSCRIBE\ndestination:/queue/x\n\n\x00", b"missing 'id' header", True),
    (b"ACK\n\n\x00", b"missing 'id' header", True),
    (b"BEGIN\n\n\x00", b"missing 'transaction' header", True),
    (b"SEND\ndestination:/queue/x\ncontent-length:2\n\nabc\x00", b"content-length", True),
    (  # after SENDs that repeat one header block (the adapter's repeat path)
        b"SEND\ndestination:/queue/x\ncontent-length:1\npad:x\n\na\x00" * 40
        + b"SEND\ndestination:/queue/x\ncontent-length:1\npad:x\n\nab\x00",
        b"body longer than content-length",
        True,
    ),
    (b"SEND\ndestination:/queue/x\nk:a\x00b\n\n\x00", b"NUL in frame header", True),
    (b"SEND\ndestination:/nowhere/x\n\n\x00", b"unknown destination", True),
    (b"SEND\ndestination:/exchange/missing/k\n\n\x00", b"NOT_FOUND", True),
    (b"ACK\nid:T_999\n\n\x00", b"unknown message-id", True),
    (b"COMMIT\ntransaction:nope\n\n\x00", b"unknown transaction", True),
    (b"CONNECT\naccept-version:1.2\n\n\x00", b"unexpected frame", True),
]


@pytest.mark.parametrize(("wire", "message", "connect"), ERROR_CASES)
def test_errors_close_only_that_connection(
    raw: Callable[[], RawStomp],
    stomp_client: ClientFactory,
    wire: bytes,
    message: bytes,
    connect: bool,
) -> None:
    bystander = stomp_client("1.2")
    bystander.subscribe("/queue/bystander", id="b")
    client = raw()
    if connect:
        client.connect()
    client.send(wire)
    answer = client.read_until_closed()
    assert answer.startswith(b"ERROR\n"), answer
    head = answer.split(b"\n\n", 1)[0]
    assert b"\nmessage:" in head
    assert message in answer
    bystander.send("/queue/bystander", "still here")
    assert bystander.collector.wait_messages(1)[0].body == "still here"


def test_bad_login(raw: Callable[[], RawStomp]) -> None:
    client = raw()
    client.send(b"CONNECT\naccept-version:1.2\nlogin:guest\npasscode:wrong\n\n\x00")
    answer = client.read_until_closed()
    assert answer.startswith(b"ERROR\n")
    assert b"ACCESS_REFUSED" in answer


def test_unsupported_version(raw: Callable[[], RawStomp]) -> None:
    client = raw()
    client.send(b"CONNECT\naccept-version:2.0\nlogin:guest\npasscode:guest\n\n\x00")
    answer = client.read_until_closed()
    assert answer.startswith(b"ERROR\n")
    assert b"version:1.0,1.1,1.2" in answer


def test_nul_body_with_content_length(
    stomp_client: ClientFactory, raw: Callable[[], RawStomp]
) -> None:
    c = stomp_client("1.2")
    c.subscribe("/queue/binary", id="s")
    c.sync()
    client = raw()
    client.connect()
    client.send(b"SEND\ndestination:/queue/binary\ncontent-length:3\nreceipt:r\n\na\x00b\x00")
    frame = c.collector.wait_messages(1)[0]
    assert frame.headers["content-length"] == "3"


def test_header_escaping_per_receiver_version(
    stomp_client: ClientFactory, raw: Callable[[], RawStomp]
) -> None:
    v10 = stomp_client("1.0")
    v11 = stomp_client("1.1")
    v12 = stomp_client("1.2")
    for n, c in enumerate((v10, v11, v12)):
        c.subscribe("/topic/escapes", id=f"s{n}")
        c.sync()
    sender = raw()
    sender.connect("1.2")
    sender.send(b"SEND\ndestination:/topic/escapes\nk:a\\cb\\nc\nr:x\\ry\n\nbody\x00")
    (m10,) = v10.collector.wait_messages(1)
    (m11,) = v11.collector.wait_messages(1)
    (m12,) = v12.collector.wait_messages(1)
    assert "k" not in m10.headers  # 1.0 cannot carry a newline in a header
    assert "r" not in m10.headers
    assert m11.headers["k"] == "a:b\nc"
    assert "r" not in m11.headers  # 1.1 has no escape for CR
    assert m12.headers["k"] == "a:b\nc"
    assert m12.headers["r"] == "x\ry"


@pytest.mark.parametrize("version", VERSIONS)
def test_unsubscribe_requeues_unacked(stomp_client: ClientFactory, version: str) -> None:
    a = stomp_client(version)
    b = stomp_client(version)
    a.subscribe("/queue/unsub", id="a", ack="client")
    a.send("/queue/unsub", "held")
    a.collector.wait_messages(1)
    b.subscribe("/queue/unsub", id="b", ack="auto")
    b.sync()
    assert b.collector.bodies == []
    a.unsubscribe("a")
    (moved,) = b.collector.wait_messages(1)
    assert moved.body == "held"
    assert moved.headers["redelivered"] == "true"
