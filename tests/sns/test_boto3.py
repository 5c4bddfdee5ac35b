"""SNS through boto3 over HTTP (SigV4, the Query protocol) against the AWS listener:
fan-out, HTTP subscribers with confirmation, filters and retries, email, FIFO, batches,
dead letters, attributes and tags, AWS's error codes, and the `aws` command line."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import paho.mqtt.client as mqtt
import pytest
from botocore.exceptions import ClientError

from moorage.broker.embedded import EmbeddedBroker
from tests.sns.conftest import Sns, Sqs, aws_config, sqs_arn
from tests.sns.endpoints import WAIT, http_subscriber, smtp_server, wait_for
from tests.sns.test_engine import amqp_queue, get_all

Aws = tuple[EmbeddedBroker, Sns]


def attribute(data_type: str, value: str) -> dict[str, str]:
    return {"DataType": data_type, "StringValue": value}


async def queues(eb: EmbeddedBroker, *names: str) -> None:
    for name in names:
        await (await amqp_queue(eb, name)).close()


async def receive_all(sqs: Sqs, url: str, count: int) -> list[dict[str, Any]]:
    """Every message of an SQS queue (boto3 ReceiveMessage), exactly `count` of them."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT):
        while len(got) < count:
            answer = await sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                MessageAttributeNames=["All"],
            )
            for message in answer.get("Messages", []):
                got.append(message)
                await sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    assert "Messages" not in await sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)
    return got


async def test_fan_out_to_several_sqs_queues_with_attribute_and_body_filters(aws: Aws) -> None:
    eb, sns = aws
    sqs = Sqs(f"http://127.0.0.1:{eb.ports['sqs']}")
    urls = {}
    for name in ("all", "big-orders", "eu-body", "raw"):
        urls[name] = (await sqs.create_queue(QueueName=name))["QueueUrl"]
    arn = {
        name: (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))[
            "Attributes"
        ]["QueueArn"]
        for name, url in urls.items()
    }
    topic = (await sns.create_topic(Name="orders"))["TopicArn"]
    await sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn["all"])
    await sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=arn["big-orders"],
        Attributes={"FilterPolicy": json.dumps({"amount": [{"numeric": [">=", 100]}]})},
    )
    await sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=arn["eu-body"],
        Attributes={
            "FilterPolicy": json.dumps({"region": [{"prefix": "eu-"}]}),
            "FilterPolicyScope": "MessageBody",
        },
    )
    raw_sub = await sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=arn["raw"],
        Attributes={"RawMessageDelivery": "true"},
        ReturnSubscriptionArn=True,
    )
    assert raw_sub["SubscriptionArn"].startswith(topic + ":")
    orders = [
        ({"region": "eu-west"}, 50),
        ({"region": "us-east"}, 500),
        ({"region": "eu-north"}, 150),
    ]
    for body, amount in orders:
        await sns.publish(
            TopicArn=topic,
            Message=json.dumps(body),
            MessageAttributes={
                "amount": attribute("Number", str(amount)),
                "shop": attribute("String", "web"),
            },
        )
    everything = [json.loads(m["Body"]) for m in await receive_all(sqs, urls["all"], 3)]
    assert [json.loads(n["Message"])["region"] for n in everything] == [
        "eu-west",
        "us-east",
        "eu-north",
    ]
    assert everything[0]["Type"] == "Notification"
    assert everything[0]["TopicArn"] == topic
    assert everything[0]["MessageAttributes"]["amount"] == {"Type": "Number", "Value": "50"}
    big = [
        json.loads(json.loads(m["Body"])["Message"])
        for m in await receive_all(sqs, urls["big-orders"], 2)
    ]
    assert [b["region"] for b in big] == ["us-east", "eu-north"]
    eu = [
        json.loads(json.loads(m["Body"])["Message"])
        for m in await receive_all(sqs, urls["eu-body"], 2)
    ]
    assert [b["region"] for b in eu] == ["eu-west", "eu-north"]
    raw = await receive_all(sqs, urls["raw"], 3)
    assert [json.loads(m["Body"]) for m in raw] == [body for body, _ in orders]
    # raw delivery: the SNS message attributes are the SQS message's attributes
    assert raw[0]["MessageAttributes"] == {
        "amount": {"DataType": "Number", "StringValue": "50"},
        "shop": {"DataType": "String", "StringValue": "web"},
    }
    listed = await sns.list_subscriptions_by_topic(TopicArn=topic)
    assert sorted(s["Endpoint"] for s in listed["Subscriptions"]) == sorted(arn.values())
    sqs.client.close()


async def test_http_subscriber_confirms_gets_filtered_messages_and_retries(aws: Aws) -> None:
    _eb, sns = aws
    async with http_subscriber() as endpoint:
        topic = (await sns.create_topic(Name="web"))["TopicArn"]
        pending = await sns.subscribe(
            TopicArn=topic,
            Protocol="http",
            Endpoint=endpoint.url,
            Attributes={
                "FilterPolicy": json.dumps(
                    {
                        "event": ["deploy"],
                        "$or": [{"env": ["prod"]}, {"urgent": [{"exists": True}]}],
                    }
                ),
                # a short policy, so the test does not wait AWS's 20 s (never asserted as speed)
                "DeliveryPolicy": json.dumps(
                    {
                        "healthyRetryPolicy": {
                            "numRetries": 3,
                            "numNoDelayRetries": 3,
                            "minDelayTarget": 1,
                            "maxDelayTarget": 1,
                        }
                    }
                ),
            },
        )
        assert pending["SubscriptionArn"] == "pending confirmation"
        await wait_for(lambda: bool(endpoint.of_type("SubscriptionConfirmation")))
        (request,) = endpoint.of_type("SubscriptionConfirmation")
        assert request["TopicArn"] == topic
        assert request["SubscribeURL"].startswith("http://127.0.0.1:")
        confirmed = await sns.confirm_subscription(TopicArn=topic, Token=request["Token"])
        attributes = (
            await sns.get_subscription_attributes(SubscriptionArn=confirmed["SubscriptionArn"])
        )["Attributes"]
        assert attributes["PendingConfirmation"] == "false"
        endpoint.statuses = [500, 503]  # the first delivery attempt fails twice, then succeeds
        for event, env in (("deploy", "dev"), ("build", "prod"), ("deploy", "prod")):
            await sns.publish(
                TopicArn=topic,
                Message=f"{event} on {env}",
                Subject="ci",
                MessageAttributes={
                    "event": attribute("String", event),
                    "env": attribute("String", env),
                },
            )
        await wait_for(lambda: len(endpoint.of_type("Notification")) == 3)
        notifications = endpoint.of_type("Notification")
        assert [n["Message"] for n in notifications] == [
            "deploy on prod"
        ] * 3  # two refusals, one success
        assert notifications[0]["MessageId"] == notifications[2]["MessageId"]
        assert notifications[0]["Subject"] == "ci"
        headers = endpoint.posts[-1][0]
        assert headers["x-amz-sns-message-type"] == "Notification"
        assert headers["x-amz-sns-subscription-arn"] == confirmed["SubscriptionArn"]
        assert headers["content-type"].startswith("text/plain")


async def test_an_endpoint_confirms_by_opening_its_subscribe_url_unsigned(aws: Aws) -> None:
    """As on AWS, the SubscribeURL works without a signature: its token is the credential.
    A forged token is refused and confirms nothing."""
    _eb, sns = aws
    async with http_subscriber() as endpoint:
        topic = (await sns.create_topic(Name="hooks"))["TopicArn"]
        await sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=endpoint.url)
        await wait_for(lambda: bool(endpoint.of_type("SubscriptionConfirmation")))
        (request,) = endpoint.of_type("SubscriptionConfirmation")
        url = request["SubscribeURL"]
        async with aiohttp.ClientSession() as http:
            forged = url.replace(request["Token"], "0" * len(request["Token"]))
            async with http.get(forged) as refused:
                assert refused.status == 400
                assert "<Code>InvalidParameter</Code>" in await refused.text()
            listed = await sns.list_subscriptions_by_topic(TopicArn=topic)
            assert listed["Subscriptions"][0]["SubscriptionArn"] == "PendingConfirmation"
            async with http.get(url) as answer:
                assert answer.status == 200
                text = await answer.text()
        assert "<ConfirmSubscriptionResult><SubscriptionArn>" in text
        listed = await sns.list_subscriptions_by_topic(TopicArn=topic)
        assert listed["Subscriptions"][0]["SubscriptionArn"].startswith(topic + ":")
        await sns.publish(TopicArn=topic, Message="after the click")
        await wait_for(lambda: bool(endpoint.of_type("Notification")))
        assert endpoint.of_type("Notification")[0]["Message"] == "after the click"


async def test_undeliverable_http_message_goes_to_the_dead_letter_queue(aws: Aws) -> None:
    eb, sns = aws
    await queues(eb, "dlq")
    async with http_subscriber() as endpoint:
        endpoint.status = 500
        topic = (await sns.create_topic(Name="fragile"))["TopicArn"]
        await sns.subscribe(
            TopicArn=topic,
            Protocol="http",
            Endpoint=endpoint.url,
            Attributes={
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": sqs_arn("dlq")}),
                "DeliveryPolicy": json.dumps(
                    {"healthyRetryPolicy": {"numRetries": 1, "numNoDelayRetries": 1}}
                ),
            },
        )
        await wait_for(lambda: bool(endpoint.of_type("SubscriptionConfirmation")))
        token = endpoint.of_type("SubscriptionConfirmation")[0]["Token"]
        await sns.confirm_subscription(TopicArn=topic, Token=token)
        await sns.publish(TopicArn=topic, Message="lost cause")
        (dead,) = await get_all(eb, "dlq", 1)
        assert json.loads(dead.body)["Message"] == "lost cause"
        assert len(endpoint.of_type("Notification")) == 2  # the attempt and its one retry


async def test_email_through_an_smtp_relay(tmp_path: Path) -> None:
    async with smtp_server() as box:
        config = aws_config(tmp_path)
        config.sns.smtp_host, config.sns.smtp_port = "127.0.0.1", box.port
        config.sns.smtp_from = "broker@example.com"
        async with EmbeddedBroker(config) as eb:
            sns = Sns(f"http://127.0.0.1:{eb.ports['sqs']}")
            topic = (await sns.create_topic(Name="ops", Attributes={"DisplayName": "Ops"}))[
                "TopicArn"
            ]
            await sns.subscribe(TopicArn=topic, Protocol="email", Endpoint="oncall@example.com")
            await sns.subscribe(TopicArn=topic, Protocol="email-json", Endpoint="robot@example.com")
            await wait_for(lambda: len(box.mails) == 2)
            for mail in box.mails:
                text = mail.get_payload(decode=True).decode()
                if mail["To"] == "robot@example.com":
                    token = json.loads(text)["Token"]
                else:
                    assert mail["Subject"] == "AWS Notification - Subscription Confirmation"
                    token = text.split("Token=")[1].split()[0]
                await sns.confirm_subscription(TopicArn=topic, Token=token)
            await sns.publish(TopicArn=topic, Message="disk 91% full", Subject="disk")
            await wait_for(lambda: len(box.mails) == 4)
            by_to = {m["To"]: m for m in box.mails[2:]}
            human = by_to["oncall@example.com"]
            assert human["Subject"] == "disk"
            assert "Ops <broker@example.com>" in human["From"]
            assert "disk 91% full" in human.get_payload(decode=True).decode()
            doc = json.loads(by_to["robot@example.com"].get_payload(decode=True).decode())
            assert doc["Type"] == "Notification"
            assert doc["Message"] == "disk 91% full"
            sns.client.close()


async def test_fifo_topic_keeps_group_order_and_deduplicates(aws: Aws) -> None:
    eb, sns = aws
    await queues(eb, "ordered")
    topic = (
        await sns.create_topic(
            Name="ledger.fifo",
            Attributes={"FifoTopic": "true", "ContentBasedDeduplication": "true"},
        )
    )["TopicArn"]
    attributes = (await sns.get_topic_attributes(TopicArn=topic))["Attributes"]
    assert attributes["FifoTopic"] == "true"
    await sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=sqs_arn("ordered"),
        Attributes={"RawMessageDelivery": "true"},
    )
    entries = [
        {"Id": f"e{i}", "Message": f"tx-{i}", "MessageGroupId": f"account-{i % 2}"}
        for i in range(6)
    ]
    batch = await sns.publish_batch(TopicArn=topic, PublishBatchRequestEntries=entries)
    assert [s["Id"] for s in batch["Successful"]] == [e["Id"] for e in entries]
    assert batch["Failed"] == []
    sequence = [int(s["SequenceNumber"]) for s in batch["Successful"]]
    assert sequence == sorted(sequence)
    again = await sns.publish(
        TopicArn=topic, Message="tx-0", MessageGroupId="account-0"
    )  # a duplicate
    assert again["MessageId"]
    with pytest.raises(ClientError) as missing_group:
        await sns.publish(TopicArn=topic, Message="tx-9")
    assert missing_group.value.response["Error"]["Code"] == "InvalidParameter"
    got = [m.body.decode() for m in await get_all(eb, "ordered", 6)]
    assert [b for b in got if b in ("tx-0", "tx-2", "tx-4")] == ["tx-0", "tx-2", "tx-4"]
    assert [b for b in got if b in ("tx-1", "tx-3", "tx-5")] == ["tx-1", "tx-3", "tx-5"]


async def test_publish_batch_reports_each_failed_entry(aws: Aws) -> None:
    eb, sns = aws
    await queues(eb, "batch")
    topic = (await sns.create_topic(Name="batches"))["TopicArn"]
    await sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=sqs_arn("batch"))
    result = await sns.publish_batch(
        TopicArn=topic,
        PublishBatchRequestEntries=[
            {"Id": "ok", "Message": "fine"},
            {"Id": "bad", "Message": "x", "MessageStructure": "json"},
        ],
    )
    assert [s["Id"] for s in result["Successful"]] == ["ok"]
    assert [(f["Id"], f["Code"], f["SenderFault"]) for f in result["Failed"]] == [
        ("bad", "InvalidParameter", True)
    ]
    (only,) = await get_all(eb, "batch", 1)
    assert json.loads(only.body)["Message"] == "fine"
    with pytest.raises(ClientError) as duplicate:
        await sns.publish_batch(
            TopicArn=topic,
            PublishBatchRequestEntries=[{"Id": "a", "Message": "1"}, {"Id": "a", "Message": "2"}],
        )
    assert duplicate.value.response["Error"]["Code"] == "BatchEntryIdsNotDistinct"


async def test_message_structure_json_sends_each_protocol_its_text(aws: Aws) -> None:
    eb, sns = aws
    await queues(eb, "per-protocol")
    topic = (await sns.create_topic(Name="structured"))["TopicArn"]
    await sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=sqs_arn("per-protocol"))
    await sns.publish(
        TopicArn=topic,
        MessageStructure="json",
        Message=json.dumps({"default": "for everyone", "sqs": "for queues", "email": "for people"}),
    )
    (got,) = await get_all(eb, "per-protocol", 1)
    assert json.loads(got.body)["Message"] == "for queues"


async def test_topic_and_subscription_attributes_tags_and_lists(aws: Aws) -> None:
    eb, sns = aws
    await queues(eb, "q")
    topic = (await sns.create_topic(Name="admin", Tags=[{"Key": "team", "Value": "core"}]))[
        "TopicArn"
    ]
    assert (await sns.create_topic(Name="admin"))["TopicArn"] == topic  # idempotent
    await sns.set_topic_attributes(
        TopicArn=topic, AttributeName="DisplayName", AttributeValue="Admin"
    )
    attributes = (await sns.get_topic_attributes(TopicArn=topic))["Attributes"]
    assert attributes["DisplayName"] == "Admin"
    assert attributes["TopicArn"] == topic
    assert json.loads(attributes["Policy"])["Statement"][0]["Resource"] == topic
    await sns.tag_resource(ResourceArn=topic, Tags=[{"Key": "tier", "Value": "1"}])
    await sns.untag_resource(ResourceArn=topic, TagKeys=["team"])
    assert (await sns.list_tags_for_resource(ResourceArn=topic))["Tags"] == [
        {"Key": "tier", "Value": "1"}
    ]
    sub = (await sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=sqs_arn("q")))[
        "SubscriptionArn"
    ]
    await sns.set_subscription_attributes(
        SubscriptionArn=sub, AttributeName="FilterPolicy", AttributeValue='{"a": ["b"]}'
    )
    got = (await sns.get_subscription_attributes(SubscriptionArn=sub))["Attributes"]
    assert got["FilterPolicy"] == '{"a": ["b"]}'
    assert got["FilterPolicyScope"] == "MessageAttributes"
    assert got["Protocol"] == "sqs"
    assert [s["SubscriptionArn"] for s in (await sns.list_subscriptions())["Subscriptions"]] == [
        sub
    ]
    for i in range(101):  # ListTopics pages by 100
        await sns.create_topic(Name=f"page-{i:03d}")
    first = await sns.list_topics()
    second = await sns.list_topics(NextToken=first["NextToken"])
    assert len(first["Topics"]) == 100
    assert "NextToken" not in second
    assert len(first["Topics"]) + len(second["Topics"]) == 102
    await sns.unsubscribe(SubscriptionArn=sub)
    assert (await sns.list_subscriptions())["Subscriptions"] == []
    await sns.delete_topic(TopicArn=topic)
    assert "admin" not in eb.daemon.broker.vhosts["/"].exchanges  # type: ignore[union-attr]


async def test_amqp_publish_to_the_topic_exchange_reaches_sns_subscribers(aws: Aws) -> None:
    eb, sns = aws
    async with http_subscriber() as endpoint:
        topic = (await sns.create_topic(Name="mixed"))["TopicArn"]
        await sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=endpoint.url)
        await wait_for(lambda: bool(endpoint.of_type("SubscriptionConfirmation")))
        await sns.confirm_subscription(
            TopicArn=topic, Token=endpoint.of_type("SubscriptionConfirmation")[0]["Token"]
        )
        connection = await aio_pika.connect(eb.urls["amqp"])
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange("mixed")
            await exchange.publish(
                aio_pika.Message(b"from AMQP", headers={"source": "legacy"}), routing_key=""
            )
        await wait_for(lambda: bool(endpoint.of_type("Notification")))
        (note,) = endpoint.of_type("Notification")
        assert note["Message"] == "from AMQP"
        assert note["MessageAttributes"]["source"] == {"Type": "String", "Value": "legacy"}


async def test_sns_publish_reaches_an_mqtt_subscriber(tmp_path: Path) -> None:
    """The documented way for MQTT: bind the topic's exchange to `amq.topic` once, then
    subscribe to `sns/<topic>` (SNS publishes with the routing key `sns.<topic>`)."""
    async with EmbeddedBroker(aws_config(tmp_path, protocols=("mqtt",))) as eb:
        sns = Sns(f"http://127.0.0.1:{eb.ports['sqs']}")
        topic = (await sns.create_topic(Name="prices"))["TopicArn"]
        connection = await aio_pika.connect(eb.urls["amqp"])
        async with connection:
            channel = await connection.channel()
            amq_topic = await channel.get_exchange("amq.topic")
            await amq_topic.bind("prices", routing_key="#")
        received: list[bytes] = []
        subscribed = asyncio.Event()
        loop = asyncio.get_running_loop()
        paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sns-reader")
        paho.username_pw_set("guest", "guest")
        paho.on_subscribe = lambda *_a: loop.call_soon_threadsafe(subscribed.set)
        paho.on_message = lambda _c, _u, m: received.append(m.payload)
        paho.on_connect = lambda c, *_a: c.subscribe("sns/prices", qos=1)
        paho.connect("127.0.0.1", eb.ports["mqtt"])
        paho.loop_start()
        try:
            async with asyncio.timeout(WAIT):
                await subscribed.wait()
            await sns.publish(TopicArn=topic, Message="42 EUR")
            await wait_for(lambda: received == [b"42 EUR"])
        finally:
            paho.disconnect()
            paho.loop_stop()
            sns.client.close()


def code_of(error: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response: dict[str, Any] = error.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


async def test_bad_input_gets_aws_error_codes(aws: Aws) -> None:
    eb, sns = aws
    await queues(eb, "q")
    topic = (await sns.create_topic(Name="strict"))["TopicArn"]
    unknown = topic.replace("strict", "nowhere")
    cases: list[tuple[str, dict[str, Any], tuple[str, int]]] = [
        ("publish", {"TopicArn": unknown, "Message": "x"}, ("NotFound", 404)),
        (
            "publish",
            {"TopicArn": topic, "Message": "x" * (256 * 1024 + 1)},
            ("InvalidParameter", 400),
        ),
        (
            "publish",
            {"TopicArn": topic, "Message": "{", "MessageStructure": "json"},
            ("InvalidParameter", 400),
        ),
        (
            "publish",
            {
                "TopicArn": topic,
                "Message": "x",
                "MessageAttributes": {"n": attribute("Number", "ten")},
            },
            ("ParameterValueInvalid", 400),
        ),
        (
            "subscribe",
            {
                "TopicArn": topic,
                "Protocol": "sqs",
                "Endpoint": sqs_arn("q"),
                "Attributes": {"FilterPolicy": "{not json"},
            },
            ("InvalidParameter", 400),
        ),
        (
            "subscribe",
            {
                "TopicArn": topic,
                "Protocol": "sqs",
                "Endpoint": sqs_arn("q"),
                "Attributes": {"FilterPolicy": json.dumps({f"k{i}": ["v"] for i in range(6)})},
            },
            ("InvalidParameter", 400),
        ),
        (
            "subscribe",
            {"TopicArn": unknown, "Protocol": "sqs", "Endpoint": sqs_arn("q")},
            ("NotFound", 404),
        ),
        (
            "get_subscription_attributes",
            {"SubscriptionArn": topic + ":no-such-id"},
            ("NotFound", 404),
        ),
        ("create_topic", {"Name": "has spaces"}, ("InvalidParameter", 400)),
        ("confirm_subscription", {"TopicArn": topic, "Token": "forged"}, ("InvalidParameter", 400)),
    ]
    for method, params, expected in cases:
        with pytest.raises(ClientError) as error:
            await getattr(sns, method)(**params)
        assert code_of(error) == expected, (method, params)
    # nothing was published by the refused calls
    assert eb.daemon.broker.vhosts["/"].queues["q"].message_count == 0  # type: ignore[union-attr]


async def test_unknown_action_is_invalid_action(aws: Aws) -> None:
    _eb, sns = aws
    client = sns.client
    # a signed Query request for an action SNS does not have, through botocore's own signer
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    request = AWSRequest(
        method="POST",
        url=client.meta.endpoint_url + "/",
        data="Action=FlyToTheMoon&Version=2010-03-31",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    SigV4Auth(client._request_signer._credentials, "sns", "us-east-1").add_auth(request)
    import urllib.request

    prepared = request.prepare()
    http_request = urllib.request.Request(
        prepared.url, data=prepared.body.encode(), headers=dict(prepared.headers), method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        await asyncio.to_thread(urllib.request.urlopen, http_request, timeout=30)
    body = error.value.read().decode()
    assert error.value.code == 400
    assert "<Code>InvalidAction</Code>" in body


async def test_user_without_permission_gets_authorization_error(tmp_path: Path) -> None:
    from moorage.broker.embedded import make_user

    config = aws_config(tmp_path)
    reader = make_user("reader", "secret", {"/": ("", "", ".*")})
    reader.add_access_key("AKIAREADER", "reader-secret")
    config.users.append(reader)
    async with EmbeddedBroker(config) as eb:
        guest = Sns(f"http://127.0.0.1:{eb.ports['sqs']}")
        limited = Sns(f"http://127.0.0.1:{eb.ports['sqs']}", "AKIAREADER", "reader-secret")
        topic = (await guest.create_topic(Name="guarded"))["TopicArn"]
        for method, params in (
            ("create_topic", {"Name": "mine"}),
            ("publish", {"TopicArn": topic, "Message": "x"}),
            ("delete_topic", {"TopicArn": topic}),
        ):
            with pytest.raises(ClientError) as error:
                await getattr(limited, method)(**params)
            assert code_of(error) == ("AuthorizationError", 403), method
        guest.client.close()
        limited.client.close()


async def test_aws_cli_publishes(aws: Aws) -> None:
    eb, sns = aws
    await queues(eb, "cli")
    topic = (await sns.create_topic(Name="cli"))["TopicArn"]
    await sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=sqs_arn("cli"))
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "guest",
        "AWS_SECRET_ACCESS_KEY": "guest",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    command = [
        sys.executable, "-m", "awscli", "--endpoint-url", f"http://127.0.0.1:{eb.ports['sqs']}",
        "sns", "publish", "--topic-arn", topic, "--message", "from the cli", "--output", "json",
    ]  # fmt: skip
    done = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    message_id = json.loads(done.stdout)["MessageId"]
    (got,) = await get_all(eb, "cli", 1)
    doc = json.loads(got.body)
    assert doc["Message"] == "from the cli"
    assert doc["MessageId"] == message_id
