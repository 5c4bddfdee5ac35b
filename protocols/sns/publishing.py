"""Publish and PublishBatch: validate as AWS does, publish to the topic's exchange, wait for disk.

A Publish is answered only once the message is on disk in every
subscription's queue (the core's `PublishResult.stored`, then the store's
`when_durable`, as a publisher confirm waits). A topic without subscriptions
accepts the message and keeps nothing, as AWS does.

FIFO topics: every subscription's queue is a core FIFO queue
(`x-queue-type: fifo`), and the message carries the core's group and
deduplication headers (`broker.fifo`): order is kept per MessageGroupId, and
a MessageDeduplicationId seen within the 5-minute window is accepted but not
delivered again, durably (the FIFO queue stores its ids). With
ContentBasedDeduplication the id is the SHA-256 of the message body, as in
AWS. SequenceNumber is a per-topic counter (128 bits in AWS, shown as 20
digits: Moorage starts it from the broker's wall clock in microseconds, so
it keeps increasing across restarts).

Flow control: `Throttled` during the memory alarm, a wait while the store's
write backlog drains (`Publishing._wait_for_room`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import itertools
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from moorage.broker.errors import BrokerError
from moorage.protocols.aws.query import members
from moorage.protocols.sns.api import Caller, SnsApi, to_sns_error
from moorage.protocols.sns.envelope import core_message
from moorage.protocols.sns.model import Topic
from moorage.protocols.sns.wire import SnsError, invalid, member_list, xml, xml_members

MAX_MESSAGE_BYTES = 256 * 1024  # message plus attributes (AWS: 262,144 bytes)
MAX_ATTRIBUTES = 10
MAX_BATCH = 10
MAX_SUBJECT = 100
_ATTRIBUTE_NAME = re.compile(r"(?!aws\.|amazon\.|\.)(?!.*\.\.)(?!.*\.$)[A-Za-z0-9_\-.]{1,256}")
_BATCH_ID = re.compile(r"[A-Za-z0-9_-]{1,80}")
_TYPE = re.compile(r"(String|Number|Binary)(\.[\x21-\x7e]{1,200})?|String\.Array")


def value_invalid(message: str) -> SnsError:
    """AWS's `ParameterValueInvalid` (InvalidParameterValueException)."""
    return SnsError("ParameterValueInvalid", message)


def parse_attributes(params: Mapping[str, str], prefix: str) -> dict[str, tuple[str, str]]:
    """The message attributes of a request: name -> (DataType, value; Binary in base64)."""
    attributes: dict[str, tuple[str, str]] = {}
    entries = members(params, f"{prefix}.entry")
    if len(entries) > MAX_ATTRIBUTES:
        raise invalid(f"Too many message attributes: {len(entries)} (at most {MAX_ATTRIBUTES})")
    for entry in entries:
        name = entry.get("Name", "")
        kind = entry.get("Value.DataType", "")
        if not _ATTRIBUTE_NAME.fullmatch(name):
            raise value_invalid(f"The message attribute name '{name}' is invalid.")
        if not kind:
            raise value_invalid(
                f"The message attribute '{name}' must contain a non-empty attribute type."
            )
        if not _TYPE.fullmatch(kind):
            raise value_invalid(
                f"The message attribute '{name}' has an invalid message attribute type, the set "
                "of supported type prefixes is Binary, Number, and String."
            )
        if kind.startswith("Binary"):
            value = entry.get("Value.BinaryValue")
            if value is None:
                raise value_invalid(f"The message attribute '{name}' must contain a binary value.")
            try:
                base64.b64decode(value, validate=True)
            except binascii.Error:
                raise value_invalid(
                    f"The message attribute '{name}' has an invalid binary value."
                ) from None
        else:
            value = entry.get("Value.StringValue")
            if value is None:
                raise value_invalid(
                    f"The message attribute '{name}' must contain non-empty message attribute "
                    "value for message attribute type '" + kind.split(".")[0] + "'."
                )
            _check_value(name, kind, value)
        attributes[name] = (kind, value)
    return attributes


def _check_value(name: str, kind: str, value: str) -> None:
    if kind == "String.Array":
        try:
            items = json.loads(value)
        except ValueError:
            items = None
        if not isinstance(items, list) or any(isinstance(i, dict | list) for i in items):
            raise value_invalid(
                f"The message attribute '{name}' with type 'String.Array' has an invalid value."
            )
    elif kind.startswith("Number"):
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if number != number or not -1e9 <= number <= 1e9:  # NaN or out of SNS's range
            raise value_invalid(f"Could not cast message attribute '{name}' value to number.")


def _size(text: str, attributes: Mapping[str, tuple[str, str]]) -> int:
    return len(text.encode()) + sum(
        len(n.encode()) + len(k.encode()) + len(v.encode()) for n, (k, v) in attributes.items()
    )


class Publishing:
    """Publish and PublishBatch for an `SnsApi`."""

    def __init__(self, api: SnsApi) -> None:
        self.api = api
        self._sequence = itertools.count(int(api.broker.clock.wall() * 1_000_000)).__next__

    def actions(self) -> dict[str, Any]:
        """The action handlers by AWS action name."""
        return {"Publish": self.publish, "PublishBatch": self.publish_batch}

    def _target(self, params: Mapping[str, str], caller: Caller) -> Topic:
        if params.get("PhoneNumber"):
            raise invalid("PhoneNumber Reason: SMS delivery is not supported by Moorage")
        arn = params.get("TopicArn") or params.get("TargetArn")
        if not arn:
            raise invalid("TopicArn or TargetArn Reason: no value for required parameter")
        return self.api.topic(caller, arn, "TopicArn" if params.get("TopicArn") else "TargetArn")

    def _validate(self, topic: Topic, entry: Mapping[str, str], prefix: str) -> dict[str, Any]:
        """One message's fields, checked; raises SnsError."""
        text = entry.get("Message")
        if text is None:
            raise invalid("Message Reason: no value for required parameter")
        if text == "":
            raise invalid("Empty message")
        attributes = parse_attributes(entry, f"{prefix}MessageAttributes")
        if _size(text, attributes) > MAX_MESSAGE_BYTES:
            raise invalid("Message too long")
        subject = entry.get("Subject")
        if subject is not None and (
            not subject or len(subject) > MAX_SUBJECT or any(not (" " <= c <= "~") for c in subject)
        ):
            raise invalid("Subject")
        structure = entry.get("MessageStructure")
        if structure is not None:
            if structure != "json":
                raise invalid("MessageStructure")
            try:
                doc = json.loads(text)
            except ValueError:
                raise invalid("Message Structure - JSON message body failed to parse") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("default"), str):
                raise invalid("Message Structure - No default entry in JSON message body")
        group, dedup = self._fifo_ids(topic, entry, text)
        return {
            "text": text,
            "subject": subject,
            "attributes": attributes,
            "structure": structure,
            "group_id": group,
            "dedup_id": dedup,
        }

    @staticmethod
    def _fifo_ids(
        topic: Topic, entry: Mapping[str, str], text: str
    ) -> tuple[str | None, str | None]:
        """MessageGroupId and MessageDeduplicationId, checked for the topic's type."""
        group = entry.get("MessageGroupId")
        dedup = entry.get("MessageDeduplicationId")
        if topic.fifo:
            if not group:
                raise invalid("The MessageGroupId parameter is required for FIFO topics")
            if not dedup:
                if topic.attributes.get("ContentBasedDeduplication") != "true":
                    raise invalid(
                        "The topic should either have ContentBasedDeduplication enabled or "
                        "MessageDeduplicationId provided explicitly"
                    )
                dedup = hashlib.sha256(text.encode()).hexdigest()
            for field, value in (("MessageGroupId", group), ("MessageDeduplicationId", dedup)):
                if len(value) > 128 or any(not ("!" <= c <= "~") for c in value):
                    raise invalid(f"{field}")
        elif dedup:
            raise invalid(
                "MessageDeduplicationId Reason: The request includes MessageDeduplicationId "
                "parameter that is not valid for this topic type"
            )
        return group, dedup

    async def _publish(
        self, topic: Topic, caller: Caller, fields: list[dict[str, Any]]
    ) -> list[str]:
        """Publish checked messages in order; returns their MessageIds once on disk."""
        await self._wait_for_room()
        ids = []
        stored = False
        with self.api.session(caller) as session:
            for item in fields:
                message_id = str(uuid.uuid4())
                message = core_message(
                    topic.name, message_id=message_id, now=self.api.broker.clock.wall(), **item
                )
                try:
                    result = session.publish(topic.name, message)
                except BrokerError as e:
                    raise to_sns_error(e) from None
                stored |= result.stored
                ids.append(message_id)
        if stored:
            await self.api.registry.durable()
        return ids

    async def _wait_for_room(self) -> None:
        """The broker's flow control, as an HTTP publisher sees it.

        While the memory alarm is on, a Publish is refused with AWS's `Throttled`
        (429; SDKs back off and retry), as AMQP, MQTT and STOMP publishers are
        paused. While the store's write backlog is over its limit
        (`broker.flow`), the Publish waits until it has drained, as a paused
        AMQP publisher does.
        """
        flow = self.api.broker.flow
        if flow.memory_alarm:
            raise SnsError(
                "Throttled", "Rate exceeded: the broker's memory alarm is on, retry later", 429
            )
        if flow.blocked:
            resumed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def resume() -> None:
                if not resumed.done():
                    resumed.set_result(None)

            flow.on_resume(resume)
            await resumed

    async def publish(self, params: Mapping[str, str], caller: Caller) -> str:
        """Publish: answered with the MessageId once the message is on disk."""
        topic = self._target(params, caller)
        fields = self._validate(topic, params, "")
        (message_id,) = await self._publish(topic, caller, [fields])
        result = xml("MessageId", message_id)
        if topic.fifo:
            result += xml("SequenceNumber", f"{self._sequence():020d}")
        return result

    async def publish_batch(self, params: Mapping[str, str], caller: Caller) -> str:
        """PublishBatch: up to 10 entries; bad entries fail alone, the rest are published."""
        topic = self._target(params, caller)
        entries = member_list(params, "PublishBatchRequestEntries")
        if not entries:
            raise SnsError("EmptyBatchRequest", "The batch request doesn't contain any entries.")
        if len(entries) > MAX_BATCH:
            raise SnsError(
                "TooManyEntriesInBatchRequest",
                f"The batch request contains more entries than permissible (max {MAX_BATCH}).",
            )
        ids = [e.get("Id", "") for e in entries]
        if len(set(ids)) != len(ids):
            raise SnsError(
                "BatchEntryIdsNotDistinct",
                "Two or more batch entries in the request have the same Id.",
            )
        for entry_id in ids:
            if not _BATCH_ID.fullmatch(entry_id):
                raise SnsError(
                    "InvalidBatchEntryId",
                    "The Id of a batch entry in a batch request doesn't abide by the "
                    f"specification: {entry_id!r}",
                )
        total = sum(len(e.get("Message", "").encode()) for e in entries)
        if total > MAX_MESSAGE_BYTES:
            raise SnsError(
                "BatchRequestTooLong",
                "The length of all the messages put together is more than the limit.",
            )
        good: list[tuple[str, dict[str, Any]]] = []
        failed: list[str] = []
        for entry in entries:
            try:
                good.append((entry["Id"], self._validate(topic, entry, "")))
            except SnsError as e:
                failed.append(
                    xml("Id", entry["Id"])
                    + xml("Code", e.code)
                    + xml("Message", e.message)
                    + xml("SenderFault", "true")
                )
        message_ids = await self._publish(topic, caller, [f for _i, f in good])
        successful = []
        for (entry_id, _f), message_id in zip(good, message_ids, strict=True):
            member = xml("Id", entry_id) + xml("MessageId", message_id)
            if topic.fifo:
                member += xml("SequenceNumber", f"{self._sequence():020d}")
            successful.append(member)
        return xml_members("Successful", successful) + xml_members("Failed", failed)
