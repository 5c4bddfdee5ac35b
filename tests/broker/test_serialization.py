"""Stored messages: the hand-made table encoding and decoding are pamqp's (issue 7)."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import decode, encode

from moorage.broker.message import PROPERTY_NAMES, Message, Properties
from moorage.broker.serialization import _flat_table, _flat_untable, decode_message, encode_message

# hypothesis runs hundreds of examples: CPU time that a loaded machine stretches far
# past the suite's 60 s default (a bound for a hung test, not a speed to meet)
pytestmark = pytest.mark.timeout(600)

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


@settings(max_examples=500, deadline=None)
@given(messages())
def test_decoding_equals_pamqp(message: Message) -> None:
    data = encode_message(message)
    used, table = decode.field_table(data[1:])
    flat = _flat_untable(data, 1)
    if flat is not None:
        assert flat == (1 + used, table)
    back = decode_message(data)
    assert back.body == message.body
    assert back.properties.content_type == table.get("content_type")


_fields = st.tuples(
    st.binary(max_size=4),  # key, maybe not UTF-8
    st.none() | st.none() | st.integers(0, 6),  # its claimed length (None: the true one)
    st.sampled_from(b"SbSbxF"),  # kind
    st.binary(max_size=6),  # value, maybe not UTF-8
    st.none() | st.none() | st.integers(0, 8),  # its claimed length (for S; None: true)
)


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(_fields, max_size=4), st.sampled_from([0, 0, 0, -1, 1, -3, 3]), st.binary(max_size=8)
)
def test_decoding_garbage_agrees_with_pamqp(
    fields: list[tuple[bytes, int | None, int, bytes, int | None]], skew: int, tail: bytes
) -> None:
    table_bytes = b""
    for key, key_length, kind, value, value_length in fields:
        key_length = len(key) if key_length is None else key_length
        value_length = len(value) if value_length is None else value_length
        table_bytes += bytes((key_length,)) + key + bytes((kind,))
        table_bytes += struct.pack(">I", value_length) + value if kind == ord("S") else value[:1]
    size = max(0, len(table_bytes) + skew)
    data = b"\x01" + struct.pack(">I", size) + table_bytes + tail
    flat = _flat_untable(data, 1)
    if flat is None:
        return  # pamqp decides (and may raise)
    used, table = decode.field_table(data[1:])
    assert flat == (1 + used, table)


def test_common_tables_are_decoded_by_hand() -> None:
    message = Message("ex", "key", Properties(content_type="a/b", delivery_mode=2), b"body")
    assert _flat_untable(encode_message(message), 1) is not None
    with_headers = Message("ex", "key", Properties(headers={"h": 1}), b"body")
    assert _flat_untable(encode_message(with_headers), 1) is None


@settings(max_examples=500, deadline=None)
@given(messages())
def test_encoding_with_amqp_property_bytes_equals_pamqp(message: Message) -> None:
    """The per-property-set cache (keyed by the AMQP bytes; equal bytes, equal properties)."""
    message.wire_cache = {"amqp": repr(message.properties).encode()}
    assert encode_message(message) == reference_encoding(message)
    again = Message(message.exchange + "2", "k2", message.properties, b"other")
    again.wire_cache = dict(message.wire_cache)
    assert encode_message(again) == reference_encoding(again)  # from the cache


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_text, st.floats(allow_nan=False), min_size=1, max_size=3))
def test_float_headers_are_stored_as_doubles(headers: dict[str, float]) -> None:
    """pamqp's own encoding would keep 32 bits of each (and overflow past 3.4e38)."""
    message = Message("x", "k", Properties(headers=dict(headers), delivery_mode=2), b"body")
    assert decode_message(encode_message(message)).properties.headers == headers
