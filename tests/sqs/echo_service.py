"""A stand-in AWS service for the listener's own tests: answers what it was called with."""

from __future__ import annotations

import json
from typing import Any

from moorage.protocols.aws.errors import JSON_CONTENT_TYPE, AwsError, invalid_action
from moorage.protocols.aws.query import element, xml_reply
from moorage.protocols.aws.service import AwsCall, AwsReply

CALLS: list[AwsCall] = []
INSTANCES: list[EchoService] = []


class EchoService:
    signing_name = "sqs"

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.started = 0
        self.closed = False
        INSTANCES.append(self)

    async def start(self) -> None:
        self.started += 1

    async def call(self, call: AwsCall) -> AwsReply:
        if call.action not in ("ListQueues", "GetQueueUrl", "ListQueueTags"):
            raise invalid_action(call.action)
        CALLS.append(call)
        if call.action == "GetQueueUrl":
            raise AwsError(
                "QueueDoesNotExist",
                "The specified queue does not exist.",
                query_code="AWS.SimpleQueueService.NonExistentQueue",
            )
        url = f"{call.endpoint}/000000000000/{call.user.name}"
        if call.wire == "json":
            return AwsReply(json.dumps({"QueueUrls": [url]}).encode(), JSON_CONTENT_TYPE)
        return xml_reply(
            call.action,
            "http://queue.amazonaws.com/doc/2012-11-05/",
            element("QueueUrl", url),
            call.request_id,
        )

    async def close(self) -> None:
        self.closed = True
