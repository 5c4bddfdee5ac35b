"""botocore's SQS model switched to the Query protocol, for a boto3 client that speaks Query.

botocore (since late 2023) ships SQS as AWS JSON 1.0 only. The Query API is
the same operations with AWS's Query serialization: maps and lists are
*flattened* under singular names (`Attribute.1.Name`/`Attribute.1.Value`,
`AttributeName.1`, `SendMessageBatchRequestEntry.1.Id`, `<Message>` elements
repeated in the result), results are wrapped in `<{Action}Result>`, and the
XML namespace is `http://queue.amazonaws.com/doc/2012-11-05/`. This module
applies exactly those traits to botocore's installed model and writes it
where a botocore session's `data_loader` finds custom models, so the tests
run botocore's own Query serializer and XML parser against the broker.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from botocore.loaders import Loader

NAMESPACE = "http://queue.amazonaws.com/doc/2012-11-05/"

# Flattened maps: shape -> (element name, key name, value name)
FLAT_MAPS = {
    "QueueAttributeMap": ("Attribute", "Name", "Value"),
    "TagMap": ("Tag", "Key", "Value"),
    "MessageBodyAttributeMap": ("MessageAttribute", "Name", "Value"),
    "MessageBodySystemAttributeMap": ("MessageSystemAttribute", "Name", "Value"),
    "MessageSystemAttributeMap": ("Attribute", "Name", "Value"),
}
# Flattened lists: shape -> element name of each member
FLAT_LISTS = {
    "AttributeNameList": "AttributeName",
    "MessageAttributeNameList": "MessageAttributeName",
    "MessageSystemAttributeList": "MessageSystemAttributeName",
    "QueueUrlList": "QueueUrl",
    "MessageList": "Message",
    "TagKeyList": "TagKey",
    "StringList": "StringListValue",
    "BinaryList": "BinaryListValue",
    "SendMessageBatchRequestEntryList": "SendMessageBatchRequestEntry",
    "SendMessageBatchResultEntryList": "SendMessageBatchResultEntry",
    "DeleteMessageBatchRequestEntryList": "DeleteMessageBatchRequestEntry",
    "DeleteMessageBatchResultEntryList": "DeleteMessageBatchResultEntry",
    "ChangeMessageVisibilityBatchRequestEntryList": "ChangeMessageVisibilityBatchRequestEntry",
    "ChangeMessageVisibilityBatchResultEntryList": "ChangeMessageVisibilityBatchResultEntry",
    "BatchResultErrorEntryList": "BatchResultErrorEntry",
    "ListMessageMoveTasksResultEntryList": "ListMessageMoveTasksResultEntry",
}

# The Query protocol's error codes where they differ from the shape's name (AWS's
# SQS Query API reference, "Errors"); the JSON wire sends them in x-amzn-query-error.
QUERY_ERROR_CODES = {
    "QueueDoesNotExist": "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDeletedRecently": "AWS.SimpleQueueService.QueueDeletedRecently",
    "QueueNameExists": "QueueAlreadyExists",
    "MessageNotInflight": "AWS.SimpleQueueService.MessageNotInflight",
    "UnsupportedOperation": "AWS.SimpleQueueService.UnsupportedOperation",
    "PurgeQueueInProgress": "AWS.SimpleQueueService.PurgeQueueInProgress",
    "TooManyEntriesInBatchRequest": "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
    "EmptyBatchRequest": "AWS.SimpleQueueService.EmptyBatchRequest",
    "BatchEntryIdsNotDistinct": "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
    "BatchRequestTooLong": "AWS.SimpleQueueService.BatchRequestTooLong",
    "InvalidBatchEntryId": "AWS.SimpleQueueService.InvalidBatchEntryId",
}


def query_model(model: dict[str, Any]) -> dict[str, Any]:
    """A copy of botocore's SQS JSON model with the Query protocol's traits."""
    model = copy.deepcopy(model)
    metadata = model["metadata"]
    metadata["protocol"] = "query"
    metadata["protocols"] = ["query"]
    metadata["xmlNamespace"] = NAMESPACE
    for key in ("jsonVersion", "targetPrefix", "awsQueryCompatible"):
        metadata.pop(key, None)
    shapes = model["shapes"]
    for name, (element, key, value) in FLAT_MAPS.items():
        shape = shapes[name]
        shape["flattened"] = True
        shape["locationName"] = element
        shape["key"]["locationName"] = key
        shape["value"]["locationName"] = value
    for name, element in FLAT_LISTS.items():
        if name in shapes:
            shapes[name]["flattened"] = True
            shapes[name]["member"]["locationName"] = element
    for name, shape in shapes.items():
        if shape.get("exception"):
            shape["error"] = {"code": QUERY_ERROR_CODES.get(name, name), "senderFault": True}
    for name, operation in model["operations"].items():
        if "output" in operation:
            operation["output"]["resultWrapper"] = f"{name}Result"
    # Members whose element name is the list's singular (flattened lists in a structure
    # are named after the member's own locationName).
    for shape in shapes.values():
        if shape.get("type") != "structure":
            continue
        for member in shape["members"].values():
            target = member["shape"]
            if target in FLAT_LISTS:
                member["locationName"] = FLAT_LISTS[target]
                member["flattened"] = True
            elif target in FLAT_MAPS:
                member["locationName"] = FLAT_MAPS[target][0]
                member["flattened"] = True
    return model


def write_query_model(directory: Path) -> Path:
    """Write the Query model under `directory` (a botocore data path); return the directory."""
    loader = Loader()
    model = loader.load_service_model("sqs", "service-2")
    version = model["metadata"]["apiVersion"]
    target = directory / "sqs" / version
    target.mkdir(parents=True, exist_ok=True)
    (target / "service-2.json").write_text(json.dumps(query_model(model)))
    return directory
