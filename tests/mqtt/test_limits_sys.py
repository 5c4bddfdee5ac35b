"""The per-session queue limit (dead-lettered, counted) and the $SYS/broker topics."""

from __future__ import annotations

from collections.abc import Callable

import paho.mqtt.client as paho
import pika
import pytest

from moorage.protocols.mqtt.dead_letters import DEAD_LETTER_EXCHANGE
from moorage.protocols.mqtt.registry import registry_for
from tests.mqtt.conftest import MQTTBroker, PahoClient

Make = Callable[..., PahoClient]


def test_full_offline_session_dead_letters_the_oldest_and_counts_it(
    mqtt_broker: MQTTBroker, paho_client: Make
) -> None:
    mqtt_broker.broker.limits.mqtt_session_queue_limit = 3
    connection = pika.BlockingConnection(pika.URLParameters(mqtt_broker.amqp_url))
    ch = connection.channel()
    ch.queue_declare("kept-dead-letters")
    ch.queue_bind("kept-dead-letters", DEAD_LETTER_EXCHANGE, "#")
    sub = paho_client("offline", clean=False)
    sub.connect()
    sub.subscribe("t", 1)
    sub.disconnect()
    pub = paho_client("pub")
    pub.connect()
    for i in range(5):
        pub.publish("t", b"m%d" % i, 1)  # every one PUBACKed
    again = paho_client("offline", clean=False)
    again.connect()
    assert [again.get().payload for _ in range(3)] == [b"m2", b"m3", b"m4"]
    dead = []
    for _ in range(2):
        method, props, body = ch.basic_get("kept-dead-letters", auto_ack=True)
        assert method is not None
        assert props.headers["x-first-death-reason"] == "maxlen"
        dead.append(body)
    assert dead == [b"m0", b"m1"]
    connection.close()
    registry = registry_for(mqtt_broker.broker)
    assert mqtt_broker.call(lambda: registry.stats.dead_lettered) == 2
    assert mqtt_broker.call(registry.sys.values)["$SYS/broker/publish/messages/dropped"] == "2"


def test_session_queue_limit_zero_means_unlimited(
    mqtt_broker: MQTTBroker, paho_client: Make
) -> None:
    mqtt_broker.broker.limits.mqtt_session_queue_limit = 0
    sub = paho_client("offline", clean=False)
    sub.connect()
    sub.subscribe("t", 1)
    sub.disconnect()
    queue = mqtt_broker.broker.vhosts["/"].queues["mqtt-subscription-offlineqos1"]
    assert queue.options.max_length is None


@pytest.mark.parametrize("protocol", [paho.MQTTv311, paho.MQTTv5], ids=["3.1.1", "5.0"])
def test_sys_topics_are_retained_and_not_matched_by_hash(
    mqtt_broker: MQTTBroker, paho_client: Make, protocol: int
) -> None:
    registry = registry_for(mqtt_broker.broker)
    everything = paho_client("everything", protocol=protocol)
    everything.connect()
    everything.subscribe("#", 0)
    sys_sub = paho_client("sys", protocol=protocol)
    sys_sub.connect()
    sys_sub.subscribe("$SYS/broker/version", 0)
    version = sys_sub.get()  # retained: published at start
    assert version.retain
    assert version.payload.startswith(b"moorage ")
    sys_sub.subscribe("$SYS/broker/clients/connected", 0)
    assert sys_sub.get().retain
    pub = paho_client("pub", protocol=protocol)
    pub.connect()
    pub.publish("x", b"1", 0)
    assert everything.get().payload == b"1"
    mqtt_broker.call(registry.sys.publish)  # as the periodic timer does
    live = {}
    while len(live) < 2:
        m = sys_sub.get()
        live[m.topic] = m
    assert live["$SYS/broker/clients/connected"].payload == b"3"
    assert not live["$SYS/broker/clients/connected"].retain  # a live update
    assert int(registry.sys.values()["$SYS/broker/messages/received"]) >= 1
    # [MQTT-4.7.2-1]: "#" never sees $SYS, neither live nor retained
    everything.sync()
    assert everything.nothing_more()
    late = paho_client("late", protocol=protocol)
    late.connect()
    late.subscribe("#", 0)
    late.sync()
    assert late.nothing_more()
    stats = paho_client("stats", protocol=protocol)
    stats.connect()
    stats.subscribe("$SYS/broker/uptime", 0)
    assert stats.get().payload.endswith(b" seconds")
