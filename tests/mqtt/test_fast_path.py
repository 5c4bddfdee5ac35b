"""The MQTT fast paths give exactly what the general paths give (issue 7).

- `decode_fast` (PUBLISH, PUBACK) returns the same packet and size as the
  general decoder, or None where the general path must decide (errors included);
- a whole stream decodes to the same events with the fast path on or off;
- `encode_publish_fast` returns the same bytes as `encode`;
- the adapter's direct mapping (`to_message`, deliveries, PUBACK) matches
  the general construction, and the topic caches match the uncached functions.
"""

from __future__ import annotations

import contextlib
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from moorage.broker.message import Message
from moorage.broker.message import Properties as CoreProperties
from moorage.protocols.mqtt import codec, mapping
from moorage.protocols.mqtt.codec import (
    MQTT_3_1,
    MQTT_3_1_1,
    MQTT_5,
    NEED_DATA,
    CodecState,
    Connection,
    ConnectionClosed,
    PacketType,
    Properties,
    ProtocolError,
    PubAck,
    Publish,
    Role,
    decode_body,
    decode_fast,
    decode_varint,
    encode,
    encode_puback_fast,
    encode_publish_fast,
)
from moorage.protocols.mqtt.deliveries import qos0_bytes
from moorage.protocols.mqtt.topics import (
    _SWAP,
    match_uncached,
    matches,
    routing_key_to_topic,
    topic_to_routing_key,
)

VERSIONS = st.sampled_from([MQTT_3_1, MQTT_3_1_1, MQTT_5])

# Topics: mostly valid, sometimes with wildcards, NUL or empty (the general path decides).
topic_text = st.one_of(
    st.text(st.sampled_from("ab/.$ c"), min_size=1, max_size=12),
    st.text(max_size=20),
    st.sampled_from(["", "a/+", "a/#", "a\x00b", "\u00e9t\u00e9/\U0001f600"]),
)
payloads = st.one_of(
    st.binary(max_size=200),
    st.integers(100, 20000).map(lambda n: b"x" * n),  # 1-, 2- and 3-byte lengths
)


@st.composite
def publish_packets(draw: Any) -> tuple[Publish, int]:
    version = draw(VERSIONS)
    qos = draw(st.integers(0, 2))
    props = Properties()
    if version == MQTT_5 and draw(st.booleans()):
        props.message_expiry_interval = draw(st.none() | st.integers(0, 2**32 - 1))
        props.user_property = draw(st.lists(st.tuples(st.text(max_size=4), st.text(max_size=4))))
        props.topic_alias = draw(st.none() | st.integers(1, 10))
    packet = Publish(
        draw(topic_text),
        draw(payloads),
        qos,
        draw(st.booleans()),
        bool(qos) and draw(st.booleans()),
        draw(st.integers(1, 65535)) if qos else None,
        props,
    )
    return packet, version


def general_decode(data: bytes | bytearray, version: int, limit: int) -> tuple[Any, int] | None:
    """The general path of `Connection._next_event` for a packet after CONNECT."""
    decoded = decode_varint(data, 1)
    if decoded is None:
        return None
    length, start = decoded
    if start + length > limit:
        raise ProtocolError("too large")
    if len(data) < start + length:
        return None
    body = bytes(data[start : start + length])
    ptype = PacketType(data[0] >> 4)
    return decode_body(ptype, data[0] & 0x0F, body, version), start + length


def check_same(data: bytes, version: int, limit: int = 1 << 28) -> Any:
    """decode_fast agrees with the general path on `data`; returns the fast result."""
    fast = decode_fast(bytearray(data), version, limit)
    try:
        general = general_decode(data, version, limit)
    except ProtocolError:
        assert fast is None
        return None
    if fast is not None:
        assert general is not None
        assert fast == general
        assert type(fast[0]) is type(general[0])
    return fast


@settings(max_examples=500, deadline=None)
@given(publish_packets(), st.binary(max_size=8))
def test_fast_publish_decode_equals_general(case: tuple[Publish, int], trailer: bytes) -> None:
    packet, version = case
    try:
        data = encode(packet, version)
    except ValueError:
        return
    fast = check_same(data + trailer, version)
    common = (
        packet.topic
        and not any(c in packet.topic for c in "+#\x00")
        and not any(0xD800 <= ord(c) <= 0xDFFF for c in packet.topic)  # ill-formed UTF-8
        and len(data) < 16384
        and packet.properties == Properties()
    )
    if common:
        assert fast is not None  # the common shape really takes the fast path
        assert fast == (packet, len(data))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 65535), st.binary(max_size=6), VERSIONS)
def test_fast_puback_decode_equals_general(packet_id: int, trailer: bytes, version: int) -> None:
    data = b"\x40\x02" + packet_id.to_bytes(2, "big")
    fast = check_same(data + trailer, version)
    if packet_id:
        assert fast == (PubAck(packet_id), 4)


@settings(max_examples=1000, deadline=None)
@given(
    st.integers(0x30, 0x4F),
    st.binary(max_size=40),
    VERSIONS,
    st.sampled_from([3, 8, 20, 1 << 28]),
)
def test_fast_decode_of_garbage_agrees(first: int, rest: bytes, version: int, limit: int) -> None:
    """Arbitrary bytes: a packet from the fast path is the general one; errors go general."""
    check_same(bytes([first]) + rest, version, limit)


def _events(data: bytes, chunks: list[int], version: int, *, fast: bool) -> list[Any]:
    conn = Connection(Role.SERVER, version=version)
    conn.state = CodecState.CONNECTED
    out: list[Any] = []
    patch = (
        contextlib.nullcontext()
        if fast
        else mock.patch.object(codec, "decode_fast", return_value=None)
    )
    with patch:
        pos = 0
        for size in [*chunks, len(data)]:
            if pos >= len(data):
                break
            conn.receive_data(data[pos : pos + size])
            pos += size
            while True:
                try:
                    event = conn.next_event()
                except ProtocolError as e:
                    out.append(("error", e.reason))
                    return out
                if event is NEED_DATA:
                    break
                out.append(event)
            if pos >= len(data):
                break
        conn.receive_data(b"")
        try:
            event = conn.next_event()
        except ProtocolError as e:
            out.append(("error", e.reason))
        else:
            out.append(type(event) if isinstance(event, ConnectionClosed) else event)
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(publish_packets(), max_size=6),
    st.lists(st.integers(0, 65535), max_size=4),
    st.lists(st.integers(1, 50), max_size=8),
    VERSIONS,
)
def test_stream_decodes_the_same_with_and_without_fast_path(
    publishes: list[tuple[Publish, int]], acks: list[int], chunks: list[int], version: int
) -> None:
    data = b""
    for packet, _ in publishes:
        with contextlib.suppress(ValueError):
            data += encode(packet, version)
    for pid in acks:
        data += b"\x40\x02" + pid.to_bytes(2, "big")
    assert _events(data, chunks, version, fast=True) == _events(data, chunks, version, fast=False)


@settings(max_examples=500, deadline=None)
@given(
    st.text(min_size=1, max_size=30),
    payloads,
    st.integers(0, 2),
    st.booleans(),
    st.booleans(),
    st.integers(0, 65535),
    VERSIONS,
)
def test_fast_publish_encode_equals_general(
    topic: str, payload: bytes, qos: int, retain: bool, dup: bool, packet_id: int, version: int
) -> None:
    pid = packet_id if qos else None
    try:
        expected = encode(Publish(topic, payload, qos, retain, dup, pid), version)
    except ValueError:
        return
    # twice: the second call takes the encoded topic from the cache
    assert encode_publish_fast(topic, payload, qos, retain, dup, pid, version) == expected
    assert encode_publish_fast(topic, payload, qos, retain, dup, pid, version) == expected


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 65535), st.sampled_from([MQTT_3_1, MQTT_3_1_1]))
def test_fast_puback_bytes_equal_encode(packet_id: int, version: int) -> None:
    expected = encode(PubAck(packet_id), version)
    assert encode_puback_fast(packet_id) == expected == b"\x40\x02" + packet_id.to_bytes(2, "big")
    assert Connection(version=version).send(PubAck(packet_id)) == expected


# -- adapter mapping ------------------------------------------------------------------------


def _reference_message(packet: Publish, client_id: str | None, now: float) -> Message:
    """to_message as it was: properties as now, annotations through Annotation/annotate."""
    p = packet.properties
    expiry = p.message_expiry_interval
    note = mapping.Annotation(
        publisher=client_id,
        retain=packet.retain,
        expires_at=now + expiry if expiry is not None else None,
        payload_format=p.payload_format_indicator,
    )
    message = mapping.to_message(packet, client_id, now)
    reference = Message(
        message.exchange, packet.topic.translate(_SWAP), message.properties, packet.payload
    )
    return mapping.annotate(reference, note)


@settings(max_examples=300, deadline=None)
@given(
    publish_packets(),
    st.none() | st.text(max_size=5),
    st.none() | st.integers(0, 1),
    st.none() | st.binary(max_size=4),
)
def test_to_message_annotations_equal_general(
    case: tuple[Publish, int], client_id: str | None, fmt: int | None, corr: bytes | None
) -> None:
    packet, _ = case
    packet.properties.payload_format_indicator = fmt
    packet.properties.correlation_data = corr
    now = 1_700_000_000.5
    message = mapping.to_message(packet, client_id, now)
    reference = _reference_message(packet, client_id, now)
    assert message.routing_key == reference.routing_key
    assert message.annotations == reference.annotations
    assert list(message.annotations) == list(reference.annotations)  # same order when stored
    headers = message.properties.headers
    assert headers is not None
    assert headers[mapping.QOS_HEADER] == packet.qos
    for name, _ in packet.properties.user_property:
        assert (
            name == mapping.QOS_HEADER
            or headers[name] == dict(packet.properties.user_property)[name]
        )


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=20), st.binary(max_size=300), st.booleans())
def test_qos0_delivery_cache_equals_encode(topic: str, body: bytes, retain: bool) -> None:
    for version in (MQTT_3_1, MQTT_3_1_1):
        message = Message("amq.topic", "k", CoreProperties(), body)
        try:
            expected = encode(Publish(topic, body, 0, retain), version)
        except ValueError:
            return
        first = qos0_bytes(message, topic, retain, version)
        again = qos0_bytes(message, topic, retain, version)
        assert first == again == expected


@settings(max_examples=300, deadline=None)
@given(
    st.text(st.sampled_from("ab/+#$."), max_size=8), st.text(st.sampled_from("ab/$."), max_size=8)
)
def test_topic_caches_equal_uncached(topic_filter: str, topic: str) -> None:
    assert topic_to_routing_key(topic) == topic.translate(_SWAP)
    assert routing_key_to_topic(topic_to_routing_key(topic)) == topic
    if topic_filter and topic:
        assert matches(topic_filter, topic) == match_uncached(topic_filter, topic)
        assert matches(topic_filter, topic) == match_uncached(topic_filter, topic)
