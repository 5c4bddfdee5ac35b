"""SNS messages as the core carries them, and the JSON envelopes SNS delivers.

A Publish becomes one core `Message` (so AMQP, MQTT and STOMP consumers of a
queue bound to the topic's exchange see it too):

- body: the `Message` parameter as published (UTF-8);
- properties: persistent, `message_id` = the SNS MessageId, `timestamp`,
  and `headers`: each String and Number message attribute as a string header
  of the same name, a String.Array as its JSON text;
- annotations (stored with the message, never sent as headers):
  `sns.subject`, `sns.attributes` ({name: [DataType, value]}, Binary values
  base64), `sns.structure` ("json" when each protocol gets its own text),
  `sns.group_id`, `sns.dedup_id` (FIFO topics).

A message that an AMQP/MQTT/STOMP client published to the exchange has no
annotations: its MessageId is its `message_id` property when set, its string
and number headers become String and Number attributes.

Envelopes (`notification`, `confirmation`) follow AWS's "Amazon SNS message
and JSON formats". They are not signed: Moorage sends no `Signature`,
`SignatureVersion` or `SigningCertURL` (see docs/sns.md for why); endpoints
that verify AWS signatures must turn that check off for Moorage.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from moorage.broker.fifo import DEDUP_HEADER, GROUP_HEADER
from moorage.broker.message import Message, Properties

SUBJECT = "sns.subject"
ATTRIBUTES = "sns.attributes"
STRUCTURE = "sns.structure"
GROUP_ID = "sns.group_id"
DEDUP_ID = "sns.dedup_id"
SQS_DATA_TYPES = "x-sqs-data-types"  # the SQS API's header of attribute DataTypes


def iso_timestamp(seconds: float) -> str:
    """AWS's timestamp form: 2012-04-25T21:49:25.719Z."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def core_message(
    exchange: str,
    text: str,
    *,
    message_id: str,
    now: float,
    subject: str | None,
    attributes: dict[str, tuple[str, str]],
    structure: str | None,
    group_id: str | None = None,
    dedup_id: str | None = None,
) -> Message:
    """The core message a Publish puts on the topic's exchange."""
    headers: dict[str, Any] = {name: value for name, (_t, value) in attributes.items()}
    annotations: dict[str, Any] = {ATTRIBUTES: {k: list(v) for k, v in attributes.items()}}
    if subject is not None:
        annotations[SUBJECT] = subject
    if structure is not None:
        annotations[STRUCTURE] = structure
    if group_id is not None:
        annotations[GROUP_ID] = group_id
        headers[GROUP_HEADER] = group_id
    if dedup_id is not None:
        annotations[DEDUP_ID] = dedup_id
        headers[DEDUP_HEADER] = dedup_id
    properties = Properties(
        content_type="text/plain",
        delivery_mode=2,
        message_id=message_id,
        timestamp=datetime.fromtimestamp(int(now), UTC),
        headers=headers or None,
    )
    # the routing key lets a binding from the topic exchange to `amq.topic` reach MQTT
    # clients subscribed to `sns/<topic>` (docs/sns.md); the fanout itself ignores it
    return Message(exchange, f"sns.{exchange}", properties, text.encode(), annotations=annotations)


@dataclass(frozen=True, slots=True)
class SnsMessage:
    """What a delivery needs to know about a message on a topic."""

    message_id: str
    text: str  # the Message as published (the JSON document with MessageStructure=json)
    subject: str | None
    attributes: dict[str, tuple[str, str]]
    structure: str | None
    timestamp: float
    group_id: str | None = None  # FIFO topics: passed on to FIFO SQS queues
    dedup_id: str | None = None

    def text_for(self, protocol: str) -> str:
        """The text a subscriber of `protocol` gets (MessageStructure=json picks its key)."""
        if self.structure != "json":
            return self.text
        try:
            per_protocol = json.loads(self.text)
            chosen = per_protocol.get(protocol, per_protocol["default"])
        except (ValueError, KeyError, AttributeError):
            return self.text
        return chosen if isinstance(chosen, str) else json.dumps(chosen)


def sns_message(message: Message, now: float) -> SnsMessage:
    """The SNS view of a core message (published through SNS or by another protocol)."""
    notes = message.annotations
    stored = notes.get(ATTRIBUTES)
    attributes: dict[str, tuple[str, str]] = {}
    if isinstance(stored, dict):
        attributes = {k: (str(v[0]), str(v[1])) for k, v in stored.items()}
    else:
        for name, value in message.headers.items():
            if isinstance(value, bool):
                attributes[name] = ("String", "true" if value else "false")
            elif isinstance(value, int | float):
                attributes[name] = ("Number", str(value))
            elif isinstance(value, str):
                attributes[name] = ("String", value)
            elif isinstance(value, bytes):
                attributes[name] = ("String", value.decode("utf-8", "replace"))
    stamp = message.properties.timestamp
    return SnsMessage(
        message_id=message.properties.message_id or str(uuid.uuid4()),
        text=message.body.decode("utf-8", "replace"),
        subject=notes.get(SUBJECT),
        attributes=attributes,
        structure=notes.get(STRUCTURE),
        timestamp=stamp.timestamp() if stamp is not None else now,
        group_id=notes.get(GROUP_ID),
        dedup_id=notes.get(DEDUP_ID),
    )


def notification(
    message: SnsMessage, topic_arn: str, subscription_arn: str, protocol: str, base_url: str
) -> dict[str, Any]:
    """The `Notification` envelope (HTTP/S, SQS without raw delivery, email-json)."""
    doc: dict[str, Any] = {
        "Type": "Notification",
        "MessageId": message.message_id,
        "TopicArn": topic_arn,
    }
    if message.subject is not None:
        doc["Subject"] = message.subject
    doc["Message"] = message.text_for(protocol)
    doc["Timestamp"] = iso_timestamp(message.timestamp)
    doc["UnsubscribeURL"] = f"{base_url}/?Action=Unsubscribe&SubscriptionArn={subscription_arn}"
    if message.attributes:
        doc["MessageAttributes"] = {
            name: {"Type": kind, "Value": value}
            for name, (kind, value) in message.attributes.items()
        }
    return doc


def sqs_headers(message: SnsMessage, *, raw: bool) -> dict[str, Any]:
    """Headers of a delivery into an SQS (Moorage) queue, in the SQS API's documented
    mapping (docs/sqs.md): with raw delivery each attribute is a header (Binary as
    bytes, types other than String and Binary named in `x-sqs-data-types`), so an SQS
    ReceiveMessage shows them as message attributes; FIFO ids become the core's group
    and deduplication headers, which a FIFO target queue honours."""
    headers: dict[str, Any] = {}
    if raw:
        data_types: dict[str, Any] = {}
        for name, (kind, value) in message.attributes.items():
            if kind.startswith("Binary"):
                headers[name] = bytearray(base64.b64decode(value))
            else:
                headers[name] = value
            if kind not in ("String", "Binary"):
                data_types[name] = kind
        if data_types:
            headers[SQS_DATA_TYPES] = data_types
    if message.group_id is not None:
        headers[GROUP_HEADER] = message.group_id
    if message.dedup_id is not None:
        headers[DEDUP_HEADER] = message.dedup_id
    return headers


def confirmation(topic_arn: str, token: str, base_url: str, now: float) -> dict[str, Any]:
    """The `SubscriptionConfirmation` envelope an HTTP/S or email-json endpoint gets first."""
    return {
        "Type": "SubscriptionConfirmation",
        "MessageId": str(uuid.uuid4()),
        "Token": token,
        "TopicArn": topic_arn,
        "Message": (
            f"You have chosen to subscribe to the topic {topic_arn}.\n"
            "To confirm the subscription, visit the SubscribeURL included in this message."
        ),
        "SubscribeURL": (
            f"{base_url}/?Action=ConfirmSubscription&TopicArn={topic_arn}&Token={token}"
        ),
        "Timestamp": iso_timestamp(now),
    }
