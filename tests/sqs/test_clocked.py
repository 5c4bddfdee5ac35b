"""SQS timers on the broker's clock: retention and visibility, driven by a ManualClock."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from moorage.broker.clock import ManualClock
from tests.helpers import RunningBroker
from tests.sqs.conftest import ClientFactory, sqs_config


def test_retention_and_visibility_follow_the_broker_clock(
    tmp_path: Path, start_broker: Callable[..., RunningBroker], make_client: ClientFactory
) -> None:
    # The clock starts at the real time, so that SigV4's 15-minute window holds.
    clock = ManualClock(wall=time.time())
    broker = start_broker(sqs_config(tmp_path, storage="sqlite"), clock=clock)
    client = make_client(broker)
    url = client.create_queue(
        QueueName="short", Attributes={"MessageRetentionPeriod": "60", "VisibilityTimeout": "30"}
    )["QueueUrl"]
    client.send_message(QueueUrl=url, MessageBody="old")
    broker.call(lambda: clock.advance(30))
    client.send_message(QueueUrl=url, MessageBody="young")

    (old,) = client.receive_message(QueueUrl=url)["Messages"]
    assert old["Body"] == "old"
    broker.call(lambda: clock.advance(29))
    # 'old' is still invisible (29 s of its 30); 'young' is there
    (young,) = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=300)[
        "Messages"
    ]
    assert young["Body"] == "young"
    broker.call(lambda: clock.advance(2))  # 'old' is visible again, and past its 60 s
    assert "Messages" not in client.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
    values = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert values["ApproximateNumberOfMessages"] == "0"
    assert values["ApproximateNumberOfMessagesNotVisible"] == "1"


def test_delays_follow_the_broker_clock(
    tmp_path: Path, start_broker: Callable[..., RunningBroker], make_client: ClientFactory
) -> None:
    clock = ManualClock(wall=time.time())
    broker = start_broker(sqs_config(tmp_path), clock=clock)
    client = make_client(broker, "query")
    url = client.create_queue(QueueName="delayed")["QueueUrl"]
    client.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=10)
    client.send_message(QueueUrl=url, MessageBody="now")
    delayed = client.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )["Attributes"]
    assert delayed == {"ApproximateNumberOfMessagesDelayed": "1"}
    (now,) = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert now["Body"] == "now"
    broker.call(lambda: clock.advance(9))
    assert "Messages" not in client.receive_message(QueueUrl=url)
    broker.call(lambda: clock.advance(1))
    (later,) = client.receive_message(QueueUrl=url)["Messages"]
    assert later["Body"] == "later"
    # the queue's DelaySeconds applies to messages that give none
    client.set_queue_attributes(QueueUrl=url, Attributes={"DelaySeconds": "5"})
    client.send_message(QueueUrl=url, MessageBody="queue delay")
    assert "Messages" not in client.receive_message(QueueUrl=url)
    broker.call(lambda: clock.advance(5))
    (held,) = client.receive_message(QueueUrl=url)["Messages"]
    assert held["Body"] == "queue delay"
