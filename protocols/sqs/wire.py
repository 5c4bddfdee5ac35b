"""SQS's two wire formats around one set of handlers that speak the JSON shapes.

The handlers (`protocols.sqs.actions`) take parameters and return results
shaped as in the AWS JSON 1.0 protocol. For the Query protocol, `query_params`
rebuilds that shape from the flat form fields, using the Query API's
flattened names (`Attribute.N.Name`/`.Value` for `Attributes`,
`AttributeName.N`, `MessageAttribute.N.Name`/`.Value.StringValue`,
`SendMessageBatchRequestEntry.N.Id`, `Tag.N.Key`/`.Value`, `TagKey.N`), and
`xml_result` renders a result as the Query protocol's XML (`<QueueUrl>`
repeated, `<Attribute><Name/><Value/></Attribute>`, `<Message>`, ...).
Numbers arrive as text in a form; the handlers accept both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape

from moorage.protocols.aws.errors import JSON_CONTENT_TYPE
from moorage.protocols.aws.query import members, name_value_map, scalar_list, sub_fields, xml_reply
from moorage.protocols.aws.service import AwsReply

NAMESPACE = "http://queue.amazonaws.com/doc/2012-11-05/"
# Actions whose answer has no result element
NO_OUTPUT = frozenset(
    {
        "DeleteMessage",
        "DeleteQueue",
        "PurgeQueue",
        "SetQueueAttributes",
        "ChangeMessageVisibility",
        "TagQueue",
        "UntagQueue",
    }
)

# JSON member -> how the Query protocol flattens it, per action.
_MAP = "map"  # (element, key, value)
_LIST = "list"  # element
_ATTRIBUTES = "attributes"  # message attributes: element
_ENTRIES = "entries"  # element of each batch entry


def _message_attributes(fields: Mapping[str, str], element: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for member in members(fields, element):
        name = member.get("Name")
        if name is None:
            continue
        value = sub_fields(member, "Value")
        shaped: dict[str, Any] = {
            k: v for k, v in value.items() if k in ("DataType", "StringValue", "BinaryValue")
        }
        string_list = scalar_list(value, "StringListValue")
        if string_list:
            shaped["StringListValues"] = string_list
        attributes[name] = shaped
    return attributes


_SEND_ENTRY = {
    "MessageAttributes": (_ATTRIBUTES, "MessageAttribute"),
    "MessageSystemAttributes": (_ATTRIBUTES, "MessageSystemAttribute"),
}
SHAPES: dict[str, dict[str, tuple[str, Any]]] = {
    "CreateQueue": {
        "Attributes": (_MAP, ("Attribute", "Name", "Value")),
        "tags": (_MAP, ("Tag", "Key", "Value")),
    },
    "GetQueueAttributes": {"AttributeNames": (_LIST, "AttributeName")},
    "SetQueueAttributes": {"Attributes": (_MAP, ("Attribute", "Name", "Value"))},
    "SendMessage": _SEND_ENTRY,
    "SendMessageBatch": {"Entries": (_ENTRIES, ("SendMessageBatchRequestEntry", _SEND_ENTRY))},
    "ReceiveMessage": {
        "AttributeNames": (_LIST, "AttributeName"),
        "MessageSystemAttributeNames": (_LIST, "MessageSystemAttributeName"),
        "MessageAttributeNames": (_LIST, "MessageAttributeName"),
    },
    "DeleteMessageBatch": {"Entries": (_ENTRIES, ("DeleteMessageBatchRequestEntry", {}))},
    "ChangeMessageVisibilityBatch": {
        "Entries": (_ENTRIES, ("ChangeMessageVisibilityBatchRequestEntry", {}))
    },
    "TagQueue": {"Tags": (_MAP, ("Tag", "Key", "Value"))},
    "UntagQueue": {"TagKeys": (_LIST, "TagKey")},
}


def _reshape(fields: Mapping[str, str], shape: Mapping[str, tuple[str, Any]]) -> dict[str, Any]:
    """Flat Query fields -> the JSON shape, for the members `shape` describes."""
    params: dict[str, Any] = {}
    consumed: list[str] = []
    for member, (kind, how) in shape.items():
        found: Any
        if kind == _MAP:
            element, key, value = how
            found = name_value_map(fields, element, key, value)
        elif kind == _LIST:
            element = how
            found = scalar_list(fields, element)
        elif kind == _ATTRIBUTES:
            element = how
            found = _message_attributes(fields, element)
        else:
            element, inner = how
            found = [_reshape(entry, inner) for entry in members(fields, element)]
        consumed.append(element + ".")
        if found:
            params[member] = found
    for key, value in fields.items():
        if not key.startswith(tuple(consumed)) and "." not in key:
            params[key] = value
    return params


def query_params(action: str, fields: Mapping[str, str]) -> dict[str, Any]:
    """The JSON-shaped parameters of a Query request."""
    params = _reshape(fields, SHAPES.get(action, {}))
    params.pop("Version", None)
    return params


# -- results ----------------------------------------------------------------------------

_LIST_ELEMENTS = {
    "QueueUrls": "QueueUrl",
    "queueUrls": "QueueUrl",
    "Messages": "Message",
    "Failed": "BatchResultErrorEntry",
    "Results": "ListMessageMoveTasksResultEntry",
}
_MAP_ELEMENTS = {
    "Attributes": ("Attribute", "Name", "Value"),
    "Tags": ("Tag", "Key", "Value"),
    "MessageAttributes": ("MessageAttribute", "Name", "Value"),
}


def _xml(name: str, value: Any, action: str) -> str:
    if isinstance(value, bool):
        return f"<{name}>{'true' if value else 'false'}</{name}>"
    if isinstance(value, dict):
        if name in _MAP_ELEMENTS:
            element, key, inner = _MAP_ELEMENTS[name]
            return "".join(
                f"<{element}><{key}>{escape(k)}</{key}>{_xml(inner, v, action)}</{element}>"
                for k, v in value.items()
            )
        return f"<{name}>{_fields(value, action)}</{name}>"
    if isinstance(value, list):
        element = _LIST_ELEMENTS.get(name, f"{action}ResultEntry")
        return "".join(
            f"<{element}>{_fields(item, action)}</{element}>"
            if isinstance(item, dict)
            else f"<{element}>{escape(str(item))}</{element}>"
            for item in value
        )
    return f"<{name}>{escape(str(value))}</{name}>"


def _fields(result: Mapping[str, Any], action: str) -> str:
    return "".join(_xml(name, value, action) for name, value in result.items())


def reply(action: str, wire: str, result: Mapping[str, Any], request_id: str) -> AwsReply:
    """A handler's result in the caller's wire format."""
    if wire == "json":
        return AwsReply(json.dumps(result).encode(), JSON_CONTENT_TYPE)
    return xml_reply(
        action,
        NAMESPACE,
        _fields(result, action),
        request_id,
        has_result=action not in NO_OUTPUT,
    )
