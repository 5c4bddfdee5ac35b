"""The memory alarm: publishers are blocked while queued messages hold too much RAM.

The real-client tests flood a non-durable queue (nothing pages) past a small
watermark with pika, then check what RabbitMQ users rely on: the queue stops
growing, the publisher is told `connection.blocked`, a consumer on another
connection is not blocked and drains the queue, the alarm clears, publishing
carries on and every message arrives once, in order.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pika
import pytest

from moorage.broker.config import Config, ConfigError
from moorage.broker.memory import ENTRY_OVERHEAD, watermark_bytes
from tests.helpers import make_config

WATERMARK = 4 * 1024 * 1024
BODY = 4096


def test_watermark_setting_is_a_fraction_of_ram_or_bytes() -> None:
    assert watermark_bytes(0) == 0
    assert watermark_bytes(0.4, total=1000) == 400
    assert watermark_bytes(1.0, total=1000) == 1000
    assert watermark_bytes(5_000_000, total=1000) == 5_000_000
    assert watermark_bytes(0.4) > 0  # this machine's RAM is known


def test_config_key(tmp_path: Path) -> None:
    assert Config().limits.memory_high_watermark == 0.4
    path = tmp_path / "m.toml"
    path.write_text("[limits]\nmemory_high_watermark = 1048576\n")
    assert Config.load(path).limits.memory_high_watermark == 1048576
    path.write_text('[limits]\nmemory_high_watermark = "lots"\n')
    with pytest.raises(ConfigError):
        Config.load(path)


def _wait(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def flood(channel: Any, queue: str, count: int) -> tuple[threading.Thread, threading.Event]:
    """Publish `count` numbered BODY-byte messages from a thread; the event is set when done."""
    published = threading.Event()

    def publish() -> None:
        for i in range(count):
            channel.basic_publish("", queue, i.to_bytes(4, "big") + b"x" * (BODY - 4))
        published.set()

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    return thread, published


def memory_alarm(running: Any) -> bool:
    return bool(running.call(lambda: running.core.flow.memory_alarm))


def test_publisher_is_blocked_and_resumes_when_consumers_drain(tmp_path, start_broker) -> None:
    running = start_broker(make_config(tmp_path, memory_high_watermark=WATERMARK))
    count = 16 * WATERMARK // BODY  # sixteen times what the watermark allows
    params = pika.URLParameters(running.url)
    params.heartbeat = 1  # held longer than two heartbeats: the broker must not drop it
    publisher = pika.BlockingConnection(params)
    events: list[str] = []
    publisher.add_on_connection_blocked_callback(
        lambda _c, frame: events.append("blocked:" + frame.method.reason)
    )
    publisher.add_on_connection_unblocked_callback(lambda _c, _f: events.append("unblocked"))
    channel = publisher.channel()
    channel.queue_declare("flood", auto_delete=False)
    thread, published = flood(channel, "flood", count)

    def alarm() -> bool:
        return memory_alarm(running)

    _wait(alarm)
    # the queue stops growing well short of everything: the publisher is held
    time.sleep(3.0)  # > 2 heartbeats: a held client must not be timed out
    held = running.ready_count("flood")
    time.sleep(0.5)
    assert running.ready_count("flood") == held < count
    assert not published.is_set()
    used = running.call(lambda: running.core.memory.used)
    assert used < 8 * WATERMARK, used  # overshoot: what arrived within one check interval

    # a consumer on its own connection is not blocked and drains the queue
    consumer = pika.BlockingConnection(pika.URLParameters(running.url))
    receiving = consumer.channel()
    receiving.basic_qos(prefetch_count=500)
    received: list[int] = []
    for method, _props, body in receiving.consume("flood", inactivity_timeout=60):
        assert method is not None, f"stalled after {len(received)} of {count}"
        received.append(int.from_bytes(body[:4], "big"))
        receiving.basic_ack(method.delivery_tag)
        if len(received) == count:
            break
    receiving.cancel()
    assert received == list(range(count))
    thread.join(60)
    assert published.is_set()
    _wait(lambda: not alarm())  # the queue is empty: the next check clears it
    deadline = time.monotonic() + 30
    while (not events or events[-1] != "unblocked") and time.monotonic() < deadline:
        publisher.process_data_events(0.1)  # returns after the first event it dispatches
    # the alarm may set again while the publisher catches up: always in pairs
    assert events[:2] == ["blocked:low on memory", "unblocked"]
    assert events == ["blocked:low on memory", "unblocked"] * (len(events) // 2)
    assert publisher.is_open
    publisher.close()
    consumer.close()


def test_queue_memory_counts_bodies_and_overhead(tmp_path, start_broker) -> None:
    running = start_broker(make_config(tmp_path, memory_high_watermark=0))
    connection = pika.BlockingConnection(pika.URLParameters(running.url))
    channel = connection.channel()
    channel.queue_declare("m")
    for _ in range(10):
        channel.basic_publish("", "m", b"y" * 1000)
    _wait(lambda: running.ready_count("m") == 10)
    queue_bytes = running.call(
        lambda: running.core.vhosts["/"].queues["m"].memory_bytes(ENTRY_OVERHEAD)
    )
    assert queue_bytes == 10 * (1000 + ENTRY_OVERHEAD)
    channel.queue_declare("m2")
    channel.basic_publish("", "m2", b"z" * 500)
    _wait(lambda: running.ready_count("m2") == 1)
    # the monitor's sum over every queue (`memory.queued_bytes`) is each queue's
    total = running.call(running.core.queued_memory)
    assert total == 10 * (1000 + ENTRY_OVERHEAD) + 500 + ENTRY_OVERHEAD
    assert not running.call(lambda: running.core.memory.periodic.running)  # 0 = off
    connection.close()


def test_unacked_deliveries_count_towards_the_watermark(tmp_path, start_broker) -> None:
    """A consumer with no prefetch limit takes every message and acks late: the queue
    is empty, but the messages are still in the broker's memory."""
    running = start_broker(make_config(tmp_path, memory_high_watermark=WATERMARK))
    count = 4 * WATERMARK // BODY
    consumer = pika.BlockingConnection(pika.URLParameters(running.url))
    receiving = consumer.channel()
    receiving.queue_declare("unacked")
    tags: list[int] = []
    receiving.basic_consume(
        "unacked", lambda _ch, method, _props, _body: tags.append(method.delivery_tag)
    )
    publisher = pika.BlockingConnection(pika.URLParameters(running.url))
    channel = publisher.channel()
    thread, published = flood(channel, "unacked", count)

    def alarm() -> bool:
        return memory_alarm(running)

    deadline = time.monotonic() + 20
    while not alarm():
        assert time.monotonic() < deadline, f"no alarm with {len(tags)} unacked"
        consumer.process_data_events(0.05)
    assert not published.is_set()
    unacked = running.call(lambda: running.core.memory.unacked_bytes)
    assert unacked > WATERMARK // 2, unacked  # the queue itself holds little
    # acking releases the memory: the alarm clears and the publisher finishes
    acked = 0
    while acked < count:
        assert time.monotonic() < deadline + 20, f"stalled at {len(tags)} of {count}"
        if tags and tags[-1] > acked:
            acked = tags[-1]
            receiving.basic_ack(acked, multiple=True)
        consumer.process_data_events(0.05)
    thread.join(60)
    assert published.is_set()
    _wait(lambda: running.call(lambda: running.core.memory.unacked_bytes) == 0)
    _wait(lambda: not alarm())
    publisher.close()
    consumer.close()
