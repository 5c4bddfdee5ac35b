"""The SNS service of the AWS listener: `AwsCall` in, Query XML out (`protocols.aws.service`).

The listener authenticates the request (SigV4, service name `sns`) and hands
over the action and its flat form fields; this module runs it on the
broker's one SNS engine (`protocols.sns.core.Sns`, kept as the broker
extension "sns" so that every listener shares it) and renders the answer or
the error. SNS speaks only the Query protocol: a JSON-wire call is refused
with `InvalidAction`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from moorage.broker.broker import Broker
from moorage.protocols.aws.errors import AwsError
from moorage.protocols.aws.service import AwsCall, AwsReply
from moorage.protocols.sns.api import Caller
from moorage.protocols.sns.core import Sns
from moorage.protocols.sns.model import topic_name_of
from moorage.protocols.sns.wire import SnsError, response, xml


class SnsService:
    """`AwsService` for the signing name `sns`."""

    signing_name = "sns"

    def __init__(self, broker: Broker) -> None:
        self.sns = broker.extension("sns", Sns)
        # Made on the broker's loop by the listener: resume deliveries and alerts now,
        # not at the first SNS call (the listener makes its services when first asked).
        with contextlib.suppress(RuntimeError):  # no running loop: the first call starts it
            self._start = asyncio.get_running_loop().create_task(self.sns.start())

    async def call(self, call: AwsCall) -> AwsReply:
        """Answer one SNS call. Raises AwsError (SNS's code, status and fault)."""
        if call.wire != "query":
            raise AwsError("InvalidAction", f"SNS speaks the Query protocol, not {call.wire}")
        params = {str(k): str(v) for k, v in call.params.items()}
        caller = Caller(call.user, call.vhost, "aws", call.endpoint)
        try:
            result = await self.sns.handle(call.action, params, caller)
        except SnsError as e:
            raise AwsError(
                e.code, e.message, status=e.status, sender_fault=e.status < 500
            ) from None
        # always with its <{action}Result> element, even empty: botocore's parser
        # requires it for actions whose output shape has no members (TagResource)
        return AwsReply(response(call.action, result, call.request_id), "text/xml")

    async def confirm_by_token(self, params: Mapping[str, str], request_id: str) -> AwsReply:
        """ConfirmSubscription from an unsigned request: an endpoint opening the
        `SubscribeURL` it was sent, as AWS allows. The token (256 random bits, sent
        only to the endpoint) is the credential, so no user is involved and the
        topic is looked up in every vhost. Raises AwsError (InvalidParameter)."""
        name = topic_name_of(params.get("TopicArn", ""))
        token = params.get("Token", "")
        registry = self.sns.registry
        for (_vhost, topic_name), topic in list(registry.topics.items()):
            if not token or topic_name != name:
                continue
            for sub in registry.subscriptions_of(topic):
                if sub.token == token:
                    if not sub.confirmed:
                        registry.confirm(sub)
                    body = response(
                        "ConfirmSubscription", xml("SubscriptionArn", sub.arn), request_id
                    )
                    return AwsReply(body, "text/xml")
        raise AwsError("InvalidParameter", "Invalid parameter: Token", status=400)

    async def close(self) -> None:
        """Stop SNS's deliveries and alerts."""
        await self.sns.close()
