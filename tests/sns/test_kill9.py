"""A `moorage serve` process killed with SIGKILL right after Publish answered: every
answered message is delivered once the broker is back (the answer waited for the disk,
the delivery is acked only after the endpoint accepted it)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.durability.broker_process import BrokerProcess
from tests.sns.conftest import Sns
from tests.sns.endpoints import http_subscriber, wait_for

RETRY_EVERY_SECOND = json.dumps(
    {"healthyRetryPolicy": {"numRetries": 100, "minDelayTarget": 1, "maxDelayTarget": 1}}
)


async def test_published_messages_survive_kill_9_and_are_delivered(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path / "data", sqs=True, extra_config='[sns]\nalerts_topic = ""\n')
    port = broker.sqs_port
    async with http_subscriber() as endpoint:
        endpoint.status = 500  # down until the broker has been killed
        await asyncio.to_thread(broker.start)
        sns = Sns(f"http://127.0.0.1:{port}")
        try:
            topic = (await sns.create_topic(Name="crashy"))["TopicArn"]
            await sns.subscribe(
                TopicArn=topic,
                Protocol="http",
                Endpoint=endpoint.url,
                Attributes={"DeliveryPolicy": RETRY_EVERY_SECOND},
            )
            await wait_for(lambda: bool(endpoint.of_type("SubscriptionConfirmation")))
            token = endpoint.of_type("SubscriptionConfirmation")[0]["Token"]
            await sns.confirm_subscription(TopicArn=topic, Token=token)
            ids = {
                (await sns.publish(TopicArn=topic, Message=f"m{i}"))["MessageId"] for i in range(5)
            }
            await asyncio.to_thread(broker.kill)
            endpoint.status = 200
            await asyncio.to_thread(broker.start)
            # The AWS listener makes its services on their first call; SNS resumes its
            # deliveries as soon as it is made (docs/sns.md).
            await sns.list_topics()
            await wait_for(
                lambda: (
                    ids
                    <= {
                        body["MessageId"]
                        for headers, body in endpoint.posts
                        if isinstance(body, dict) and body.get("Type") == "Notification"
                    }
                )
            )
        finally:
            sns.client.close()
            await asyncio.to_thread(broker.stop)
