"""SQS in-flight messages are their queue's unacknowledged messages, for SQS and for the
management API alike: counted on receive, uncounted by every way out.

boto3 drives the SQS listener, pika an AMQP `basic.get` on the same queue, and
urllib reads the management API (`/api/queues`, `/api/overview`, `/metrics`).
Visibility timeouts run on a ManualClock; a restart reopens the same SQLite store.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
from prometheus_client.parser import text_string_to_metric_families

from moorage.broker.clock import ManualClock
from tests.helpers import RunningBroker, free_port, wait_for
from tests.sqs.conftest import ClientFactory, sqs_config

TIMEOUT = 30


def _start(
    tmp_path: Path, start_broker: Callable[..., RunningBroker]
) -> tuple[RunningBroker, ManualClock]:
    # the clock starts at the real time, so that SigV4's 15-minute window holds
    clock = ManualClock(wall=time.time())
    config = sqs_config(tmp_path, storage="sqlite")
    config.ports["http"] = free_port()
    config.ports["amqp"] = free_port()
    return start_broker(config, clock=clock), clock


def _get(broker: RunningBroker, path: str) -> bytes:
    request = urllib.request.Request(f"http://127.0.0.1:{broker.daemon.ports['http']}{path}")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        body: bytes = response.read()
        return body


class Counts:
    """A queue's unacknowledged count as SQS and each management view show it."""

    def __init__(self, broker: RunningBroker, client: Any, url: str, name: str) -> None:
        self.broker, self.client, self.url, self.name = broker, client, url, name

    def sqs(self) -> tuple[int, int]:
        """(not visible, visible) as GetQueueAttributes says."""
        values = self.client.get_queue_attributes(QueueUrl=self.url, AttributeNames=["All"])
        attributes = values["Attributes"]
        return (
            int(attributes["ApproximateNumberOfMessagesNotVisible"]),
            int(attributes["ApproximateNumberOfMessages"]),
        )

    def management(self) -> tuple[int, int]:
        """(unacknowledged, ready) of the queue in /api/queues."""
        queue = json.loads(_get(self.broker, f"/api/queues/%2F/{self.name}"))
        return queue["messages_unacknowledged"], queue["messages_ready"]

    def totals(self) -> int:
        """Unacknowledged messages of every queue: the overview's and /metrics' figure."""
        overview = json.loads(_get(self.broker, "/api/overview"))["queue_totals"]
        text = _get(self.broker, "/metrics").decode()
        (metric,) = [
            f
            for f in text_string_to_metric_families(text)
            if f.name == "rabbitmq_queue_messages_unacked"
        ]
        assert overview["messages_unacknowledged"] == metric.samples[0].value
        return int(overview["messages_unacknowledged"])

    def check(self, unacked: int, ready: int, total: int | None = None) -> None:
        """Every view agrees: `unacked` not visible, `ready` visible."""
        assert self.sqs() == (unacked, ready)
        assert self.management() == (unacked, ready)
        assert self.totals() == (unacked if total is None else total)


def _handles(messages: list[dict[str, Any]]) -> list[str]:
    return [m["ReceiptHandle"] for m in messages]


def test_in_flight_messages_count_as_unacknowledged_until_each_way_out(
    tmp_path: Path, start_broker: Callable[..., RunningBroker], make_client: ClientFactory
) -> None:
    broker, clock = _start(tmp_path, start_broker)
    client = make_client(broker)
    url = client.create_queue(QueueName="flying", Attributes={"VisibilityTimeout": "30"})[
        "QueueUrl"
    ]
    counts = Counts(broker, client, url, "flying")
    client.send_message_batch(
        QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": f"m{n}"} for n in range(10)]
    )
    counts.check(0, 10)

    # receive: three in flight
    got = client.receive_message(QueueUrl=url, MaxNumberOfMessages=3)["Messages"]
    assert len(got) == 3
    counts.check(3, 7)
    # DeleteMessage
    client.delete_message(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"])
    counts.check(2, 7)
    # a stale handle deletes nothing and uncounts nothing
    client.delete_message(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"])
    counts.check(2, 7)
    # ChangeMessageVisibility to 0: visible at once
    client.change_message_visibility(
        QueueUrl=url, ReceiptHandle=got[1]["ReceiptHandle"], VisibilityTimeout=0
    )
    counts.check(1, 8)
    # the visibility timeout expiring: the message returns
    broker.call(lambda: clock.advance(31))
    counts.check(0, 9)

    # DeleteMessageBatch
    got = client.receive_message(QueueUrl=url, MaxNumberOfMessages=4)["Messages"]
    assert len(got) == 4
    counts.check(4, 5)
    reply = client.delete_message_batch(
        QueueUrl=url,
        Entries=[{"Id": str(n), "ReceiptHandle": h} for n, h in enumerate(_handles(got[:2]))],
    )
    assert len(reply["Successful"]) == 2
    counts.check(2, 5)

    # nothing counted twice: an AMQP get waiting for its ack on the same queue
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        channel = connection.channel()
        method, _, _ = channel.basic_get("flying")
        assert method is not None
        counts.check(3, 4)
        channel.basic_nack(method.delivery_tag, requeue=True)
        assert channel.basic_get("flying", auto_ack=False)[0] is not None
        channel.close()  # the get's delivery goes back
    finally:
        connection.close()
    assert wait_for(lambda: counts.management() == (2, 5))
    counts.check(2, 5)

    # PurgeQueue deletes the in-flight messages too
    client.purge_queue(QueueUrl=url)
    counts.check(0, 0)


def test_dead_lettering_and_queue_deletion_uncount_in_flight_messages(
    tmp_path: Path, start_broker: Callable[..., RunningBroker], make_client: ClientFactory
) -> None:
    broker, clock = _start(tmp_path, start_broker)
    client = make_client(broker)
    dlq = client.create_queue(QueueName="flying-dlq")["QueueUrl"]
    dlq_arn = client.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 1})
    url = client.create_queue(
        QueueName="flying-once", Attributes={"VisibilityTimeout": "30", "RedrivePolicy": policy}
    )["QueueUrl"]
    counts = Counts(broker, client, url, "flying-once")
    dead = Counts(broker, client, dlq, "flying-dlq")
    for n in range(3):
        client.send_message(QueueUrl=url, MessageBody=f"m{n}")
    assert len(client.receive_message(QueueUrl=url, MaxNumberOfMessages=3)["Messages"]) == 3
    counts.check(3, 0)
    # the timeout past the receive limit: to the dead-letter queue, no longer in flight
    broker.call(lambda: clock.advance(31))
    assert client.receive_message(QueueUrl=url).get("Messages", []) == []
    counts.check(0, 0)
    dead.check(0, 3)

    # deleting a queue with messages in flight: its count leaves the totals with it
    assert len(client.receive_message(QueueUrl=dlq, MaxNumberOfMessages=2)["Messages"]) == 2
    dead.check(2, 1)
    client.delete_queue(QueueUrl=dlq)
    assert counts.totals() == 0
    # a queue of the same name starts from nothing, and the old timers do not touch it
    dlq = client.create_queue(QueueName="flying-dlq")["QueueUrl"]
    client.send_message(QueueUrl=dlq, MessageBody="new")
    assert len(client.receive_message(QueueUrl=dlq, VisibilityTimeout=300)["Messages"]) == 1
    dead.check(1, 0)
    broker.call(lambda: clock.advance(31))  # the deleted queue's receives time out
    dead.check(1, 0)


def test_after_a_restart_in_flight_messages_are_visible_and_not_counted(
    tmp_path: Path, start_broker: Callable[..., RunningBroker], make_client: ClientFactory
) -> None:
    broker, _clock = _start(tmp_path, start_broker)
    client = make_client(broker)
    url = client.create_queue(QueueName="kept", Attributes={"VisibilityTimeout": "300"})["QueueUrl"]
    for n in range(3):
        client.send_message(QueueUrl=url, MessageBody=f"m{n}")
    assert len(client.receive_message(QueueUrl=url, MaxNumberOfMessages=2)["Messages"]) == 2
    Counts(broker, client, url, "kept").check(2, 1)
    broker.stop()

    broker, _clock = _start(tmp_path, start_broker)
    client = make_client(broker)
    url = client.get_queue_url(QueueName="kept")["QueueUrl"]
    counts = Counts(broker, client, url, "kept")
    counts.check(0, 3)
    assert len(client.receive_message(QueueUrl=url)["Messages"]) == 1
    counts.check(1, 2)
