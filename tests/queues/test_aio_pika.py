"""The queue features through aio-pika (asyncio client), one test per feature."""

from __future__ import annotations

import asyncio
import time

import aio_pika
import pytest

pytestmark = pytest.mark.timeout(120)

BOUND = 30.0  # seconds to wait for what must happen: generous, never a speed


@pytest.fixture
async def channel(broker):
    connection = await aio_pika.connect(broker.url)
    chan = await connection.channel()
    yield chan
    await connection.close()


async def get_one(queue: aio_pika.abc.AbstractQueue, *, no_ack: bool = True):
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        message = await queue.get(no_ack=no_ack, fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.02)
    raise AssertionError(f"nothing on {queue.name}")


async def until(predicate) -> None:
    deadline = time.monotonic() + BOUND
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_ttl_dead_letter(channel):
    dlq = await channel.declare_queue("a-dlq")
    await channel.declare_queue(
        "a-ttl",
        arguments={
            "x-message-ttl": 50,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "a-dlq",
        },
    )
    await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key="a-ttl")
    message = await get_one(dlq)
    assert message.headers["x-death"][0]["reason"] == "expired"


async def test_reject_publish_nack(channel):
    await channel.declare_queue(
        "a-full", arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    await channel.default_exchange.publish(aio_pika.Message(b"1"), routing_key="a-full")
    with pytest.raises(aio_pika.exceptions.DeliveryError):
        await channel.default_exchange.publish(aio_pika.Message(b"2"), routing_key="a-full")


async def test_delivery_limit(channel):
    dlq = await channel.declare_queue("a-poison-dlq")
    queue = await channel.declare_queue(
        "a-poison",
        arguments={
            "x-delivery-limit": 2,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "a-poison-dlq",
        },
    )
    await channel.default_exchange.publish(aio_pika.Message(b"p"), routing_key="a-poison")
    for _ in range(2):
        message = await get_one(queue, no_ack=False)
        await message.nack(requeue=True)
    assert (await get_one(dlq)).headers["x-death"][0]["reason"] == "delivery_limit"


async def test_priority(channel):
    queue = await channel.declare_queue("a-prio", arguments={"x-max-priority": 3})
    for body, priority in ((b"l", 0), (b"h", 3), (b"m", 2)):
        await channel.default_exchange.publish(
            aio_pika.Message(body, priority=priority), routing_key="a-prio"
        )
    assert [(await get_one(queue)).body for _ in range(3)] == [b"h", b"m", b"l"]


async def test_single_active_consumer(broker):
    c1 = await aio_pika.connect(broker.url)
    c2 = await aio_pika.connect(broker.url)
    ch1, ch2 = await c1.channel(), await c2.channel()
    q1 = await ch1.declare_queue("a-sac", arguments={"x-single-active-consumer": True})
    q2 = await ch2.declare_queue("a-sac", arguments={"x-single-active-consumer": True})
    got1: list[bytes] = []
    got2: list[bytes] = []

    async def on1(message):
        got1.append(message.body)

    async def on2(message):
        got2.append(message.body)

    await q1.consume(on1, no_ack=True)
    await q2.consume(on2, no_ack=True)
    await ch1.default_exchange.publish(aio_pika.Message(b"1"), routing_key="a-sac")
    await ch1.default_exchange.publish(aio_pika.Message(b"2"), routing_key="a-sac")
    await until(lambda: len(got1) == 2)
    assert got1 == [b"1", b"2"]
    assert got2 == []
    await c1.close()
    await ch2.default_exchange.publish(aio_pika.Message(b"3"), routing_key="a-sac")
    await until(lambda: got2)
    assert got2 == [b"3"]
    await c2.close()


async def test_delayed_exchange_and_delivery_delay(channel):
    exchange = await channel.declare_exchange(
        "a-delayed", "x-delayed-message", arguments={"x-delayed-type": "fanout"}
    )
    out = await channel.declare_queue("a-delayed-out")
    await out.bind(exchange)
    start = time.monotonic()
    await exchange.publish(aio_pika.Message(b"d", headers={"x-delay": 200}), routing_key="")
    assert (await get_one(out)).body == b"d"
    assert time.monotonic() - start >= 0.2
    sqs = await channel.declare_queue("a-sqs-delay", arguments={"x-delivery-delay": 150})
    start = time.monotonic()
    await channel.default_exchange.publish(aio_pika.Message(b"s"), routing_key="a-sqs-delay")
    assert (await get_one(sqs)).body == b"s"
    assert time.monotonic() - start >= 0.15


async def test_fifo_groups_and_dedup(channel):
    queue = await channel.declare_queue("a.fifo", durable=True, arguments={"x-queue-type": "fifo"})
    for body, group, dedup in (
        (b"a1", "a", "1"),
        (b"b1", "b", "2"),
        (b"a2", "a", "3"),
        (b"dup", "a", "1"),
    ):
        await channel.default_exchange.publish(
            aio_pika.Message(
                body, headers={"x-message-group-id": group, "x-deduplication-id": dedup}
            ),
            routing_key="a.fifo",
        )
    first = await queue.get(no_ack=False)
    second = await queue.get(no_ack=False)
    assert (first.body, second.body) == (b"a1", b"b1")
    assert await queue.get(no_ack=False, fail=False) is None  # both groups in flight
    await first.ack()
    third = await get_one(queue)
    assert third.body == b"a2"
    await second.ack()
    assert await queue.get(no_ack=True, fail=False) is None  # the duplicate never queued


async def test_consumer_timeout(channel):
    queue = await channel.declare_queue("a-vis", arguments={"x-consumer-timeout": 150})
    await channel.default_exchange.publish(aio_pika.Message(b"v"), routing_key="a-vis")
    first = await get_one(queue, no_ack=False)
    # back in the queue once the timeout passed (its exact instant: tests/broker/test_clock.py)
    again = await get_one(queue, no_ack=False)
    assert again.body == b"v"
    assert again.redelivered
    await first.ack()  # late: ignored, the channel stays open
    await again.ack()
    await channel.declare_queue("a-vis", passive=True)
