"""AMQP 0-9-1 field tables as pamqp encodes them, except that a float is a double.

Where this lives, and why: two layers need this one encoder and neither may
import the other. The AMQP codec sends headers tables on the wire
(`moorage.protocols.amqp091.properties`), and the core's stored-message
format is a field table too (`moorage.broker.serialization`). The codec must
not import the core and the core must not import a protocol, so the one
implementation sits in a neutral leaf beside both: it imports pamqp and the
standard library only, never `moorage.broker`, `moorage.protocols` or
`moorage.storage` (tests/amqp091/test_standalone.py checks that).

pamqp decodes both float kinds (`f`, 32 bits, and `d`, 64 bits) to a Python
float but encodes every float as `f`, so a double header from a Java or
Node client (0.1) would come back to its consumers, and out of the store,
as 0.10000000149011612. RabbitMQ hands doubles on unchanged. Encoding every
float as `d` loses nothing: a Python float is a double, and a 32-bit value
is exactly representable as one. Tables without floats are left to pamqp,
byte for byte.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from pamqp import encode

_SIZE = struct.Struct(">I")
_DOUBLE = struct.Struct(">d")


def has_float(value: Any) -> bool:
    """True if a float sits anywhere in `value` (nested tables and arrays included)."""
    if isinstance(value, float):
        return True
    if isinstance(value, Mapping):
        return any(has_float(item) for item in value.values())
    if isinstance(value, list):
        return any(has_float(item) for item in value)
    return False


def field_table(table: Mapping[str, Any]) -> bytes:
    """`pamqp.encode.field_table(table)` with floats encoded as doubles (`d`).

    Raises:
        TypeError: a value pamqp cannot encode either.
    """
    if not has_float(table):
        return encode.field_table(dict(table))
    return _table(table)


def _table(table: Mapping[str, Any]) -> bytes:
    parts = []
    for key, item in sorted(table.items()):
        name = key.encode()
        if len(name) > 128:  # pamqp truncates field names the same way
            name = name[:128].decode("utf-8", "ignore").encode()
        parts.append(bytes((len(name),)) + name)
        parts.append(_value(item))
    data = b"".join(parts)
    return _SIZE.pack(len(data)) + data


def _value(value: Any) -> bytes:
    if isinstance(value, float):
        return b"d" + _DOUBLE.pack(value)
    if isinstance(value, dict):
        return b"F" + _table(value)
    if isinstance(value, list):
        data = b"".join(_value(item) for item in value)
        return b"A" + _SIZE.pack(len(data)) + data
    return encode.encode_table_value(value)
