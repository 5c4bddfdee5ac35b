"""Message counters and rates (`broker.stats`) seen through the management API and /metrics.

A broker on a `ManualClock` with real clients (pika, paho): counts are checked
against what the clients did, and rates against a known number of messages
between two sampler ticks that the test fires by moving the clock.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pika
import pytest
from prometheus_client.parser import text_string_to_metric_families

from moorage.broker.clock import ManualClock
from moorage.broker.stats import FIELDS, MessageStats, StatsSnapshot
from tests.helpers import RunningBroker, free_port, make_config
from tests.management.test_api import Api

TIMEOUT = 10


@pytest.fixture
def clocked(tmp_path: Path, start_broker: Callable[..., RunningBroker]) -> RunningBroker:
    config = make_config(tmp_path)
    config.ports["http"] = free_port()
    config.ports["mqtt"] = free_port()
    return start_broker(config, clock=ManualClock())


@pytest.fixture
def api(clocked: RunningBroker) -> Api:
    return Api(clocked.daemon.ports["http"])


@pytest.fixture
def amqp(clocked: RunningBroker) -> Iterator[pika.BlockingConnection]:
    connection = pika.BlockingConnection(pika.URLParameters(clocked.url))
    yield connection
    if connection.is_open:
        connection.close()


def tick(running: RunningBroker) -> None:
    """Move the clock one sampling interval; return once the sampler has run."""
    clock = running.clock
    assert isinstance(clock, ManualClock)
    running.call(clock.advance, running.core.rates.interval)
    running.call(lambda: None)  # queued behind the sampler's wake-up: it has sampled


def metric_values(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as r:
        text = r.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def wait_for(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_counts_follow_what_clients_did(
    clocked: RunningBroker, api: Api, amqp: pika.BlockingConnection
) -> None:
    channel = amqp.channel()
    channel.confirm_delivery()
    channel.queue_declare("work")
    for i in range(5):
        channel.basic_publish("", "work", f"m{i}".encode())
    channel.basic_publish("amq.direct", "nowhere", b"dropped")  # reaches no queue
    method, _props, _body = channel.basic_get("work")  # manual ack
    assert method is not None
    channel.basic_ack(method.delivery_tag)
    channel.basic_get("work", auto_ack=True)
    consumer = amqp.channel()
    consumer.basic_qos(prefetch_count=10)
    seen: list[int] = []

    def on_message(ch: Any, deliver: Any, _props: Any, _body: bytes) -> None:
        seen.append(deliver.delivery_tag)

    consumer.basic_consume("work", on_message)
    wait_until = time.monotonic() + TIMEOUT
    while len(seen) < 3 and time.monotonic() < wait_until:
        amqp.process_data_events(time_limit=0.05)
    assert len(seen) == 3
    consumer.basic_nack(seen[0], requeue=True)  # comes back redelivered
    while len(seen) < 4 and time.monotonic() < wait_until:
        amqp.process_data_events(time_limit=0.05)
    assert len(seen) == 4
    consumer.basic_ack(0, multiple=True)
    amqp.process_data_events(time_limit=0.05)

    def queue_stats() -> dict[str, Any]:
        stats: dict[str, Any] = api.get("/queues/%2F/work")["message_stats"]
        return stats

    wait_for(lambda: queue_stats()["ack"] == 4)
    q = queue_stats()
    assert (q["publish"], q["get"], q["get_no_ack"], q["deliver"]) == (5, 1, 1, 4)
    assert (q["redeliver"], q["deliver_get"], q["ack"]) == (1, 6, 4)
    assert q["publish_details"] == {"rate": 0.0}  # no two samples yet

    overview = api.get("/overview")["message_stats"]
    assert (overview["publish"], overview["confirm"], overview["drop_unroutable"]) == (6, 6, 1)
    assert (overview["deliver_get"], overview["ack"], overview["redeliver"]) == (6, 4, 1)

    default = api.get("/exchanges/%2F/amq.default")["message_stats"]
    assert (default["publish_in"], default["publish_out"]) == (5, 5)
    direct = api.get("/exchanges/%2F/amq.direct")["message_stats"]
    assert (direct["publish_in"], direct["publish_out"]) == (1, 0)

    per_channel = sorted(
        (c["message_stats"]["publish"], c["message_stats"]["confirm"],
         c["message_stats"]["deliver"], c["message_stats"]["ack"])
        for c in api.get("/channels")
    )  # fmt: skip
    assert per_channel == [(0, 0, 4, 3), (6, 6, 0, 1)]  # the consumer's, the publisher's
    (connection,) = [c for c in api.get("/connections") if c["protocol"] == "AMQP 0-9-1"]
    assert connection["message_stats"]["publish"] == 6
    assert connection["message_stats"]["ack"] == 4

    metrics = metric_values(clocked.daemon.ports["http"])
    assert metrics["rabbitmq_global_messages_received_total"] == 6
    assert metrics["rabbitmq_global_messages_confirmed_total"] == 6
    assert metrics["rabbitmq_global_messages_routed_total"] == 5
    assert metrics["rabbitmq_global_messages_unroutable_dropped_total"] == 1
    assert metrics["rabbitmq_global_messages_delivered_total"] == 6
    assert metrics["rabbitmq_global_messages_redelivered_total"] == 1
    assert metrics["rabbitmq_global_messages_acknowledged_total"] == 4
    assert metrics["rabbitmq_queue_messages_published_total"] == 5

    # the counts outlive the connection that made them (they never go down)
    amqp.close()
    wait_for(lambda: not api.get("/connections"))
    overview = api.get("/overview")["message_stats"]
    assert (overview["publish"], overview["ack"]) == (6, 4)
    assert (
        metric_values(clocked.daemon.ports["http"])["rabbitmq_global_messages_received_total"] == 6
    )


def test_rates_over_the_last_sample_interval(
    clocked: RunningBroker, api: Api, amqp: pika.BlockingConnection
) -> None:
    channel = amqp.channel()
    channel.queue_declare("rated")
    channel.basic_publish("", "rated", b"before")
    tick(clocked)  # first sample: no rate yet
    for _ in range(10):
        channel.basic_publish("", "rated", b"x")
    wait_for(lambda: api.get("/queues/%2F/rated")["message_stats"]["publish"] == 11)
    tick(clocked)  # second sample, one interval (5 s) later: 10 messages in 5 s
    queue = api.get("/queues/%2F/rated")["message_stats"]
    assert queue["publish_details"] == {"rate": 2.0}
    overview = api.get("/overview")["message_stats"]
    assert overview["publish_details"] == {"rate": 2.0}
    assert api.get("/exchanges/%2F/amq.default")["message_stats"]["publish_in_details"] == {
        "rate": 2.0
    }
    tick(clocked)  # nothing happened in the last interval
    assert api.get("/queues/%2F/rated")["message_stats"]["publish_details"] == {"rate": 0.0}


def test_publish_out_counts_each_queue_reached(api: Api, amqp: pika.BlockingConnection) -> None:
    """RabbitMQ counts an exchange's publish_out per queue the message reached."""
    channel = amqp.channel()
    for name in ("fan-1", "fan-2"):
        channel.queue_declare(name)
        channel.queue_bind(name, "amq.fanout")
    channel.basic_publish("amq.fanout", "", b"to both")
    wait_for(lambda: api.get("/queues/%2F/fan-2")["messages"] == 1)
    stats = api.get("/exchanges/%2F/amq.fanout")["message_stats"]
    assert (stats["publish_in"], stats["publish_out"]) == (1, 2)
    assert api.get("/overview")["message_stats"]["publish"] == 1


def test_mqtt_publishes_and_confirms_count(clocked: RunningBroker, api: Api) -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="counter")
    client.username_pw_set("guest", "guest")
    client.connect("127.0.0.1", clocked.daemon.ports["mqtt"])
    client.loop_start()
    try:
        infos = [client.publish("a/b", b"x", qos=1) for _ in range(3)]
        for info in infos:
            info.wait_for_publish(TIMEOUT)
        (connection,) = [c for c in api.get("/connections") if c["protocol"] == "MQTT"]
        stats = connection["message_stats"]
        assert (stats["publish"], stats["confirm"], stats["drop_unroutable"]) == (3, 3, 3)
    finally:
        client.loop_stop()
        client.disconnect()


def test_snapshot_arithmetic() -> None:
    stats = MessageStats()
    assert stats.snapshot().rate("publish") == 0.0
    stats.sample(100.0)
    stats.publish += 7
    stats.deliver += 2
    stats.get_no_ack += 1
    stats.sample(102.0)
    snap = stats.snapshot()
    assert snap.count("deliver_get") == 3
    assert snap.rate("publish") == 3.5
    assert snap.rate("deliver_get") == 1.5
    assert snap.message_stats(["publish"]) == {"publish": 7, "publish_details": {"rate": 3.5}}
    total = MessageStats()
    total.set_sum([stats, stats])
    assert total.publish == 14
    total.add(stats)
    assert total.snapshot() == StatsSnapshot(tuple(getattr(total, f) for f in FIELDS))
