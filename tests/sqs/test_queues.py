"""SQS queue actions through boto3, on both wire protocols."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from tests.sqs.conftest import Sqs, endpoint, error_code


def test_create_get_list_delete(sqs: Sqs) -> None:
    client = sqs.client
    url = sqs.create("orders")
    assert url == f"{endpoint(sqs.broker)}/000000000000/orders"
    assert sqs.create("orders") == url  # idempotent without attributes
    assert client.get_queue_url(QueueName="orders")["QueueUrl"] == url
    for name in ("orders-eu", "orders-us", "payments"):
        sqs.create(name)
    listed = client.list_queues(QueueNamePrefix="orders")["QueueUrls"]
    assert [u.rsplit("/", 1)[1] for u in listed] == ["orders", "orders-eu", "orders-us"]
    page = client.list_queues(MaxResults=2)
    assert len(page["QueueUrls"]) == 2
    rest = client.list_queues(MaxResults=2, NextToken=page["NextToken"])
    assert len(rest["QueueUrls"]) == 2
    assert "NextToken" not in rest
    assert set(page["QueueUrls"]) | set(rest["QueueUrls"]) == set(client.list_queues()["QueueUrls"])
    assert client.list_queues(QueueNamePrefix="nothing").get("QueueUrls", []) == []
    client.delete_queue(QueueUrl=url)
    with pytest.raises(ClientError) as e:
        client.get_queue_url(QueueName="orders")
    assert error_code(e) == "AWS.SimpleQueueService.NonExistentQueue"
    with pytest.raises(client.exceptions.QueueDoesNotExist):
        client.send_message(QueueUrl=url, MessageBody="x")


def test_attributes(sqs: Sqs) -> None:
    client = sqs.client
    dlq = sqs.create("dead")
    url = sqs.create("work", VisibilityTimeout="10", DelaySeconds="2")
    values = sqs.attributes(url)
    assert values["VisibilityTimeout"] == "10"
    assert values["DelaySeconds"] == "2"
    assert values["MessageRetentionPeriod"] == "345600"
    assert values["QueueArn"] == "arn:aws:sqs:us-east-1:000000000000:work"
    assert int(values["CreatedTimestamp"]) > 1_600_000_000
    for name in (
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ):
        assert values[name] == "0"
    assert sqs.attributes(url, "VisibilityTimeout") == {"VisibilityTimeout": "10"}

    dlq_arn = sqs.attributes(dlq, "QueueArn")["QueueArn"]
    policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3})
    client.set_queue_attributes(
        QueueUrl=url,
        Attributes={
            "VisibilityTimeout": "60",
            "MessageRetentionPeriod": str(14 * 24 * 3600),
            "ReceiveMessageWaitTimeSeconds": "20",
            "MaximumMessageSize": "2048",
            "RedrivePolicy": policy,
        },
    )
    values = sqs.attributes(url)
    assert values["VisibilityTimeout"] == "60"
    assert values["MessageRetentionPeriod"] == "1209600"
    assert values["ReceiveMessageWaitTimeSeconds"] == "20"
    assert values["MaximumMessageSize"] == "2048"
    assert json.loads(values["RedrivePolicy"]) == {
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": 3,
    }
    sources = client.list_dead_letter_source_queues(QueueUrl=dlq)["queueUrls"]
    assert sources == [url]

    # idempotent create: same values pass, a different one is QueueNameExists
    assert sqs.create("work", VisibilityTimeout="60") == url
    with pytest.raises(ClientError) as e:
        sqs.create("work", VisibilityTimeout="61")
    assert error_code(e) == "QueueAlreadyExists"

    bad = [
        ({"VisibilityTimeout": "43201"}, "InvalidAttributeValue"),
        ({"MessageRetentionPeriod": str(14 * 24 * 3600 + 1)}, "InvalidAttributeValue"),
        ({"DelaySeconds": "ten"}, "InvalidAttributeValue"),
        ({"Colour": "blue"}, "InvalidAttributeName"),
        ({"RedrivePolicy": "{not json"}, "InvalidAttributeValue"),
        (
            {"RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 0})},
            "InvalidAttributeValue",
        ),
        (
            {
                "RedrivePolicy": json.dumps(
                    {"deadLetterTargetArn": dlq_arn + "-nope", "maxReceiveCount": 2}
                )
            },
            "InvalidAttributeValue",
        ),
        ({"FifoQueue": "true"}, "InvalidAttributeName"),
    ]
    for attributes, code in bad:
        with pytest.raises(ClientError) as e:
            client.set_queue_attributes(QueueUrl=url, Attributes=attributes)
        assert error_code(e) == code, attributes
    assert sqs.attributes(url, "VisibilityTimeout") == {"VisibilityTimeout": "60"}
    with pytest.raises(ClientError) as e:
        client.get_queue_attributes(QueueUrl=url, AttributeNames=["Colour"])
    assert error_code(e) == "InvalidAttributeName"

    # RedriveAllowPolicy on the dead-letter queue refuses other sources
    client.set_queue_attributes(
        QueueUrl=dlq,
        Attributes={"RedriveAllowPolicy": json.dumps({"redrivePermission": "denyAll"})},
    )
    other = sqs.create("other")
    with pytest.raises(ClientError) as e:
        client.set_queue_attributes(QueueUrl=other, Attributes={"RedrivePolicy": policy})
    assert error_code(e) == "InvalidAttributeValue"


def test_fifo_queue_attributes(sqs: Sqs) -> None:
    url = sqs.create("jobs.fifo", FifoQueue="true", ContentBasedDeduplication="true")
    values = sqs.attributes(url)
    assert values["FifoQueue"] == "true"
    assert values["ContentBasedDeduplication"] == "true"
    assert sqs.create("jobs.fifo", FifoQueue="true") == url
    with pytest.raises(ClientError) as e:
        sqs.create("jobs.fifo", FifoQueue="true", ContentBasedDeduplication="false")
    assert error_code(e) == "QueueAlreadyExists"
    for name, attributes in (("plain", {"FifoQueue": "true"}), ("x.fifo", {})):
        with pytest.raises(ClientError) as e:
            sqs.create(name, **attributes)
        assert error_code(e) == "InvalidAttributeValue"
    with pytest.raises(ClientError) as e:
        sqs.create("bad name!")
    assert error_code(e) == "InvalidParameterValue"
    with pytest.raises(ClientError) as e:
        sqs.create("q" * 81)
    assert error_code(e) == "InvalidParameterValue"


def test_tags(sqs: Sqs) -> None:
    client = sqs.client
    url = client.create_queue(QueueName="tagged", tags={"team": "a"})["QueueUrl"]
    assert client.list_queue_tags(QueueUrl=url)["Tags"] == {"team": "a"}
    client.tag_queue(QueueUrl=url, Tags={"env": "prod", "team": "b"})
    assert client.list_queue_tags(QueueUrl=url)["Tags"] == {"team": "b", "env": "prod"}
    client.untag_queue(QueueUrl=url, TagKeys=["team", "missing"])
    assert client.list_queue_tags(QueueUrl=url)["Tags"] == {"env": "prod"}
    client.untag_queue(QueueUrl=url, TagKeys=["env"])
    assert "Tags" not in client.list_queue_tags(QueueUrl=url)


def test_purge(sqs: Sqs) -> None:
    client = sqs.client
    url = sqs.create("purged")
    for i in range(5):
        client.send_message(QueueUrl=url, MessageBody=f"m{i}")
    assert len(sqs.receive(url, MaxNumberOfMessages=2)) == 2
    assert sqs.attributes(url, "ApproximateNumberOfMessagesNotVisible") == {
        "ApproximateNumberOfMessagesNotVisible": "2"
    }
    client.purge_queue(QueueUrl=url)
    values = sqs.attributes(url)
    assert values["ApproximateNumberOfMessages"] == "0"
    assert values["ApproximateNumberOfMessagesNotVisible"] == "0"
