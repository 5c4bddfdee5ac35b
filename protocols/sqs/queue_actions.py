"""SQS queue actions: create, find, list, attributes, tags, purge, delete, redrive.

Each handler takes the state, the call and its JSON-shaped parameters and
returns a JSON-shaped result (`protocols.sqs.wire` renders it for Query).

Decisions where AWS is loose or where Moorage differs (docs/sqs.md):
- CreateQueue on an existing queue compares only the attributes the request
  names (as moto and ElasticMQ do) and answers `QueueNameExists`
  (Query: `QueueAlreadyExists`) when one differs.
- `QueueDeletedRecently` and `PurgeQueueInProgress` (AWS's 60-second rules)
  are not enforced: a queue can be created again at once.
- StartMessageMoveTask moves the messages at once (no rate limit); the task
  is listed as COMPLETED.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

from moorage.broker.errors import BrokerError
from moorage.protocols.aws.errors import AwsError
from moorage.protocols.aws.service import AwsCall
from moorage.protocols.sqs.attributes import (
    ALL_NAMES,
    QueueMeta,
    allows_source,
    check_attributes,
    invalid_attribute_name,
    invalid_attribute_value,
    name_of_arn,
)
from moorage.protocols.sqs.errors import (
    invalid_parameter,
    invalid_value,
    missing,
    queue_does_not_exist,
    sqs_error,
)
from moorage.protocols.sqs.state import SqsState, integer, names, text

Params = Mapping[str, Any]
Result = dict[str, Any]

_QUEUE_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}")
_TAG_KEY = re.compile(r"[\w\s.:/=+\-@]{1,128}")
MAX_MOVE_TASKS = 1000  # the finished move tasks ListMessageMoveTasks remembers (all queues)


def _check_queue_name(name: str) -> bool:
    """AWS's queue names; returns whether it is a FIFO queue. Raises InvalidParameterValue."""
    fifo = name.endswith(".fifo")
    base = name.removesuffix(".fifo")
    if not _QUEUE_NAME.fullmatch(base) or len(name) > 80:
        raise invalid_parameter(
            "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length"
        )
    return fifo


def _check_tags(tags: Any) -> dict[str, str]:
    if not isinstance(tags, dict):
        raise invalid_parameter("Tags must be a map.")
    if len(tags) > 50:
        raise invalid_parameter("Too many tags: a queue has at most 50.")
    for key, value in tags.items():
        if not _TAG_KEY.fullmatch(key) or not isinstance(value, str) or len(value) > 256:
            raise invalid_parameter(f"Tag '{key}' is invalid.")
    return dict(tags)


def _check_redrive_target(
    state: SqsState, call: AwsCall, vhost_name: str, source: str, checked: dict[str, str]
) -> None:
    """The dead-letter queue exists, is of the same type, and its RedriveAllowPolicy agrees."""
    policy = checked.get("RedrivePolicy")
    if not policy:
        return
    meta = QueueMeta(attributes={"RedrivePolicy": policy})
    redrive = meta.redrive()
    assert redrive is not None  # check_attributes validated it
    vhost = state.broker.find_vhost(vhost_name)
    target = vhost.find_queue(redrive[1]) if vhost is not None else None
    if target is None:
        raise invalid_attribute_value("RedrivePolicy", "Dead letter target does not exist.")
    if target.name.endswith(".fifo") != source.endswith(".fifo"):
        raise invalid_attribute_value(
            "RedrivePolicy",
            "A standard queue's dead-letter queue is a standard queue, "
            "a FIFO queue's a FIFO queue.",
        )
    if not allows_source(state.meta(vhost_name, target.name), state.arn(call, source)):
        raise invalid_attribute_value(
            "RedrivePolicy", "The dead-letter queue's RedriveAllowPolicy does not allow this queue."
        )


async def create_queue(state: SqsState, call: AwsCall, params: Params) -> Result:
    name = text(params, "QueueName", required=True) or ""
    fifo = _check_queue_name(name)
    requested = params.get("Attributes") or {}
    if not isinstance(requested, dict):
        raise invalid_parameter("Attributes must be a map.")
    checked = check_attributes(requested, fifo=fifo, creating=True)
    if fifo and "FifoQueue" not in checked:
        raise invalid_attribute_value(
            "FifoQueue", "The name of a FIFO queue can only end in .fifo when FifoQueue is true."
        )
    tags = _check_tags(params.get("tags") or {})
    vhost = state.vhost(call)
    existing = vhost.find_queue(name)
    if existing is not None:
        meta = state.meta(vhost.name, name)
        for key, value in checked.items():
            current = "true" if key == "FifoQueue" and fifo else meta.value(key)
            if key == "ContentBasedDeduplication":
                current = "true" if existing.options.content_based_deduplication else "false"
            if current != value:
                raise sqs_error(
                    "QueueNameExists",
                    f"A queue already exists with the same name and a different value for "
                    f"attribute {key}",
                )
        return {"QueueUrl": state.url(call, name)}
    state.check(call, "configure", name)
    _check_redrive_target(state, call, vhost.name, name, checked)
    arguments: dict[str, Any] = {}
    if fifo:
        arguments["x-queue-type"] = "fifo"
        if checked.get("ContentBasedDeduplication") == "true":
            arguments["x-content-based-deduplication"] = True
    try:
        vhost.declare_queue(name, owner=None, durable=True, arguments=arguments)
    except BrokerError as e:
        raise invalid_parameter(str(e)) from None
    now = int(state.broker.clock.wall())
    state.save(vhost.name, name, QueueMeta(checked, tags, now, now))
    await state.durable()
    return {"QueueUrl": state.url(call, name)}


async def get_queue_url(state: SqsState, call: AwsCall, params: Params) -> Result:
    name = text(params, "QueueName", required=True) or ""
    vhost = state.vhost(call)
    if vhost.find_queue(name) is None or name.startswith("amq."):
        raise queue_does_not_exist()
    return {"QueueUrl": state.url(call, name)}


def _page(items: list[str], params: Params, what: str) -> tuple[list[str], str | None]:
    """AWS's MaxResults/NextToken pagination over sorted names."""
    limit = integer(params, "MaxResults", 1, 1000)
    token = text(params, "NextToken")
    start = 0
    if token:
        start = next((i for i, item in enumerate(items) if item > token), len(items))
    if limit is None:
        return items[start : start + 1000], None
    page = items[start : start + limit]
    more = start + limit < len(items)
    return page, (page[-1] if more and page else None)


async def list_queues(state: SqsState, call: AwsCall, params: Params) -> Result:
    prefix = text(params, "QueueNamePrefix") or ""
    vhost = state.vhost(call)
    found = sorted(
        queue.name
        for queue in vhost.all_queues()
        if queue.name.startswith(prefix) and not queue.name.startswith("amq.")
    )
    page, token = _page(found, params, "queues")
    result: Result = {}
    if page:
        result["QueueUrls"] = [state.url(call, name) for name in page]
    if token:
        result["NextToken"] = token
    return result


async def get_queue_attributes(state: SqsState, call: AwsCall, params: Params) -> Result:
    vhost, queue = state.queue(call, params)
    wanted = names(params, "AttributeNames")
    for name in wanted:
        if name not in ALL_NAMES:
            raise invalid_attribute_name(name)
    fifo = queue.options.fifo
    meta = state.meta(vhost.name, queue.name)
    delayed = queue.delays.count if queue.delays is not None else 0
    values: dict[str, str] = {
        "ApproximateNumberOfMessages": str(queue.message_count),
        # in flight here, and other protocols' deliveries not yet acked: the core counts
        # both as the queue's unacknowledged messages (`broker.visibility`)
        "ApproximateNumberOfMessagesNotVisible": str(queue.unacked),
        "ApproximateNumberOfMessagesDelayed": str(delayed),
        "CreatedTimestamp": str(meta.created),
        "LastModifiedTimestamp": str(meta.modified),
        "QueueArn": state.arn(call, queue.name),
    }
    for name in (
        "DelaySeconds",
        "MaximumMessageSize",
        "MessageRetentionPeriod",
        "ReceiveMessageWaitTimeSeconds",
        "VisibilityTimeout",
    ):
        values[name] = meta.value(name)
    for name, value in meta.attributes.items():
        values.setdefault(name, value)
    if fifo:
        values["FifoQueue"] = "true"
        values["ContentBasedDeduplication"] = (
            "true" if queue.options.content_based_deduplication else "false"
        )
        values.setdefault("DeduplicationScope", "queue")
        values.setdefault("FifoThroughputLimit", "perQueue")
    values.setdefault("SqsManagedSseEnabled", "false")
    if "All" not in wanted:
        values = {k: v for k, v in values.items() if k in wanted}
    return {"Attributes": values} if values else {}


async def set_queue_attributes(state: SqsState, call: AwsCall, params: Params) -> Result:
    vhost, queue = state.queue(call, params)
    requested = params.get("Attributes")
    if not isinstance(requested, dict):
        raise missing("Attributes")
    state.check(call, "configure", queue.name)
    checked = check_attributes(requested, fifo=queue.options.fifo, creating=False)
    _check_redrive_target(state, call, vhost.name, queue.name, checked)
    meta = state.meta(vhost.name, queue.name)
    for key, value in checked.items():
        if value == "" and key in ("RedrivePolicy", "RedriveAllowPolicy", "Policy"):
            meta.attributes.pop(key, None)
        else:
            meta.attributes[key] = value
    meta.modified = int(state.broker.clock.wall())
    meta.created = meta.created or meta.modified
    state.save(vhost.name, queue.name, meta)
    await state.durable()
    return {}


async def delete_queue(state: SqsState, call: AwsCall, params: Params) -> Result:
    vhost, queue = state.queue(call, params)
    state.check(call, "configure", queue.name)
    try:
        vhost.delete_queue(queue.name)
    except BrokerError as e:
        raise invalid_parameter(str(e)) from None
    state.forget(vhost.name, queue.name)
    await state.durable()
    return {}


async def purge_queue(state: SqsState, call: AwsCall, params: Params) -> Result:
    vhost, queue = state.queue(call, params)
    state.check(call, "read", queue.name)
    queue.purge()
    receiver = state.receivers.find(vhost.name, queue.name)
    if receiver is not None:
        receiver.purge()
    if queue.delays is not None:
        queue.delays.close(delete=True)
        queue.delays = None
    await state.durable()
    return {}


async def tag_queue(state: SqsState, call: AwsCall, params: Params) -> Result:
    vhost, queue = state.queue(call, params)
    state.check(call, "configure", queue.name)
    meta = state.meta(vhost.name, queue.name)
    tags = _check_tags(params.get("Tags") or {})
    if len({**meta.tags, **tags}) > 50:
        raise invalid_parameter("Too many tags: a queue has at most 50.")
    meta.tags.update(tags)
    state.save(vhost.name, queue.name, meta)
    await state.durable()
    return {}


async def untag_queue(state: SqsState, call: AwsCall, params: Params) -> Result:
    vhost, queue = state.queue(call, params)
    state.check(call, "configure", queue.name)
    meta = state.meta(vhost.name, queue.name)
    for key in names(params, "TagKeys"):
        meta.tags.pop(key, None)
    state.save(vhost.name, queue.name, meta)
    await state.durable()
    return {}


async def list_queue_tags(state: SqsState, call: AwsCall, params: Params) -> Result:
    vhost, queue = state.queue(call, params)
    tags = state.meta(vhost.name, queue.name).tags
    return {"Tags": dict(tags)} if tags else {}


def _sources_of(state: SqsState, vhost_name: str, name: str) -> list[str]:
    sources: list[str] = []
    vhost = state.broker.find_vhost(vhost_name)
    if vhost is None:
        return sources
    for (meta_vhost, source), meta in state.metas.items():
        redrive = meta.redrive()
        if meta_vhost != vhost_name or not redrive or redrive[1] != name:
            continue
        if vhost.find_queue(source) is not None:
            sources.append(source)
    return sorted(sources)


async def list_dead_letter_source_queues(state: SqsState, call: AwsCall, params: Params) -> Result:
    vhost, queue = state.queue(call, params)
    page, token = _page(_sources_of(state, vhost.name, queue.name), params, "queues")
    result: Result = {"queueUrls": [state.url(call, name) for name in page]}
    if token:
        result["NextToken"] = token
    return result


def _queue_of_arn(state: SqsState, call: AwsCall, param: str, arn: str) -> str:
    vhost = state.vhost(call)
    name = name_of_arn(arn)
    if name is None or vhost.find_queue(name) is None:
        raise sqs_error("ResourceNotFoundException", f"The resource {arn} does not exist.")
    return name


async def start_message_move_task(state: SqsState, call: AwsCall, params: Params) -> Result:
    source_arn = text(params, "SourceArn", required=True) or ""
    destination_arn = text(params, "DestinationArn")
    integer(params, "MaxNumberOfMessagesPerSecond", 1, 500)
    vhost = state.vhost(call)
    source = _queue_of_arn(state, call, "SourceArn", source_arn)
    if not _sources_of(state, vhost.name, source):
        raise invalid_value(
            "SourceArn", source_arn, "Source queue must be configured as a Dead Letter Queue."
        )
    destination = None
    if destination_arn:
        destination = _queue_of_arn(state, call, "DestinationArn", destination_arn)
    state.check(call, "read", source)
    state.check(call, "write", "", "exchange")
    queue = vhost.lookup_queue(source)
    to_move = queue.message_count
    moved = 0
    while True:
        step = vhost.redrive(source, destination)
        moved += step
        reading = queue.reading_back()
        if reading is None:
            if step == 0:
                break
            continue
        await reading
    handle = str(uuid.uuid4())
    state.move_tasks.append(
        {
            "TaskHandle": handle,
            "Status": "COMPLETED",
            "SourceArn": source_arn,
            **({"DestinationArn": destination_arn} if destination_arn else {}),
            "ApproximateNumberOfMessagesMoved": moved,
            "ApproximateNumberOfMessagesToMove": to_move,
            "StartedTimestamp": int(state.broker.clock.wall() * 1000),
        }
    )
    del state.move_tasks[:-MAX_MOVE_TASKS]
    await state.durable()
    return {"TaskHandle": handle}


async def list_message_move_tasks(state: SqsState, call: AwsCall, params: Params) -> Result:
    source_arn = text(params, "SourceArn", required=True) or ""
    limit = integer(params, "MaxResults", 1, 10, 1) or 1
    _queue_of_arn(state, call, "SourceArn", source_arn)
    tasks = [t for t in reversed(state.move_tasks) if t["SourceArn"] == source_arn][:limit]
    # a completed task has no handle to cancel (AWS lists it only for RUNNING tasks)
    return {"Results": [{k: v for k, v in t.items() if k != "TaskHandle"} for t in tasks]}


async def cancel_message_move_task(state: SqsState, call: AwsCall, params: Params) -> Result:
    handle = text(params, "TaskHandle", required=True) or ""
    for task in state.move_tasks:
        if task["TaskHandle"] == handle:
            raise AwsError(
                "UnsupportedOperation",
                "The task has completed: only a running task can be cancelled.",
                query_code="AWS.SimpleQueueService.UnsupportedOperation",
            )
    raise sqs_error("ResourceNotFoundException", f"Task {handle} does not exist.")
