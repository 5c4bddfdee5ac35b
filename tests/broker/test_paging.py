"""Queues larger than memory: paging out past the limit, reading back in order."""

from __future__ import annotations

import asyncio

from moorage.broker.auth import UserDirectory
from moorage.broker.broker import Broker
from moorage.broker.config import Limits, default_guest
from moorage.broker.message import Message, Properties
from moorage.storage import MemoryStore


class Sink:
    """Collects deliveries; acks are left to the test."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[int, bool, bytes]] = []

    def deliver(self, consumer_tag, delivery_tag, redelivered, message):
        self.deliveries.append((delivery_tag, redelivered, message.body))

    def returned(self, message, reply_code, reply_text):
        raise AssertionError("unexpected return")

    def cancelled(self, consumer_tag, error):
        raise AssertionError("unexpected cancel")


async def make_broker(store, limit: int) -> Broker:
    guest = default_guest()
    broker = Broker(
        store=store, users=UserDirectory([guest]), limits=Limits(queue_memory_limit=limit)
    )
    await broker.start()
    return broker


def session_for(broker: Broker, sink: Sink):
    guest = broker.users.users["guest"]
    conn = broker.connect("/", guest, protocol="test", peer="test")
    return conn, conn.open_session(sink)


def persistent(body: bytes) -> Message:
    return Message("", "big", Properties(delivery_mode=2), body)


async def drain(session, sink: Sink, total: int) -> list[bytes]:
    """Ack what arrives until `total` messages were seen, waiting for refills."""
    seen: list[bytes] = []
    for _ in range(2000):
        while sink.deliveries:
            tag, _redelivered, body = sink.deliveries.pop(0)
            seen.append(body)
            session.ack(tag)
        if len(seen) >= total:
            break
        await asyncio.sleep(0)
    return seen


async def test_queue_pages_out_past_limit_and_drains_in_order():
    broker = await make_broker(MemoryStore(), limit=10_000)
    sink = Sink()
    _conn, session = session_for(broker, sink)
    queue, _, _ = session.declare_queue("big", durable=True)
    for i in range(5000):
        session.publish("", persistent(b"%07d" % i + b"x" * 93))
    # 100-byte bodies, 10 kB limit: about a hundred in memory, the rest on disk only
    assert len(queue.ready) <= 110
    assert queue.message_count == 5000
    session.qos(50, global_=True)
    consumer = session.consume("big")
    consumer.start()
    seen = await drain(session, sink, 5000)
    assert [b[:7] for b in seen] == [b"%07d" % i for i in range(5000)]
    assert queue.message_count == 0
    await broker.stop()


async def test_transient_messages_keep_their_place_behind_paged_ones():
    broker = await make_broker(MemoryStore(), limit=1000)
    sink = Sink()
    _conn, session = session_for(broker, sink)
    queue, _, _ = session.declare_queue("big", durable=True)
    bodies = []
    for i in range(300):
        body = b"%04d" % i + b"y" * 96
        bodies.append(body)
        message = persistent(body) if i % 3 else Message("", "big", Properties(), body)
        session.publish("", message)
    assert queue.tail, "the queue should have paged out"
    consumer = session.consume("big")
    consumer.start()
    assert await drain(session, sink, 300) == bodies
    await broker.stop()


async def test_recovery_reads_a_first_batch_only():
    store = MemoryStore()
    broker = await make_broker(store, limit=5_000)
    sink = Sink()
    _conn, session = session_for(broker, sink)
    session.declare_queue("big", durable=True)
    for i in range(3000):
        session.publish("", persistent(b"%05d" % i + b"z" * 45))
    await broker.stop()
    # a new broker on the same store: everything comes back, lazily, in order
    broker2 = await make_broker(store, limit=5_000)
    queue = broker2.vhosts["/"].queues["big"]
    assert queue.message_count == 3000
    assert len(queue.ready) < 3000
    sink2 = Sink()
    _conn2, session2 = session_for(broker2, sink2)
    session2.consume("big").start()
    seen = await drain(session2, sink2, 3000)
    assert [b[:5] for b in seen] == [b"%05d" % i for i in range(3000)]
    await broker2.stop()


async def test_purge_removes_paged_out_entries_from_the_store():
    store = MemoryStore()
    broker = await make_broker(store, limit=1_000)
    _conn, session = session_for(broker, Sink())
    session.declare_queue("big", durable=True)
    for i in range(500):
        session.publish("", persistent(b"%05d" % i + b"p" * 95))
    assert session.purge_queue("big") == 500
    assert (await store.queue_stats("/", "big"))[0] == 0
    await broker.stop()
