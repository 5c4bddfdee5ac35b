"""SQS message actions: send, receive, delete, change visibility (single and batch).

Ordering and durability:
- SendMessage(Batch) answers after the store has the message (a persistent
  message on a durable queue: "confirmed means durable"), as a publisher
  confirm does.
- DeleteMessage(Batch) answers after the removal is written, so a deleted
  message does not come back after a crash.
- A receive raises the entry's delivery count in the store
  (`ApproximateReceiveCount` survives a restart), not waited for.

Receipt handles name the queue, the entry and the receive
(`messages.encode_receipt`): a handle of another queue, or garbage, is
`ReceiptHandleIsInvalid`; a handle of an earlier receive (the message was
received again since, or its visibility ended) deletes nothing and succeeds,
as AWS documents; ChangeMessageVisibility with it is `MessageNotInflight`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from moorage.broker.fifo import DEDUP_HEADER, GROUP_HEADER
from moorage.broker.header_values import header_text
from moorage.broker.queue import DUPLICATE, REJECTED, Queue
from moorage.broker.vhost import VirtualHost
from moorage.broker.visibility import NotInFlight, Received
from moorage.protocols.aws.errors import AwsError
from moorage.protocols.aws.service import AwsCall
from moorage.protocols.sqs import messages
from moorage.protocols.sqs.attributes import QueueMeta
from moorage.protocols.sqs.errors import (
    invalid_parameter,
    invalid_value,
    missing,
    sqs_error,
)
from moorage.protocols.sqs.state import SqsState, integer, names, text

Params = Mapping[str, Any]
Result = dict[str, Any]

MAX_BATCH = 10
MAX_WAIT = 20
MAX_VISIBILITY = 43_200
_BATCH_ID = re.compile(r"[A-Za-z0-9_-]{1,80}")
_FIFO_ID = re.compile(r"[\x21-\x7e]{1,128}")
SYSTEM_NAMES = frozenset(
    {
        "All",
        "SenderId",
        "SentTimestamp",
        "ApproximateReceiveCount",
        "ApproximateFirstReceiveTimestamp",
        "SequenceNumber",
        "MessageDeduplicationId",
        "MessageGroupId",
        "AWSTraceHeader",
        "DeadLetterQueueSourceArn",
    }
)


# -- sending ----------------------------------------------------------------------------


def _send_one(
    state: SqsState, call: AwsCall, vhost: VirtualHost, queue: Queue, meta: QueueMeta, entry: Params
) -> Result:
    """Validate and queue one message; its result entry. Raises AwsError."""
    max_size = meta.integer("MaximumMessageSize")
    body = messages.check_body(entry.get("MessageBody"), max_size)
    attributes, attributes_size = messages.check_attributes(entry.get("MessageAttributes"))
    if len(body) + attributes_size > max_size:
        raise invalid_parameter(
            f"One or more parameters are invalid. Reason: Message must be shorter than "
            f"{max_size} bytes."
        )
    fifo = queue.options.fifo
    group = text(entry, "MessageGroupId")
    dedup = text(entry, "MessageDeduplicationId")
    delay = integer(entry, "DelaySeconds", 0, 900)
    if fifo:
        if group is None:
            raise missing("MessageGroupId")
        if dedup is None and not queue.options.content_based_deduplication:
            raise invalid_parameter(
                "The queue should either have ContentBasedDeduplication enabled or "
                "MessageDeduplicationId provided explicitly"
            )
        if delay:
            raise invalid_value(
                "DelaySeconds",
                delay,
                "The request include parameter that is not valid for this queue type",
            )
        for name, value in (("MessageGroupId", group), ("MessageDeduplicationId", dedup)):
            if value is not None and not _FIFO_ID.fullmatch(value):
                raise invalid_value(name, value, "Must be 1 to 128 printable ASCII characters.")
    elif dedup is not None:
        raise invalid_parameter(
            "The request include parameter MessageDeduplicationId that is not valid for this "
            "queue type"
        )
    trace = None
    system = entry.get("MessageSystemAttributes") or {}
    if isinstance(system, dict) and "AWSTraceHeader" in system:
        trace = str(system["AWSTraceHeader"].get("StringValue", ""))
    now = state.broker.clock.wall()
    message = messages.build_message(
        queue.name,
        body,
        attributes,
        now=now,
        sender=call.user.name,
        group=group,
        deduplication=dedup,
        retention=meta.integer("MessageRetentionPeriod"),
        trace=trace,
    )
    if delay is None:
        delay = 0 if fifo else meta.integer("DelaySeconds")
    outcome = queue.publish_later(message, delay * 1000)
    if outcome == REJECTED:
        raise sqs_error("OverLimit", "The queue is full.", status=403)
    result: Result = {
        "MessageId": message.properties.message_id,
        "MD5OfMessageBody": messages.md5_hex(body),
    }
    if attributes:
        result["MD5OfMessageAttributes"] = messages.attributes_md5(attributes)
    if fifo:
        result["SequenceNumber"] = f"{message.store_id:020d}"
        if outcome == DUPLICATE:
            result["SequenceNumber"] = f"{0:020d}"
    return result


async def send_message(state: SqsState, call: AwsCall, params: Params) -> Result:
    vhost, queue = state.queue(call, params)
    state.check(call, "write", "", "exchange")
    result = _send_one(state, call, vhost, queue, state.meta(vhost.name, queue.name), params)
    await state.durable()
    return result


def _batch(params: Params) -> list[Params]:
    entries = params.get("Entries")
    if not entries:
        raise sqs_error("EmptyBatchRequest", "There should be at least one entry in the request.")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise invalid_parameter("Entries must be a list of structures.")
    if len(entries) > MAX_BATCH:
        raise sqs_error(
            "TooManyEntriesInBatchRequest",
            f"Maximum number of entries per request are {MAX_BATCH}. You have sent {len(entries)}.",
        )
    ids = [e.get("Id") for e in entries]
    for entry_id in ids:
        if not isinstance(entry_id, str) or not _BATCH_ID.fullmatch(entry_id):
            raise sqs_error(
                "InvalidBatchEntryId",
                "A batch entry id can only contain alphanumeric characters, hyphens and "
                "underscores. It can be at most 80 letters long.",
            )
    if len(set(ids)) != len(ids):
        raise sqs_error(
            "BatchEntryIdsNotDistinct", "Two or more batch entries in the request have the same Id."
        )
    return list(entries)


def _failed(entry_id: str, error: AwsError) -> Result:
    return {
        "Id": entry_id,
        "SenderFault": error.sender_fault,
        "Code": error.query_code if error.query_code != error.code else error.code,
        "Message": error.message,
    }


async def _run_batch(
    entries: list[Params], one: Callable[[Params], Result | Awaitable[Result]]
) -> Result:
    successful, failed = [], []
    for entry in entries:
        try:
            outcome = one(entry)
            result = await outcome if isinstance(outcome, Awaitable) else outcome
        except AwsError as e:
            failed.append(_failed(str(entry["Id"]), e))
            continue
        successful.append({"Id": entry["Id"], **result})
    return {"Successful": successful, "Failed": failed}


async def send_message_batch(state: SqsState, call: AwsCall, params: Params) -> Result:
    vhost, queue = state.queue(call, params)
    entries = _batch(params)
    state.check(call, "write", "", "exchange")
    meta = state.meta(vhost.name, queue.name)
    max_size = meta.integer("MaximumMessageSize")
    total = sum(len(str(e.get("MessageBody", "")).encode()) for e in entries)
    if total > max_size:
        raise sqs_error(
            "BatchRequestTooLong",
            f"Batch requests cannot be longer than {max_size} bytes. You have sent {total} bytes.",
        )
    result = await _run_batch(entries, lambda e: _send_one(state, call, vhost, queue, meta, e))
    await state.durable()
    return result


# -- receiving --------------------------------------------------------------------------


def _system_attributes(
    state: SqsState, call: AwsCall, queue: Queue, received: Received, wanted: set[str]
) -> dict[str, str]:
    entry = received.entry
    message = entry.message
    now = state.broker.clock.wall()
    values: dict[str, str] = {
        "SentTimestamp": str(messages.sent_millis(message, now)),
        "ApproximateReceiveCount": str(entry.delivery_count),
        "ApproximateFirstReceiveTimestamp": str(int(received.first_received * 1000)),
    }
    sender = message.annotations.get(messages.SENDER_ANNOTATION)
    values["SenderId"] = str(sender) if sender else str(message.properties.user_id or "")
    trace = message.annotations.get(messages.TRACE_ANNOTATION)
    if trace:
        values["AWSTraceHeader"] = str(trace)
    group = message.header(GROUP_HEADER)
    if queue.options.fifo:
        values["MessageGroupId"] = "" if group is None else header_text(group) or ""
        dedup = message.header(DEDUP_HEADER)
        if dedup is not None:
            values["MessageDeduplicationId"] = header_text(dedup) or ""
        values["SequenceNumber"] = f"{message.store_id:020d}"
    source = message.header("x-first-death-queue")
    if source is not None:
        values["DeadLetterQueueSourceArn"] = state.arn(call, header_text(source) or "")
    if "All" in wanted:
        return values
    return {k: v for k, v in values.items() if k in wanted}


async def receive_message(state: SqsState, call: AwsCall, params: Params) -> Result:
    vhost, queue = state.queue(call, params)
    state.check(call, "read", queue.name)
    meta = state.meta(vhost.name, queue.name)
    count = integer(params, "MaxNumberOfMessages", 1, MAX_BATCH, 1) or 1
    visibility = integer(params, "VisibilityTimeout", 0, MAX_VISIBILITY)
    if visibility is None:
        visibility = meta.integer("VisibilityTimeout")
    wait = integer(params, "WaitTimeSeconds", 0, MAX_WAIT)
    if wait is None:
        wait = meta.integer("ReceiveMessageWaitTimeSeconds")
    wanted = set(names(params, "AttributeNames")) | set(
        names(params, "MessageSystemAttributeNames")
    )
    for name in wanted:
        if name not in SYSTEM_NAMES:
            raise sqs_error("InvalidAttributeName", f"Unknown Attribute {name}.")
    attribute_names = names(params, "MessageAttributeNames")
    text(params, "ReceiveRequestAttemptId")
    receiver = state.receiver(vhost, queue)
    got = await receiver.receive_wait(count, float(visibility), float(wait))
    out = []
    for received in got:
        entry = received.entry
        message = entry.message
        seq, receive = received.receipt
        item: Result = {
            "MessageId": messages.message_id(message, queue.name, entry),
            "ReceiptHandle": messages.encode_receipt(
                vhost.name, queue.name, seq, receive, state.epoch
            ),
            "MD5OfBody": messages.md5_hex(message.body),
            "Body": message.body.decode("utf-8", errors="replace"),
        }
        system = _system_attributes(state, call, queue, received, wanted)
        if system:
            item["Attributes"] = system
        attributes = messages.select_attributes(
            messages.message_attributes(message), attribute_names
        )
        if attributes:
            item["MD5OfMessageAttributes"] = messages.attributes_md5(attributes)
            item["MessageAttributes"] = attributes
        out.append(item)
    return {"Messages": out} if out else {}


# -- deleting and visibility ----------------------------------------------------------


def _receipt(state: SqsState, vhost: VirtualHost, queue: Queue, handle: Any) -> tuple[int, int]:
    seq, receive, epoch = messages.decode_receipt(handle, vhost.name, queue.name)
    if epoch != state.epoch:
        return (seq, -1)  # a handle from before a restart: stale, never current
    return (seq, receive)


def _delete_one(state: SqsState, vhost: VirtualHost, queue: Queue, entry: Params) -> Result:
    handle = entry.get("ReceiptHandle")
    if handle is None:
        raise missing("ReceiptHandle")
    receipt = _receipt(state, vhost, queue, handle)
    state.receiver(vhost, queue).delete(receipt)  # a stale handle: success, nothing deleted
    return {}


async def delete_message(state: SqsState, call: AwsCall, params: Params) -> Result:
    vhost, queue = state.queue(call, params)
    state.check(call, "read", queue.name)
    _delete_one(state, vhost, queue, params)
    await state.durable()
    return {}


async def delete_message_batch(state: SqsState, call: AwsCall, params: Params) -> Result:
    vhost, queue = state.queue(call, params)
    entries = _batch(params)
    state.check(call, "read", queue.name)
    result = await _run_batch(entries, lambda e: _delete_one(state, vhost, queue, e))
    await state.durable()
    return result


def _change_one(state: SqsState, vhost: VirtualHost, queue: Queue, entry: Params) -> Result:
    handle = entry.get("ReceiptHandle")
    if handle is None:
        raise missing("ReceiptHandle")
    timeout = integer(entry, "VisibilityTimeout", 0, MAX_VISIBILITY)
    if timeout is None:
        raise missing("VisibilityTimeout")
    receipt = _receipt(state, vhost, queue, handle)
    try:
        state.receiver(vhost, queue).change_visibility(receipt, float(timeout))
    except NotInFlight:
        raise sqs_error("MessageNotInflight", "The message referred to isn't in flight.") from None
    return {}


async def change_message_visibility(state: SqsState, call: AwsCall, params: Params) -> Result:
    vhost, queue = state.queue(call, params)
    state.check(call, "read", queue.name)
    _change_one(state, vhost, queue, params)
    return {}


async def change_message_visibility_batch(state: SqsState, call: AwsCall, params: Params) -> Result:
    vhost, queue = state.queue(call, params)
    entries = _batch(params)
    state.check(call, "read", queue.name)
    return await _run_batch(entries, lambda e: _change_one(state, vhost, queue, e))
