"""The MQTT codec on plain bytes: literal cases, any chunking, round trips, garbage, errors."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moorage.protocols.mqtt.codec import (
    MQTT_3_1,
    MQTT_3_1_1,
    MQTT_5,
    NEED_DATA,
    Auth,
    ConnAck,
    Connect,
    Connection,
    ConnectionClosed,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    Properties,
    ProtocolError,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
    Role,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
    decode_varint,
    encode,
    encode_varint,
)

CONNECT_311 = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04abcd"  # clean session, keep alive 60


def decode_chunks(
    chunks: list[bytes], version: int = MQTT_3_1_1, role: Role = Role.SERVER
) -> list[Packet]:
    """Feed chunks to a fresh connection already past CONNECT; packets until NEED_DATA/EOF."""
    conn = Connection(role, version=version)
    if role is Role.SERVER:
        conn.receive_data(encode(Connect(protocol_version=version), version))
        assert isinstance(conn.next_event(), Connect)
    out: list[Packet] = []
    for chunk in chunks:
        if not chunk:
            continue
        conn.receive_data(chunk)
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            assert not isinstance(event, ConnectionClosed)
            out.append(event)  # type: ignore[arg-type]
    return out


def server_feed(data: bytes) -> list[object]:
    """Feed raw bytes to a fresh server connection (no CONNECT sent for you), then EOF."""
    conn = Connection(Role.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")
    events: list[object] = []
    while True:
        event = conn.next_event()
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events


# -- literal cases (spec figures and hand-checked bytes) ---------------------------------------

# (packet, version, role that receives it, bytes on the wire)
CASES: list[tuple[Packet, int, Role, bytes]] = [
    (Publish(topic="a/b", payload=b"x"), MQTT_3_1_1, Role.SERVER, b"\x30\x06\x00\x03a/bx"),
    (
        Publish(topic="a/b", payload=b"x", qos=1, packet_id=10, retain=True, dup=True),
        MQTT_3_1_1,
        Role.SERVER,
        b"\x3b\x08\x00\x03a/b\x00\x0ax",
    ),
    (
        Publish(topic="a/b", payload=b"x", qos=2, packet_id=1),
        MQTT_5,
        Role.SERVER,
        b"\x34\x09\x00\x03a/b\x00\x01\x00x",
    ),
    (
        Publish(
            topic="t",
            payload=b"",
            properties=Properties(content_type="a", message_expiry_interval=5, topic_alias=2),
        ),
        MQTT_5,
        Role.SERVER,
        b"\x30\x10\x00\x01t\x0c\x02\x00\x00\x00\x05\x03\x00\x01a\x23\x00\x02",
    ),
    (PubAck(packet_id=10), MQTT_3_1_1, Role.SERVER, b"\x40\x02\x00\x0a"),
    (PubAck(packet_id=10), MQTT_5, Role.SERVER, b"\x40\x02\x00\x0a"),
    (
        PubAck(packet_id=10, reason_code=ReasonCode.NO_MATCHING_SUBSCRIBERS),
        MQTT_5,
        Role.CLIENT,
        b"\x40\x03\x00\x0a\x10",
    ),
    (PubRec(packet_id=1), MQTT_3_1_1, Role.SERVER, b"\x50\x02\x00\x01"),
    (PubRel(packet_id=1), MQTT_3_1_1, Role.SERVER, b"\x62\x02\x00\x01"),
    (PubComp(packet_id=1), MQTT_3_1_1, Role.SERVER, b"\x70\x02\x00\x01"),
    (
        PubRel(
            packet_id=1,
            reason_code=ReasonCode.PACKET_IDENTIFIER_NOT_FOUND,
            properties=Properties(reason_string="gone"),
        ),
        MQTT_5,
        Role.CLIENT,
        b"\x62\x0b\x00\x01\x92\x07\x1f\x00\x04gone",
    ),
    (
        Subscribe(packet_id=1, subscriptions=[Subscription("a/+", 1), Subscription("#", 2)]),
        MQTT_3_1_1,
        Role.SERVER,
        b"\x82\x0c\x00\x01\x00\x03a/+\x01\x00\x01#\x02",
    ),
    (
        Subscribe(
            packet_id=2,
            subscriptions=[Subscription("a", 1, True, True, 2)],
            properties=Properties(subscription_identifier=[300]),
        ),
        MQTT_5,
        Role.SERVER,
        b"\x82\x0a\x00\x02\x03\x0b\xac\x02\x00\x01a\x2d",
    ),
    (
        SubAck(packet_id=1, reason_codes=[0, 1, 0x80]),
        MQTT_3_1_1,
        Role.CLIENT,
        b"\x90\x05\x00\x01\x00\x01\x80",
    ),
    (SubAck(packet_id=1, reason_codes=[2]), MQTT_5, Role.CLIENT, b"\x90\x04\x00\x01\x00\x02"),
    (
        Unsubscribe(packet_id=3, topic_filters=["a/b", "c"]),
        MQTT_3_1_1,
        Role.SERVER,
        b"\xa2\x0a\x00\x03\x00\x03a/b\x00\x01c",
    ),
    (UnsubAck(packet_id=3), MQTT_3_1_1, Role.CLIENT, b"\xb0\x02\x00\x03"),
    (
        UnsubAck(packet_id=3, reason_codes=[0, 0x11]),
        MQTT_5,
        Role.CLIENT,
        b"\xb0\x05\x00\x03\x00\x00\x11",
    ),
    (PingReq(), MQTT_3_1_1, Role.SERVER, b"\xc0\x00"),
    (PingResp(), MQTT_3_1_1, Role.CLIENT, b"\xd0\x00"),
    (Disconnect(), MQTT_3_1_1, Role.SERVER, b"\xe0\x00"),
    (Disconnect(), MQTT_5, Role.SERVER, b"\xe0\x00"),
    (
        Disconnect(reason_code=ReasonCode.SESSION_TAKEN_OVER),
        MQTT_5,
        Role.CLIENT,
        b"\xe0\x01\x8e",
    ),
    (
        Disconnect(properties=Properties(session_expiry_interval=0)),
        MQTT_5,
        Role.SERVER,
        b"\xe0\x07\x00\x05\x11\x00\x00\x00\x00",
    ),
    (Auth(), MQTT_5, Role.SERVER, b"\xf0\x00"),
    (
        Auth(
            reason_code=ReasonCode.CONTINUE_AUTHENTICATION,
            properties=Properties(authentication_method="X"),
        ),
        MQTT_5,
        Role.CLIENT,
        b"\xf0\x06\x18\x04\x15\x00\x01X",
    ),
    (ConnAck(), MQTT_3_1_1, Role.CLIENT, b"\x20\x02\x00\x00"),
    (
        ConnAck(session_present=True, reason_code=ReasonCode.NOT_AUTHORIZED),
        MQTT_3_1_1,
        Role.CLIENT,
        b"\x20\x02\x01\x05",
    ),
    (
        ConnAck(properties=Properties(assigned_client_identifier="id", receive_maximum=10)),
        MQTT_5,
        Role.CLIENT,
        b"\x20\x0b\x00\x00\x08\x12\x00\x02id\x21\x00\x0a",
    ),
]


@pytest.mark.parametrize(("packet", "version", "role", "wire"), CASES)
def test_encode(packet: Packet, version: int, role: Role, wire: bytes) -> None:
    assert encode(packet, version) == wire


@pytest.mark.parametrize(("packet", "version", "role", "wire"), CASES)
def test_decode_in_any_chunking(packet: Packet, version: int, role: Role, wire: bytes) -> None:
    trailer = encode(PingReq() if role is Role.SERVER else PingResp(), version)
    assert decode_chunks([wire], version, role) == [packet]
    assert decode_chunks([wire[i : i + 1] for i in range(len(wire))], version, role) == [packet]
    assert decode_chunks([wire + trailer], version, role) == [
        packet,
        decode_chunks([trailer], version, role)[0],
    ]


def test_connect_311_spec_example() -> None:
    conn = Connection()
    conn.receive_data(CONNECT_311)
    packet = conn.next_event()
    assert packet == Connect(client_id="abcd", protocol_version=MQTT_3_1_1, keep_alive=60)
    assert conn.version == MQTT_3_1_1
    assert conn.next_event() is NEED_DATA


def test_connect_31_and_5_learn_version() -> None:
    for version in (MQTT_3_1, MQTT_5):
        packet = Connect(client_id="c", protocol_version=version, clean_start=False)
        wire = encode(packet, version)
        conn = Connection()
        for i in range(len(wire)):
            conn.receive_data(wire[i : i + 1])
        assert conn.next_event() == packet
        assert conn.version == version
    assert encode(Connect(client_id="c", protocol_version=MQTT_3_1), MQTT_3_1)[4:10] == b"MQIsdp"


def test_connect_with_will_and_credentials_311() -> None:
    wire = (
        b"\x10\x23\x00\x04MQTT\x04\xee\x00\x0a\x00\x01c"
        b"\x00\x03w/t\x00\x03bye\x00\x04user\x00\x04pass"
    )
    (packet,) = server_feed(wire)[:1]
    assert packet == Connect(
        client_id="c",
        keep_alive=10,
        username="user",
        password=b"pass",
        will=Will("w/t", b"bye", qos=1, retain=True),
    )


def test_eof_between_packets_is_connection_closed() -> None:
    events = server_feed(CONNECT_311)
    assert isinstance(events[-1], ConnectionClosed)


# -- variable byte integers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_varint_spec_table(value: int, wire: bytes) -> None:
    assert encode_varint(value) == wire
    assert decode_varint(wire, 0) == (value, len(wire))
    assert decode_varint(wire[:-1], 0) is None


def test_varint_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode_varint(268_435_456)
    with pytest.raises(ProtocolError):
        decode_varint(b"\xff\xff\xff\xff\x01", 0)


# -- hypothesis round trips -------------------------------------------------------------------

text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
topic_level = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00/+#"), max_size=6
)
topics = st.lists(topic_level, min_size=1, max_size=4).map("/".join).filter(bool)
filters = st.one_of(
    topics,
    st.lists(st.one_of(topic_level, st.just("+")), min_size=1, max_size=4).map(
        lambda levels: "/".join(levels)
    ),
    topics.map(lambda t: t + "/#"),
    st.just("#"),
).filter(bool)
packet_ids = st.integers(1, 65535)
u16 = st.integers(1, 65535)
u32 = st.integers(0, 2**32 - 1)
binary = st.binary(max_size=16)
pairs = st.lists(st.tuples(text, text), max_size=3)
reason = st.sampled_from(list(ReasonCode))


def props_for(**fields: st.SearchStrategy[object]) -> st.SearchStrategy[Properties]:
    optional = {
        k: st.none() | v
        for k, v in fields.items()
        if k not in ("user_property", "subscription_identifier")
    }
    lists = {k: v for k, v in fields.items() if k in ("user_property", "subscription_identifier")}
    return st.builds(Properties, **optional, **lists)


def packets(version: int) -> st.SearchStrategy[tuple[Packet, Role]]:
    """Every packet type, with the properties 5.0 allows in it (none in 3.1.1)."""
    v5 = version == MQTT_5

    def props(**fields: st.SearchStrategy[object]) -> st.SearchStrategy[Properties]:
        if not v5:
            return st.just(Properties())
        return props_for(user_property=pairs, **fields)

    ack_reason = reason if v5 else st.just(ReasonCode.SUCCESS)
    ack_props = props(reason_string=text)
    publish = st.builds(
        lambda topic, payload, qos, retain, dup, pid, p: Publish(
            topic, payload, qos, retain, dup and qos > 0, pid if qos else None, p
        ),
        topics,
        binary,
        st.integers(0, 2),
        st.booleans(),
        st.booleans(),
        packet_ids,
        props(
            payload_format_indicator=st.integers(0, 1),
            message_expiry_interval=u32,
            content_type=text,
            response_topic=topics,
            correlation_data=binary,
            topic_alias=u16,
            subscription_identifier=st.lists(st.integers(1, 268_435_455), max_size=2),
        ),
    )
    will = st.builds(
        Will,
        topics,
        binary,
        st.integers(0, 2),
        st.booleans(),
        props(will_delay_interval=u32, content_type=text, message_expiry_interval=u32),
    )
    connect = st.builds(
        lambda cid, clean, ka, user, pw, w, p: Connect(
            cid, version, clean, ka, user, pw if (user is not None or v5) else None, w, p
        ),
        text,
        st.booleans(),
        st.integers(0, 65535),
        st.none() | text,
        st.none() | binary,
        st.none() | will,
        props(
            session_expiry_interval=u32,
            receive_maximum=u16,
            maximum_packet_size=st.integers(1, 2**32 - 1),
            topic_alias_maximum=st.integers(0, 65535),
            request_response_information=st.integers(0, 1),
            request_problem_information=st.integers(0, 1),
            authentication_method=text,
            authentication_data=binary,
        ),
    )
    connack = st.builds(
        ConnAck,
        st.booleans(),
        reason
        if v5
        else st.sampled_from([0, 1, 2, 3, 4, 5]).map(
            lambda c: [
                ReasonCode.SUCCESS,
                ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
                ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
                ReasonCode.SERVER_UNAVAILABLE,
                ReasonCode.BAD_USER_NAME_OR_PASSWORD,
                ReasonCode.NOT_AUTHORIZED,
            ][c]
        ),
        props(
            session_expiry_interval=u32,
            assigned_client_identifier=text,
            server_keep_alive=st.integers(0, 65535),
            receive_maximum=u16,
            maximum_qos=st.integers(0, 1),
            retain_available=st.integers(0, 1),
            maximum_packet_size=st.integers(1, 2**32 - 1),
            topic_alias_maximum=st.integers(0, 65535),
            reason_string=text,
            wildcard_subscription_available=st.integers(0, 1),
            subscription_identifier_available=st.integers(0, 1),
            shared_subscription_available=st.integers(0, 1),
            response_information=text,
            server_reference=text,
        ),
    )
    subscription = st.builds(
        Subscription,
        filters,
        st.integers(0, 2),
        st.booleans() if v5 else st.just(False),
        st.booleans() if v5 else st.just(False),
        st.integers(0, 2) if v5 else st.just(0),
    )
    subscribe = st.builds(
        Subscribe,
        packet_ids,
        st.lists(subscription, min_size=1, max_size=3),
        props(subscription_identifier=st.lists(st.integers(1, 268_435_455), max_size=1)),
    )
    suback_codes = st.lists(
        st.sampled_from(
            [0, 1, 2, 0x80] + ([0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2] if v5 else [])
        ),
        min_size=1,
        max_size=4,
    )
    suback = st.builds(SubAck, packet_ids, suback_codes, ack_props)
    unsubscribe = st.builds(
        Unsubscribe, packet_ids, st.lists(filters, min_size=1, max_size=3), props()
    )
    unsuback = st.builds(
        UnsubAck,
        packet_ids,
        st.lists(st.sampled_from([0, 0x11, 0x80, 0x87]), min_size=1, max_size=3)
        if v5
        else st.just([]),
        ack_props,
    )
    disconnect = st.builds(
        Disconnect,
        ack_reason,
        props(session_expiry_interval=u32, reason_string=text, server_reference=text),
    )
    server_bound = [
        connect,
        publish,
        *(
            st.builds(cls, packet_ids, ack_reason, ack_props)
            for cls in (PubAck, PubRec, PubRel, PubComp)
        ),
        subscribe,
        unsubscribe,
        st.just(PingReq()),
        disconnect,
    ]
    client_bound = [connack, publish, suback, unsuback, st.just(PingResp()), disconnect]
    if v5:
        auth = st.builds(
            Auth, reason, props(authentication_method=text, authentication_data=binary)
        )
        server_bound.append(auth)
        client_bound.append(auth)
    return st.one_of(
        st.one_of(server_bound).map(lambda p: (p, Role.SERVER)),
        st.one_of(client_bound).map(lambda p: (p, Role.CLIENT)),
    )


def round_trip(packet: Packet, role: Role, version: int) -> list[Packet]:
    wire = encode(packet, version)
    conn = Connection(role, version=version)
    if role is Role.SERVER and not isinstance(packet, Connect):
        conn.receive_data(encode(Connect(protocol_version=version), version))
        conn.next_event()
    conn.receive_data(wire)
    out = []
    while (event := conn.next_event()) is not NEED_DATA:
        out.append(event)
    return out  # type: ignore[return-value]


@settings(max_examples=400, deadline=None)
@given(packets(MQTT_3_1_1))
def test_round_trip_311(case: tuple[Packet, Role]) -> None:
    packet, role = case
    assert round_trip(packet, role, MQTT_3_1_1) == [packet]


@settings(max_examples=400, deadline=None)
@given(packets(MQTT_5))
def test_round_trip_5(case: tuple[Packet, Role]) -> None:
    packet, role = case
    assert round_trip(packet, role, MQTT_5) == [packet]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.sampled_from([MQTT_3_1_1, MQTT_5]))
def test_garbage_raises_only_protocol_error(data: bytes, version: int) -> None:
    with contextlib.suppress(ProtocolError):
        decode_chunks([data], version)
    with contextlib.suppress(ProtocolError):
        server_feed(data)
    with contextlib.suppress(ProtocolError):
        server_feed(CONNECT_311 + data)


@settings(max_examples=200, deadline=None)
@given(packets(MQTT_5), st.integers(0, 40), st.integers(0, 255))
def test_mutated_packets_raise_only_protocol_error(
    case: tuple[Packet, Role], index: int, byte: int
) -> None:
    packet, role = case
    wire = bytearray(encode(packet, MQTT_5))
    wire[index % len(wire)] = byte
    conn = Connection(role, version=MQTT_5)
    if role is Role.SERVER and not isinstance(packet, Connect):
        conn.state = conn.state.CONNECTED
    conn.receive_data(bytes(wire))
    conn.receive_data(b"")
    with contextlib.suppress(ProtocolError):
        while not isinstance(conn.next_event(), ConnectionClosed):
            pass


# -- malformed input ----------------------------------------------------------------------


def drain(conn: Connection) -> None:
    while not isinstance(conn.next_event(), ConnectionClosed):
        pass


def error_of(data: bytes, version: int = MQTT_3_1_1, *, connected: bool = True) -> ProtocolError:
    conn = Connection(Role.SERVER, version=version)
    if connected:
        conn.receive_data(encode(Connect(protocol_version=version), version))
        assert isinstance(conn.next_event(), Connect)
    conn.receive_data(data)
    conn.receive_data(b"")
    with pytest.raises(ProtocolError) as info:
        drain(conn)
    # after an error the connection accepts nothing more
    with pytest.raises(ProtocolError):
        conn.next_event()
    return info.value


M, P = ReasonCode.MALFORMED_PACKET, ReasonCode.PROTOCOL_ERROR

MALFORMED = [
    ("reserved type 0", b"\x00\x00", M),
    ("reserved type 15 in 3.1.1", b"\xf0\x00", M),
    ("pingreq with flags", b"\xc1\x00", M),
    ("pubrel with flags 0", b"\x60\x02\x00\x01", M),
    ("subscribe with flags 0", b"\x80\x06\x00\x01\x00\x01a\x00", M),
    ("publish qos 3", b"\x36\x06\x00\x01a\x00\x01x", M),
    ("publish dup at qos 0", b"\x38\x04\x00\x01ax", M),
    ("5-byte remaining length", b"\x30\xff\xff\xff\xff\x01", M),
    ("truncated body", b"\x30\x0a\x00\x03a/b", M),
    ("truncated fixed header", b"\x30\xff", M),
    ("field past the end", b"\x30\x02\x00\x05", M),
    ("bad utf-8 topic", b"\x30\x05\x00\x02\xc3\x28x", M),
    ("surrogate in topic", b"\x30\x06\x00\x03\xed\xa0\x80", M),
    ("overlong utf-8", b"\x30\x05\x00\x02\xc0\xafx", M),
    ("U+0000 in topic", b"\x30\x06\x00\x03a\x00bx", M),
    ("packet id 0", b"\x32\x06\x00\x01a\x00\x00x", M),
    ("second CONNECT", CONNECT_311, P),
    ("CONNACK to a server", b"\x20\x02\x00\x00", P),
    ("subscribe without filters", b"\x82\x02\x00\x01", P),
    ("unsubscribe without filters", b"\xa2\x02\x00\x01", P),
    ("subscribe qos 3", b"\x82\x06\x00\x01\x00\x01a\x03", M),
    ("subscribe reserved option bits 3.1.1", b"\x82\x06\x00\x01\x00\x01a\x04", M),
    ("trailing bytes in pingreq", b"\xc0\x01\x00", M),
    ("trailing bytes in puback 3.1.1", b"\x40\x03\x00\x01\x00", M),
]


@pytest.mark.parametrize(
    ("data", "reason"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed(data: bytes, reason: ReasonCode) -> None:
    assert error_of(data).reason == reason


TOPIC_ERRORS = [
    ("wildcard + in publish topic", b"\x30\x06\x00\x03a/+x", ReasonCode.TOPIC_NAME_INVALID),
    ("wildcard # in publish topic", b"\x30\x04\x00\x01#x", ReasonCode.TOPIC_NAME_INVALID),
    ("empty publish topic", b"\x30\x03\x00\x00x", ReasonCode.TOPIC_NAME_INVALID),
    ("filter a/#/b", b"\x82\x0a\x00\x01\x00\x05a/#/b\x00", ReasonCode.TOPIC_FILTER_INVALID),
    ("filter a+", b"\x82\x07\x00\x01\x00\x02a+\x00", ReasonCode.TOPIC_FILTER_INVALID),
    ("filter a#", b"\x82\x07\x00\x01\x00\x02a#\x00", ReasonCode.TOPIC_FILTER_INVALID),
    ("empty filter", b"\x82\x05\x00\x01\x00\x00\x00", ReasonCode.TOPIC_FILTER_INVALID),
    (
        "shared without filter",
        b"\x82\x0e\x00\x01\x00\x09$share/gr\x00",
        ReasonCode.TOPIC_FILTER_INVALID,
    ),
    ("unsubscribe a/#/b", b"\xa2\x09\x00\x01\x00\x05a/#/b", ReasonCode.TOPIC_FILTER_INVALID),
]


@pytest.mark.parametrize(
    ("data", "reason"), [c[1:] for c in TOPIC_ERRORS], ids=[c[0] for c in TOPIC_ERRORS]
)
def test_topic_errors(data: bytes, reason: ReasonCode) -> None:
    assert error_of(data).reason == reason


MALFORMED_5 = [
    ("unknown property", b"\x30\x07\x00\x01t\x02\x7f\x00x", M),
    ("property not allowed in publish", b"\x30\x09\x00\x01t\x03\x21\x00\x01x", M),
    ("duplicate property", b"\x30\x09\x00\x01t\x04\x01\x00\x01\x00x", P),
    ("payload format 2", b"\x30\x07\x00\x01t\x02\x01\x02x", P),
    ("topic alias 0", b"\x30\x08\x00\x01t\x03\x23\x00\x00x", P),
    ("property length beyond packet", b"\x30\x06\x00\x01t\x09\x01", M),
    (
        "subscription identifier 0 in subscribe",
        b"\x82\x09\x00\x01\x02\x0b\x00\x00\x01a\x00",
        P,
    ),
    ("retain handling 3", b"\x82\x07\x00\x01\x00\x00\x01a\x30", P),
    ("reserved subscription bits", b"\x82\x07\x00\x01\x00\x00\x01a\xc0", M),
    (
        "no local on shared",
        b"\x82\x10\x00\x01\x00\x00\x0a$share/g/a\x04",
        P,
    ),
]


@pytest.mark.parametrize(
    ("data", "reason"), [c[1:] for c in MALFORMED_5], ids=[c[0] for c in MALFORMED_5]
)
def test_malformed_5(data: bytes, reason: ReasonCode) -> None:
    assert error_of(data, MQTT_5).reason == reason


def test_empty_topic_allowed_with_alias() -> None:
    wire = b"\x30\x07\x00\x00\x03\x23\x00\x01x"
    assert decode_chunks([wire], MQTT_5) == [
        Publish("", b"x", properties=Properties(topic_alias=1))
    ]


def test_packet_before_connect() -> None:
    err = error_of(b"\xc0\x00", connected=False)
    assert err.reason == ReasonCode.PROTOCOL_ERROR
    assert not err.in_connect


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x10\x0c\x00\x04MQTT\x06\x02\x00\x3c\x00\x00", ReasonCode.UNSUPPORTED_PROTOCOL_VERSION),
        (b"\x10\x0c\x00\x04MQTX\x04\x02\x00\x3c\x00\x00", ReasonCode.PROTOCOL_ERROR),
        (b"\x10\x0c\x00\x04MQTT\x04\x03\x00\x3c\x00\x00", ReasonCode.MALFORMED_PACKET),
        (b"\x10\x0c\x00\x04MQTT\x04\x18\x00\x3c\x00\x00", ReasonCode.MALFORMED_PACKET),
        (b"\x10\x0c\x00\x04MQTT\x04\x42\x00\x3c\x00\x00", ReasonCode.MALFORMED_PACKET),
        (b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02\x00a", ReasonCode.MALFORMED_PACKET),
        (b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02\xed\xa0", ReasonCode.MALFORMED_PACKET),
        (
            b"\x10\x14\x00\x04MQTT\x04\x06\x00\x3c\x00\x01c\x00\x03a/+\x00\x01x",
            ReasonCode.TOPIC_NAME_INVALID,
        ),
    ],
    ids=[
        "protocol level 6",
        "protocol name",
        "reserved flag",
        "will qos without will",
        "password without user",
        "U+0000 in client id",
        "surrogate in client id",
        "wildcard in will topic",
    ],
)
def test_bad_connect_is_answered_by_connack(data: bytes, reason: ReasonCode) -> None:
    err = error_of(data, connected=False)
    assert err.reason == reason
    assert err.in_connect


def test_maximum_packet_size_checked_before_buffering() -> None:
    conn = Connection(max_packet_size=100)
    conn.receive_data(CONNECT_311)
    conn.next_event()
    conn.receive_data(b"\x30\xe8\x07")  # announces 1000 bytes; none of them sent yet
    with pytest.raises(ProtocolError) as info:
        conn.next_event()
    assert info.value.reason == ReasonCode.PACKET_TOO_LARGE


def test_connect_size_limit_before_authentication() -> None:
    conn = Connection(max_connect_size=64)
    conn.receive_data(b"\x10\xff\x7f")
    with pytest.raises(ProtocolError) as info:
        conn.next_event()
    assert info.value.reason == ReasonCode.PACKET_TOO_LARGE
    assert info.value.in_connect


def test_reason_codes_carry_spec_text() -> None:
    assert ReasonCode.SESSION_TAKEN_OVER == 0x8E
    assert "ClientID" in ReasonCode.SESSION_TAKEN_OVER.description
    assert ReasonCode.NORMAL_DISCONNECTION is ReasonCode.SUCCESS
    assert all(code.description for code in ReasonCode)


def test_client_role_send_connect_sets_version() -> None:
    conn = Connection(Role.CLIENT)
    wire = conn.send(Connect(client_id="x", protocol_version=MQTT_5))
    assert conn.version == MQTT_5
    assert wire[8] == MQTT_5


def test_the_codec_stands_alone():
    """Importing the codec loads neither the broker core nor pamqp (issue 12)."""
    code = (
        "import sys, moorage.protocols.mqtt.codec\n"
        "loaded = sorted(m for m in sys.modules"
        " if m.startswith(('moorage.broker', 'moorage.storage', 'pamqp')))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
