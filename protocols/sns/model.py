"""SNS topics and subscriptions: names, ARNs, attributes and their durable JSON form.

Pure data (no I/O, no core import). A topic or a subscription is kept in the
store as a protocol session record (`Store.put_session(vhost, "sns", arn,
state)`) whose state is the JSON document `to_state` writes, so SNS needs no
schema of its own and its metadata replicates with the rest of the store.

ARNs use the fixed account id `000000000000` and the region `us-east-1` (the
SQS side of the listener uses the same pair): `arn:aws:sns:us-east-1:
000000000000:<topic>` for a topic, `<topic arn>:<uuid>` for a subscription.
An SQS endpoint `arn:aws:sqs:<region>:<account>:<queue>` names the Moorage
queue `<queue>` in the topic's vhost.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

ACCOUNT_ID = "000000000000"
REGION = "us-east-1"
TOPIC_NAME = re.compile(r"[A-Za-z0-9_-]{1,256}")
PROTOCOLS = ("sqs", "http", "https", "email", "email-json")

# AWS's default HTTP/S delivery policy ("Amazon SNS message delivery retries").
DEFAULT_HTTP_RETRY = {
    "minDelayTarget": 20,
    "maxDelayTarget": 20,
    "numRetries": 3,
    "numMaxDelayRetries": 0,
    "numNoDelayRetries": 0,
    "numMinDelayRetries": 0,
    "backoffFunction": "linear",
}
DEFAULT_DELIVERY_POLICY = {
    "http": {
        "defaultHealthyRetryPolicy": DEFAULT_HTTP_RETRY,
        "disableSubscriptionOverrides": False,
        "defaultRequestPolicy": {"headerContentType": "text/plain; charset=UTF-8"},
    }
}

TOPIC_SETTABLE = frozenset(
    {
        "DisplayName",
        "Policy",
        "DeliveryPolicy",
        "KmsMasterKeyId",
        "SignatureVersion",
        "TracingConfig",
        "ContentBasedDeduplication",
        "ArchivePolicy",
        "DataProtectionPolicy",
    }
)
TOPIC_CREATE_ONLY = frozenset({"FifoTopic", "FifoThroughputScope"})
SUBSCRIPTION_SETTABLE = frozenset(
    {
        "DeliveryPolicy",
        "FilterPolicy",
        "FilterPolicyScope",
        "RawMessageDelivery",
        "RedrivePolicy",
        "SubscriptionRoleArn",
        "ReplayPolicy",
    }
)


def topic_arn(name: str) -> str:
    """The ARN of the topic `name`."""
    return f"arn:aws:sns:{REGION}:{ACCOUNT_ID}:{name}"


def parse_arn(arn: str, service: str) -> list[str] | None:
    """The resource parts of an ARN of `service` (`arn:aws:<service>:region:account:...`)."""
    parts = arn.split(":")
    if len(parts) < 6 or parts[0] != "arn" or parts[2] != service:
        return None
    return parts[5:]


def topic_name_of(arn: str) -> str | None:
    """The topic name of a topic ARN, or None when it is not one."""
    parts = parse_arn(arn, "sns")
    return parts[0] if parts is not None and len(parts) == 1 else None


def sqs_queue_of(arn: str) -> str | None:
    """The queue name an SQS ARN names, or None when it is not one."""
    parts = parse_arn(arn, "sqs")
    return parts[0] if parts is not None and len(parts) == 1 and parts[0] else None


def default_policy(arn: str) -> str:
    """The access policy AWS gives a new topic (owner-only), returned as a JSON string."""
    return json.dumps(
        {
            "Version": "2008-10-17",
            "Id": "__default_policy_ID",
            "Statement": [
                {
                    "Sid": "__default_statement_ID",
                    "Effect": "Allow",
                    "Principal": {"AWS": "*"},
                    "Action": ["SNS:Publish", "SNS:Subscribe", "SNS:Receive"],
                    "Resource": arn,
                    "Condition": {"StringEquals": {"AWS:SourceOwner": ACCOUNT_ID}},
                }
            ],
        }
    )


@dataclass(slots=True)
class Topic:
    """A topic: the fanout exchange `name` of `vhost`, with SNS's attributes and tags."""

    vhost: str
    name: str
    attributes: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def arn(self) -> str:
        return topic_arn(self.name)

    @property
    def fifo(self) -> bool:
        return self.attributes.get("FifoTopic") == "true"

    def to_state(self) -> bytes:
        return json.dumps(
            {"kind": "topic", "name": self.name, "attributes": self.attributes, "tags": self.tags}
        ).encode()


@dataclass(slots=True)
class Subscription:
    """A subscription of an endpoint to a topic; its deliveries pass through `queue`."""

    vhost: str
    topic: str  # the topic's name
    id: str
    protocol: str
    endpoint: str
    owner: str  # the user that subscribed (deliveries to SQS are checked against it)
    confirmed: bool = False
    token: str = field(default_factory=lambda: uuid.uuid4().hex * 2)
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def arn(self) -> str:
        return f"{topic_arn(self.topic)}:{self.id}"

    @property
    def queue(self) -> str:
        """The durable core queue, bound to the topic's exchange, that holds its deliveries."""
        return f"sns.sub.{self.topic}.{self.id}"

    @property
    def raw(self) -> bool:
        return self.attributes.get("RawMessageDelivery", "false") == "true"

    def to_state(self) -> bytes:
        return json.dumps(
            {
                "kind": "subscription",
                "topic": self.topic,
                "id": self.id,
                "protocol": self.protocol,
                "endpoint": self.endpoint,
                "owner": self.owner,
                "confirmed": self.confirmed,
                "token": self.token,
                "attributes": self.attributes,
            }
        ).encode()


def from_state(vhost: str, state: bytes) -> Topic | Subscription | None:
    """A topic or subscription back from its stored state (None: not one of ours)."""
    try:
        doc: dict[str, Any] = json.loads(state)
        if doc.get("kind") == "topic":
            return Topic(vhost, doc["name"], dict(doc["attributes"]), dict(doc["tags"]))
        if doc.get("kind") == "subscription":
            return Subscription(
                vhost,
                doc["topic"],
                doc["id"],
                doc["protocol"],
                doc["endpoint"],
                doc["owner"],
                bool(doc["confirmed"]),
                doc["token"],
                dict(doc["attributes"]),
            )
    except (ValueError, KeyError, TypeError):
        return None
    return None
