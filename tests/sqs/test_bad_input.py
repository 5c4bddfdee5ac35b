"""Bad input to the SQS API gets AWS's error code and leaves the queue as it was."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest
from botocore.exceptions import ClientError

from tests.helpers import RunningBroker, make_user
from tests.sqs.conftest import REGION, ClientFactory, Sqs, endpoint, error_code, sqs_config


def _messages(sqs: Sqs, url: str) -> tuple[str, str]:
    values = sqs.attributes(url)
    return values["ApproximateNumberOfMessages"], values["ApproximateNumberOfMessagesNotVisible"]


def test_messages_that_aws_refuses(sqs: Sqs) -> None:
    client = sqs.client
    url = sqs.create("strict", MaximumMessageSize="1024")
    client.send_message(QueueUrl=url, MessageBody="kept")
    before = _messages(sqs, url)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"MessageBody": "x" * 1025}, "InvalidParameterValue"),
        (
            {
                "MessageBody": "x" * 1000,
                "MessageAttributes": {"a": {"DataType": "String", "StringValue": "y" * 100}},
            },
            "InvalidParameterValue",
        ),
        ({"MessageBody": "bad \x00 char"}, "InvalidMessageContents"),
        (
            {
                "MessageBody": "x",
                "MessageAttributes": {"AWS.name": {"DataType": "String", "StringValue": "v"}},
            },
            "InvalidParameterValue",
        ),
        (
            {
                "MessageBody": "x",
                "MessageAttributes": {"bad name": {"DataType": "String", "StringValue": "v"}},
            },
            "InvalidParameterValue",
        ),
        (
            {
                "MessageBody": "x",
                "MessageAttributes": {"n": {"DataType": "Number", "StringValue": "not a number"}},
            },
            "InvalidParameterValue",
        ),
        (
            {
                "MessageBody": "x",
                "MessageAttributes": {"t": {"DataType": "Decimal", "StringValue": "1"}},
            },
            "InvalidParameterValue",
        ),
        (
            {
                "MessageBody": "x",
                "MessageAttributes": {
                    f"a{i}": {"DataType": "String", "StringValue": "v"} for i in range(11)
                },
            },
            "InvalidParameterValue",
        ),
        ({"MessageBody": "x", "DelaySeconds": 901}, "InvalidParameterValue"),
        ({"MessageBody": "x", "MessageDeduplicationId": "d"}, "InvalidParameterValue"),
    ]
    for kwargs, code in cases:
        with pytest.raises(ClientError) as e:
            client.send_message(QueueUrl=url, **kwargs)
        assert error_code(e) == code, kwargs
    assert _messages(sqs, url) == before
    with pytest.raises(ClientError) as e:
        client.receive_message(QueueUrl=url, MaxNumberOfMessages=11)
    assert error_code(e) == "InvalidParameterValue"
    with pytest.raises(ClientError) as e:
        client.receive_message(QueueUrl=url, WaitTimeSeconds=21)
    assert error_code(e) == "InvalidParameterValue"
    with pytest.raises(ClientError) as e:
        client.receive_message(QueueUrl=url, MessageSystemAttributeNames=["Colour"])
    assert error_code(e) == "InvalidAttributeName"
    assert _messages(sqs, url) == before


def test_receipt_handles_of_another_queue_or_garbage(sqs: Sqs) -> None:
    client = sqs.client
    one, two = sqs.create("one"), sqs.create("two")
    client.send_message(QueueUrl=one, MessageBody="m1")
    client.send_message(QueueUrl=two, MessageBody="m2")
    (m1,) = sqs.receive(one, VisibilityTimeout=60)
    forged = base64.urlsafe_b64encode(b"/\none\n1\n1\n").decode()
    for handle in (m1["ReceiptHandle"], "not a handle", forged, "", "%%%"):
        with pytest.raises(ClientError) as e:
            client.delete_message(QueueUrl=two, ReceiptHandle=handle)
        assert error_code(e) in ("ReceiptHandleIsInvalid", "MissingParameter"), handle
        with pytest.raises(ClientError) as e:
            client.change_message_visibility(
                QueueUrl=two, ReceiptHandle=handle, VisibilityTimeout=0
            )
        assert error_code(e) in ("ReceiptHandleIsInvalid", "MissingParameter"), handle
    assert _messages(sqs, one) == ("0", "1")
    assert _messages(sqs, two) == ("1", "0")
    with pytest.raises(ClientError) as e:
        client.change_message_visibility(
            QueueUrl=one, ReceiptHandle=m1["ReceiptHandle"], VisibilityTimeout=43_201
        )
    assert error_code(e) == "InvalidParameterValue"
    client.delete_message(QueueUrl=one, ReceiptHandle=m1["ReceiptHandle"])
    assert _messages(sqs, one) == ("0", "0")


async def _signed_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = botocore.awsrequest.AWSRequest("POST", url, data=body, headers=headers)
    botocore.auth.SigV4Auth(
        botocore.credentials.Credentials("guest", "guest"), "sqs", REGION
    ).add_auth(request)
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=io.BytesIO(body), headers=dict(request.headers.items())) as response,
    ):
        return response.status, await response.read()


JSON = "application/x-amz-json-1.0"
FORM = "application/x-www-form-urlencoded; charset=utf-8"


def test_malformed_requests(sqs: Sqs) -> None:
    url = sqs.create("target")
    sqs.client.send_message(QueueUrl=url, MessageBody="kept")
    base = endpoint(sqs.broker) + "/"

    def post(body: bytes, target: str | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": JSON if target else FORM}
        if target:
            headers["X-Amz-Target"] = f"AmazonSQS.{target}"
        return asyncio.run(_signed_post(base, body, headers))

    status, reply = post(b'{"QueueUrl": ', "SendMessage")
    assert (status, json.loads(reply)["__type"].split("#")[1]) == (400, "SerializationException")
    status, reply = post(json.dumps({"QueueUrl": url}).encode(), "Frobnicate")
    assert (status, json.loads(reply)["__type"].split("#")[1]) == (400, "InvalidAction")
    status, reply = post(json.dumps({"QueueUrl": url, "MessageBody": 5}).encode(), "SendMessage")
    assert status == 400
    status, reply = post(json.dumps({"QueueUrl": url}).encode(), "SendMessage")
    assert (status, json.loads(reply)["__type"].split("#")[1]) == (400, "MissingParameter")
    status, reply = post(
        json.dumps({"QueueUrl": url, "MaxNumberOfMessages": "many"}).encode(), "ReceiveMessage"
    )
    assert status == 400
    status, reply = post(b"Action=Frobnicate&Version=2012-11-05")
    assert status == 400
    assert b"<Code>InvalidAction</Code>" in reply
    status, reply = post(b"Action=SendMessage&QueueUrl=" + url.encode() + b"&MessageBody=%GG")
    assert status == 404
    assert b"<Code>MalformedQueryString</Code>" in reply
    status, reply = post(b"Action=SendMessage&QueueUrl=" + url.encode() + b"&Attribute.x.Name=a")
    assert status == 400  # no MessageBody
    status, reply = post(b"Action=SendMessage&MessageBody=" + b"x" * (5 * 1024 * 1024))
    assert status == 413
    assert b"<Code>RequestEntityTooLarge</Code>" in reply
    # a Query request posted to the queue's own URL needs no QueueUrl parameter
    status, reply = asyncio.run(
        _signed_post(url, b"Action=SendMessage&MessageBody=by+path", {"Content-Type": FORM})
    )
    assert status == 200, reply
    bodies = sorted(m["Body"] for m in sqs.receive(url, MaxNumberOfMessages=10))
    assert bodies == ["by path", "kept"]


def test_permissions(
    tmp_path: Path, start_broker: Callable[..., RunningBroker], make_client: ClientFactory
) -> None:
    """A user's vhost permissions apply to SQS as to AMQP; refusals are AccessDenied."""
    reader = make_user("reader", "pw", {"/": ("^$", "^$", "^shared$")})
    reader.add_access_key("AKIAREADER", "reader-secret")
    outsider = make_user("outsider", "pw", {"other": (".*", ".*", ".*")})
    outsider.add_access_key("AKIAOUT", "out-secret")
    broker = start_broker(sqs_config(tmp_path, reader, outsider, vhosts=("/", "other")))
    admin = make_client(broker)
    url = admin.create_queue(QueueName="shared")["QueueUrl"]
    admin.send_message(QueueUrl=url, MessageBody="for readers")
    client = make_client(broker, key="AKIAREADER", secret="reader-secret")
    (message,) = client.receive_message(QueueUrl=url)["Messages"]
    client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    for call in (
        lambda: client.create_queue(QueueName="mine"),
        lambda: client.send_message(QueueUrl=url, MessageBody="x"),
        lambda: client.delete_queue(QueueUrl=url),
        lambda: client.set_queue_attributes(QueueUrl=url, Attributes={"DelaySeconds": "1"}),
    ):
        with pytest.raises(ClientError) as e:
            call()
        assert error_code(e) == "AccessDenied"
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    other = make_client(broker, "query", key="AKIAOUT", secret="out-secret")
    with pytest.raises(ClientError) as e:
        other.list_queues()
    assert error_code(e) == "AccessDenied"
    assert admin.get_queue_url(QueueName="shared")["QueueUrl"] == url
