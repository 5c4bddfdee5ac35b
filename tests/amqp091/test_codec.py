"""Tests for the sans-IO AMQP 0-9-1 codec (protocols/amqp091/codec.py).

Shape (STYLE.md section 5): literal (event, wire bytes) cases, each decoded whole,
one byte at a time and followed by another frame; hypothesis round trips with
random chunking; malformed input raising only FrameError with the right reply code.
pamqp methods have no ``__eq__``, so events are compared through ``norm``.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import struct
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp import frame as pamqp_frame

from moorage.protocols.amqp091.codec import (
    HEARTBEAT_FRAME,
    NEED_DATA,
    PROTOCOL_HEADER,
    ContentReceived,
    FrameDecoder,
    FrameError,
    HeartbeatReceived,
    MethodReceived,
    ProtocolHeaderMismatch,
    ProtocolHeaderReceived,
    encode_content,
    encode_method,
)

# -- helpers -------------------------------------------------------------------


def frame(frame_type: int, channel: int, payload: bytes, end: bytes = b"\xce") -> bytes:
    """Build one frame by hand (spec 4.2.3), independently of the codec and pamqp."""
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + end


def typed(value: Any) -> Any:
    """A comparable form of a field value that also distinguishes bool/int/str/bytes."""
    if isinstance(value, dict):
        return ("dict", sorted((k, typed(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", [typed(v) for v in value])
    return (type(value).__name__, value)


def norm(event: Any) -> Any:
    """Turn an event into something with a meaningful ``==``."""
    if isinstance(event, MethodReceived):
        return ("method", event.channel, type(event.method), typed(dict(event.method)))
    if isinstance(event, ContentReceived):
        return (
            "content",
            event.channel,
            type(event.method),
            typed(dict(event.method)),
            typed(dict(event.properties)),
            type(event.body),
            event.body,
        )
    return event


def drain(decoder: FrameDecoder) -> list[Any]:
    events = []
    while (event := decoder.next_event()) is not NEED_DATA:
        events.append(norm(event))
    return events


def decode_chunks(
    chunks: list[bytes], *, header: bool = True, frame_max: int = 131072
) -> list[Any]:
    """Feed each chunk to a fresh decoder, draining events after each; return them all."""
    decoder = FrameDecoder(frame_max=frame_max, expect_protocol_header=header)
    events = []
    for chunk in chunks:
        decoder.receive_data(chunk)
        events += drain(decoder)
    return events


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    # Empty pieces are dropped: receive_data(b"") would mean EOF.
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def frames_of(wire: bytes) -> list[tuple[int, int, bytes]]:
    """Split a well-formed frame stream into (type, channel, payload) by hand."""
    out, pos = [], 0
    while pos < len(wire):
        frame_type, channel, size = struct.unpack_from(">BHI", wire, pos)
        assert wire[pos + 7 + size] == 0xCE
        out.append((frame_type, channel, wire[pos + 7 : pos + 7 + size]))
        pos += 8 + size
    return out


def raises_frame_error(decoder: FrameDecoder, data: bytes, reply_code: int) -> FrameError:
    decoder.receive_data(data)
    with pytest.raises(FrameError) as info:
        drain(decoder)
    assert info.value.reply_code == reply_code, info.value.text
    return info.value


def opened(**kwargs: Any) -> FrameDecoder:
    """A server-side decoder that has already seen the protocol header."""
    decoder = FrameDecoder(**kwargs)
    decoder.receive_data(PROTOCOL_HEADER)
    assert decoder.next_event() == ProtocolHeaderReceived()
    assert decoder.next_event() is NEED_DATA
    return decoder


# -- byte-level cases (written out by hand) ----------------------------------------

START_OK_PAYLOAD = (
    b"\x00\x0a\x00\x0b"  # connection.start-ok: class 10, method 11
    b"\x00\x00\x00\x11"  # client-properties: table of 17 octets
    b"\x07productS\x00\x00\x00\x04test"
    b"\x05PLAIN"  # mechanism shortstr
    b"\x00\x00\x00\x0c\x00guest\x00guest"  # response longstr
    b"\x05en_US"  # locale shortstr
)
PUBLISH_PAYLOAD = (
    b"\x00\x3c\x00\x28"  # basic.publish: class 60, method 40
    b"\x00\x00"  # ticket
    b"\x00"  # exchange "" (default)
    b"\x02rk"  # routing-key
    b"\x01"  # mandatory=1, immediate=0
)
HEADER_PAYLOAD = (
    struct.pack(">HHQ", 60, 0, 5)  # class basic, weight 0, body-size 5
    + b"\x90\x00"  # flags: content-type (bit 15) + delivery-mode (bit 12)
    + b"\x0atext/plain"
    + b"\x02"
)

PUBLISH_EVENT = ContentReceived(
    1,
    commands.Basic.Publish(exchange="", routing_key="rk", mandatory=True),
    commands.Basic.Properties(content_type="text/plain", delivery_mode=2),
    b"hello",
)

CASES = [
    pytest.param(ProtocolHeaderReceived(), b"AMQP\x00\x00\x09\x01", 0, id="protocol-header"),
    pytest.param(
        MethodReceived(
            0,
            commands.Connection.StartOk(
                client_properties={"product": "test"},
                mechanism="PLAIN",
                response="\x00guest\x00guest",
                locale="en_US",
            ),
        ),
        frame(1, 0, START_OK_PAYLOAD),
        0,
        id="connection.start-ok",
    ),
    pytest.param(
        MethodReceived(7, commands.Basic.Ack(delivery_tag=7, multiple=True)),
        b"\x01\x00\x07\x00\x00\x00\x0d\x00\x3c\x00\x50\x00\x00\x00\x00\x00\x00\x00\x07\x01\xce",
        0,
        id="basic.ack",
    ),
    pytest.param(
        PUBLISH_EVENT,
        frame(1, 1, PUBLISH_PAYLOAD) + frame(2, 1, HEADER_PAYLOAD) + frame(3, 1, b"hello"),
        0,
        id="basic.publish",
    ),
    pytest.param(
        ContentReceived(
            65535,
            commands.Basic.Publish(routing_key="rk", mandatory=True),
            commands.Basic.Properties(),
            b"",
        ),
        frame(1, 65535, PUBLISH_PAYLOAD) + frame(2, 65535, struct.pack(">HHQH", 60, 0, 0, 0)),
        0,
        id="basic.publish-empty-body",
    ),
    pytest.param(
        ContentReceived(
            2,
            commands.Basic.Publish(routing_key="rk", mandatory=True),
            commands.Basic.Properties(),
            b"0123456789",
        ),
        frame(1, 2, PUBLISH_PAYLOAD)
        + frame(2, 2, struct.pack(">HHQH", 60, 0, 10, 0))
        + frame(3, 2, b"0123")  # frame_max 12 = 8 overhead + 4 octets
        + frame(3, 2, b"4567")
        + frame(3, 2, b"89"),
        12,
        id="basic.publish-split-body",
    ),
    pytest.param(HeartbeatReceived(), b"\x08\x00\x00\x00\x00\x00\x00\xce", 0, id="heartbeat"),
]


def encode_event(event: Any, frame_max: int) -> bytes:
    if isinstance(event, ProtocolHeaderReceived):
        return PROTOCOL_HEADER
    if isinstance(event, MethodReceived):
        return encode_method(event.channel, event.method)
    if isinstance(event, ContentReceived):
        return encode_content(event.channel, event.method, event.properties, event.body, frame_max)
    assert isinstance(event, HeartbeatReceived)
    return HEARTBEAT_FRAME


def is_header(event: Any) -> bool:
    return isinstance(event, ProtocolHeaderReceived)


@pytest.mark.parametrize(("event", "wire", "frame_max"), CASES)
def test_encode(event: Any, wire: bytes, frame_max: int) -> None:
    assert encode_event(event, frame_max) == wire


@pytest.mark.parametrize(("event", "wire", "frame_max"), CASES)
def test_decode_in_any_chunking(event: Any, wire: bytes, frame_max: int) -> None:
    header = is_header(event)
    assert decode_chunks([wire], header=header) == [norm(event)]
    one_by_one = [wire[i : i + 1] for i in range(len(wire))]
    assert decode_chunks(one_by_one, header=header) == [norm(event)]
    trailing = wire + HEARTBEAT_FRAME + frame(1, 3, PUBLISH_PAYLOAD)
    assert decode_chunks([trailing], header=header) == [norm(event), HeartbeatReceived()]


FRAME_CASES = [case for case in CASES if not is_header(case.values[0])]


@pytest.mark.parametrize(("event", "wire", "frame_max"), FRAME_CASES)
def test_decode_after_protocol_header(event: Any, wire: bytes, frame_max: int) -> None:
    stream = PROTOCOL_HEADER + wire
    expected = [ProtocolHeaderReceived(), norm(event)]
    assert decode_chunks([stream]) == expected
    assert decode_chunks([stream[i : i + 1] for i in range(len(stream))]) == expected


def test_protocol_header_constants() -> None:
    assert PROTOCOL_HEADER == b"AMQP\x00\x00\x09\x01"
    assert frame(8, 0, b"") == HEARTBEAT_FRAME
    assert repr(NEED_DATA) == "NEED_DATA"


def test_interleaved_channels_during_content() -> None:
    """Spec 4.2.6: frames of other channels may interleave with a channel's content."""
    body = b"x" * 10
    publish = encode_content(1, commands.Basic.Publish(), commands.Basic.Properties(), body, 12)
    parts = frames_of(publish)
    other = encode_method(2, commands.Channel.Open())
    stream = b"".join(frame(*part) for part in parts[:3]) + other + HEARTBEAT_FRAME
    stream += b"".join(frame(*part) for part in parts[3:])
    events = decode_chunks([stream], header=False)
    assert events == [
        norm(MethodReceived(2, commands.Channel.Open())),
        HeartbeatReceived(),
        norm(ContentReceived(1, commands.Basic.Publish(), commands.Basic.Properties(), body)),
    ]


def test_client_role_content_methods() -> None:
    """basic.deliver / get-ok / return carry content too (client role, no protocol header)."""
    methods = [
        commands.Basic.Deliver(consumer_tag="c", delivery_tag=1, routing_key="rk"),
        commands.Basic.GetOk(delivery_tag=2, routing_key="rk", message_count=3),
        commands.Basic.Return(reply_code=312, reply_text="NO_ROUTE", routing_key="rk"),
    ]
    props = commands.Basic.Properties(message_id="m")
    stream = b"".join(encode_content(3, m, props, b"body", 4096) for m in methods)
    assert decode_chunks([stream], header=False) == [
        norm(ContentReceived(3, m, props, b"body")) for m in methods
    ]


# -- hypothesis round trips ----------------------------------------------------------

SHORT_TEXT = st.text(min_size=1, max_size=40)  # <= 160 UTF-8 octets: fits a shortstr
HEADER_VALUES = st.one_of(
    st.text(max_size=40),
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.binary(max_size=40).map(bytearray),  # pamqp encodes bytearray as 'x' (byte array)
)
TIMESTAMPS = st.datetimes(
    min_value=datetime.datetime(1970, 1, 1),
    max_value=datetime.datetime(2106, 1, 1),
    timezones=st.just(datetime.UTC),
).map(lambda ts: ts.replace(microsecond=0))  # wire format is whole seconds, UTC


def make_properties(kwargs: dict[str, Any]) -> commands.Basic.Properties:
    return commands.Basic.Properties(**kwargs)


PROPERTIES = st.fixed_dictionaries(
    {},
    optional={
        "content_type": SHORT_TEXT,
        "content_encoding": SHORT_TEXT,
        "headers": st.dictionaries(st.text(min_size=1, max_size=20), HEADER_VALUES, max_size=6),
        "delivery_mode": st.sampled_from([1, 2]),
        "priority": st.integers(0, 9),
        "correlation_id": SHORT_TEXT,
        "reply_to": SHORT_TEXT,
        "expiration": st.integers(0, 10**9).map(str),
        "message_id": SHORT_TEXT,
        "timestamp": TIMESTAMPS,
        "message_type": SHORT_TEXT,
        "app_id": SHORT_TEXT,
    },
).map(make_properties)
EXCHANGES = st.text(alphabet="abcxyzABC0189-_.:@#,/+ ", max_size=40)
PUBLISHES = st.builds(
    commands.Basic.Publish,
    exchange=EXCHANGES,
    routing_key=st.text(max_size=60),
    mandatory=st.booleans(),
    immediate=st.booleans(),
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Mostly small bodies, sometimes up to ~300 KiB (cheap to generate by repetition)."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    pattern = draw(st.binary(min_size=1, max_size=64))
    size = draw(st.integers(0, 300 * 1024))
    return (pattern * (size // len(pattern) + 1))[:size]


FRAME_MAXES = st.one_of(st.sampled_from([0, 4096, 131072]), st.integers(4096, 20000))


@settings(max_examples=60, deadline=None)
@given(
    channel=st.integers(1, 65535),
    method=PUBLISHES,
    properties=PROPERTIES,
    body=bodies(),
    frame_max=FRAME_MAXES,
    data=st.data(),
)
def test_content_round_trip(
    channel: int,
    method: commands.Basic.Publish,
    properties: commands.Basic.Properties,
    body: bytes,
    frame_max: int,
    data: st.DataObject,
) -> None:
    wire = PROTOCOL_HEADER + encode_content(channel, method, properties, body, frame_max)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=20))
    events = decode_chunks(split(wire, cuts), frame_max=frame_max)
    assert events == [
        ProtocolHeaderReceived(),
        norm(ContentReceived(channel, method, properties, body)),
    ]


METHODS = st.one_of(
    st.builds(commands.Channel.Open),
    st.builds(commands.Basic.Ack, delivery_tag=st.integers(0, 2**63 - 1), multiple=st.booleans()),
    st.builds(
        commands.Queue.Declare,
        queue=st.text(alphabet="abcXYZ019-_.:", max_size=50),
        durable=st.booleans(),
        exclusive=st.booleans(),
        auto_delete=st.booleans(),
        arguments=st.dictionaries(st.text(min_size=1, max_size=10), HEADER_VALUES, max_size=4),
    ),
    st.builds(
        commands.Channel.Close,
        reply_code=st.integers(200, 599),
        reply_text=st.text(max_size=60),
        class_id=st.integers(0, 65535),
        method_id=st.integers(0, 65535),
    ),
)


@settings(max_examples=100, deadline=None)
@given(
    items=st.lists(
        st.tuples(st.integers(1, 65535), METHODS) | st.just(None), min_size=1, max_size=10
    ),
    data=st.data(),
)
def test_method_round_trip(items: list[tuple[int, Any] | None], data: st.DataObject) -> None:
    events = [HeartbeatReceived() if i is None else MethodReceived(*i) for i in items]
    wire = b"".join(encode_event(e, 0) for e in events)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=10))
    assert decode_chunks(split(wire, cuts), header=False) == [norm(e) for e in events]


@settings(max_examples=50, deadline=None)
@given(
    messages=st.lists(st.tuples(st.binary(max_size=3000), PROPERTIES), min_size=1, max_size=5),
    data=st.data(),
)
def test_interleaved_content_round_trip(
    messages: list[tuple[bytes, commands.Basic.Properties]], data: st.DataObject
) -> None:
    """Content of several channels, frames interleaved in any order that keeps each
    channel's own order, is assembled per channel (spec 4.2.6)."""
    queues = [
        frames_of(encode_content(ch, commands.Basic.Publish(), props, body, 4096 + ch))
        for ch, (body, props) in enumerate(messages, start=1)
    ]
    order = data.draw(st.permutations([i for i, q in enumerate(queues) for _ in q]))
    stream = b"".join(frame(*queues[i].pop(0)) for i in order)
    events = decode_chunks([stream], header=False)
    expected = [
        norm(ContentReceived(ch, commands.Basic.Publish(), props, body))
        for ch, (body, props) in enumerate(messages, start=1)
    ]
    assert sorted(events, key=lambda e: e[1]) == expected


# -- frame_max ----------------------------------------------------------------------


def test_oversized_frame_rejected_on_its_header() -> None:
    decoder = opened(frame_max=131072)
    # Only the 7-octet header of a 200000-octet frame: no payload is awaited.
    err = raises_frame_error(decoder, struct.pack(">BHI", 3, 1, 200000), 501)
    assert "frame_max 131072" in err.text


def test_frame_max_boundary() -> None:
    decoder = opened(frame_max=4096)
    body = b"b" * (4096 - 8)
    decoder.receive_data(
        encode_content(1, commands.Basic.Publish(), commands.Basic.Properties(), body, 0)
    )
    [event] = drain(decoder)
    assert event[-1] == body
    # Like RabbitMQ (?FRAME_SIZE_FUDGE), a payload of exactly frame_max octets is
    # accepted (amqpstorm sends such body frames); one octet more is a 501.
    content = b"c" * (2 * 4096)
    decoder.receive_data(
        encode_method(1, commands.Basic.Publish())
        + frame(2, 1, struct.pack(">HHQH", 60, 0, len(content), 0))
        + frame(3, 1, content[:4096])
        + frame(3, 1, content[4096:])
    )
    [event] = drain(decoder)
    assert event[-1] == content
    raises_frame_error(decoder, frame(1, 1, b"x" * (4096 + 1)), 501)


def test_frame_max_zero_is_unlimited() -> None:
    body = b"z" * 300_000
    wire = encode_content(1, commands.Basic.Publish(), commands.Basic.Properties(), body, 0)
    assert [t for t, _, _ in frames_of(wire)] == [1, 2, 3]
    assert decode_chunks([wire], header=False, frame_max=0)[0][-1] == body


def test_frame_max_can_be_lowered_after_tune() -> None:
    decoder = opened()
    decoder.receive_data(encode_method(1, commands.Queue.Declare(queue="q" * 200)))
    assert len(drain(decoder)) == 1
    decoder.frame_max = 200  # connection.tune-ok negotiated a smaller frame_max
    raises_frame_error(decoder, encode_method(1, commands.Queue.Declare(queue="q" * 200)), 501)


@pytest.mark.parametrize("frame_max", [9, 12, 4096, 4097, 10000])
@pytest.mark.parametrize("size", [0, 1, 4087, 4088, 4089, 10000, 100_001])
def test_encode_content_splits_at_frame_max(frame_max: int, size: int) -> None:
    body = bytes(range(256)) * (size // 256 + 1)
    body = body[:size]
    wire = encode_content(9, commands.Basic.Publish(), commands.Basic.Properties(), body, frame_max)
    parts = frames_of(wire)
    assert [t for t, _, _ in parts[:2]] == [1, 2]
    bodies_ = [p for t, _, p in parts[2:]]
    assert all(t == 3 for t, _, _ in parts[2:])
    assert all(ch == 9 for _, ch, _ in parts)
    chunk = frame_max - 8
    assert len(bodies_) == -(-size // chunk)  # ceil; an empty body has no body frame
    assert all(len(p) == chunk for p in bodies_[:-1])  # full frames are exactly frame_max
    assert all(0 < len(p) <= chunk for p in bodies_)
    assert b"".join(bodies_) == body


def test_encode_content_refuses_impossible_frame_max() -> None:
    with pytest.raises(ValueError, match="frame_max"):
        encode_content(1, commands.Basic.Publish(), commands.Basic.Properties(), b"x", 8)


def test_encode_rejects_bad_channel() -> None:
    with pytest.raises(ValueError, match="channel"):
        encode_method(65536, commands.Channel.Open())
    with pytest.raises(ValueError, match="channel"):
        encode_content(-1, commands.Basic.Publish(), commands.Basic.Properties(), b"", 0)


def test_max_body_size_checked_on_header() -> None:
    decoder = opened(max_body_size=1000)
    decoder.receive_data(frame(1, 1, PUBLISH_PAYLOAD))
    assert decoder.next_event() is NEED_DATA
    err = raises_frame_error(decoder, frame(2, 1, struct.pack(">HHQH", 60, 0, 1001, 0)), 501)
    assert "1001" in err.text
    assert (err.class_id, err.method_id) == (60, 40)
    decoder = opened(max_body_size=1000)
    decoder.receive_data(
        frame(1, 1, PUBLISH_PAYLOAD) + frame(2, 1, struct.pack(">HHQH", 60, 0, 1000, 0))
    )
    assert decoder.next_event() is NEED_DATA


# -- protocol header -------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"AMQP\x00\x00\x09\x00",  # wrong revision
        b"AMQP\x01\x01\x00\x09",  # AMQP 0-9 style header
        b"AMQP\x00\x01\x00\x00",  # AMQP 1.0
        b"GET / HTTP/1.1\r\n",
        b"\x01\x00\x00\x00\x00\x00\x04",  # a frame without the protocol header
    ],
)
def test_bad_protocol_header(data: bytes) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    with pytest.raises(ProtocolHeaderMismatch) as info:
        decoder.next_event()
    assert info.value.reply_code == 501


def test_protocol_header_mismatch_detected_at_first_bad_octet() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"AMQ")
    assert decoder.next_event() is NEED_DATA
    decoder.receive_data(b"X")
    with pytest.raises(ProtocolHeaderMismatch):
        decoder.next_event()


def test_protocol_header_only_once() -> None:
    decoder = opened()
    raises_frame_error(decoder, PROTOCOL_HEADER, 501)  # 'A' = 0x41 is no frame type


# -- malformed frames --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reply_code", "ids"),
    [
        pytest.param(frame(1, 1, PUBLISH_PAYLOAD, end=b"\x00"), 501, (0, 0), id="bad-frame-end"),
        pytest.param(frame(8, 0, b"", end=b"\xcf"), 501, (0, 0), id="heartbeat-bad-end"),
        pytest.param(struct.pack(">BHI", 4, 0, 0), 501, (0, 0), id="unknown-type-4"),
        pytest.param(struct.pack(">BHI", 0, 0, 0), 501, (0, 0), id="unknown-type-0"),
        pytest.param(struct.pack(">BHI", 8, 5, 0), 501, (0, 0), id="heartbeat-channel-5"),
        pytest.param(struct.pack(">BHI", 8, 0, 1), 501, (0, 0), id="heartbeat-with-payload"),
        pytest.param(frame(3, 1, b"body"), 505, (0, 0), id="unexpected-body"),
        pytest.param(
            frame(2, 1, struct.pack(">HHQH", 60, 0, 0, 0)), 505, (0, 0), id="unexpected-header"
        ),
        pytest.param(
            frame(2, 0, struct.pack(">HHQH", 60, 0, 0, 0)), 505, (0, 0), id="header-on-channel-0"
        ),
        pytest.param(
            frame(1, 1, b"\x00\x3c\x00\x28\x00\x00"), 502, (60, 40), id="truncated-publish"
        ),
        pytest.param(frame(1, 0, START_OK_PAYLOAD[:20]), 502, (10, 11), id="truncated-start-ok"),
        pytest.param(frame(1, 1, b"\x00\x3c"), 502, (0, 0), id="method-shorter-than-index"),
        pytest.param(frame(1, 1, b""), 502, (0, 0), id="empty-method"),
        pytest.param(
            frame(1, 1, b"\x00\x3c\x00\x28\x00\x00\x00\x02\xff\xfe\x00"),
            502,
            (60, 40),
            id="routing-key-not-utf8",
        ),
        pytest.param(frame(1, 1, b"\x00\x3c\x00\x63"), 503, (60, 99), id="unknown-method"),
        pytest.param(frame(1, 1, b"\x27\x0f\x00\x01"), 503, (9999, 1), id="unknown-class"),
        pytest.param(frame(1, 0, PUBLISH_PAYLOAD), 503, (60, 40), id="publish-on-channel-0"),
    ],
)
def test_malformed_frame(data: bytes, reply_code: int, ids: tuple[int, int]) -> None:
    err = raises_frame_error(opened(), data, reply_code)
    assert (err.class_id, err.method_id) == ids
    assert err.text.startswith(
        {501: "FRAME_ERROR", 502: "SYNTAX_ERROR", 503: "COMMAND_INVALID", 505: "UNEXPECTED_FRAME"}[
            reply_code
        ]
    )


PUBLISH = frame(1, 1, PUBLISH_PAYLOAD)
HEADER_10 = frame(2, 1, struct.pack(">HHQH", 60, 0, 10, 0))


@pytest.mark.parametrize(
    ("data", "reply_code"),
    [
        pytest.param(PUBLISH + PUBLISH, 505, id="publish-interrupts-header"),
        pytest.param(
            PUBLISH + encode_method(1, commands.Channel.Close(200, "bye", 0, 0)),
            505,
            id="method-before-header",
        ),
        pytest.param(
            PUBLISH + HEADER_10 + frame(3, 1, b"abc") + encode_method(1, commands.Basic.Qos()),
            505,
            id="method-interrupts-body",
        ),
        pytest.param(PUBLISH + frame(3, 1, b"abc"), 505, id="body-before-header"),
        pytest.param(PUBLISH + HEADER_10 + HEADER_10, 505, id="second-header"),
        pytest.param(PUBLISH + HEADER_10 + frame(3, 1, b"x" * 11), 501, id="body-too-long"),
        pytest.param(
            PUBLISH + HEADER_10 + frame(3, 1, b"x" * 6) + frame(3, 1, b"x" * 6),
            501,
            id="body-too-long-in-second-frame",
        ),
        pytest.param(
            PUBLISH + frame(2, 1, struct.pack(">HHQH", 50, 0, 0, 0)), 505, id="header-class-50"
        ),
        pytest.param(PUBLISH + frame(2, 1, b"\x00\x3c\x00"), 502, id="header-truncated"),
        pytest.param(
            PUBLISH + frame(2, 1, struct.pack(">HHQ", 60, 0, 0)), 502, id="header-without-flags"
        ),
        pytest.param(
            PUBLISH + frame(2, 1, struct.pack(">HHQH", 60, 0, 0, 0x8000) + b"\x05ab"),
            None,  # a truncated last shortstr decodes short (pamqp leniency, documented)
            id="header-short-last-string",
        ),
        pytest.param(
            PUBLISH + frame(2, 1, struct.pack(">HHQHQ", 60, 0, 0, 0x0040, 2**63)),
            502,
            id="header-timestamp-overflow",
        ),
        pytest.param(
            PUBLISH + frame(2, 1, struct.pack(">HHQHI", 60, 0, 0, 0x2000, 100) + b"\x01k"),
            502,
            id="header-table-too-long",
        ),
    ],
)
def test_malformed_content_sequence(data: bytes, reply_code: int | None) -> None:
    if reply_code is None:
        decoder = opened()
        decoder.receive_data(data)
        assert len(drain(decoder)) == 1
        return
    raises_frame_error(opened(), data, reply_code)


def test_content_on_other_channel_does_not_satisfy_waiting_channel() -> None:
    decoder = opened()
    decoder.receive_data(PUBLISH)
    raises_frame_error(decoder, frame(2, 2, struct.pack(">HHQH", 60, 0, 0, 0)), 505)


def test_empty_body_frame_is_harmless() -> None:
    decoder = opened()
    decoder.receive_data(PUBLISH + HEADER_10 + frame(3, 1, b"") + frame(3, 1, b"0123456789"))
    [event] = drain(decoder)
    assert event[-1] == b"0123456789"


def test_deeply_nested_table_is_a_syntax_error() -> None:
    """Nested field tables would make pamqp recurse past the recursion limit."""
    table = b"\x00\x00\x00\x00"
    for _ in range(5000):
        entry = b"\x01kF" + table
        table = struct.pack(">I", len(entry)) + entry
    payload = (
        b"\x00\x32\x00\x14"  # queue.bind
        b"\x00\x00"  # ticket
        b"\x01q"  # queue
        b"\x01e"  # exchange
        b"\x00"  # routing-key ""
        b"\x00"  # nowait
    ) + table  # arguments: 5000 nested tables
    err = raises_frame_error(opened(frame_max=0), frame(1, 1, payload), 502)
    assert (err.class_id, err.method_id) == (50, 20)


# -- error state and EOF ---------------------------------------------------------------


def test_error_state_is_sticky() -> None:
    decoder = opened()
    first = raises_frame_error(decoder, frame(3, 1, b"x"), 505)
    for _ in range(3):
        with pytest.raises(FrameError) as again:
            decoder.next_event()
        assert again.value is first
    decoder.receive_data(HEARTBEAT_FRAME)  # discarded
    with pytest.raises(FrameError) as again:
        decoder.next_event()
    assert again.value is first


def test_protocol_header_error_is_sticky() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"XXXX")
    with pytest.raises(ProtocolHeaderMismatch) as first:
        decoder.next_event()
    with pytest.raises(ProtocolHeaderMismatch) as again:
        decoder.next_event()
    assert again.value is first.value


def test_eof_with_partial_frame_is_need_data_forever() -> None:
    decoder = opened()
    decoder.receive_data(HEARTBEAT_FRAME + HEARTBEAT_FRAME[:5])
    decoder.receive_data(b"")
    assert decoder.next_event() == HeartbeatReceived()
    for _ in range(3):
        assert decoder.next_event() is NEED_DATA
    with pytest.raises(RuntimeError):
        decoder.receive_data(HEARTBEAT_FRAME[5:])


def test_eof_before_protocol_header() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"AMQP")
    decoder.receive_data(b"")
    assert decoder.next_event() is NEED_DATA


def test_frame_error_close_method_and_text_limit() -> None:
    err = FrameError(505, "UNEXPECTED_FRAME - é" * 100, 60, 40)
    assert len(err.text.encode()) <= 255
    assert str(err) == err.text
    close = err.close_method()
    assert isinstance(close, commands.Connection.Close)
    assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == (
        505,
        err.text,
        60,
        40,
    )
    assert encode_method(0, close)  # encodable on the wire
    assert isinstance(ProtocolHeaderMismatch(501, "x"), FrameError)


def test_many_frames_in_one_large_read() -> None:
    """Exercises buffer compaction: one read far larger than the compaction threshold."""
    stream = PROTOCOL_HEADER + HEARTBEAT_FRAME * 50_000 + HEARTBEAT_FRAME[:3]
    decoder = FrameDecoder()
    decoder.receive_data(stream)
    events = drain(decoder)
    assert len(events) == 50_001
    for _ in range(10):
        decoder.receive_data(HEARTBEAT_FRAME[3:] + HEARTBEAT_FRAME * 20_000 + HEARTBEAT_FRAME[:3])
        assert drain(decoder) == [HeartbeatReceived()] * 20_001


# -- fuzzing: only FrameError may escape ---------------------------------------------------


def decode_garbage(chunks: list[bytes], **kwargs: Any) -> None:
    decoder = FrameDecoder(**kwargs)
    with contextlib.suppress(FrameError):
        for chunk in chunks:
            decoder.receive_data(chunk)
            drain(decoder)


@settings(max_examples=300, deadline=None)
@given(st.binary())
def test_garbage_after_header_raises_only_frame_error(data: bytes) -> None:
    decode_garbage([PROTOCOL_HEADER + data])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.data())
def test_garbage_in_random_chunks_raises_only_frame_error(data: bytes, draw: st.DataObject) -> None:
    cuts = draw.draw(st.lists(st.integers(0, len(data)), max_size=20))
    decode_garbage(split(PROTOCOL_HEADER + data, cuts), frame_max=4096)
    decode_garbage(split(data, cuts))


@st.composite
def plausible_frames(draw: st.DrawFn) -> bytes:
    """Well-framed frames with random payloads, so the payload decoders get fuzzed too."""
    frame_type = draw(st.sampled_from([1, 2, 3, 8]))
    channel = draw(st.sampled_from([0, 1, 2]))
    payload = draw(st.binary(max_size=300))
    if frame_type == 1 and draw(st.booleans()):  # a real method index, random arguments
        index = draw(st.sampled_from(sorted(commands.INDEX_MAPPING)))
        payload = struct.pack(">I", index) + payload
    if frame_type == 2 and draw(st.booleans()):  # a basic content header, random properties
        payload = struct.pack(">HHQ", 60, 0, draw(st.integers(0, 50))) + payload
    return frame(frame_type, channel, payload)


@settings(max_examples=300, deadline=None)
@given(st.lists(plausible_frames(), max_size=8))
def test_plausible_frames_raise_only_frame_error(frames: list[bytes]) -> None:
    decode_garbage([PROTOCOL_HEADER + PUBLISH + b"".join(frames)])


def test_pamqp_frame_builder_agrees_with_hand_built_frames() -> None:
    """Guards the hand-built helper itself."""
    assert frame(1, 0, START_OK_PAYLOAD) == pamqp_frame.marshal(
        commands.Connection.StartOk(
            client_properties={"product": "test"}, response="\x00guest\x00guest"
        ),
        0,
    )


# -- the whole-publish fast path ------------------------------------------------------------


def events_or_error(chunks: list[bytes], *, fast: bool, **limits: int) -> list[Any]:
    """Decode `chunks` with the whole-publish path on or off: events, then the error if any."""
    decoder = FrameDecoder(expect_protocol_header=False, **limits)
    out: list[Any] = []
    patch = (
        contextlib.nullcontext()
        if fast
        else mock.patch.object(FrameDecoder, "_whole_publish", return_value=None)
    )
    with patch:
        for chunk in chunks:
            decoder.receive_data(chunk)
            try:
                while (event := decoder.next_event()) is not NEED_DATA:
                    raw = event.properties_raw if isinstance(event, ContentReceived) else None
                    out.append((norm(event), raw))
            except FrameError as e:
                out.append(("error", e.reply_code, e.text))
                return out
    return out


def _publish_frames(
    channel: int, method: commands.Basic.Publish, props: Any, body: bytes, frame_max: int
) -> list[bytes]:
    """The frames of one publish, as `frame(...)` would write them."""
    return [frame(*f) for f in frames_of(encode_content(channel, method, props, body, frame_max))]


@st.composite
def publish_streams(draw: st.DrawFn) -> tuple[bytes, int, int]:
    """Streams of publishes, sometimes damaged or interleaved, and the decoder's limits."""
    frame_max = draw(st.sampled_from([0, 4096, 131072]) | st.integers(200, 9000))
    max_body = draw(st.sampled_from([128 * 1024 * 1024, 100, 5000]))
    pieces: list[bytes] = []
    for _ in range(draw(st.integers(1, 5))):
        channel = draw(st.sampled_from([1, 2, 0, 65535]))
        method = draw(PUBLISHES)
        body = draw(st.binary(max_size=300) | st.sampled_from([b"", b"x" * 5000]))
        try:
            frames = _publish_frames(channel, method, draw(PROPERTIES), body, frame_max or 131072)
        except ValueError:
            continue
        damage = draw(st.sampled_from(["none"] * 6 + ["end", "size", "other", "drop", "ack"]))
        at = draw(st.integers(0, len(frames) - 1))
        if damage == "end":
            frames[at] = frames[at][:-1] + b"\x00"
        elif damage == "size" and len(frames[at]) > 8:
            frames[at] = frames[at][:3] + struct.pack(">I", len(frames[at]) - 9) + frames[at][7:]
        elif damage == "other":
            frames.insert(at + 1, frame(1, 3, encode_method_payload(commands.Channel.Open())))
        elif damage == "drop":
            del frames[at]
        elif damage == "ack":
            frames.insert(at, frame(1, channel, encode_method_payload(commands.Basic.Ack(1))))
        pieces.extend(frames)
    return b"".join(pieces), frame_max, max_body


def encode_method_payload(method: Any) -> bytes:
    return frames_of(encode_method(1, method))[0][2]


@settings(max_examples=400, deadline=None)
@given(publish_streams(), st.data())
def test_whole_publish_path_gives_the_general_events(
    case: tuple[bytes, int, int], data: st.DataObject
) -> None:
    wire, frame_max, max_body = case
    limits = {"frame_max": frame_max, "max_body_size": max_body}
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=6))
    for chunks in ([wire], split(wire, cuts)):
        assert events_or_error(chunks, fast=True, **limits) == events_or_error(
            chunks, fast=False, **limits
        )


def test_whole_publish_path_is_taken_for_a_plain_publish() -> None:
    props = commands.Basic.Properties(delivery_mode=2, content_type="text/plain")
    wire = b"".join(_publish_frames(1, commands.Basic.Publish(routing_key="q"), props, b"hi", 4096))
    decoder = FrameDecoder(expect_protocol_header=False)
    decoder.receive_data(wire * 3)
    with mock.patch.object(FrameDecoder, "_on_header", side_effect=AssertionError("general path")):
        events = drain(decoder)
    assert len(events) == 3
    assert events[0][-1] == b"hi"
