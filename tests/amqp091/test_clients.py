"""Real client libraries against an in-process broker, on both event loops.

Each test is a publish/consume round trip through one client library:
pika (BlockingConnection and SelectConnection), aio-pika and kombu.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import threading
import time
from collections.abc import Callable
from typing import Any

import aio_pika
import kombu
import pika
import pytest
from pamqp import commands

from moorage.protocols.tcp import TCPShell
from tests.helpers import Inbox, RunningBroker

LOOPS = pytest.mark.parametrize("broker", ["asyncio", "uvloop"], indirect=True)


@LOOPS
def test_pika_blocking_round_trip(
    broker: RunningBroker, connect: Callable[..., pika.BlockingConnection]
) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("rt")
    props = pika.BasicProperties(
        content_type="text/plain", headers={"k": "v"}, correlation_id="c1", delivery_mode=2
    )
    channel.basic_publish("", "rt", b"hello", props)
    inbox = Inbox(connection)
    channel.basic_consume("rt", inbox)
    assert inbox.wait(1)
    method, got_props, body = inbox.messages[0]
    assert body == b"hello"
    assert method.routing_key == "rt"
    assert method.redelivered is False
    assert got_props.content_type == "text/plain"
    assert got_props.headers == {"k": "v"}
    assert got_props.correlation_id == "c1"
    assert got_props.delivery_mode == 2
    channel.basic_ack(method.delivery_tag)
    channel.close()
    assert broker.ready_count("rt") == 0
    connection.close()


@LOOPS
def test_pika_large_message_split_over_frames(
    broker: RunningBroker, connect: Callable[..., pika.BlockingConnection]
) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("big")
    body = bytes(range(256)) * 4096  # 1 MiB, many frames of frame_max
    channel.basic_publish("", "big", body)
    method, _props, got = channel.basic_get("big", auto_ack=True)
    while method is None:  # the publish is asynchronous; get again until it is routed
        method, _props, got = channel.basic_get("big", auto_ack=True)
    assert got == body


@LOOPS
def test_pika_select_connection_round_trip(broker: RunningBroker) -> None:
    result: dict[str, Any] = {}
    done = threading.Event()

    def on_open(connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=on_channel)

    def on_channel(channel: Any) -> None:
        channel.queue_declare("sel", callback=lambda _f: on_declared(channel))

    def on_declared(channel: Any) -> None:
        channel.basic_consume("sel", on_message, auto_ack=True)
        channel.basic_publish("", "sel", b"select")

    def on_message(channel: Any, method: Any, props: Any, body: bytes) -> None:
        result["body"] = body
        channel.connection.close()

    def on_closed(connection: Any, reason: Exception) -> None:
        result["closed"] = reason
        connection.ioloop.stop()
        done.set()

    def on_failed(connection: Any, error: Exception) -> None:
        result["failed"] = error
        connection.ioloop.stop()
        done.set()

    connection = pika.SelectConnection(
        pika.URLParameters(broker.url),
        on_open_callback=on_open,
        on_open_error_callback=on_failed,
        on_close_callback=on_closed,
    )
    timer = threading.Timer(
        4.0, lambda: connection.ioloop.add_callback_threadsafe(connection.ioloop.stop)
    )
    timer.start()
    try:
        connection.ioloop.start()
    finally:
        timer.cancel()
        connection.ioloop.close()  # its wake-up socket pair
    assert done.is_set(), "SelectConnection did not finish in time"
    assert "failed" not in result
    assert result["body"] == b"select"
    assert isinstance(result["closed"], pika.exceptions.ConnectionClosedByClient)


@LOOPS
async def test_aio_pika_round_trip(broker: RunningBroker) -> None:
    connection = await aio_pika.connect(broker.url, timeout=5)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("aio", auto_delete=False)
        await channel.default_exchange.publish(
            aio_pika.Message(b"aio", headers={"n": 1}, message_id="m1"), routing_key="aio"
        )
        async with queue.iterator(timeout=3) as messages:
            async for message in messages:
                async with message.process():
                    assert message.body == b"aio"
                    assert message.headers == {"n": 1}
                    assert message.message_id == "m1"
                break
    assert broker.ready_count("aio") == 0


async def test_aio_pika_publisher_confirms_many(broker: RunningBroker) -> None:
    """Pipelined publishes with confirms: every one is confirmed and every one arrived."""
    connection = await aio_pika.connect(broker.url, timeout=5)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue("confirmed")
        async with asyncio.timeout(5):
            confirmations = await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(str(i).encode()), routing_key="confirmed"
                    )
                    for i in range(500)
                )
            )
        assert len(confirmations) == 500
        assert all(isinstance(c, commands.Basic.Ack) for c in confirmations)
    assert broker.ready_count("confirmed") == 500


@LOOPS
def test_kombu_producer_consumer(broker: RunningBroker) -> None:
    exchange = kombu.Exchange("kx", type="direct", durable=False)
    queue = kombu.Queue("kq", exchange, routing_key="k", durable=False)
    received: list[Any] = []
    with kombu.Connection(broker.url, connect_timeout=5) as conn:
        producer = kombu.Producer(conn.channel(), exchange=exchange, serializer="json")
        producer.publish({"x": 1}, routing_key="k", declare=[queue])

        def on_message(body: Any, message: Any) -> None:
            received.append(body)
            message.ack()

        with kombu.Consumer(conn, [queue], callbacks=[on_message], accept=["json"]):
            deadline = time.monotonic() + 3
            while not received and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=0.1)
                except TimeoutError:
                    continue
    assert received == [{"x": 1}]
    assert broker.ready_count("kq") == 0


def test_kombu_simple_queue(broker: RunningBroker) -> None:
    with kombu.Connection(broker.url, connect_timeout=5) as conn:
        queue = conn.SimpleQueue("simple")
        try:
            queue.put({"hello": "world"})
            message = queue.get(block=True, timeout=3)
            assert message.payload == {"hello": "world"}
            message.ack()
            assert queue.qsize() == 0
        finally:
            queue.close()


def test_pika_properties_and_header_types_survive(
    connect: Callable[..., pika.BlockingConnection],
) -> None:
    channel = connect().channel()
    channel.confirm_delivery()
    channel.queue_declare("props")
    headers = {
        "int": 1,
        "neg": -5,
        "big": 2**40,
        "bool": True,
        "str": "s",
        "list": [1, "a", False],
        "nested": {"x": {"y": 1}},
        "bytes": b"\x00\x01",
        "none": None,
        "dec": decimal.Decimal("1.25"),
        "ts": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
    }
    props = pika.BasicProperties(
        content_type="application/x-test",
        content_encoding="gzip",
        headers=headers,
        delivery_mode=2,
        priority=5,
        correlation_id="corr",
        reply_to="replies",
        expiration="60000",
        message_id="mid",
        timestamp=1_700_000_000,
        type="kind",
        user_id="guest",
        app_id="app",
    )
    channel.basic_publish("", "props", b"x", props)
    _method, got, _body = channel.basic_get("props", auto_ack=True)
    # cluster_id is deprecated in 0-9-1 ("must be empty") and not carried
    for name in (
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "timestamp",
        "type",
        "user_id",
        "app_id",
    ):
        assert getattr(got, name) == getattr(props, name), name
    assert got.headers == headers


def test_pika_empty_body(connect: Callable[..., pika.BlockingConnection]) -> None:
    connection = connect()
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare("empty-body")
    channel.basic_publish("", "empty-body", b"")
    channel.basic_publish("", "empty-body", b"after")
    inbox = Inbox(connection)
    channel.basic_consume("empty-body", inbox, auto_ack=True)
    assert inbox.wait(2)
    assert inbox.bodies == [b"", b"after"]


def test_deliveries_respect_small_negotiated_frame_max(
    connect: Callable[..., pika.BlockingConnection],
) -> None:
    connection = connect(frame_max=4096)  # pika refuses frames larger than this
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare("small-frames")
    body = bytes(range(256)) * 400  # 25 frames' worth
    channel.basic_publish("", "small-frames", body)
    inbox = Inbox(connection)
    channel.basic_consume("small-frames", inbox, auto_ack=True)
    assert inbox.wait(1)
    assert inbox.bodies == [body]
    assert channel.basic_get("small-frames") == (None, None, None)


def test_slow_consumer_gets_everything_in_order(
    broker: RunningBroker,
    connect: Callable[..., pika.BlockingConnection],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Far more than the socket buffers hold: the broker must pause and resume writing."""
    pauses: list[object] = []
    original = TCPShell.pause_writing

    def counting_pause_writing(self: TCPShell) -> None:
        pauses.append(self)
        original(self)

    monkeypatch.setattr(TCPShell, "pause_writing", counting_pause_writing)
    publisher = connect().channel()
    publisher.queue_declare("bulk")
    consumer_connection = connect()
    consumer = consumer_connection.channel()
    inbox = Inbox(consumer_connection)
    consumer.basic_consume("bulk", inbox, auto_ack=True)
    count, payload = 600, b"b" * 65536  # ~39 MB, not read until all is published
    for i in range(count):
        publisher.basic_publish("", "bulk", i.to_bytes(4, "big") + payload)
    publisher.confirm_delivery()
    publisher.basic_publish("", "bulk", b"end")  # confirmed: everything before is routed
    assert inbox.wait(count + 1, timeout=10)
    assert [int.from_bytes(b[:4], "big") for b in inbox.bodies[:count]] == list(range(count))
    assert inbox.bodies[count] == b"end"
    assert broker.ready_count("bulk") == 0
    assert pauses, "the test never filled the transport's write buffer"


def test_many_channels_open_and_close(connect: Callable[..., pika.BlockingConnection]) -> None:
    connection = connect()
    channels = [connection.channel() for _ in range(100)]
    assert len({ch.channel_number for ch in channels}) == 100
    for ch in channels:
        ch.close()
    channel = connection.channel()
    channel.queue_declare("after-many")
    assert channel.is_open


async def test_aio_pika_get_empty(broker: RunningBroker) -> None:
    connection = await aio_pika.connect(broker.url, timeout=5)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("aio-get")
        assert await queue.get(fail=False) is None
        with pytest.raises(aio_pika.exceptions.QueueEmpty):
            await queue.get()
        await channel.default_exchange.publish(aio_pika.Message(b"got"), routing_key="aio-get")
        message = await queue.get(timeout=3)
        assert message.body == b"got"
        await message.ack()


async def test_aio_pika_concurrent_publishers_and_consumers(broker: RunningBroker) -> None:
    """Several connections publish while several consume: every message once."""
    per_publisher, publishers, consumers = 200, 4, 3
    total = per_publisher * publishers
    received: list[bytes] = []
    all_in = asyncio.Event()

    async def consume(connection: aio_pika.abc.AbstractConnection) -> None:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=10)
        queue = await channel.declare_queue("shared")

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            received.append(message.body)
            await message.ack()
            if len(received) == total:
                all_in.set()

        await queue.consume(on_message)

    async def publish(connection: aio_pika.abc.AbstractConnection, n: int) -> None:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue("shared")
        for i in range(per_publisher):
            await channel.default_exchange.publish(
                aio_pika.Message(f"{n}-{i}".encode()), routing_key="shared"
            )

    connections = [
        await aio_pika.connect(broker.url, timeout=5) for _ in range(publishers + consumers)
    ]
    try:
        async with asyncio.timeout(10):
            await asyncio.gather(*(consume(c) for c in connections[:consumers]))
            await asyncio.gather(*(publish(c, n) for n, c in enumerate(connections[consumers:])))
            await all_in.wait()
    finally:
        for connection in connections:
            await connection.close()
    assert sorted(received) == sorted(
        f"{n}-{i}".encode() for n in range(publishers) for i in range(per_publisher)
    )
