"""SQS queue attributes: names, defaults, validation, and where they are kept.

A queue's *settable* attributes (`VisibilityTimeout`, `RedrivePolicy`, ...)
and its tags can change after the queue exists, which a Moorage queue's
arguments cannot; they live in a `QueueMeta` kept durably in the store's
session records (`Store.put_session(vhost, "sqs", <queue name>, <JSON>)`),
written whenever they change and loaded when the service starts. Queue type
attributes that never change (`FifoQueue`, `ContentBasedDeduplication`)
are also queue arguments (`x-queue-type: fifo`,
`x-content-based-deduplication`), so every protocol sees them.

A Moorage queue that SQS never created (declared over AMQP, say) has no
record and shows the defaults.

Values are checked with AWS's ranges (SQS API reference, SetQueueAttributes);
an unknown name is `InvalidAttributeName`, a bad value `InvalidAttributeValue`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from moorage.protocols.aws.errors import AwsError
from moorage.protocols.sqs.errors import sqs_error

ACCOUNT_ID = "000000000000"
"""The account every queue belongs to in ARNs and URLs (as LocalStack and moto use)."""

MAX_MESSAGE_SIZE = 1_048_576  # AWS's largest message (1 MiB)

# name -> (low, high, default) for the integer attributes
INTEGER_ATTRIBUTES: dict[str, tuple[int, int, int]] = {
    "DelaySeconds": (0, 900, 0),
    "MaximumMessageSize": (1024, MAX_MESSAGE_SIZE, MAX_MESSAGE_SIZE),
    "MessageRetentionPeriod": (60, 1_209_600, 345_600),  # 1 minute .. 14 days, 4 days
    "ReceiveMessageWaitTimeSeconds": (0, 20, 0),
    "VisibilityTimeout": (0, 43_200, 30),  # up to 12 hours
    "KmsDataKeyReusePeriodSeconds": (60, 86_400, 300),
}
BOOLEAN_ATTRIBUTES = ("FifoQueue", "ContentBasedDeduplication", "SqsManagedSseEnabled")
TEXT_ATTRIBUTES = ("Policy", "KmsMasterKeyId", "RedrivePolicy", "RedriveAllowPolicy")
FIFO_ONLY = {
    "ContentBasedDeduplication": ("true", "false"),
    "DeduplicationScope": ("messageGroup", "queue"),
    "FifoThroughputLimit": ("perQueue", "perMessageGroupId"),
}
SETTABLE = (
    *INTEGER_ATTRIBUTES,
    *BOOLEAN_ATTRIBUTES,
    *TEXT_ATTRIBUTES,
    *FIFO_ONLY,
)
READ_ONLY = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
    "QueueArn",
)
ALL_NAMES = frozenset((*SETTABLE, *READ_ONLY, "All"))


def queue_arn(region: str, name: str) -> str:
    return f"arn:aws:sqs:{region}:{ACCOUNT_ID}:{name}"


def name_of_arn(arn: str) -> str | None:
    """The queue name of an SQS ARN (any region; this account), or None."""
    parts = arn.split(":")
    if len(parts) != 6 or parts[:3] != ["arn", "aws", "sqs"] or parts[4] != ACCOUNT_ID:
        return None
    return parts[5] or None


def invalid_attribute_name(name: str) -> AwsError:
    return sqs_error("InvalidAttributeName", f"Unknown Attribute {name}.")


def invalid_attribute_value(name: str, reason: str) -> AwsError:
    return sqs_error(
        "InvalidAttributeValue", f"Invalid value for the parameter {name}. Reason: {reason}"
    )


@dataclass(slots=True)
class QueueMeta:
    """What SQS keeps about a queue beyond the Moorage queue itself."""

    attributes: dict[str, str] = field(default_factory=dict)  # only those set explicitly
    tags: dict[str, str] = field(default_factory=dict)
    created: int = 0  # UNIX seconds
    modified: int = 0

    def encode(self) -> bytes:
        return json.dumps(
            {
                "attributes": self.attributes,
                "tags": self.tags,
                "created": self.created,
                "modified": self.modified,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> QueueMeta:
        doc = json.loads(data)
        return cls(
            attributes={str(k): str(v) for k, v in doc.get("attributes", {}).items()},
            tags={str(k): str(v) for k, v in doc.get("tags", {}).items()},
            created=int(doc.get("created", 0)),
            modified=int(doc.get("modified", 0)),
        )

    def value(self, name: str) -> str:
        """An attribute's current value (its default when never set)."""
        if name in self.attributes:
            return self.attributes[name]
        if name in INTEGER_ATTRIBUTES:
            return str(INTEGER_ATTRIBUTES[name][2])
        return ""

    def integer(self, name: str) -> int:
        return int(self.value(name))

    def redrive(self) -> tuple[int, str] | None:
        """(maxReceiveCount, dead-letter queue name) from `RedrivePolicy`, or None."""
        policy = self.attributes.get("RedrivePolicy")
        if not policy:
            return None
        doc = json.loads(policy)
        target = name_of_arn(str(doc.get("deadLetterTargetArn", "")))
        if target is None:
            return None
        return int(doc["maxReceiveCount"]), target


def check_attributes(attributes: dict[str, Any], *, fifo: bool, creating: bool) -> dict[str, str]:
    """Validate settable attributes; return them as strings. Raises AwsError.

    `RedrivePolicy`'s target is checked by the caller (it needs the vhost).
    """
    checked: dict[str, str] = {}
    for name, raw in attributes.items():
        value = (
            raw if isinstance(raw, str) else json.dumps(raw) if isinstance(raw, dict) else str(raw)
        )
        if name not in SETTABLE:
            raise invalid_attribute_name(name)
        if name in INTEGER_ATTRIBUTES:
            value = _check_integer(name, value)
        elif name == "FifoQueue":
            if not creating:
                raise invalid_attribute_name(name)
            if value != "true" or not fifo:
                raise invalid_attribute_value(
                    name, "FifoQueue is 'true' for a queue whose name ends in .fifo, only."
                )
        elif name in FIFO_ONLY:
            if not fifo:
                raise invalid_attribute_name(name)
            if value not in FIFO_ONLY[name]:
                raise invalid_attribute_value(name, f"must be one of {', '.join(FIFO_ONLY[name])}.")
            if name == "ContentBasedDeduplication" and not creating:
                raise invalid_attribute_value(
                    name, "Moorage fixes ContentBasedDeduplication when the queue is created."
                )
        elif name in BOOLEAN_ATTRIBUTES and value not in ("true", "false"):
            raise invalid_attribute_value(name, "must be true or false.")
        elif name == "RedrivePolicy" and value:
            value = _check_redrive_policy(value)
        elif name == "RedriveAllowPolicy" and value:
            value = _check_redrive_allow_policy(value)
        checked[name] = value
    return checked


def _check_integer(name: str, value: str) -> str:
    low, high, _default = INTEGER_ATTRIBUTES[name]
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise invalid_attribute_value(
            name, f"must be an integer from {low} to {high}, not '{value}'."
        )
    return str(number)


def _json_object(name: str, value: str) -> dict[str, Any]:
    try:
        doc = json.loads(value)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise invalid_attribute_value(name, "must be a JSON object.")
    return doc


def _check_redrive_policy(value: str) -> str:
    doc = _json_object("RedrivePolicy", value)
    unknown = set(doc) - {"deadLetterTargetArn", "maxReceiveCount"}
    if unknown or "deadLetterTargetArn" not in doc or "maxReceiveCount" not in doc:
        raise invalid_attribute_value(
            "RedrivePolicy",
            "Redrive policy needs exactly deadLetterTargetArn and maxReceiveCount.",
        )
    try:
        count = int(doc["maxReceiveCount"])
    except (TypeError, ValueError):
        count = 0
    if not 1 <= count <= 1000:
        raise invalid_attribute_value(
            "RedrivePolicy", "maxReceiveCount must be an integer from 1 to 1000."
        )
    if name_of_arn(str(doc["deadLetterTargetArn"])) is None:
        raise invalid_attribute_value("RedrivePolicy", "deadLetterTargetArn is not an SQS ARN.")
    return json.dumps(
        {"deadLetterTargetArn": str(doc["deadLetterTargetArn"]), "maxReceiveCount": count}
    )


def _check_redrive_allow_policy(value: str) -> str:
    doc = _json_object("RedriveAllowPolicy", value)
    permission = doc.get("redrivePermission")
    if permission not in ("allowAll", "denyAll", "byQueue"):
        raise invalid_attribute_value(
            "RedriveAllowPolicy", "redrivePermission must be allowAll, denyAll or byQueue."
        )
    sources = doc.get("sourceQueueArns", [])
    if permission == "byQueue" and (not isinstance(sources, list) or not 1 <= len(sources) <= 10):
        raise invalid_attribute_value(
            "RedriveAllowPolicy", "byQueue needs 1 to 10 sourceQueueArns."
        )
    return json.dumps(doc)


def allows_source(meta: QueueMeta, source_arn: str) -> bool:
    """Does a dead-letter queue's `RedriveAllowPolicy` let `source_arn` use it?"""
    policy = meta.attributes.get("RedriveAllowPolicy")
    if not policy:
        return True
    doc = json.loads(policy)
    permission = doc.get("redrivePermission")
    if permission == "denyAll":
        return False
    if permission == "byQueue":
        return source_arn in doc.get("sourceQueueArns", [])
    return True
