"""Retention: expired paged-out messages are deleted from disk without being read.

The broker runs on a manual clock: expiry happens when the test advances it,
and store round trips are waited on with generous bounds (`until`).
"""

from __future__ import annotations

from moorage.broker.auth import UserDirectory
from moorage.broker.broker import Broker
from moorage.broker.clock import ManualClock
from moorage.broker.config import Limits, default_guest
from moorage.broker.message import Message, Properties
from moorage.storage.sqlite import SQLiteStore
from tests.broker.test_paging import Sink, session_for
from tests.harness import settle, until


async def _broker(tmp_path, **kwargs) -> Broker:
    broker = Broker(
        store=SQLiteStore(tmp_path / "r.db"),
        users=UserDirectory([default_guest()]),
        limits=Limits(queue_memory_limit=2_000),
        clock=ManualClock(),
        **kwargs,
    )
    await broker.start()
    return broker


def _fill(session, queue: str, count: int) -> None:
    for i in range(count):
        session.publish(
            "", Message("", queue, Properties(delivery_mode=2), b"%04d" % i + b"r" * 96)
        )


async def test_due_paged_entries_are_deleted_on_disk_not_read(tmp_path):
    broker = await _broker(tmp_path)
    _conn, session = session_for(broker, Sink())
    queue, _, _ = session.declare_queue("ttl", durable=True)
    head = Properties(delivery_mode=2, expiration="400")  # fills the memory window
    for i in range(30):
        session.publish("", Message("", "ttl", head, b"h%03d" % i + b"h" * 96))
    paged = Properties(delivery_mode=2, expiration="20")  # due first, but on disk
    for i in range(900):
        session.publish("", Message("", "ttl", paged, b"p%03d" % i + b"p" * 96))
    assert queue.tail_count >= 900
    broker.clock.advance(0.399)
    assert queue.message_count == 930
    # When the head expires the queue refills from disk: by then every paged
    # entry is due, so the store deletes them instead of returning them.
    broker.clock.advance(0.003)
    await until(lambda: queue.message_count == 0)
    assert broker.store.stats.expired >= 900  # only 30 were ever in memory
    assert (await broker.store.queue_stats("/", "ttl"))[0] == 0
    await broker.stop()


async def test_sweeper_deletes_due_entries_behind_a_non_expiring_head(tmp_path):
    broker = await _broker(tmp_path)
    _conn, session = session_for(broker, Sink())
    queue, _, _ = session.declare_queue("mixed", durable=True)
    _fill(session, "mixed", 100)  # no expiry: these fill the in-memory window
    for i in range(400):
        props = Properties(delivery_mode=2, expiration="30")
        session.publish("", Message("", "mixed", props, b"e%03d" % i + b"e" * 96))
    assert queue.tail_count >= 400
    broker.clock.advance(0.029)
    assert await broker.sweeper.sweep() == 0
    broker.clock.advance(0.002)
    assert await broker.sweeper.sweep() == 400
    assert queue.message_count == 100
    await broker.stop()


async def test_broker_wide_retention_applies_to_every_queue(tmp_path):
    broker = await _broker(tmp_path, retention=0.2)
    _conn, session = session_for(broker, Sink())
    queue, _, _ = session.declare_queue("plain", durable=True)
    _fill(session, "plain", 500)
    stored = await broker.store.read_queue("/", "plain", 0, 500)
    assert len(stored) == 500
    latest = broker.clock.wall() + 0.2
    assert [item.expires_at for item in stored if not 0 < item.expires_at <= latest] == []
    broker.clock.advance(0.199)
    await settle()
    assert queue.message_count == 500
    broker.clock.advance(0.003)
    await until(lambda: queue.message_count == 0)
    assert broker.store.stats.expired > 0
    assert (await broker.store.queue_stats("/", "plain"))[0] == 0
    await broker.stop()


async def test_dead_letter_queues_are_left_to_the_queue(tmp_path):
    broker = await _broker(tmp_path)
    _conn, session = session_for(broker, Sink())
    session.declare_queue("dlq", durable=True)
    session.declare_queue(
        "src", durable=True, arguments={"x-message-ttl": 10, "x-dead-letter-exchange": ""}
    )
    _fill(session, "src", 300)
    broker.clock.advance(0.05)
    assert await broker.sweeper.sweep() == 0  # must be read back and dead-lettered instead
    await broker.stop()
