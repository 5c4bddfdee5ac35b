"""Deliveries survive a broker restart and wait their retry delays on the broker's
clock; the broker's alarms reach the alerts topic."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from moorage.broker.clock import ManualClock
from moorage.broker.config import SnsConfig
from moorage.broker.embedded import EmbeddedBroker
from moorage.protocols.sns.core import Sns
from moorage.protocols.sns.wire import SnsError
from tests.sns.endpoints import http_subscriber, wait_for
from tests.sns.test_engine import Client, amqp_queue, get_all

SLOW_RETRIES = json.dumps(
    {"healthyRetryPolicy": {"numRetries": 100, "minDelayTarget": 1, "maxDelayTarget": 1}}
)


async def test_undelivered_messages_are_delivered_after_a_restart(tmp_path: Path) -> None:
    async with http_subscriber() as endpoint:
        endpoint.status = 500  # the endpoint is down: nothing is accepted before the restart
        async with EmbeddedBroker(protocols=("amqp",), storage="sqlite", data_dir=tmp_path) as eb:
            assert eb.daemon.broker is not None
            sns = Sns(eb.daemon.broker, SnsConfig(alerts_topic=""))
            client = Client(sns)
            try:
                arn = await client.text("CreateTopic", "TopicArn", Name="durable")
                await client(
                    "Subscribe",
                    TopicArn=arn,
                    Protocol="http",
                    Endpoint=endpoint.url,
                    **{
                        "Attributes.entry.1.key": "DeliveryPolicy",
                        "Attributes.entry.1.value": SLOW_RETRIES,
                    },
                )
                await wait_for(lambda: bool(endpoint.of_type("SubscriptionConfirmation")))
                token = endpoint.of_type("SubscriptionConfirmation")[0]["Token"]
                await client("ConfirmSubscription", TopicArn=arn, Token=token)
                for i in range(3):
                    await client("Publish", TopicArn=arn, Message=f"m{i}")
                # every message was tried (and refused) at least once
                await wait_for(
                    lambda: (
                        {n["Message"] for n in endpoint.of_type("Notification")}
                        == {"m0", "m1", "m2"}
                    )
                )
            finally:
                await sns.close()
        before = len(endpoint.posts)
        endpoint.status = 200
        async with EmbeddedBroker(protocols=("amqp",), storage="sqlite", data_dir=tmp_path) as eb:
            assert eb.daemon.broker is not None
            sns = Sns(eb.daemon.broker, SnsConfig(alerts_topic=""))
            try:
                await sns.start()  # reads the subscription back and resumes its deliveries
                await wait_for(
                    lambda: (
                        {
                            body["Message"]
                            for _h, body in endpoint.posts[before:]
                            if isinstance(body, dict)
                        }
                        == {"m0", "m1", "m2"}
                    )
                )
                # acked once accepted: the subscription's queue is empty
                queue = next(
                    q for q in eb.daemon.broker.vhosts["/"].queues if q.startswith("sns.sub.")
                )
                await wait_for(
                    lambda: eb.daemon.broker.vhosts["/"].queues[queue].message_count == 0
                )
            finally:
                await sns.close()


async def test_queue_depth_alarm_is_published_to_the_alerts_topic(tmp_path: Path) -> None:
    config = SnsConfig(alert_queue_depth=2, alert_interval=0.05)
    async with EmbeddedBroker(protocols=("amqp",)) as eb:
        assert eb.daemon.broker is not None
        sns = Sns(eb.daemon.broker, config)
        client = Client(sns)
        try:
            await sns.start()
            await (await amqp_queue(eb, "ops")).close()
            topics = await client("ListTopics")
            alerts_arn = "arn:aws:sns:us-east-1:000000000000:moorage-alerts"
            assert alerts_arn in [e.text for e in topics.iter() if e.tag.endswith("TopicArn")]
            await client(
                "Subscribe",
                TopicArn=alerts_arn,
                Protocol="sqs",
                Endpoint="arn:aws:sqs:us-east-1:000000000000:ops",
            )
            connection = await aio_pika.connect(eb.urls["amqp"])
            async with connection:
                channel = await connection.channel()
                watched = await channel.declare_queue("watched", durable=True)
                for i in range(3):
                    await channel.default_exchange.publish(aio_pika.Message(b"%d" % i), "watched")
                (raised,) = await get_all(eb, "ops", 1)
                await watched.purge()
                (cleared,) = await get_all(eb, "ops", 1)
            alert: dict[str, Any] = json.loads(raised.body)
            assert alert["Subject"] == "Moorage alarm queue_depth raised"
            assert alert["MessageAttributes"]["queue"]["Value"] == "watched"
            assert "holds 3 messages" in alert["Message"]
            assert json.loads(cleared.body)["MessageAttributes"]["state"]["Value"] == "cleared"
        finally:
            await sns.close()


async def test_memory_alarm_is_published_to_the_alerts_topic() -> None:
    limits = {"memory_high_watermark": 200_000.0}  # bytes: one big message crosses it
    async with EmbeddedBroker(protocols=("amqp",), limits=limits) as eb:
        assert eb.daemon.broker is not None
        sns = Sns(eb.daemon.broker, SnsConfig())
        client = Client(sns)
        try:
            await sns.start()
            for name in ("ops", "hold"):
                await (await amqp_queue(eb, name)).close()
            alerts = "arn:aws:sns:us-east-1:000000000000:moorage-alerts"
            await client(
                "Subscribe",
                TopicArn=alerts,
                Protocol="sqs",
                Endpoint="arn:aws:sqs:us-east-1:000000000000:ops",
            )
            big = await client.text("CreateTopic", "TopicArn", Name="big")
            await client(
                "Subscribe",
                TopicArn=big,
                Protocol="sqs",
                Endpoint="arn:aws:sqs:us-east-1:000000000000:hold",
            )
            await client("Publish", TopicArn=big, Message="x" * 250_000)
            (raised,) = await get_all(eb, "ops", 1)
            alert = json.loads(raised.body)
            assert alert["MessageAttributes"]["alarm"]["Value"] == "memory"
            assert alert["MessageAttributes"]["state"]["Value"] == "raised"
            assert "memory alarm set" in alert["Message"]
            # while the alarm is on, Publish is throttled as AWS answers (SDKs back off)
            with pytest.raises(SnsError) as throttled:
                await client("Publish", TopicArn=big, Message="more")
            assert (throttled.value.code, throttled.value.status) == ("Throttled", 429)
            connection = await aio_pika.connect(eb.urls["amqp"])
            async with connection:
                channel = await connection.channel()
                await (await channel.get_queue("hold")).purge()
            (cleared,) = await get_all(eb, "ops", 1)
            assert json.loads(cleared.body)["MessageAttributes"]["state"]["Value"] == "cleared"
            await client("Publish", TopicArn=big, Message="more")  # accepted again
        finally:
            await sns.close()


async def test_failover_warnings_are_alerts_with_their_state() -> None:
    """The failover node logs its events under `moorage.failover` (branch `fo`); each
    warning is an alert, `cleared` when the line says the trouble is over."""
    async with EmbeddedBroker(protocols=("amqp",)) as eb:
        assert eb.daemon.broker is not None
        sns = Sns(eb.daemon.broker, SnsConfig())
        client = Client(sns)
        try:
            await sns.start()
            await (await amqp_queue(eb, "ops")).close()
            alerts = "arn:aws:sns:us-east-1:000000000000:moorage-alerts"
            await client(
                "Subscribe",
                TopicArn=alerts,
                Protocol="sqs",
                Endpoint="arn:aws:sqs:us-east-1:000000000000:ops",
                **{
                    "Attributes.entry.1.key": "FilterPolicy",
                    "Attributes.entry.1.value": '{"alarm": ["failover"]}',
                },
            )
            failover = logging.getLogger("moorage.failover")
            failover.warning("failover: witness %s unreachable: %s", "w:1", "timed out")
            failover.warning("failover: witness %s reachable again", "w:1")
            logging.getLogger("moorage.queue").warning("not an alarm logger")
            raised, cleared = (json.loads(m.body) for m in await get_all(eb, "ops", 2))
            assert raised["Message"] == "failover: witness w:1 unreachable: timed out"
            assert raised["MessageAttributes"]["state"]["Value"] == "raised"
            assert raised["MessageAttributes"]["level"]["Value"] == "warning"
            assert cleared["MessageAttributes"]["state"]["Value"] == "cleared"
        finally:
            await sns.close()


async def test_retry_delays_follow_the_delivery_policy_on_the_broker_clock() -> None:
    """A failed HTTP delivery is tried again only when the policy's delay has passed on
    the broker's clock (a ManualClock here: no sleeping, no speed assumed)."""
    clock = ManualClock()
    async with (
        http_subscriber() as endpoint,
        EmbeddedBroker(protocols=("amqp",), clock=clock) as eb,
    ):
        assert eb.daemon.broker is not None
        sns = Sns(eb.daemon.broker, SnsConfig(alerts_topic=""))
        client = Client(sns)
        try:
            arn = await client.text("CreateTopic", "TopicArn", Name="clocked")
            policy = {
                "healthyRetryPolicy": {"numRetries": 2, "minDelayTarget": 20, "maxDelayTarget": 20}
            }
            await client(
                "Subscribe",
                TopicArn=arn,
                Protocol="http",
                Endpoint=endpoint.url,
                **{
                    "Attributes.entry.1.key": "DeliveryPolicy",
                    "Attributes.entry.1.value": json.dumps(policy),
                },
            )
            await wait_for(lambda: bool(endpoint.of_type("SubscriptionConfirmation")))
            token = endpoint.of_type("SubscriptionConfirmation")[0]["Token"]
            await client("ConfirmSubscription", TopicArn=arn, Token=token)
            endpoint.statuses = [500, 500]
            await client("Publish", TopicArn=arn, Message="later")

            def attempts() -> int:
                return len(endpoint.of_type("Notification"))

            await wait_for(lambda: attempts() == 1)
            clock.advance(19)
            await asyncio.sleep(0.2)  # room for a wrong early retry to show (it must not)
            assert attempts() == 1
            clock.advance(1)
            await wait_for(lambda: attempts() == 2)
            await asyncio.sleep(0.2)
            assert attempts() == 2
            clock.advance(20)
            await wait_for(lambda: attempts() == 3)  # the last retry, answered 200
            queue = next(q for q in eb.daemon.broker.vhosts["/"].queues if q.startswith("sns.sub."))
            await wait_for(lambda: eb.daemon.broker.vhosts["/"].queues[queue].message_count == 0)
        finally:
            await sns.close()


async def test_queue_age_alarm_uses_the_oldest_message_timestamp() -> None:
    config = SnsConfig(alert_queue_age=600.0, alert_interval=0.05)
    async with EmbeddedBroker(protocols=("amqp",)) as eb:
        assert eb.daemon.broker is not None
        sns = Sns(eb.daemon.broker, config)
        client = Client(sns)
        try:
            await sns.start()
            await (await amqp_queue(eb, "ops")).close()
            alerts = "arn:aws:sns:us-east-1:000000000000:moorage-alerts"
            await client(
                "Subscribe",
                TopicArn=alerts,
                Protocol="sqs",
                Endpoint="arn:aws:sqs:us-east-1:000000000000:ops",
            )
            connection = await aio_pika.connect(eb.urls["amqp"])
            async with connection:
                channel = await connection.channel()
                await channel.declare_queue("stale", durable=True)
                old = datetime.now(UTC) - timedelta(hours=1)
                await channel.default_exchange.publish(
                    aio_pika.Message(b"old", timestamp=old), "stale"
                )
                (raised,) = await get_all(eb, "ops", 1)
            alert = json.loads(raised.body)
            assert alert["MessageAttributes"]["alarm"]["Value"] == "queue_age"
            assert alert["MessageAttributes"]["queue"]["Value"] == "stale"
            assert "oldest message is" in alert["Message"]
        finally:
            await sns.close()
