"""Publisher confirms under the ack window, with aio-pika against a real broker.

A persistent message that goes straight to a consumer waits unwritten for
that consumer's ack (`storage.ack_window`); acked in time, it is confirmed
on the ack and never written. These tests check that it really is not
written, that a message nobody consumes is confirmed without waiting for
the window, that an unacked one is confirmed after the window, and, with a
SIGKILL, that every confirmed message the consumer did not ack survives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aio_pika
import pika
import pytest

from moorage.broker.config import Config, ConfigError
from moorage.broker.daemon import make_store
from moorage.storage.sqlite import SQLiteStore
from tests.durability.broker_process import BrokerProcess
from tests.helpers import RunningBroker, free_port, make_config
from tests.mqtt.conftest import PahoClient

pytestmark = pytest.mark.timeout(60)

COUNT = 200
REPO = Path(__file__).resolve().parents[2]


def test_the_window_is_configured_in_storage(tmp_path: Path) -> None:
    assert Config().storage.ack_window == 0.1
    assert Config.load(REPO / "config" / "moorage.toml").storage.ack_window == 0.1
    path = tmp_path / "m.toml"
    path.write_text(f'[broker]\ndata_dir = "{tmp_path}"\n[storage]\nack_window = 0\n')
    config = Config.load(path)
    store = make_store(config)
    assert isinstance(store, SQLiteStore)
    assert store.ack_window == 0
    for bad in ("-1", '"soon"'):
        path.write_text(f"[storage]\nack_window = {bad}\n")
        with pytest.raises(ConfigError):
            Config.load(path)


def sqlite_broker(
    start_broker: Callable[..., RunningBroker], tmp_path: Path, window: float, *, mqtt: int = 0
):
    """An in-process broker on a SQLite store with `window`, and that store."""
    config = make_config(tmp_path / "data")
    config.storage.backend = "sqlite"
    config.storage.durability = "nosync"  # what is written is counted, not its speed
    config.storage.ack_window = window
    config.ports["mqtt"] = mqtt
    running = start_broker(config)
    assert running.daemon.broker is not None
    store = running.daemon.broker.store
    assert isinstance(store, SQLiteStore)
    return running, store


async def publish_confirmed(url: str, queue: str, count: int) -> None:
    """Publish `count` persistent messages at once; return when every one is confirmed."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = channel.default_exchange
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        str(i).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                    ),
                    routing_key=queue,
                )
                for i in range(count)
            )
        )
    finally:
        await connection.close()


async def test_messages_acked_at_once_are_confirmed_and_never_written(start_broker, tmp_path):
    running, store = sqlite_broker(start_broker, tmp_path, window=30.0)
    store.held_max_age = 30.0
    consumer = await aio_pika.connect(running.url)
    try:
        channel = await consumer.channel()
        queue = await channel.declare_queue("acked-at-once", durable=True)
        received: list[bytes] = []

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            received.append(message.body)
            await message.ack()

        await queue.consume(on_message)
        written = store.stats.messages_written
        await asyncio.wait_for(publish_confirmed(running.url, "acked-at-once", COUNT), 20)
        assert sorted(int(b) for b in received) == list(range(COUNT))
        assert store.stats.messages_written == written  # confirmed on the acks
        assert store.stats.ops_cancelled >= 2 * COUNT
    finally:
        await consumer.close()


async def test_messages_nobody_consumes_are_written_and_confirmed_at_once(start_broker, tmp_path):
    running, store = sqlite_broker(start_broker, tmp_path, window=30.0)
    store.held_max_age = 30.0
    connection = await aio_pika.connect(running.url)
    try:
        channel = await connection.channel()
        await channel.declare_queue("backlog", durable=True)
        # Within the 20 s timeout, far less than the 30 s window: not held.
        await asyncio.wait_for(publish_confirmed(running.url, "backlog", COUNT), 20)
        assert store.stats.messages_written >= COUNT
    finally:
        await connection.close()


async def test_unacked_deliveries_are_written_and_confirmed_after_the_window(
    start_broker, tmp_path
):
    window = 0.3
    running, store = sqlite_broker(start_broker, tmp_path, window=window)
    consumer = await aio_pika.connect(running.url)
    try:
        channel = await consumer.channel()
        queue = await channel.declare_queue("never-acked", durable=True)
        received: list[aio_pika.abc.AbstractIncomingMessage] = []

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            received.append(message)  # never acked

        await queue.consume(on_message)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(publish_confirmed(running.url, "never-acked", COUNT), 20)
        assert loop.time() - started >= window * 0.9  # held for the window first
        assert store.stats.messages_written >= COUNT
        assert len(received) == COUNT
    finally:
        await consumer.close()


async def test_kill_9_keeps_every_confirmed_message_left_unacked(tmp_path):
    process = BrokerProcess(tmp_path / "data", extra_config="ack_window = 0.2\n")
    process.start()
    url = f"amqp://guest:guest@127.0.0.1:{process.port}/"
    try:
        consumer = await aio_pika.connect(url)
        channel = await consumer.channel()
        await channel.set_qos(prefetch_count=0)
        queue = await channel.declare_queue("kept", durable=True)
        acked: set[int] = set()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            number = int(message.body)
            if number % 2 == 0:  # the even ones are acked, within the window
                acked.add(number)
                await message.ack()

        await queue.consume(on_message)
        await asyncio.wait_for(publish_confirmed(url, "kept", COUNT), 20)
        process.kill()  # every message is confirmed; no clean shutdown
        await asyncio.wait_for(consumer.close(), 5)

        process.start()
        survivor = await aio_pika.connect(url)
        try:
            channel = await survivor.channel()
            queue = await channel.declare_queue("kept", durable=True)
            kept: set[int] = set()
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                kept.add(int(message.body))
        finally:
            await survivor.close()
        # Odd ones were confirmed and never acked: all there. An ack may be
        # lost in a crash (the message comes back), a confirmed message may not.
        assert {n for n in range(COUNT) if n % 2} <= kept
        assert kept <= set(range(COUNT))
    finally:
        process.kill()


def test_mqtt_qos1_to_a_persistent_session_is_acked_without_a_write(start_broker, tmp_path):
    """The window is the store's: MQTT's PUBACK follows the subscriber's PUBACK the same way."""
    port = free_port()
    _running, store = sqlite_broker(start_broker, tmp_path, window=30.0, mqtt=port)
    store.held_max_age = 30.0
    subscriber = PahoClient(port, "window-sub", clean=False)
    publisher = PahoClient(port, "window-pub")
    try:
        subscriber.connect()
        subscriber.subscribe("window/#", qos=1)
        publisher.connect()
        written = store.stats.messages_written
        for i in range(50):  # each waits for its PUBACK: well under the 30 s window
            publisher.publish("window/t", b"%d" % i, qos=1)
        assert sorted(int(subscriber.get().payload) for _ in range(50)) == list(range(50))
        assert store.stats.messages_written == written
    finally:
        subscriber.stop()
        publisher.stop()


def test_a_transactional_consumer_is_not_held_back_by_the_window(start_broker, tmp_path):
    """tx.commit-ok waits for its acks to be written: the window must not delay it."""
    running, store = sqlite_broker(start_broker, tmp_path, window=30.0)
    store.held_max_age = 30.0
    connection = pika.BlockingConnection(pika.URLParameters(running.url))
    try:
        channel = connection.channel()
        channel.queue_declare("tx-acked", durable=True)
        channel.confirm_delivery()
        for i in range(20):  # nobody consumes yet: written at once
            channel.basic_publish("", "tx-acked", b"%d" % i, pika.BasicProperties(delivery_mode=2))
        consumer = connection.channel()
        consumer.tx_select()
        consumer.basic_qos(prefetch_count=1)
        seen = []
        # Each commit-ok would take the whole 30 s window if the batch were held.
        for method, _properties, body in consumer.consume("tx-acked", inactivity_timeout=5):
            assert method is not None
            consumer.basic_ack(method.delivery_tag)
            consumer.tx_commit()
            seen.append(int(body))
            if len(seen) == 20:
                break
        assert seen == list(range(20))
    finally:
        connection.close()
