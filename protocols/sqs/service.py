"""The SQS service: the AWS listener's `sqs` service, one handler per API action.

`SqsService(broker)` is made and started (its queue attributes loaded from the
store) when the broker's AWS listener starts, one for the broker. A call
is turned into JSON-shaped parameters (`wire.query_params` for the Query
protocol), handled by the action's function (`queue_actions`,
`message_actions`) and answered in the caller's wire format (`wire.reply`).
Core errors never escape as such: handlers translate them into SQS errors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from moorage.broker.broker import Broker
from moorage.protocols.aws.errors import invalid_action
from moorage.protocols.aws.service import AwsCall, AwsReply
from moorage.protocols.sqs import message_actions, queue_actions, wire
from moorage.protocols.sqs.state import SqsState

Handler = Callable[[SqsState, AwsCall, Mapping[str, Any]], Awaitable[dict[str, Any]]]

ACTIONS: dict[str, Handler] = {
    "CreateQueue": queue_actions.create_queue,
    "GetQueueUrl": queue_actions.get_queue_url,
    "ListQueues": queue_actions.list_queues,
    "GetQueueAttributes": queue_actions.get_queue_attributes,
    "SetQueueAttributes": queue_actions.set_queue_attributes,
    "DeleteQueue": queue_actions.delete_queue,
    "PurgeQueue": queue_actions.purge_queue,
    "TagQueue": queue_actions.tag_queue,
    "UntagQueue": queue_actions.untag_queue,
    "ListQueueTags": queue_actions.list_queue_tags,
    "ListDeadLetterSourceQueues": queue_actions.list_dead_letter_source_queues,
    "StartMessageMoveTask": queue_actions.start_message_move_task,
    "ListMessageMoveTasks": queue_actions.list_message_move_tasks,
    "CancelMessageMoveTask": queue_actions.cancel_message_move_task,
    "SendMessage": message_actions.send_message,
    "SendMessageBatch": message_actions.send_message_batch,
    "ReceiveMessage": message_actions.receive_message,
    "DeleteMessage": message_actions.delete_message,
    "DeleteMessageBatch": message_actions.delete_message_batch,
    "ChangeMessageVisibility": message_actions.change_message_visibility,
    "ChangeMessageVisibilityBatch": message_actions.change_message_visibility_batch,
}
"""Every SQS action Moorage serves (AddPermission/RemovePermission are not: InvalidAction)."""


class SqsService:
    """The `sqs` service of the AWS listener."""

    signing_name = "sqs"

    def __init__(self, broker: Broker) -> None:
        self.state = SqsState(broker)

    async def call(self, call: AwsCall) -> AwsReply:
        handler = ACTIONS.get(call.action)
        if handler is None:
            raise invalid_action(call.action)
        await self.state.load()
        params = call.params if call.wire == "json" else wire.query_params(call.action, call.params)
        result = await handler(self.state, call, params)
        return wire.reply(call.action, call.wire, result, call.request_id)

    async def start(self) -> None:
        """Load the queues' SQS attributes from the store before the first request."""
        await self.state.load()

    async def close(self) -> None:
        """End the long polls in progress (the listener is closing): each answers now."""
        self.state.receivers.wake_all()
