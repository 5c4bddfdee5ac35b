"""The SNS engine below the wire: actions called directly on an embedded broker, with
real AMQP clients (aio-pika), a real HTTP subscriber (aiohttp) and a real SMTP server
(aiosmtpd) on the other side. The same behaviour through boto3 over HTTP is
tests/sns/test_boto3.py."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from moorage.broker.config import SnsConfig
from moorage.broker.embedded import EmbeddedBroker
from moorage.protocols.sns.api import Caller
from moorage.protocols.sns.core import Sns
from moorage.protocols.sns.wire import SnsError, response
from tests.sns.endpoints import http_subscriber, smtp_server, wait_for

NS = {"sns": "http://sns.amazonaws.com/doc/2010-03-31/"}


class Client:
    """Calls actions as the guest user and parses the XML answers."""

    def __init__(self, sns: Sns) -> None:
        self.sns = sns
        user = sns.broker.users.users["guest"]
        self.caller = Caller(user, "/", "127.0.0.1", "http://127.0.0.1:9")

    async def __call__(self, action: str, **params: str) -> ET.Element:
        result = await self.sns.handle(action, params, self.caller)
        return ET.fromstring(response(action, result, "req"))  # noqa: S314 - our own answer

    async def text(self, action: str, tag: str, **params: str) -> str:
        found = (await self(action, **params)).find(f".//sns:{tag}", NS)
        assert found is not None
        assert found.text is not None
        return found.text


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedBroker, Client]]:
    async with EmbeddedBroker(protocols=("amqp",), storage="sqlite", data_dir=tmp_path) as eb:
        assert eb.daemon.broker is not None
        sns = Sns(eb.daemon.broker, SnsConfig(alerts_topic=""))
        await sns.start()
        try:
            yield eb, Client(sns)
        finally:
            await sns.close()


async def amqp_queue(eb: EmbeddedBroker, name: str) -> Any:
    connection = await aio_pika.connect(eb.urls["amqp"])
    channel = await connection.channel()
    await channel.declare_queue(name, durable=True)
    return connection


async def get_all(eb: EmbeddedBroker, name: str, count: int) -> list[aio_pika.IncomingMessage]:
    connection = await aio_pika.connect(eb.urls["amqp"])
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(name)
        got: list[Any] = []
        async with asyncio.timeout(30):
            while len(got) < count:
                message = await queue.get(no_ack=True, fail=False)
                if message is None:
                    await asyncio.sleep(0.02)
                else:
                    got.append(message)
        assert await queue.get(no_ack=True, fail=False) is None
        return got


async def test_fan_out_to_queues_envelope_and_raw(engine: tuple[EmbeddedBroker, Client]) -> None:
    eb, sns = engine
    for name in ("q-envelope", "q-raw"):
        await (await amqp_queue(eb, name)).close()
    arn = await sns.text("CreateTopic", "TopicArn", Name="orders")
    assert arn == "arn:aws:sns:us-east-1:000000000000:orders"
    assert await sns.text("CreateTopic", "TopicArn", Name="orders") == arn  # idempotent
    await sns(
        "Subscribe",
        TopicArn=arn,
        Protocol="sqs",
        Endpoint="arn:aws:sqs:us-east-1:000000000000:q-envelope",
    )
    sub = await sns.text(
        "Subscribe",
        "SubscriptionArn",
        TopicArn=arn,
        Protocol="sqs",
        Endpoint="arn:aws:sqs:us-east-1:000000000000:q-raw",
        **{"Attributes.entry.1.key": "RawMessageDelivery", "Attributes.entry.1.value": "true"},
    )
    assert sub.startswith(arn + ":")
    message_id = await sns.text(
        "Publish",
        "MessageId",
        TopicArn=arn,
        Message="hello",
        Subject="greeting",
        **{
            "MessageAttributes.entry.1.Name": "colour",
            "MessageAttributes.entry.1.Value.DataType": "String",
            "MessageAttributes.entry.1.Value.StringValue": "blue",
        },
    )
    (enveloped,) = await get_all(eb, "q-envelope", 1)
    doc = json.loads(enveloped.body)
    assert doc["Type"] == "Notification"
    assert doc["MessageId"] == message_id
    assert doc["TopicArn"] == arn
    assert doc["Message"] == "hello"
    assert doc["Subject"] == "greeting"
    assert doc["MessageAttributes"] == {"colour": {"Type": "String", "Value": "blue"}}
    (raw,) = await get_all(eb, "q-raw", 1)
    assert raw.body == b"hello"
    assert raw.headers["colour"] == "blue"


async def test_amqp_publish_to_the_topic_reaches_sns_subscribers(
    engine: tuple[EmbeddedBroker, Client],
) -> None:
    eb, sns = engine
    await (await amqp_queue(eb, "q")).close()
    arn = await sns.text("CreateTopic", "TopicArn", Name="events")
    await sns(
        "Subscribe", TopicArn=arn, Protocol="sqs", Endpoint="arn:aws:sqs:us-east-1:000000000000:q"
    )
    connection = await aio_pika.connect(eb.urls["amqp"])
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange("events")  # the topic IS a fanout exchange
        await exchange.publish(
            aio_pika.Message(b"from amqp", headers={"kind": "audit", "level": 3}, message_id="m-1"),
            routing_key="",
        )
    (got,) = await get_all(eb, "q", 1)
    doc = json.loads(got.body)
    assert doc["Message"] == "from amqp"
    assert doc["MessageId"] == "m-1"
    assert doc["MessageAttributes"]["kind"] == {"Type": "String", "Value": "audit"}
    assert doc["MessageAttributes"]["level"] == {"Type": "Number", "Value": "3"}


async def test_http_subscriber_confirms_then_gets_only_filtered_messages_with_retries(
    engine: tuple[EmbeddedBroker, Client],
) -> None:
    _eb, sns = engine
    async with http_subscriber() as endpoint:
        arn = await sns.text("CreateTopic", "TopicArn", Name="web")
        pending = await sns.text(
            "Subscribe",
            "SubscriptionArn",
            TopicArn=arn,
            Protocol="http",
            Endpoint=endpoint.url,
            **{
                "Attributes.entry.1.key": "FilterPolicy",
                "Attributes.entry.1.value": '{"colour": ["blue"]}',
                "Attributes.entry.2.key": "DeliveryPolicy",
                "Attributes.entry.2.value": json.dumps(
                    {
                        "healthyRetryPolicy": {
                            "numRetries": 2,
                            "numNoDelayRetries": 2,
                            "minDelayTarget": 1,
                            "maxDelayTarget": 1,
                        }
                    }
                ),
            },
        )
        assert pending == "pending confirmation"
        await wait_for(lambda: len(endpoint.of_type("SubscriptionConfirmation")) == 1)
        (confirmation,) = endpoint.of_type("SubscriptionConfirmation")
        assert confirmation["TopicArn"] == arn
        assert "Action=ConfirmSubscription" in confirmation["SubscribeURL"]
        sub = await sns.text(
            "ConfirmSubscription", "SubscriptionArn", TopicArn=arn, Token=confirmation["Token"]
        )
        endpoint.statuses = [500, 500]  # the first delivery fails twice, then succeeds
        for colour in ("red", "blue"):
            await sns(
                "Publish",
                TopicArn=arn,
                Message=f"a {colour} one",
                **{
                    "MessageAttributes.entry.1.Name": "colour",
                    "MessageAttributes.entry.1.Value.DataType": "String",
                    "MessageAttributes.entry.1.Value.StringValue": colour,
                },
            )
        await wait_for(lambda: len(endpoint.of_type("Notification")) == 3)
        notifications = endpoint.of_type("Notification")
        assert {n["Message"] for n in notifications} == {"a blue one"}
        headers = endpoint.posts[-1][0]
        assert headers["x-amz-sns-subscription-arn"] == sub
        assert headers["x-amz-sns-topic-arn"] == arn
        assert headers["x-amz-sns-message-id"] == notifications[-1]["MessageId"]


async def test_email_confirmation_then_notification(tmp_path: Path) -> None:
    async with smtp_server() as box, EmbeddedBroker(protocols=("amqp",)) as eb:
        assert eb.daemon.broker is not None
        sns = Sns(
            eb.daemon.broker, SnsConfig(smtp_host="127.0.0.1", smtp_port=box.port, alerts_topic="")
        )
        client = Client(sns)
        try:
            arn = await client.text("CreateTopic", "TopicArn", Name="mail")
            await client("Subscribe", TopicArn=arn, Protocol="email", Endpoint="ops@example.com")
            await wait_for(lambda: len(box.mails) == 1)
            body = box.mails[0].get_payload(decode=True).decode()
            token = body.split("Token=")[1].split()[0]
            await client("ConfirmSubscription", TopicArn=arn, Token=token)
            await client("Publish", TopicArn=arn, Message="disk is fine", Subject="status")
            await wait_for(lambda: len(box.mails) == 2)
            mail = box.mails[1]
            assert mail["Subject"] == "status"
            assert mail["To"] == "ops@example.com"
            assert "disk is fine" in mail.get_payload(decode=True).decode()
        finally:
            await sns.close()


@pytest.mark.parametrize(
    ("action", "params", "code"),
    [
        (
            "Publish",
            {"TopicArn": "arn:aws:sns:us-east-1:000000000000:nope", "Message": "x"},
            "NotFound",
        ),
        ("Publish", {"TopicArn": "not-an-arn", "Message": "x"}, "InvalidParameter"),
        ("Publish", {"TopicArn": "@TOPIC", "Message": "x" * (256 * 1024 + 1)}, "InvalidParameter"),
        ("Publish", {"TopicArn": "@TOPIC", "Message": ""}, "InvalidParameter"),
        (
            "Publish",
            {"TopicArn": "@TOPIC", "Message": "{}", "MessageStructure": "json"},
            "InvalidParameter",
        ),
        (
            "Subscribe",
            {
                "TopicArn": "@TOPIC",
                "Protocol": "sqs",
                "Endpoint": "arn:aws:sqs:us-east-1:000000000000:q",
                "Attributes.entry.1.key": "FilterPolicy",
                "Attributes.entry.1.value": "{not json",
            },
            "InvalidParameter",
        ),
        (
            "Subscribe",
            {"TopicArn": "@TOPIC", "Protocol": "carrier-pigeon", "Endpoint": "x"},
            "InvalidParameter",
        ),
        ("CreateTopic", {"Name": "bad name!"}, "InvalidParameter"),
        ("DoSomething", {}, "InvalidAction"),
    ],
)
async def test_bad_input_gets_aws_error_codes(
    engine: tuple[EmbeddedBroker, Client], action: str, params: dict[str, str], code: str
) -> None:
    _eb, sns = engine
    topic = await sns.text("CreateTopic", "TopicArn", Name="t")
    params = {k: topic if v == "@TOPIC" else v for k, v in params.items()}
    with pytest.raises(SnsError) as raised:
        await sns(action, **params)
    assert raised.value.code == code


async def test_confirmation_request_is_retried_like_a_delivery(
    engine: tuple[EmbeddedBroker, Client],
) -> None:
    _eb, sns = engine
    async with http_subscriber() as endpoint:
        endpoint.statuses = [503]  # down when the subscription is made, up a moment later
        retry_once = '{"healthyRetryPolicy": {"numRetries": 1, "numNoDelayRetries": 1}}'
        arn = await sns.text("CreateTopic", "TopicArn", Name="flaky")
        await sns(
            "Subscribe",
            TopicArn=arn,
            Protocol="http",
            Endpoint=endpoint.url,
            **{
                "Attributes.entry.1.key": "DeliveryPolicy",
                "Attributes.entry.1.value": retry_once,
            },
        )
        await wait_for(lambda: len(endpoint.of_type("SubscriptionConfirmation")) == 2)
        first, second = endpoint.of_type("SubscriptionConfirmation")
        assert first["Token"] == second["Token"]
        await sns("ConfirmSubscription", TopicArn=arn, Token=second["Token"])
