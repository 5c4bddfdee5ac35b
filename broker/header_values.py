"""One rule for turning a core header value into header text, for every protocol.

AMQP headers are typed (strings, byte strings, integers, floats, booleans,
decimals, timestamps, nested tables and arrays, void); MQTT 5 user properties
and STOMP headers are text. Every adapter that delivers a message published in
another protocol converts with `header_text`, so an AMQP header reads the same
over MQTT and STOMP:

| core value | text |
|---|---|
| `bool` | `true` / `false` (JMS and RabbitMQ's STOMP plugin) |
| `str`, `int`, `float`, `Decimal` | `str(value)` |
| `bytes` | UTF-8, invalid sequences replaced (U+FFFD) |
| `datetime` (AMQP timestamp) | whole seconds since the epoch (`1700000000`) |
| `None`, tables, arrays | no text form: the header is left out |

Timestamps as epoch seconds: AMQP timestamps carry whole seconds, RabbitMQ's
STOMP plugin writes its `timestamp` header that way, and a number survives a
round trip back into AMQP where ISO text would not. A naive `datetime` is
read as UTC (AMQP timestamps have no zone).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal


def header_text(value: object) -> str | None:
    """The header's text form, or None when it has none (then the header is dropped)."""
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, str | int | float | Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return str(int(aware.timestamp()))
    return None
