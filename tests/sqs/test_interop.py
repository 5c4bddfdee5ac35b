"""SQS queues are Moorage queues: AMQP and STOMP clients see what SQS sent and the other
way round, and what SQS was told survives kill -9."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pika
import pytest
import stomp
from botocore.config import Config as BotoConfig

from tests.durability.broker_process import BrokerProcess
from tests.helpers import RunningBroker, free_port
from tests.sqs.conftest import REGION, ClientFactory, Sqs, sqs_config
from tests.stomp.conftest import Collector


def _amqp(sqs: Sqs) -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", sqs.broker.daemon.ports["amqp"])
    )


def test_sqs_send_to_amqp_consumer(sqs: Sqs) -> None:
    url = sqs.create("to-amqp.fifo", FifoQueue="true")
    sqs.client.send_message(
        QueueUrl=url,
        MessageBody="from sqs",
        MessageGroupId="g1",
        MessageDeduplicationId="d1",
        MessageAttributes={
            "text": {"DataType": "String", "StringValue": "v"},
            "count": {"DataType": "Number", "StringValue": "7"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x01\x02"},
        },
    )
    connection = _amqp(sqs)
    try:
        channel = connection.channel()
        method, properties, body = channel.basic_get("to-amqp.fifo")
        assert method is not None
        assert body == b"from sqs"
        assert properties.delivery_mode == 2
        headers = properties.headers
        assert headers["text"] == "v"
        assert headers["count"] == "7"
        assert bytes(headers["blob"]) == b"\x01\x02"
        assert headers["x-sqs-data-types"] == {"count": "Number"}
        assert headers["x-message-group-id"] == "g1"
        assert headers["x-deduplication-id"] == "d1"
        assert properties.message_id
        channel.basic_ack(method.delivery_tag)
    finally:
        connection.close()
    assert sqs.attributes(url, "ApproximateNumberOfMessages") == {
        "ApproximateNumberOfMessages": "0"
    }


def test_amqp_publish_to_sqs_receive(sqs: Sqs) -> None:
    url = sqs.create("from-amqp")
    connection = _amqp(sqs)
    try:
        channel = connection.channel()
        channel.basic_publish(
            "",
            "from-amqp",
            b"from amqp",
            pika.BasicProperties(
                delivery_mode=2,
                message_id="amqp-1",
                timestamp=1_700_000_000,
                headers={
                    "s": "text",
                    "i": 42,
                    "f": Decimal("1.5"),
                    "b": True,
                    "x-death-like": "kept",
                },
            ),
        )
        channel.basic_publish("", "from-amqp", b"no id")
    finally:
        connection.close()
    got = sqs.receive(
        url,
        WaitTimeSeconds=10,
        MaxNumberOfMessages=10,
        MessageAttributeNames=["All"],
        AttributeNames=["All"],
    )
    if len(got) < 2:
        got += sqs.receive(url, WaitTimeSeconds=10, MaxNumberOfMessages=10)
    first, second = sorted(got, key=lambda m: m["Body"])
    assert first["Body"] == "from amqp"
    assert first["MessageId"] == "amqp-1"
    assert first["MessageAttributes"] == {
        "s": {"DataType": "String", "StringValue": "text"},
        "i": {"DataType": "Number", "StringValue": "42"},
        "f": {"DataType": "Number", "StringValue": "1.5"},
        "b": {"DataType": "String", "StringValue": "true"},
        "x-death-like": {"DataType": "String", "StringValue": "kept"},
    }
    assert first["Attributes"]["SentTimestamp"] == "1700000000000"
    assert second["Body"] == "no id"
    assert second["MessageId"]  # made up from the entry, stable across receives


@pytest.fixture
def process(tmp_path: Path) -> Iterator[BrokerProcess]:
    broker = BrokerProcess(tmp_path / "data", sqs=True)
    yield broker
    broker.kill()


def _client(process: BrokerProcess) -> Any:
    return boto3.client(
        "sqs",
        endpoint_url=f"http://127.0.0.1:{process.sqs_port}",
        region_name=REGION,
        aws_access_key_id="guest",
        aws_secret_access_key="guest",
        config=BotoConfig(retries={"max_attempts": 1}),
    )


def test_queues_messages_and_attributes_survive_kill_9(process: BrokerProcess) -> None:
    process.start()
    client = _client(process)
    dlq = client.create_queue(QueueName="survivor-dlq")["QueueUrl"]
    dlq_arn = client.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5})
    url = client.create_queue(
        QueueName="survivor",
        Attributes={"VisibilityTimeout": "120", "RedrivePolicy": policy},
        tags={"team": "ops"},
    )["QueueUrl"]
    client.tag_queue(QueueUrl=url, Tags={"env": "prod"})
    for batch in range(2):
        client.send_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "MessageBody": f"m{batch * 10 + i}"} for i in range(10)],
        )
    client.send_message(QueueUrl=url, MessageBody="delayed", DelaySeconds=2)
    received = client.receive_message(QueueUrl=url, MaxNumberOfMessages=5)["Messages"]
    for message in received[:2]:
        client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    deleted = {m["Body"] for m in received[:2]}
    in_flight = {m["Body"] for m in received[2:]}
    process.kill()

    process.start()
    client = _client(process)
    assert client.get_queue_url(QueueName="survivor")["QueueUrl"].endswith("/survivor")
    values = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert values["VisibilityTimeout"] == "120"
    assert json.loads(values["RedrivePolicy"])["maxReceiveCount"] == 5
    assert client.list_queue_tags(QueueUrl=url)["Tags"] == {"team": "ops", "env": "prod"}
    bodies: dict[str, str] = {}
    for _ in range(10):
        got = client.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=3,
            AttributeNames=["ApproximateReceiveCount"],
        ).get("Messages", [])
        bodies.update({m["Body"]: m["Attributes"]["ApproximateReceiveCount"] for m in got})
        if len(bodies) >= 19:
            break
    expected = {f"m{i}" for i in range(20)} - deleted | {"delayed"}
    assert set(bodies) == expected
    # the messages in flight at the kill were received once before it
    assert {b for b, count in bodies.items() if count == "2"} == in_flight
    assert process.stop() == 0


def test_stomp_both_ways(
    tmp_path: Path, start_broker: Callable[..., RunningBroker], make_client: ClientFactory
) -> None:
    """A STOMP subscriber reads what SQS sent (attributes as headers); SQS receives what
    STOMP sent (headers as attributes)."""
    config = sqs_config(tmp_path)
    config.ports["stomp"] = free_port()
    broker = start_broker(config)
    client = make_client(broker)
    url = client.create_queue(QueueName="with-stomp")["QueueUrl"]
    colour = {"colour": {"DataType": "String", "StringValue": "blue"}}
    client.send_message(QueueUrl=url, MessageBody="from sqs", MessageAttributes=colour)
    connection = stomp.Connection12(
        [("127.0.0.1", broker.daemon.ports["stomp"])], auto_content_length=True
    )
    collector = Collector()
    connection.set_listener("collector", collector)
    connection.connect("guest", "guest", wait=True)
    try:
        connection.subscribe("/amq/queue/with-stomp", id="1", ack="client-individual")
        (frame,) = collector.wait_messages(1, timeout=30)
        assert (frame.body, frame.headers["colour"]) == ("from sqs", "blue")
        connection.ack(frame.headers["ack"], receipt="acked")
        connection.unsubscribe(id="1", receipt="unsubscribed")
        assert collector.wait(lambda: {"acked", "unsubscribed"} <= set(collector.receipts), 30)
        connection.send(
            "/amq/queue/with-stomp",
            "from stomp",
            headers={"persistent": "true", "region": "eu"},
            receipt="sent",
        )
        assert collector.wait(lambda: "sent" in collector.receipts, 30)
    finally:
        connection.disconnect()
    (message,) = client.receive_message(
        QueueUrl=url, WaitTimeSeconds=10, MessageAttributeNames=["All"]
    )["Messages"]
    assert message["Body"] == "from stomp"
    assert message["MessageAttributes"]["region"] == {"DataType": "String", "StringValue": "eu"}
    client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    counts = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (
        counts["ApproximateNumberOfMessages"],
        counts["ApproximateNumberOfMessagesNotVisible"],
    ) == ("0", "0")
