"""The codec's fast paths (encoders and decoders) must give pamqp's results exactly."""

from __future__ import annotations

import dataclasses
import struct
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import body as pbody
from pamqp import commands, frame, header

from moorage.broker.message import Message, Properties
from moorage.protocols.amqp091 import frames, mapping, methods
from moorage.protocols.amqp091 import properties as amqp_properties

short = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)

properties = st.builds(
    Properties,
    content_type=st.none() | short,
    content_encoding=st.none() | short,
    headers=st.none()
    | st.dictionaries(short, st.integers(-(2**31), 2**31 - 1) | short, max_size=4),
    delivery_mode=st.none() | st.sampled_from([1, 2]),
    priority=st.none() | st.integers(0, 9),
    correlation_id=st.none() | short,
    reply_to=st.none() | short,
    expiration=st.none() | st.integers(0, 10**6).map(str),
    message_id=st.none() | short,
    timestamp=st.none() | st.integers(0, 2**31).map(lambda s: datetime.fromtimestamp(s, tz=UTC)),
    message_type=st.none() | short,
    user_id=st.none() | short,
    app_id=st.none() | short,
)


def content_frames(channel: int, message: Message, frame_max: int) -> bytes:
    """The fast path: the properties encoded once per message, the frames by hand."""
    return frames.encode_content_frames(
        channel, mapping.properties_payload(message), message.body, frame_max
    )


def pamqp_content(channel: int, message: Message, frame_max: int) -> bytes:
    """The general path: pamqp's own marshalling of header and body frames."""
    p = message.properties
    names = [n for n in amqp_properties.PROPERTY_NAMES if n != "cluster_id"]
    props = commands.Basic.Properties(**{n: getattr(p, n) for n in names})
    out = frame.marshal(header.ContentHeader(0, len(message.body), props), channel)
    chunk = frame_max - 8
    for start in range(0, len(message.body), chunk):
        out += frame.marshal(pbody.ContentBody(message.body[start : start + chunk]), channel)
    return out


@settings(max_examples=150, deadline=None)
@given(
    channel=st.integers(1, 65535),
    tag=short,
    delivery_tag=st.integers(1, 2**63 - 1),
    redelivered=st.booleans(),
    exchange=st.text("abcXYZ019-_.:", max_size=100),
    routing_key=short,
)
def test_deliver_frame_matches_pamqp(
    channel, tag, delivery_tag, redelivered, exchange, routing_key
):
    fast = frames.encode_deliver(
        channel,
        frames.shortstr(tag),
        delivery_tag,
        redelivered,
        frames.shortstr(exchange),
        frames.shortstr(routing_key),
    )
    method = commands.Basic.Deliver(tag, delivery_tag, redelivered, exchange, routing_key)
    assert fast == frame.marshal(method, channel)


@settings(max_examples=150, deadline=None)
@given(
    channel=st.integers(1, 65535),
    props=properties,
    body=st.binary(max_size=20000),
    frame_max=st.sampled_from([4096, 4097, 8192, 131072]),
)
def test_content_frames_match_pamqp(channel, props, body, frame_max):
    message = Message("x", "k", props, body)
    assert content_frames(channel, message, frame_max) == pamqp_content(channel, message, frame_max)
    # the cached properties give the same bytes the second time (fan-out path)
    assert content_frames(channel, message, frame_max) == pamqp_content(channel, message, frame_max)


@settings(max_examples=150, deadline=None)
@given(props=properties)
def test_properties_by_value_cache_matches_pamqp(props):
    """Two messages with equal properties (read back from the store, say): the second
    takes the first one's bytes from the by-value cache."""
    first = Message("x", "k", props, b"1")
    again = Message("x", "k", dataclasses.replace(props), b"2")
    names = [n for n in amqp_properties.PROPERTY_NAMES if n != "cluster_id"]
    expected = commands.Basic.Properties(**{n: getattr(props, n) for n in names}).marshal()
    assert mapping.properties_payload(first) == expected
    assert mapping.properties_payload(again) == mapping.properties_payload(first)
    assert content_frames(1, again, 4096) == pamqp_content(1, again, 4096)


def test_body_exactly_filling_frames():
    message = Message("", "q", Properties(), b"z" * (4096 - 8) * 3)
    raw = content_frames(1, message, 4096)
    assert raw == pamqp_content(1, message, 4096)
    assert raw.count(b"\x03\x00\x01") == 3  # three body frames, none empty


def test_shortstr_limit():
    assert frames.shortstr("é") == b"\x02\xc3\xa9"
    try:
        frames.shortstr("x" * 256)
    except ValueError:
        pass
    else:
        raise AssertionError("a 256-byte shortstr must be refused")


NAME = st.text("abcXYZ019-_.:", max_size=60)
METHODS = [
    lambda n: commands.Queue.DeclareOk(n, 3, 1),
    lambda n: commands.Basic.Return(312, "NO_ROUTE", n, "rk"),
    lambda n: commands.Basic.GetOk(7, True, n, "rk", 0),
    lambda n: commands.Basic.ConsumeOk(n),
    lambda n: commands.Basic.Ack(2**40, True),
    lambda n: commands.Channel.Close(404, f"NOT_FOUND - {n}", 50, 10),
    lambda n: commands.Connection.Tune(2047, 131072, 60),
    lambda n: commands.Basic.Nack(5, False, True),
]


@settings(max_examples=100, deadline=None)
@given(name=NAME, which=st.sampled_from(range(len(METHODS))), channel=st.integers(0, 65535))
def test_encode_method_matches_pamqp(name, which, channel):
    from moorage.protocols.amqp091.codec import encode_method

    method = METHODS[which](name)
    assert encode_method(channel, method) == frame.marshal(method, channel)


def test_encode_method_accepts_names_rabbitmq_accepts():
    from moorage.protocols.amqp091.codec import FrameDecoder, MethodReceived, encode_method

    name = "celery@worker-1.celery.pidbox"
    method = commands.Queue.DeclareOk.__new__(commands.Queue.DeclareOk)
    method.queue, method.message_count, method.consumer_count = name, 0, 0
    decoder = FrameDecoder(expect_protocol_header=False)
    decoder.receive_data(encode_method(1, method))
    event = decoder.next_event()
    assert isinstance(event, MethodReceived)
    assert event.method.queue == name


# -- fast decoding paths: same result as pamqp's generic path ---------------------------


def _generic_decode(payload: bytes):
    """pamqp's own method decoding, the reference for the fast paths."""
    from pamqp import commands as c

    (index,) = struct.unpack_from(">I", payload)
    method = c.INDEX_MAPPING[index].__new__(c.INDEX_MAPPING[index])
    method.unmarshal(payload[4:])
    return method


def _attrs(method) -> dict:
    return {name: getattr(method, name) for name in method.__slots__}


any_short = st.text(max_size=60).filter(lambda s: len(s.encode()) <= 255)


@settings(max_examples=300, deadline=None)
@given(
    ticket=st.integers(0, 65535),
    exchange=any_short,
    routing_key=any_short,
    bits=st.integers(0, 255),
)
def test_fast_publish_decodes_like_pamqp(ticket, exchange, routing_key, bits):

    ex, rk = exchange.encode(), routing_key.encode()
    payload = (
        struct.pack(">IH", commands.Basic.Publish.index, ticket)
        + bytes([len(ex)]) + ex + bytes([len(rk)]) + rk + bytes([bits])
    )  # fmt: skip
    fast = methods.fast_publish(payload)
    assert fast is not None
    assert _attrs(fast) == _attrs(_generic_decode(payload))


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=40))
def test_fast_publish_defers_odd_payloads_to_the_general_path(payload):

    payload = struct.pack(">I", commands.Basic.Publish.index) + payload
    fast = methods.fast_publish(payload)
    if fast is not None:  # accepted: then pamqp must decode it the same way
        assert _attrs(fast) == _attrs(_generic_decode(payload))


@settings(max_examples=200, deadline=None)
@given(tag=st.integers(0, 2**64 - 1), bits=st.integers(0, 255), extra=st.binary(max_size=3))
def test_fast_ack_decodes_like_pamqp(tag, bits, extra):

    payload = struct.pack(">IQB", commands.Basic.Ack.index, tag, bits) + extra
    fast = methods._fast_ack(payload)
    if extra:
        assert fast is None
    else:
        assert fast is not None
        assert _attrs(fast) == _attrs(_generic_decode(payload))


@settings(max_examples=150, deadline=None)
@given(props=properties, body=st.binary(max_size=300))
def test_cached_properties_forward_the_same_bytes(props, body):
    """Decoded once or from the cache, the forwarded header equals the re-encoded one."""
    from moorage.protocols.amqp091.codec import ContentReceived, FrameDecoder

    names = [n for n in amqp_properties.PROPERTY_NAMES if n != "cluster_id"]
    pamqp_props = commands.Basic.Properties(**{n: getattr(props, n) for n in names})
    method = commands.Basic.Publish(exchange="x", routing_key="k")
    header_frame = frame.marshal(header.ContentHeader(0, len(body), pamqp_props), 1)
    raw = frame.marshal(method, 1) + header_frame
    if body:
        raw += frame.marshal(pbody.ContentBody(body), 1)
    reference = header.ContentHeader()  # pamqp's own decoding of the same header
    reference.unmarshal(header_frame[7:-1])
    for _ in range(2):  # the second decode is a cache hit
        decoder = FrameDecoder(expect_protocol_header=False)
        decoder.receive_data(raw)
        event = decoder.next_event()
        assert isinstance(event, ContentReceived)
        assert _attrs(event.properties) == _attrs(reference.properties)
        assert event.properties_raw == reference.properties.marshal()
        forwarded = Message("x", "k", props, body, wire_cache={"amqp": event.properties_raw})
        recomputed = Message("x", "k", props, body)
        assert content_frames(3, forwarded, 4096) == content_frames(3, recomputed, 4096)


# -- the handshake: fast decoders and pre-encoded replies --------------------------------

key = st.text(max_size=20).filter(lambda s: len(s.encode()) <= 255)
table_value = st.recursive(
    st.booleans() | st.integers(-(2**31), 2**31 - 1) | st.text(max_size=30),
    lambda inner: st.dictionaries(key, inner, max_size=4),
    max_leaves=12,
)
tables = st.dictionaries(key, table_value, max_size=6)


def _shortstr(raw: bytes) -> bytes:
    return bytes([len(raw)]) + raw


def _longstr(raw: bytes) -> bytes:
    return struct.pack(">I", len(raw)) + raw


def _start_ok_payload(table, mechanism: bytes, response: bytes, locale: bytes) -> bytes:
    from pamqp import encode

    return (
        struct.pack(">I", commands.Connection.StartOk.index)
        + encode.field_table(table)
        + _shortstr(mechanism) + _longstr(response) + _shortstr(locale)
    )  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    table=tables,
    mechanism=st.sampled_from([b"PLAIN", b"AMQPLAIN", b"EXTERNAL", b""]),
    response=st.binary(max_size=40) | st.text(max_size=40).map(str.encode),
    locale=st.sampled_from([b"en_US", b"", b"de_DE"]),
)
def test_fast_start_ok_decodes_like_pamqp(table, mechanism, response, locale):
    """Decoded (twice: the second time the table comes from the cache) as pamqp does."""

    payload = _start_ok_payload(table, mechanism, response, locale)
    reference = _attrs(_generic_decode(payload))
    for _ in range(2):
        fast = methods._fast_start_ok(payload)
        assert fast is not None
        assert type(fast) is commands.Connection.StartOk
        assert _attrs(fast) == reference


@settings(max_examples=300, deadline=None)
@given(table=tables, tail=st.binary(max_size=30))
def test_fast_start_ok_defers_odd_payloads_to_the_general_path(table, tail):
    """Whatever it accepts (a table followed by anything), pamqp decodes the same way."""
    from pamqp import encode

    payload = struct.pack(">I", commands.Connection.StartOk.index) + encode.field_table(table)
    payload += tail
    fast = methods._fast_start_ok(payload)
    if fast is not None:
        assert _attrs(fast) == _attrs(_generic_decode(payload))


def test_fast_start_ok_does_not_cache_a_table_that_reads_past_its_end():
    """A longstr in the table claiming more octets than the table holds: pamqp reads on."""

    entry = b"\x01kS" + struct.pack(">I", 3) + b"ab"  # 'k': longstr of 3, 2 in the table
    table = struct.pack(">I", len(entry)) + entry
    payload = struct.pack(">I", commands.Connection.StartOk.index) + table
    payload += _shortstr(b"PLAIN") + _longstr(b"\0guest\0guest") + _shortstr(b"en_US")
    assert methods._fast_start_ok(payload) is None
    assert table not in methods._tables


@settings(max_examples=200, deadline=None)
@given(
    channel_max=st.integers(0, 65535),
    frame_max=st.integers(0, 2**32 - 1),
    heartbeat=st.integers(0, 65535),
    extra=st.binary(max_size=3),
)
def test_fast_tune_ok_decodes_like_pamqp(channel_max, frame_max, heartbeat, extra):

    index = commands.Connection.TuneOk.index
    payload = struct.pack(">IHIH", index, channel_max, frame_max, heartbeat) + extra
    fast = methods._fast_tune_ok(payload)
    if extra:
        assert fast is None
    else:
        assert fast is not None
        assert _attrs(fast) == _attrs(_generic_decode(payload))


@settings(max_examples=300, deadline=None)
@given(vhost=any_short, capabilities=any_short, bits=st.integers(0, 255))
def test_fast_open_decodes_like_pamqp(vhost, capabilities, bits):

    payload = struct.pack(">I", commands.Connection.Open.index)
    payload += _shortstr(vhost.encode()) + _shortstr(capabilities.encode()) + bytes([bits])
    fast = methods._fast_open(payload)
    assert fast is not None
    assert _attrs(fast) == _attrs(_generic_decode(payload))


@settings(max_examples=300, deadline=None)
@given(out_of_band=any_short)
def test_fast_channel_open_decodes_like_pamqp(out_of_band):

    payload = struct.pack(">I", commands.Channel.Open.index) + _shortstr(out_of_band.encode())
    fast = methods._fast_channel_open(payload)
    assert fast is not None
    assert _attrs(fast) == _attrs(_generic_decode(payload))


@settings(max_examples=300, deadline=None)
@given(
    code=st.integers(0, 65535),
    text=any_short,
    class_id=st.integers(0, 65535),
    method_id=st.integers(0, 65535),
)
def test_fast_close_decodes_like_pamqp(code, text, class_id, method_id):

    payload = struct.pack(">IH", commands.Connection.Close.index, code)
    payload += _shortstr(text.encode()) + struct.pack(">HH", class_id, method_id)
    fast = methods._fast_close(payload)
    assert fast is not None
    assert _attrs(fast) == _attrs(_generic_decode(payload))


HANDSHAKE_INDEXES = [
    commands.Connection.StartOk.index,
    commands.Connection.TuneOk.index,
    commands.Connection.Open.index,
    commands.Channel.Open.index,
    commands.Connection.Close.index,
]


@settings(max_examples=500, deadline=None)
@given(index=st.sampled_from(HANDSHAKE_INDEXES), rest=st.binary(max_size=40))
def test_fast_handshake_decoders_defer_odd_payloads(index, rest):
    """Short, trailing or non-UTF-8 payloads: accepted only where pamqp agrees."""

    payload = struct.pack(">I", index) + rest
    fast = methods.FAST_METHODS[index](payload)
    if fast is not None:
        assert _attrs(fast) == _attrs(_generic_decode(payload))


@settings(max_examples=100, deadline=None)
@given(
    channel_max=st.integers(0, 65535),
    frame_max=st.integers(0, 2**32 - 1),
    heartbeat=st.integers(0, 65535),
    channel=st.integers(0, 65535),
)
def test_pre_encoded_handshake_replies_match_the_general_encoder(
    channel_max, frame_max, heartbeat, channel
):
    """The handshake's methods come from the codec's cache the second time: same bytes."""
    from moorage.protocols.amqp091.codec import encode_method
    from moorage.protocols.amqp091.handshake import start_method

    tune = commands.Connection.Tune(channel_max, frame_max, heartbeat)
    for _ in range(2):
        assert encode_method(0, tune) == frame.marshal(tune, 0)
        assert encode_method(0, start_method()) == frame.marshal(start_method(), 0)
        for method in (commands.Connection.OpenOk(), commands.Connection.CloseOk()):
            assert encode_method(0, method) == frame.marshal(method, 0)
        expected = frame.marshal(commands.Channel.OpenOk(), channel)
        assert encode_method(channel, commands.Channel.OpenOk()) == expected


def pamqp_properties(props: Properties) -> commands.Basic.Properties:
    names = [n for n in amqp_properties.PROPERTY_NAMES if n != "cluster_id"]
    return commands.Basic.Properties(**{n: getattr(props, n) for n in names})


@settings(max_examples=200, deadline=None)
@given(props=properties)
def test_properties_without_floats_marshal_as_pamqp_does(props):
    expected = pamqp_properties(props).marshal()
    assert amqp_properties.marshal_properties(pamqp_properties(props)) == expected


@settings(max_examples=200, deadline=None)
@given(
    props=properties,
    doubles=st.dictionaries(short, st.floats(allow_nan=False), min_size=1, max_size=3),
)
def test_float_headers_are_sent_as_doubles_with_the_other_properties_intact(props, doubles):
    """pamqp would send a 32-bit float: the consumer would not get the publisher's value."""
    headers = {**(props.headers or {}), **doubles}
    with_doubles = dataclasses.replace(props, headers=headers)
    raw = amqp_properties.marshal_properties(pamqp_properties(with_doubles))
    ours, theirs = header.ContentHeader(), header.ContentHeader()
    ours.unmarshal(struct.pack(">HHQ", 60, 0, 0) + raw)
    # pamqp cannot even send some doubles (1e300 overflows a 32-bit float): no headers there
    without = dataclasses.replace(props, headers=None)
    theirs.unmarshal(struct.pack(">HHQ", 60, 0, 0) + pamqp_properties(without).marshal())
    for name in theirs.properties.__slots__:
        if name != "headers":
            assert getattr(ours.properties, name) == getattr(theirs.properties, name), name
    assert ours.properties.headers == headers  # pamqp's own: 32-bit floats
    assert mapping.properties_payload(Message("x", "k", with_doubles, b"")) == raw


def test_core_properties_and_amqp_properties_share_their_names():
    """`mapping` translates field for field: the core's names must stay AMQP's (pamqp's)."""
    from moorage.broker.message import PROPERTY_NAMES

    assert amqp_properties.PROPERTY_NAMES == PROPERTY_NAMES


@settings(max_examples=100, deadline=None)
@given(
    channel=st.integers(1, 65535),
    props=properties,
    body=st.binary(max_size=10000),
    frame_max=st.sampled_from([0, 4096, 131072]),
)
def test_delivery_in_one_go_is_deliver_then_content(channel, props, body, frame_max):
    raw = mapping.properties_payload(Message("x", "k", props, body))
    tag, exchange, routing_key = frames.shortstr("t"), frames.shortstr("x"), frames.shortstr("k")
    assert frames.encode_delivery(
        channel, tag, 9, True, exchange, routing_key, raw, body, frame_max
    ) == frames.encode_deliver(channel, tag, 9, True, exchange, routing_key) + (
        frames.encode_content_frames(channel, raw, body, frame_max)
    )
