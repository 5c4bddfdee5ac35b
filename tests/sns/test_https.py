"""HTTPS subscription endpoints: the certificate is verified, against `[sns] https_ca`
for an internal CA (made here with trustme)."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme

from moorage.broker.config import SnsConfig
from moorage.broker.embedded import EmbeddedBroker
from moorage.protocols.sns.core import Sns
from tests.sns.endpoints import http_subscriber, wait_for
from tests.sns.test_engine import Client


async def test_https_endpoint_signed_by_the_configured_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    async with http_subscriber(server) as endpoint, EmbeddedBroker(protocols=("amqp",)) as eb:
        assert eb.daemon.broker is not None
        untrusting = Sns(eb.daemon.broker, SnsConfig(alerts_topic=""))
        trusting = Sns(eb.daemon.broker, SnsConfig(alerts_topic="", https_ca=str(bundle)))
        try:
            # without the CA the endpoint's certificate is refused: nothing reaches it
            plain = Client(untrusting)
            arn = await plain.text("CreateTopic", "TopicArn", Name="secure")
            once = '{"healthyRetryPolicy": {"numRetries": 0}}'  # one attempt, no retry
            await plain(
                "Subscribe",
                TopicArn=arn,
                Protocol="https",
                Endpoint=endpoint.url,
                **{"Attributes.entry.1.key": "DeliveryPolicy", "Attributes.entry.1.value": once},
            )
            await wait_for(lambda: not untrusting._confirmations)
            assert endpoint.posts == []
            await untrusting.close()
            # with it, the confirmation and then the notification arrive
            client = Client(trusting)
            await client("Subscribe", TopicArn=arn, Protocol="https", Endpoint=endpoint.url + "/2")
            await wait_for(lambda: bool(endpoint.of_type("SubscriptionConfirmation")))
            token = endpoint.of_type("SubscriptionConfirmation")[0]["Token"]
            await client("ConfirmSubscription", TopicArn=arn, Token=token)
            await client("Publish", TopicArn=arn, Message="over TLS")
            await wait_for(lambda: bool(endpoint.of_type("Notification")))
            assert endpoint.of_type("Notification")[0]["Message"] == "over TLS"
        finally:
            await untrusting.close()
            await trusting.close()
