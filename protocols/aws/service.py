"""What an AWS API service (SQS, SNS) is to the listener: a call in, a reply out.

The listener (`protocols.aws.server`) authenticates a request, works out the
service, action and wire format, and hands the service an `AwsCall`; the
service answers with an `AwsReply` or raises `AwsError`, which the listener
renders in the caller's wire format. A service never sees HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from moorage.broker.auth import User

Wire = Literal["json", "query"]


@dataclass(frozen=True, slots=True)
class AwsCall:
    """One authenticated API request."""

    service: str  # the SigV4 signing name: "sqs" or "sns"
    action: str  # "SendMessage", "Publish", ...
    wire: Wire  # AWS JSON 1.0 (X-Amz-Target) or Query (form-encoded)
    params: Mapping[str, Any]  # json: the parsed JSON body; query: the flat form fields
    user: User  # the broker user whose access key signed the request
    request_id: str
    endpoint: str  # scheme://host:port the client reached (for QueueUrl, SubscribeURL, ...)
    path: str  # the request path (the Query protocol may post to a queue URL)
    vhost: str = "/"  # the vhost the access key names (`/` unless configured)
    region: str = "us-east-1"  # the region of the SigV4 credential scope (for ARNs)


@dataclass(frozen=True, slots=True)
class AwsReply:
    """A successful answer."""

    body: bytes
    content_type: str  # "application/x-amz-json-1.0" or "text/xml"
    status: int = 200


class AwsService(Protocol):
    """A service the listener dispatches to (made as `factory(broker)`)."""

    signing_name: str  # "sqs" | "sns"

    async def call(self, call: AwsCall) -> AwsReply:
        """Answer one call. Raises AwsError for API errors (anything else is a bug: 500)."""
        ...

    async def close(self) -> None:
        """Stop background work (pollers, deliveries)."""
        ...


# Optional: a service may also define `async def start(self) -> None`. The
# listener awaits it once, when the broker's first AWS listener starts (before
# it accepts requests), to load state and resume background work (SNS
# deliveries) after a restart. It is not part of `AwsService` so that a service
# without background work need not define it.
