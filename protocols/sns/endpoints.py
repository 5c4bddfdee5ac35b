"""Endpoints: how one message reaches an SQS queue, an HTTP/S URL or a mailbox.

Each `deliver_*` returns only once the endpoint has the message and raises
`DeliveryFailed` (or OSError) otherwise; the dispatcher acks after it.

- `sqs`: the message (the SNS JSON envelope, or with RawMessageDelivery the
  message text, its attributes as headers) is published to the target queue
  through the default exchange, as persistent, and the call returns once the
  store has written it (`Store.when_durable`).
- `http`/`https`: one POST (`Content-Type: text/plain; charset=UTF-8`, AWS's
  `x-amz-sns-*` headers, the envelope or the raw text as the body); any 2xx
  status is success, anything else or no answer within `HTTP_TIMEOUT` fails.
  An https endpoint's certificate and host name are verified against the
  system's CAs and `[sns] https_ca`.
- `email`/`email-json`: one message to the SMTP relay of `[sns] smtp_host`
  (`smtplib` on a worker thread: a relay is a trusted, local hop); `email`
  gets the text and an unsubscribe line, `email-json` the JSON envelope.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import aiohttp

from moorage.broker.broker import Broker
from moorage.broker.config import SnsConfig
from moorage.broker.message import Message, Properties
from moorage.protocols.sns.dispatcher import DeliveryFailed
from moorage.protocols.sns.envelope import SnsMessage, confirmation, notification, sqs_headers
from moorage.protocols.sns.model import Subscription, sqs_queue_of, topic_arn
from moorage.protocols.sns.registry import Registry

HTTP_TIMEOUT = 15.0  # seconds an HTTP/S endpoint has to answer (AWS: 15 s by default)
SMTP_TIMEOUT = 30.0  # seconds the SMTP relay has to accept a mail
USER_AGENT = "Amazon Simple Notification Service Agent"


class Endpoints:
    """Delivers to every kind of endpoint; one per SNS service."""

    def __init__(self, broker: Broker, registry: Registry, config: SnsConfig) -> None:
        self.broker = broker
        self.registry = registry
        self.config = config
        self.base_url = "http://127.0.0.1"  # the listener clients reached (SubscribeURL)
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        """Close the HTTP client and its connections."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- the dispatcher's two callbacks ---------------------------------------------------

    async def deliver(self, sub: Subscription, message: SnsMessage) -> None:
        """Hand `message` to the subscription's endpoint. Raises DeliveryFailed, OSError."""
        if sub.protocol == "sqs":
            await self._deliver_sqs(sub, message, sub.endpoint)
        elif sub.protocol in ("http", "https"):
            await self._deliver_http(sub, message)
        else:
            await self._deliver_email(sub, message)

    async def dead_letter(self, sub: Subscription, message: SnsMessage) -> None:
        """Put an undeliverable message into the subscription's dead-letter SQS queue."""
        target = json.loads(sub.attributes["RedrivePolicy"])["deadLetterTargetArn"]
        await self._deliver_sqs(sub, message, target, raw=False)

    # -- sqs ------------------------------------------------------------------------------

    async def _deliver_sqs(
        self, sub: Subscription, message: SnsMessage, arn: str, *, raw: bool | None = None
    ) -> None:
        queue = sqs_queue_of(arn)
        if queue is None:
            raise DeliveryFailed(f"not an SQS queue ARN: {arn}")
        raw = sub.raw if raw is None else raw
        if raw:
            body = message.text_for("sqs")
        else:
            doc = notification(message, topic_arn(sub.topic), sub.arn, "sqs", self.base_url)
            body = json.dumps(doc)
        headers = sqs_headers(message, raw=raw)
        await self.enqueue(sub.vhost, queue, body.encode(), headers or None, message)

    async def enqueue(
        self,
        vhost: str,
        queue: str,
        body: bytes,
        headers: dict[str, Any] | None,
        message: SnsMessage,
    ) -> None:
        """Publish into a Moorage queue and wait until the store has it."""
        found = self.broker.find_vhost(vhost)
        if found is None or found.find_queue(queue) is None:
            raise DeliveryFailed(f"no queue '{queue}' in vhost '{vhost}'")
        properties = Properties(
            delivery_mode=2,
            message_id=message.message_id,
            timestamp=datetime.fromtimestamp(int(message.timestamp), UTC),
            headers=headers,
        )
        with self.registry.system_session(vhost) as session:
            result = session.publish("", Message("", queue, properties, body))
        if not result.routed:
            raise DeliveryFailed(f"no queue '{queue}' in vhost '{vhost}'")
        if result.rejected:
            raise DeliveryFailed(f"queue '{queue}' is full")
        if result.stored:
            await self.registry.durable()

    # -- http -----------------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            context = ssl.create_default_context()  # certificates and host names checked
            if self.config.https_ca:
                context.load_verify_locations(cafile=self.config.https_ca)
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT),
                headers={"User-Agent": USER_AGENT},
                connector=aiohttp.TCPConnector(ssl=context),
            )
        return self._http

    async def _post(self, url: str, body: str, headers: dict[str, str]) -> None:
        headers = {"Content-Type": "text/plain; charset=UTF-8", **headers}
        try:
            async with self._session().post(url, data=body.encode(), headers=headers) as answer:
                await answer.read()
                if not 200 <= answer.status < 300:
                    raise DeliveryFailed(f"HTTP {answer.status} from {url}")
        except aiohttp.ClientError as e:
            raise DeliveryFailed(f"{type(e).__name__} from {url}: {e}") from None

    async def _deliver_http(self, sub: Subscription, message: SnsMessage) -> None:
        headers = {
            "x-amz-sns-message-type": "Notification",
            "x-amz-sns-message-id": message.message_id,
            "x-amz-sns-topic-arn": topic_arn(sub.topic),
            "x-amz-sns-subscription-arn": sub.arn,
        }
        if sub.raw:
            headers["x-amz-sns-rawdelivery"] = "true"
            body = message.text_for(sub.protocol)
        else:
            doc = notification(message, topic_arn(sub.topic), sub.arn, sub.protocol, self.base_url)
            body = json.dumps(doc)
        await self._post(sub.endpoint, body, headers)

    # -- email ----------------------------------------------------------------------------

    async def _deliver_email(self, sub: Subscription, message: SnsMessage) -> None:
        topic = self.registry.topics.get((sub.vhost, sub.topic))
        display = topic.attributes.get("DisplayName", "") if topic is not None else ""
        subject = message.subject or display or "AWS Notification Message"
        if sub.protocol == "email-json":
            doc = notification(message, topic_arn(sub.topic), sub.arn, "email-json", self.base_url)
            text = json.dumps(doc)
        else:
            text = (
                f"{message.text_for('email')}\n\n--\nIf you wish to stop receiving notifications "
                f"from this topic, please click or visit the link below to unsubscribe:\n"
                f"{self.base_url}/?Action=Unsubscribe&SubscriptionArn={sub.arn}\n"
            )
        await self.send_mail(sub.endpoint, subject, text, display)

    async def send_mail(self, to: str, subject: str, text: str, display: str = "") -> None:
        """Send one mail through the configured relay. Raises DeliveryFailed, OSError."""
        if not self.config.smtp_host:
            raise DeliveryFailed("no SMTP relay configured ([sns] smtp_host)")
        mail = EmailMessage()
        sender = self.config.smtp_from
        mail["From"] = f"{display} <{sender}>" if display else sender
        mail["To"] = to
        mail["Subject"] = subject
        mail.set_content(text)
        host, port = self.config.smtp_host, self.config.smtp_port

        def send() -> None:
            try:
                with smtplib.SMTP(host, port, timeout=SMTP_TIMEOUT) as smtp:
                    smtp.send_message(mail)
            except smtplib.SMTPException as e:
                raise DeliveryFailed(f"SMTP relay refused the mail: {e}") from None

        await asyncio.to_thread(send)

    # -- the subscription handshake --------------------------------------------------------

    async def send_confirmation(self, sub: Subscription) -> None:
        """Ask an HTTP/S or email endpoint to confirm. Raises DeliveryFailed, OSError."""
        doc = confirmation(topic_arn(sub.topic), sub.token, self.base_url, self.broker.clock.wall())
        if sub.protocol in ("http", "https"):
            headers = {
                "x-amz-sns-message-type": "SubscriptionConfirmation",
                "x-amz-sns-message-id": doc["MessageId"],
                "x-amz-sns-topic-arn": doc["TopicArn"],
            }
            await self._post(sub.endpoint, json.dumps(doc), headers)
        elif sub.protocol == "email-json":
            await self.send_mail(
                sub.endpoint, "AWS Notification - Subscription Confirmation", json.dumps(doc)
            )
        else:
            text = (
                f"You have chosen to subscribe to the topic:\n{doc['TopicArn']}\n\n"
                f"To confirm this subscription, click or visit the link below "
                f"(If this was in error no action is necessary):\n{doc['SubscribeURL']}\n"
            )
            await self.send_mail(sub.endpoint, "AWS Notification - Subscription Confirmation", text)
