"""SQS messages on Moorage's message model: attributes as headers, digests, receipt handles.

The mapping (documented for users in docs/sqs.md):

| SQS | Moorage message (AMQP view) |
|---|---|
| `MessageBody` | body (UTF-8) |
| `MessageId` | `message_id` property (a UUID made at SendMessage) |
| message attribute `String` | header, text value |
| message attribute `Binary` | header, byte array (AMQP field type `x`, a bytearray) |
| `Number` or a custom type (`String.x`) | as above, DataType in `x-sqs-data-types` |
| `MessageGroupId` | `x-message-group-id` header (the core's FIFO group) |
| `MessageDeduplicationId` | `x-deduplication-id` header (the core's FIFO deduplication) |
| `SentTimestamp` | `timestamp` property (seconds) and the `sqs.sent` annotation (ms) |
| `SenderId` | `user_id`-like `sqs.sender` annotation (the broker user) |
| `AWSTraceHeader` | `sqs.trace` annotation |
| `ApproximateReceiveCount` | the entry's delivery count |

Every message is persistent (delivery mode 2). A message published by
another protocol shows its headers as message attributes: text as `String`,
bytes as `Binary`, numbers as `Number`, booleans and anything else as
`String` (their text); headers the broker uses itself (`x-death`,
`x-first-death-*`, `x-last-death-*`, `x-message-group-id`,
`x-deduplication-id`, `x-delay`, `x-sqs-*`) are not shown.

Digests: `MD5OfMessageBody` is the MD5 of the UTF-8 body; the attributes'
digest follows AWS's algorithm — for each attribute in name order: the
4-byte big-endian length and bytes of the name, of the DataType, one
transport byte (1: string or number, 2: binary), and the length and bytes
of the value. SDKs check both.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from moorage.broker.entry import QueueEntry
from moorage.broker.fifo import DEDUP_HEADER, GROUP_HEADER
from moorage.broker.header_values import header_text
from moorage.broker.message import EXPIRES_AT_ANNOTATION, PERSISTENT, Message, Properties
from moorage.protocols.aws.errors import AwsError
from moorage.protocols.sqs.errors import invalid_parameter, receipt_handle_invalid, sqs_error

DATA_TYPES_HEADER = "x-sqs-data-types"
SENT_ANNOTATION = "sqs.sent"
SENDER_ANNOTATION = "sqs.sender"
TRACE_ANNOTATION = "sqs.trace"
MAX_ATTRIBUTES = 10
_HIDDEN_HEADERS = frozenset({GROUP_HEADER, DEDUP_HEADER, "x-death", "x-delay", DATA_TYPES_HEADER})
_HIDDEN_PREFIXES = ("x-first-death-", "x-last-death-", "x-sqs-")
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_\-.]{1,256}")
_DATA_TYPE = re.compile(r"(String|Number|Binary)(\.[^\s]{1,250})?")
# XML 1.0 characters, the only ones SQS accepts in a body or a string attribute
_INVALID_TEXT = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_MESSAGE_IDS = uuid.UUID("9f0d5a36-8bb5-4e3c-a7f4-2d3b8c6f1e10")


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _length_prefixed(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def attributes_md5(attributes: Mapping[str, Mapping[str, Any]]) -> str:
    """AWS's MD5 of message attributes (SDKs verify it)."""
    digest = hashlib.md5(usedforsecurity=False)
    for name in sorted(attributes):
        value = attributes[name]
        data_type = str(value["DataType"])
        digest.update(_length_prefixed(name.encode()))
        digest.update(_length_prefixed(data_type.encode()))
        if data_type.startswith("Binary"):
            digest.update(b"\x02")
            digest.update(_length_prefixed(base64.b64decode(value["BinaryValue"])))
        else:
            digest.update(b"\x01")
            digest.update(_length_prefixed(str(value["StringValue"]).encode()))
    return digest.hexdigest()


def check_body(body: Any, max_size: int) -> bytes:
    """The body's bytes after AWS's checks (present, valid characters). Raises AwsError."""
    if not isinstance(body, str) or not body:
        raise AwsError("MissingParameter", "The request must contain the parameter MessageBody.")
    if _INVALID_TEXT.search(body):
        raise sqs_error("InvalidMessageContents", "Invalid characters found. Deleted message body.")
    return body.encode()


def check_attributes(attributes: Any) -> tuple[dict[str, dict[str, Any]], int]:
    """Validate message attributes (JSON shape); return them with their size in bytes.

    Raises AwsError (InvalidParameterValue) for a bad name, type or value.
    """
    if attributes is None:
        return {}, 0
    if not isinstance(attributes, dict):
        raise invalid_parameter("MessageAttributes must be a map.")
    if len(attributes) > MAX_ATTRIBUTES:
        raise invalid_parameter(
            f"Number of message attributes [{len(attributes)}] exceeds the allowed maximum "
            f"[{MAX_ATTRIBUTES}]."
        )
    checked: dict[str, dict[str, Any]] = {}
    size = 0
    for name, value in attributes.items():
        lowered = name.lower()
        if (
            not _ATTRIBUTE_NAME.fullmatch(name)
            or lowered.startswith(("aws.", "amazon."))
            or name.startswith(".")
            or name.endswith(".")
            or ".." in name
        ):
            raise invalid_parameter(f"Message (user) attribute name '{name}' is invalid.")
        if not isinstance(value, dict):
            raise invalid_parameter(f"Message (user) attribute '{name}' must be a structure.")
        data_type = value.get("DataType")
        if not isinstance(data_type, str) or not _DATA_TYPE.fullmatch(data_type):
            raise invalid_parameter(
                f"The type of message (user) attribute '{name}' is invalid. You must use only "
                "the following supported type prefixes: Binary, Number, String."
            )
        if data_type.startswith("Binary"):
            raw = value.get("BinaryValue")
            try:
                data = base64.b64decode(raw, validate=True) if isinstance(raw, str) else b""
            except (binascii.Error, ValueError):
                data = b""
            if not data:
                raise invalid_parameter(
                    f"Message (user) attribute '{name}' must contain a non-empty value of type "
                    "'Binary'."
                )
            checked[name] = {"DataType": data_type, "BinaryValue": raw}
            size += len(data)
        else:
            text = value.get("StringValue")
            if not isinstance(text, str) or not text:
                raise invalid_parameter(
                    f"Message (user) attribute '{name}' must contain a non-empty value of type "
                    f"'{data_type.split('.')[0]}'."
                )
            if data_type.startswith("Number"):
                try:
                    Decimal(text)
                except InvalidOperation:
                    raise invalid_parameter(
                        f"Can't cast the value of message (user) attribute '{name}' to a number."
                    ) from None
            if _INVALID_TEXT.search(text):
                raise invalid_parameter(
                    f"Message (user) attribute '{name}' contains invalid characters."
                )
            checked[name] = {"DataType": data_type, "StringValue": text}
            size += len(text.encode())
        size += len(name.encode()) + len(data_type.encode())
    return checked, size


def build_message(
    queue: str,
    body: bytes,
    attributes: Mapping[str, Mapping[str, Any]],
    *,
    now: float,
    sender: str,
    group: str | None = None,
    deduplication: str | None = None,
    retention: int = 0,
    trace: str | None = None,
) -> Message:
    """The Moorage message for an SQS send to `queue` (see the module's mapping)."""
    headers: dict[str, Any] = {}
    data_types: dict[str, Any] = {}
    for name, value in attributes.items():
        data_type = str(value["DataType"])
        if data_type.startswith("Binary"):
            headers[name] = bytearray(base64.b64decode(value["BinaryValue"]))  # AMQP "x"
        else:
            headers[name] = str(value["StringValue"])
        if data_type not in ("String", "Binary"):
            data_types[name] = data_type
    if data_types:
        headers[DATA_TYPES_HEADER] = data_types
    if group is not None:
        headers[GROUP_HEADER] = group
    if deduplication is not None:
        headers[DEDUP_HEADER] = deduplication
    annotations: dict[str, Any] = {
        SENT_ANNOTATION: int(now * 1000),
        SENDER_ANNOTATION: sender,
    }
    if retention:
        annotations[EXPIRES_AT_ANNOTATION] = now + retention
    if trace:
        annotations[TRACE_ANNOTATION] = trace
    properties = Properties(
        headers=headers or None,
        delivery_mode=PERSISTENT,
        message_id=str(uuid.uuid4()),
        timestamp=datetime.fromtimestamp(int(now), UTC),
    )
    return Message("", queue, properties, body, annotations=annotations)


def message_attributes(message: Message) -> dict[str, dict[str, Any]]:
    """A message's headers as SQS message attributes (JSON shape; see the mapping)."""
    headers = message.properties.headers
    if not headers:
        return {}
    data_types = headers.get(DATA_TYPES_HEADER)
    if not isinstance(data_types, dict):
        data_types = {}
    attributes: dict[str, dict[str, Any]] = {}
    for name, value in headers.items():
        if name in _HIDDEN_HEADERS or name.startswith(_HIDDEN_PREFIXES):
            continue
        declared = data_types.get(name)
        if isinstance(value, bytes | bytearray):
            attributes[name] = {
                "DataType": str(declared or "Binary"),
                "BinaryValue": base64.b64encode(bytes(value)).decode(),
            }
            continue
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            data_type = str(declared or "String")
            text = value if isinstance(value, str) else header_text(value)
        else:
            data_type = str(declared or "Number")
            text = str(value)
        if text:
            attributes[name] = {"DataType": data_type, "StringValue": text}
    return attributes


def select_attributes(
    attributes: dict[str, dict[str, Any]], names: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """The attributes `MessageAttributeNames` asks for: names, `All`/`.*`, or `prefix.*`."""
    wanted = list(names)
    if not wanted:
        return {}
    if "All" in wanted or ".*" in wanted:
        return attributes
    exact = {n for n in wanted if not n.endswith(".*")}
    prefixes = tuple(n[:-1] for n in wanted if n.endswith(".*"))
    return {
        name: value
        for name, value in attributes.items()
        if name in exact or (prefixes and name.startswith(prefixes))
    }


def message_id(message: Message, queue: str, entry: QueueEntry) -> str:
    """The SQS MessageId: the `message_id` property, or one derived from the entry."""
    given = message.properties.message_id
    if given:
        return given
    return str(uuid.uuid5(_MESSAGE_IDS, f"{queue}/{entry.seq}/{message.store_id}"))


def sent_millis(message: Message, default: float) -> int:
    sent = message.annotations.get(SENT_ANNOTATION)
    if isinstance(sent, int):
        return sent
    stamp = message.properties.timestamp
    if stamp is not None:
        return int(stamp.timestamp() * 1000)
    return int(default * 1000)


# -- receipt handles ------------------------------------------------------------------


def encode_receipt(vhost: str, queue: str, seq: int, receive: int, epoch: str) -> str:
    """An opaque receipt handle naming one receive of one entry of one queue."""
    raw = "\n".join((vhost, queue, str(seq), str(receive), epoch)).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_receipt(handle: Any, vhost: str, queue: str) -> tuple[int, int, str]:
    """(seq, receive, epoch) of a handle of this queue. Raises ReceiptHandleIsInvalid."""
    if not isinstance(handle, str) or not handle:
        raise receipt_handle_invalid(str(handle))
    try:
        parts = base64.urlsafe_b64decode(handle.encode()).decode().split("\n")
        if len(parts) != 5 or parts[0] != vhost or parts[1] != queue:
            raise ValueError(handle)
        return int(parts[2]), int(parts[3]), parts[4]
    except (ValueError, UnicodeError, binascii.Error):
        raise receipt_handle_invalid(handle) from None
