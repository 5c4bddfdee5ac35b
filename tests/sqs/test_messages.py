"""SQS message actions through boto3 on both wires: send, receive, visibility, redrive, FIFO.

boto3 checks `MD5OfMessageBody` and `MD5OfMessageAttributes` of every send and
receive itself, so each call here also proves the digests are AWS's.
Visibility timeouts are short (1 s) and every wait is on a condition (a long
poll of up to 10 s that returns as soon as the message is back).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.helpers import RunningBroker
from tests.sqs.conftest import ClientFactory, Sqs, error_code, sqs_config

ATTRIBUTES = {
    "text": {"DataType": "String", "StringValue": "héllo"},
    "count": {"DataType": "Number", "StringValue": "42"},
    "price": {"DataType": "Number.float", "StringValue": "1.5"},
    "blob": {"DataType": "Binary", "BinaryValue": b"\x00\xffdata"},
    "trace.id": {"DataType": "String.uuid", "StringValue": "abc-123"},
}


def test_send_receive_delete(sqs: Sqs) -> None:
    client = sqs.client
    url = sqs.create("plain")
    sent = client.send_message(QueueUrl=url, MessageBody="hello ✓", MessageAttributes=ATTRIBUTES)
    assert sent["MD5OfMessageBody"] == "4e6de1b1e4bac7a0bd84fd8b6b1ad6c9" or sent["MessageId"]
    (message,) = sqs.receive(
        url, MessageAttributeNames=["All"], MessageSystemAttributeNames=["All"]
    )
    assert message["Body"] == "hello ✓"
    assert message["MessageId"] == sent["MessageId"]
    assert message["MessageAttributes"] == ATTRIBUTES
    system = message["Attributes"]
    assert system["ApproximateReceiveCount"] == "1"
    assert system["SenderId"] == "guest"
    assert abs(int(system["SentTimestamp"]) / 1000 - time.time()) < 600
    assert int(system["ApproximateFirstReceiveTimestamp"]) >= int(system["SentTimestamp"])
    assert sqs.receive(url) == []  # in flight: invisible
    client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    # deleting again with the same handle: success, nothing happens
    client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    values = sqs.attributes(url)
    assert values["ApproximateNumberOfMessages"] == "0"
    assert values["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_attribute_selection(sqs: Sqs) -> None:
    url = sqs.create("selected")
    sqs.client.send_message(QueueUrl=url, MessageBody="x", MessageAttributes=ATTRIBUTES)
    (message,) = sqs.receive(
        url,
        MessageAttributeNames=["count", "trace.*"],
        AttributeNames=["SentTimestamp"],
        VisibilityTimeout=0,
    )
    assert set(message["MessageAttributes"]) == {"count", "trace.id"}
    assert set(message["Attributes"]) == {"SentTimestamp"}
    (message,) = sqs.receive(url)
    assert "MessageAttributes" not in message
    assert "Attributes" not in message


def test_batches(sqs: Sqs) -> None:
    client = sqs.client
    url = sqs.create("batched")
    entries = [{"Id": f"m{i}", "MessageBody": f"body {i}"} for i in range(10)]
    entries[3]["MessageAttributes"] = {"a": {"DataType": "String", "StringValue": "b"}}
    result = client.send_message_batch(QueueUrl=url, Entries=entries)
    assert sorted(e["Id"] for e in result["Successful"]) == sorted(e["Id"] for e in entries)
    assert not result.get("Failed")
    got = sqs.receive(url, MaxNumberOfMessages=10)
    assert sorted(m["Body"] for m in got) == sorted(e["MessageBody"] for e in entries)
    handles = [{"Id": f"d{i}", "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)]
    handles[0]["ReceiptHandle"] = "garbage"
    deleted = client.delete_message_batch(QueueUrl=url, Entries=handles)
    assert len(deleted["Successful"]) == 9
    (failure,) = deleted["Failed"]
    assert (failure["Id"], failure["Code"], failure["SenderFault"]) == (
        "d0",
        "ReceiptHandleIsInvalid",
        True,
    )
    changed = client.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[{"Id": "c", "ReceiptHandle": got[0]["ReceiptHandle"], "VisibilityTimeout": 0}],
    )
    assert [e["Id"] for e in changed["Successful"]] == ["c"]
    (again,) = sqs.receive(url, WaitTimeSeconds=10)
    assert again["Body"] == got[0]["Body"]

    # a mixed batch: the bad entry fails alone
    mixed = client.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "ok", "MessageBody": "fine"},
            {
                "Id": "bad",
                "MessageBody": "x",
                "MessageAttributes": {"AWS.reserved": {"DataType": "String", "StringValue": "v"}},
            },
        ],
    )
    assert [e["Id"] for e in mixed["Successful"]] == ["ok"]
    assert [(e["Id"], e["Code"]) for e in mixed["Failed"]] == [("bad", "InvalidParameterValue")]

    for entries, code in (
        ([], "AWS.SimpleQueueService.EmptyBatchRequest"),
        (
            [{"Id": str(i), "MessageBody": "x"} for i in range(11)],
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
        ),
        (
            [{"Id": "a", "MessageBody": "x"}, {"Id": "a", "MessageBody": "y"}],
            "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
        ),
        ([{"Id": "no spaces", "MessageBody": "x"}], "AWS.SimpleQueueService.InvalidBatchEntryId"),
    ):
        with pytest.raises(ClientError) as e:
            client.send_message_batch(QueueUrl=url, Entries=entries)
        assert error_code(e) == code


def test_long_poll_is_woken_by_a_send(sqs: Sqs, make_client) -> None:
    url = sqs.create("polled")
    sender = make_client(sqs.broker, sqs.wire)
    started = threading.Event()

    def send_later() -> None:
        started.wait(10)
        time.sleep(0.3)
        sender.send_message(QueueUrl=url, MessageBody="wake up")

    thread = threading.Thread(target=send_later)
    thread.start()
    started.set()
    got = sqs.receive(url, WaitTimeSeconds=20)
    thread.join(10)
    assert [m["Body"] for m in got] == ["wake up"]
    # an empty long poll returns at its deadline, empty
    assert sqs.receive(url, WaitTimeSeconds=1) == []


def test_visibility_expiry_and_redelivery(sqs: Sqs) -> None:
    client = sqs.client
    url = sqs.create("visible", VisibilityTimeout="1")
    client.send_message(QueueUrl=url, MessageBody="again")
    (first,) = sqs.receive(url, AttributeNames=["ApproximateReceiveCount"])
    assert first["Attributes"]["ApproximateReceiveCount"] == "1"
    (second,) = sqs.receive(url, WaitTimeSeconds=10, AttributeNames=["All"])
    assert second["Body"] == "again"
    assert second["Attributes"]["ApproximateReceiveCount"] == "2"
    assert second["ReceiptHandle"] != first["ReceiptHandle"]
    # the first handle is stale: deleting with it succeeds and deletes nothing,
    # changing visibility with it is refused
    client.delete_message(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"])
    with pytest.raises(ClientError) as e:
        client.change_message_visibility(
            QueueUrl=url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=5
        )
    assert error_code(e) == "AWS.SimpleQueueService.MessageNotInflight"
    # extend the current one, then make it visible at once
    client.change_message_visibility(
        QueueUrl=url, ReceiptHandle=second["ReceiptHandle"], VisibilityTimeout=30
    )
    assert sqs.receive(url, WaitTimeSeconds=2) == []
    client.change_message_visibility(
        QueueUrl=url, ReceiptHandle=second["ReceiptHandle"], VisibilityTimeout=0
    )
    (third,) = sqs.receive(url, VisibilityTimeout=30, AttributeNames=["ApproximateReceiveCount"])
    assert third["Attributes"]["ApproximateReceiveCount"] == "3"
    client.delete_message(QueueUrl=url, ReceiptHandle=third["ReceiptHandle"])
    assert sqs.attributes(url, "ApproximateNumberOfMessages") == {
        "ApproximateNumberOfMessages": "0"
    }


def test_redrive_to_dead_letter_queue_and_back(sqs: Sqs) -> None:
    client = sqs.client
    dlq = sqs.create("work-dlq")
    dlq_arn = sqs.attributes(dlq, "QueueArn")["QueueArn"]
    url = sqs.create(
        "work",
        VisibilityTimeout="1",
        RedrivePolicy=json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2}),
    )
    client.send_message(QueueUrl=url, MessageBody="poison")
    counts = []
    for _ in range(2):
        (message,) = sqs.receive(url, WaitTimeSeconds=10, AttributeNames=["All"])
        counts.append(message["Attributes"]["ApproximateReceiveCount"])
    assert counts == ["1", "2"]
    (dead,) = sqs.receive(dlq, WaitTimeSeconds=10, AttributeNames=["All"])
    assert dead["Body"] == "poison"
    assert dead["Attributes"]["DeadLetterQueueSourceArn"].endswith(":work")
    assert sqs.receive(url) == []
    client.change_message_visibility(
        QueueUrl=dlq, ReceiptHandle=dead["ReceiptHandle"], VisibilityTimeout=0
    )
    source_queues = client.list_dead_letter_source_queues(QueueUrl=dlq)["queueUrls"]
    assert source_queues == [url]
    handle = client.start_message_move_task(SourceArn=dlq_arn)["TaskHandle"]
    assert handle
    (back,) = sqs.receive(url, WaitTimeSeconds=10)
    assert back["Body"] == "poison"
    if sqs.wire == "json":  # the Query model of the test client has no shape for this list
        (task,) = client.list_message_move_tasks(SourceArn=dlq_arn)["Results"]
        assert (task["Status"], task["ApproximateNumberOfMessagesMoved"]) == ("COMPLETED", 1)
    with pytest.raises(ClientError) as e:
        client.start_message_move_task(SourceArn=url.replace("work", "nope"))
    assert error_code(e) == "ResourceNotFoundException"
    # a move is done when StartMessageMoveTask answers: only a RUNNING task can be cancelled
    with pytest.raises(ClientError) as e:
        client.cancel_message_move_task(TaskHandle=handle)
    assert error_code(e) == "AWS.SimpleQueueService.UnsupportedOperation"
    with pytest.raises(ClientError) as e:
        client.cancel_message_move_task(TaskHandle="no-such-task")
    assert error_code(e) == "ResourceNotFoundException"


def test_fifo_order_per_group_and_deduplication(sqs: Sqs) -> None:
    client = sqs.client
    url = sqs.create("orders.fifo", FifoQueue="true", VisibilityTimeout="30")
    for i in range(3):
        for group in ("a", "b"):
            client.send_message(
                QueueUrl=url,
                MessageBody=f"{group}{i}",
                MessageGroupId=group,
                MessageDeduplicationId=f"{group}-{i}",
            )
    duplicate = client.send_message(
        QueueUrl=url, MessageBody="a0 again", MessageGroupId="a", MessageDeduplicationId="a-0"
    )
    assert duplicate["MessageId"]
    seen: dict[str, list[str]] = {"a": [], "b": []}
    while sum(len(v) for v in seen.values()) < 6:
        got = sqs.receive(url, MaxNumberOfMessages=10, AttributeNames=["All"], WaitTimeSeconds=5)
        assert got, seen
        for message in got:
            group = message["Attributes"]["MessageGroupId"]
            seen[group].append(message["Body"])
            assert int(message["Attributes"]["SequenceNumber"]) > 0
            client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    assert seen == {"a": ["a0", "a1", "a2"], "b": ["b0", "b1", "b2"]}
    assert sqs.receive(url) == []

    with pytest.raises(ClientError) as e:
        client.send_message(QueueUrl=url, MessageBody="x", MessageDeduplicationId="d")
    assert error_code(e) == "MissingParameter"
    with pytest.raises(ClientError) as e:
        client.send_message(QueueUrl=url, MessageBody="x", MessageGroupId="g")
    assert error_code(e) == "InvalidParameterValue"

    content = sqs.create("content.fifo", FifoQueue="true", ContentBasedDeduplication="true")
    for _ in range(3):
        client.send_message(QueueUrl=content, MessageBody="same", MessageGroupId="g")
    assert sqs.attributes(content, "ApproximateNumberOfMessages") == {
        "ApproximateNumberOfMessages": "1"
    }


def test_fifo_group_waits_for_its_message_in_flight(sqs: Sqs) -> None:
    client = sqs.client
    url = sqs.create("strict.fifo", FifoQueue="true", ContentBasedDeduplication="true")
    client.send_message(QueueUrl=url, MessageBody="first", MessageGroupId="g")
    client.send_message(QueueUrl=url, MessageBody="second", MessageGroupId="g")
    (first,) = sqs.receive(url, MaxNumberOfMessages=10, VisibilityTimeout=1)
    assert first["Body"] == "first"
    # the group is blocked until the first comes back; then it comes first again
    (again,) = sqs.receive(url, WaitTimeSeconds=10)
    assert again["Body"] == "first"
    client.delete_message(QueueUrl=url, ReceiptHandle=again["ReceiptHandle"])
    (second,) = sqs.receive(url, WaitTimeSeconds=10)
    assert second["Body"] == "second"


def test_shutdown_ends_a_long_poll(
    tmp_path: Path, start_broker: Callable[..., RunningBroker], make_client: ClientFactory
) -> None:
    """Stopping the broker answers a long poll in progress; nothing is left pending."""
    broker = start_broker(sqs_config(tmp_path))
    client = make_client(broker)
    url = client.create_queue(QueueName="waiting")["QueueUrl"]
    outcome: list[object] = []

    def poll() -> None:
        try:
            outcome.append(client.receive_message(QueueUrl=url, WaitTimeSeconds=20))
        except Exception as e:  # the connection may be cut instead: also an answer
            outcome.append(e)

    thread = threading.Thread(target=poll)
    thread.start()
    queue = broker.call(lambda: broker.daemon.broker.vhosts["/"].queues["waiting"])
    deadline = time.monotonic() + 30
    while not broker.call(lambda: queue.consumers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert broker.call(lambda: len(queue.consumers)) == 1  # the poll waits as a consumer
    broker.stop()
    thread.join(30)
    assert not thread.is_alive()
    assert outcome
