"""How the core turns messages and argument tables into bytes for the store, and
writes a queue's persistent entries (`store_body`, `store_entry`).

Both use the AMQP 0-9-1 field-table encoding (through pamqp): it is typed,
compact, versionable and round-trips every value a client can send, which
JSON would not (bytes, timestamps, nested tables).

Message layout, version 1::

    0x01 | field table {"x": exchange, "k": routing key, property: value...,
                        "a": annotations (only when not empty)} | body
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from pamqp import decode, encode

from moorage.broker.entry import QueueEntry
from moorage.broker.message import PROPERTIES_FINGERPRINT, PROPERTY_NAMES, Message, Properties
from moorage.broker.services import BrokerServices
from moorage.field_table import field_table

_VERSION = 1


def encode_arguments(arguments: Mapping[str, Any]) -> bytes:
    """Encode a queue/exchange/binding argument table; b"" when empty.

    Keys are sorted so that equal tables always give equal bytes: a binding is
    found again by its encoded arguments when it is deleted.
    """
    return encode.field_table(dict(sorted(arguments.items()))) if arguments else b""


def decode_arguments(data: bytes) -> dict[str, Any]:
    """Inverse of `encode_arguments`."""
    if not data:
        return {}
    return dict(decode.field_table(data)[1])


def encode_message(message: Message) -> bytes:
    """Serialize a message (routing information, properties, body) for the store."""
    cache = message.wire_cache
    raw = cache.get(PROPERTIES_FINGERPRINT) if cache is not None else None
    if raw is not None and not message.annotations:
        fast = _encode_with_known_properties(message, raw)
        if fast is not None:
            return fast
    table: dict[str, Any] = {"x": message.exchange, "k": message.routing_key}
    props = message.properties
    for name in PROPERTY_NAMES:
        value = getattr(props, name)
        if value is not None:
            table[name] = value
    if message.annotations:
        table["a"] = message.annotations
    encoded = _flat_table(table)
    if encoded is None:
        encoded = field_table(table)  # pamqp's, with doubles kept
    return _VERSION_OCTET + encoded + message.body


def store_body(broker: BrokerServices, message: Message) -> int:
    """Write a message body to the store once; its id (also in `message.store_id`)."""
    if not message.store_id:
        message.store_id = broker.next_message_id()
        data = encode_message(message)
        broker.store.put_message(message.store_id, data)
        broker.flow.wrote(len(data))
    return message.store_id


def store_entry(broker: BrokerServices, vhost: str, queue: str, entry: QueueEntry) -> None:
    """Write a persistent queue entry (and its message body, once)."""
    message = entry.message
    if not message.store_id:
        store_body(broker, message)
    if entry.expires_at:
        broker.store.enqueue(vhost, queue, entry.seq, message.store_id, entry.expires_at)
    else:
        broker.store.enqueue(vhost, queue, entry.seq, message.store_id)


# -- the hot path: a table of short text and small numbers, by hand -----------------------
#
# Persistent messages are encoded once each on their way to the store (and decoded
# when a queue pages them back in or recovers), and nearly all of them carry only
# text properties and a delivery mode: `_flat_table` writes such a table exactly as
# pamqp's `field_table` does (keys sorted, text as a long string `S`, an int in
# -128..127 as `b`) and `_flat_untable` reads it back as pamqp would; everything
# else (headers, timestamps, annotations, other numbers) is left to pamqp.
# tests/broker/test_serialization.py checks that both give the same results.

_VERSION_OCTET = bytes((_VERSION,))
_TABLE_SIZE = struct.Struct(">I")
_KEYS = {name: bytes((len(name),)) + name.encode() for name in ("x", "k", *PROPERTY_NAMES)}


def _flat_table(table: dict[str, Any]) -> bytes | None:
    """pamqp's `field_table(table)` for keys of `_KEYS` and str or small int values; else None."""
    entries = _flat_entries(table)
    return None if entries is None else _TABLE_SIZE.pack(len(entries)) + entries


def _flat_entries(table: dict[str, Any]) -> bytes | None:
    """`_flat_table` without the size in front."""
    parts = []
    for key in sorted(table):
        value = table[key]
        kind = type(value)
        name = _KEYS.get(key)
        if name is None:
            return None
        if kind is str:
            text = value.encode()
            parts.append(b"%sS%s%s" % (name, _TABLE_SIZE.pack(len(text)), text))
        elif kind is int and -128 <= value <= 127:
            parts.append(b"%sb%s" % (name, value.to_bytes(1, "big", signed=True)))
        else:
            return None
    return b"".join(parts)


# An AMQP publisher sends the same few property sets over and over, and the adapter
# keeps their wire bytes on the message (`wire_cache[PROPERTIES_FINGERPRINT]`;
# equal bytes, equal properties). Their share of the table is encoded once per property set: the
# entries sorted before "k" and those between "k" and "x" (none sort after "x").
_PROPERTY_PARTS_LIMIT = 1024
_property_parts: dict[bytes, tuple[bytes, bytes] | None] = {}
_TEXT_K = _KEYS["k"] + b"S"  # the routing key's entry up to its length
_TEXT_X = _KEYS["x"] + b"S"  # the exchange's


def _encode_with_known_properties(message: Message, raw: bytes) -> bytes | None:
    """`encode_message` for a message without annotations whose properties' AMQP
    encoding is `raw`; None when they are not a flat table (pamqp decides)."""
    try:
        parts = _property_parts[raw]
    except KeyError:
        props = message.properties
        values = {n: getattr(props, n) for n in PROPERTY_NAMES}
        low = _flat_entries({n: v for n, v in values.items() if v is not None and n < "k"})
        mid = _flat_entries({n: v for n, v in values.items() if v is not None and n > "k"})
        parts = None if low is None or mid is None else (low, mid)
        if len(_property_parts) >= _PROPERTY_PARTS_LIMIT:
            _property_parts.clear()
        _property_parts[raw] = parts
    if parts is None:
        return None
    key = message.routing_key.encode()
    exchange = message.exchange.encode()
    low, mid = parts
    size = len(low) + len(mid) + len(_TEXT_K) + 4 + len(key) + len(_TEXT_X) + 4 + len(exchange)
    return b"%s%s%s%s%s%s%s%s%s%s%s" % (
        _VERSION_OCTET,
        _TABLE_SIZE.pack(size),
        low,
        _TEXT_K,
        _TABLE_SIZE.pack(len(key)),
        key,
        mid,
        _TEXT_X,
        _TABLE_SIZE.pack(len(exchange)),
        exchange,
        message.body,
    )


def decode_message(data: bytes) -> Message:
    """Inverse of `encode_message`. Raises ValueError on an unknown layout."""
    if not data or data[0] != _VERSION:
        raise ValueError(f"unknown stored message layout {data[:1]!r}")
    flat = _flat_untable(data, 1)
    if flat is None:
        used, table = decode.field_table(data[1:])
        end = 1 + used
    else:
        end, table = flat
    exchange = str(table.pop("x"))
    routing_key = str(table.pop("k"))
    annotations = table.pop("a", None)
    fields: dict[str, Any] = {k: v for k, v in table.items() if k in PROPERTY_NAMES}
    properties = Properties(**fields)
    message = Message(exchange, routing_key, properties, data[end:])
    if isinstance(annotations, dict) and annotations:
        message.annotations = dict(annotations)
    return message


_INT8 = struct.Struct(">b")
_TEXT, _SMALL_INT = ord("S"), ord("b")


def _flat_untable(data: bytes, offset: int) -> tuple[int, dict[str, Any]] | None:
    """pamqp's `field_table(data[offset:])` as (end offset, table) for a table of
    `S` (UTF-8 text) and `b` values only; None otherwise, or when anything is off."""
    try:
        (size,) = _TABLE_SIZE.unpack_from(data, offset)
        pos = offset + 4
        end = pos + size
        if end > len(data):
            return None
        table: dict[str, Any] = {}
        while pos < end:
            key_end = pos + 1 + data[pos]
            key = data[pos + 1 : key_end].decode()
            kind = data[key_end]
            pos = key_end + 1
            if kind == _TEXT:
                (length,) = _TABLE_SIZE.unpack_from(data, pos)
                pos += 4 + length
                table[key] = data[pos - length : pos].decode()
            elif kind == _SMALL_INT:
                table[key] = _INT8.unpack_from(data, pos)[0]
                pos += 1
            else:
                return None
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    return (end, table) if pos == end else None
