"""basic.get on a queue paged out to the store: no get-empty while messages are there.

With a tiny `queue_memory_limit` almost every message of a durable queue is on
disk only; a client that drains it with basic.get until get-empty (a common
"process the backlog" loop) must get every message, in order, both while the
queue pages and after a restart, when only a first batch is in memory.
"""

from __future__ import annotations

import pika
import pytest
from pamqp import commands, frame

from tests.helpers import RawClient, make_config

pytestmark = pytest.mark.timeout(60)

COUNT = 3000
PERSISTENT = pika.BasicProperties(delivery_mode=2)


def paged_config(tmp_path):
    config = make_config(tmp_path / "data", queue_memory_limit=4096)
    config.storage.backend = "sqlite"
    config.storage.durability = "nosync"
    return config


def fill(url: str, queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        for i in range(COUNT):
            channel.basic_publish("", queue, b"%06d" % i + b"x" * 200, PERSISTENT)
        channel.confirm_delivery()  # every earlier publish is in the queue once this is on
        channel.basic_publish("", queue, b"%06d" % COUNT + b"x" * 200, PERSISTENT)
    finally:
        connection.close()


def get_until_empty(url: str, queue: str) -> list[int]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        seen: list[int] = []
        while True:
            method, _properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return seen
            seen.append(int(body[:6]))
    finally:
        connection.close()


def test_basic_get_drains_a_paged_queue_without_a_false_get_empty(start_broker, tmp_path):
    running = start_broker(paged_config(tmp_path))
    fill(running.url, "paged")
    assert get_until_empty(running.url, "paged") == list(range(COUNT + 1))


def test_basic_get_drains_a_recovered_queue_after_a_restart(start_broker, tmp_path):
    config = paged_config(tmp_path)
    first = start_broker(config)
    fill(first.url, "recovered")
    first.stop()
    second = start_broker(config)
    assert get_until_empty(second.url, "recovered") == list(range(COUNT + 1))


def test_pipelined_gets_are_answered_in_order_across_read_backs(start_broker, tmp_path):
    """Every get waits behind the one waiting for the store: the answers keep their order."""
    running = start_broker(paged_config(tmp_path))
    fill(running.url, "pipelined")
    with RawClient(running.port, timeout=20) as client:
        client.handshake()
        client.open_channel(1)
        get = frame.marshal(commands.Basic.Get(queue="pipelined", no_ack=True), 1)
        client.send(get * (COUNT + 2))  # one more than there are messages
        for i in range(COUNT + 1):
            ok = client.expect(commands.Basic.GetOk)
            assert int(client.read_content()[:6]) == i
            assert ok.message_count == COUNT - i
        client.expect(commands.Basic.GetEmpty)
