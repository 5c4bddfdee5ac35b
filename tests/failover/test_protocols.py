"""Failover for STOMP (receipts) and MQTT (QoS 1, persistent sessions).

One SIGKILL of the primary at a random moment while a stomp.py client sends
persistent messages with receipts and a paho-mqtt client publishes at QoS 1
to a persistent session's subscription; the witness promotes the standby.
Every message the primary acknowledged (RECEIPT, PUBACK) must reach its
consumer: the STOMP queue is drained on the new primary, and the MQTT
subscriber reconnects to it with its session and receives the rest.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
import stomp
import stomp.exception

from tests.failover.cluster import Node, wait_for
from tests.mqtt.conftest import PahoClient
from tests.stomp.conftest import Collector


def stomp_connect(node: Node) -> tuple[Any, Collector]:
    conn = stomp.Connection12([("127.0.0.1", node.stomp)], auto_content_length=True)
    collector = Collector()
    conn.set_listener("collector", collector)
    conn.connect("guest", "guest", wait=True)
    return conn, collector


class StompSender(threading.Thread):
    """Sends persistent messages, each waiting for its RECEIPT, until the link dies."""

    def __init__(self, node: Node) -> None:
        super().__init__(daemon=True)
        self.node = node
        self.receipted: list[int] = []
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            conn, collector = stomp_connect(self.node)
            self.ready.set()
            for i in range(1_000_000):
                conn.send(
                    "/queue/stomp-jobs", str(i), headers={"persistent": "true", "receipt": f"r{i}"}
                )
                if not collector.wait(lambda i=i: f"r{i}" in collector.receipts, timeout=10):
                    return
                self.receipted.append(i)
        # AttributeError: stomp.py's receiver thread drops the transport's socket when
        # the broker dies, under a send in progress on this thread (a stomp.py race)
        except (stomp.exception.StompException, OSError, AttributeError):
            pass
        finally:
            self.ready.set()


class MqttPublisher(threading.Thread):
    """Publishes at QoS 1, each waiting for its PUBACK, until the link dies."""

    def __init__(self, node: Node) -> None:
        super().__init__(daemon=True)
        self.client = PahoClient(node.mqtt, "failover-pub")
        self.acked: list[int] = []

    def run(self) -> None:
        try:
            self.client.connect()
            for i in range(1_000_000):
                info = self.client.client.publish("failover/jobs", str(i), qos=1)
                info.wait_for_publish(10)
                if not info.is_published():
                    return
                self.acked.append(i)
        except (RuntimeError, ValueError, OSError):
            pass


def mqtt_received(client: PahoClient) -> set[int]:
    bodies: set[int] = set()
    while not client.messages.empty():
        bodies.add(int(client.messages.get().payload))
    return bodies


@pytest.mark.timeout(90)
def test_stomp_receipts_and_mqtt_pubacks_survive_a_sigkill_of_the_primary(cluster):
    a, b, w = cluster(witness=True)
    a.start("primary", witness=w)
    b.start("standby", peer=a, witness=w)
    a.wait_in_sync()
    subscriber = PahoClient(a.mqtt, "failover-sub", clean=False)
    subscriber.connect()
    subscriber.subscribe("failover/#", qos=1)
    sender, publisher = StompSender(a), MqttPublisher(a)
    sender.start()
    publisher.start()
    assert sender.ready.wait(30)
    time.sleep(random.uniform(0.5, 1.5))
    a.kill()
    sender.join(30)
    publisher.join(30)
    received = mqtt_received(subscriber)
    subscriber.stop()
    publisher.client.stop()
    b.wait_role("primary")
    assert sender.receipted, "no RECEIPT before the kill"
    assert publisher.acked, "no PUBACK before the kill"

    conn, collector = stomp_connect(b)
    conn.subscribe("/queue/stomp-jobs", id="drain", ack="auto")
    conn.send("/queue/stomp-jobs", "sentinel")
    assert collector.wait(lambda: "sentinel" in collector.bodies, timeout=30)
    conn.disconnect()
    on_b = {int(body) for body in collector.bodies if body != "sentinel"}
    lost = sorted(set(sender.receipted) - on_b)
    assert not lost, f"STOMP: {len(lost)} receipted messages lost, first {lost[:10]}"

    resumed = PahoClient(b.mqtt, "failover-sub", clean=False)
    flags, _rc, _props = resumed.connect()
    assert flags.session_present
    try:

        def all_arrived() -> bool:
            received.update(mqtt_received(resumed))
            return set(publisher.acked) <= received

        wait_for(all_arrived, 30, "every PUBACKed message at the subscriber")
    finally:
        resumed.stop()
