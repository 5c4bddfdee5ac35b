"""Stored messages: the hand-made table encoding is pamqp's, byte for byte (issue 7)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import encode

from broker.message import PROPERTY_NAMES, Message, Properties
from broker.serialization import _flat_table, decode_message, encode_message

_text = st.text(max_size=30)
_small = st.integers(-128, 127)
_any_int = st.integers(-(2**63), 2**63 - 1)


def reference_encoding(message: Message) -> bytes:
    """encode_message as pamqp alone writes it (the general path)."""
    table: dict[str, Any] = {"x": message.exchange, "k": message.routing_key}
    for name in PROPERTY_NAMES:
        value = getattr(message.properties, name)
        if value is not None:
            table[name] = value
    if message.annotations:
        table["a"] = message.annotations
    return b"\x01" + encode.field_table(table) + message.body


@st.composite
def messages(draw: st.DrawFn) -> Message:
    p = Properties()
    for name in (
        "content_type",
        "content_encoding",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "message_type",
        "user_id",
        "app_id",
    ):
        setattr(p, name, draw(st.none() | _text))
    p.delivery_mode = draw(st.none() | st.sampled_from([1, 2]) | _any_int)
    p.priority = draw(st.none() | _small | st.integers(128, 70000))
    if draw(st.booleans()):
        p.headers = draw(st.dictionaries(_text, _text | _any_int | st.booleans(), max_size=3))
    if draw(st.booleans()):
        p.timestamp = datetime(2026, 12, 1, 12, 0, draw(st.integers(0, 59)), tzinfo=UTC)
    message = Message(draw(_text), draw(_text), p, draw(st.binary(max_size=50)))
    if draw(st.booleans()):
        message.annotations = {"mqtt.retain": draw(st.booleans()), "n": draw(_any_int)}
    return message


@settings(max_examples=500, deadline=None)
@given(messages())
def test_encoding_equals_pamqp(message: Message) -> None:
    data = encode_message(message)
    assert data == reference_encoding(message)
    back = decode_message(data)
    assert (back.exchange, back.routing_key, back.body) == (
        message.exchange,
        message.routing_key,
        message.body,
    )


@settings(max_examples=300, deadline=None)
@given(_text, _text, st.none() | _text, st.none() | st.sampled_from([1, 2]), st.none() | _small)
def test_common_messages_take_the_hand_made_path(
    exchange: str, key: str, content_type: str | None, mode: int | None, priority: int | None
) -> None:
    table: dict[str, Any] = {"x": exchange, "k": key}
    for name, value in (
        ("content_type", content_type),
        ("delivery_mode", mode),
        ("priority", priority),
    ):
        if value is not None:
            table[name] = value
    assert _flat_table(table) == encode.field_table(table)


def test_other_tables_are_left_to_pamqp() -> None:
    assert _flat_table({"x": "", "headers": {"a": 1}}) is None
    assert _flat_table({"x": "", "priority": 200}) is None
    assert _flat_table({"x": "", "delivery_mode": True}) is None  # a bool is not an int here
    assert _flat_table({"unknown": "v"}) is None
