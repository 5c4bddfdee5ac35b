"""The codec's `Connection`: the handshake's state table and `send`, with plain bytes.

A server and a client `Connection` are joined in memory (h11's ConnectionPair):
what one sends, the other decodes. Every outgoing event is checked against
pamqp's own marshalling of the same frames.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import body as pbody
from pamqp import commands, frame, header, heartbeat

from moorage.protocols.amqp091.codec import (
    HANDSHAKE,
    NEED_DATA,
    PROTOCOL_HEADER,
    Connection,
    ConnectionState,
    Content,
    ContentReceived,
    Deliver,
    FrameError,
    Heartbeat,
    HeartbeatReceived,
    Method,
    MethodReceived,
    ProtocolHeader,
    ProtocolHeaderMismatch,
    ProtocolHeaderReceived,
    ReplyCode,
    Role,
    encode_content,
    shortstr,
)
from moorage.protocols.amqp091.properties import encode_properties

S = ConnectionState
START = commands.Connection.Start(
    server_properties={"product": "test"}, mechanisms="PLAIN", locales="en_US"
)
START_OK = commands.Connection.StartOk(
    client_properties={"product": "client"}, mechanism="PLAIN", response="\0guest\0guest"
)
TUNE = commands.Connection.Tune(2047, 131072, 60)
TUNE_OK = commands.Connection.TuneOk(2047, 131072, 60)
OPEN = commands.Connection.Open("/")
OPEN_OK = commands.Connection.OpenOk()


def events(conn: Connection) -> list[Any]:
    out = []
    while (event := conn.next_event()) is not NEED_DATA:
        out.append(event)
    return out


def deliver(to: Connection, data: bytes) -> list[Any]:
    to.receive_data(data)
    return events(to)


def methods(received: list[Any]) -> list[tuple[int, type]]:
    return [(e.channel, type(e.method)) for e in received if isinstance(e, MethodReceived)]


def handshake() -> tuple[Connection, Connection]:
    """A server and a client, RUNNING, having exchanged the whole handshake."""
    server, client = Connection(Role.SERVER), Connection(Role.CLIENT)
    assert deliver(server, client.send(ProtocolHeader())) == [ProtocolHeaderReceived()]
    assert server.state is S.START
    for sender, receiver, method, state in [
        (server, client, START, S.TUNE),
        (client, server, START_OK, S.TUNE),
        (server, client, TUNE, S.OPEN),
        (client, server, TUNE_OK, S.OPEN),
        (client, server, OPEN, S.RUNNING),
        (server, client, OPEN_OK, S.RUNNING),
    ]:
        assert methods(deliver(receiver, sender.send(Method(0, method)))) == [(0, type(method))]
        assert receiver.state is state
    return server, client


def test_the_handshake_table_walks_both_roles_to_running():
    server, client = handshake()
    assert server.state is client.state is S.RUNNING
    assert {role for role, _ in HANDSHAKE} == {Role.SERVER, Role.CLIENT}


def test_the_handshake_arrives_in_one_read_too():
    server, client = Connection(Role.SERVER), Connection(Role.CLIENT)
    data = b"".join(
        client.send(event)
        for event in (ProtocolHeader(), Method(0, START_OK), Method(0, TUNE_OK), Method(0, OPEN))
    )
    received = deliver(server, data)
    assert received[0] == ProtocolHeaderReceived()
    assert methods(received) == [(0, type(START_OK)), (0, type(TUNE_OK)), (0, type(OPEN))]
    assert server.state is S.RUNNING


@pytest.mark.parametrize(
    ("sent", "state", "expected"),
    [
        ([], S.START, "StartOk"),
        ([START_OK], S.TUNE, "TuneOk"),
        ([START_OK, TUNE_OK], S.OPEN, "Open"),
    ],
)
def test_a_channel_method_on_channel_0_during_the_handshake_is_command_invalid(
    sent, state, expected
):
    server, client = Connection(Role.SERVER), Connection(Role.CLIENT)
    deliver(server, client.send(ProtocolHeader()))
    for method in sent:
        deliver(server, client.send(Method(0, method)))
    assert server.state is state
    server.receive_data(client.send(Method(0, commands.Channel.Open())))
    with pytest.raises(FrameError) as info:
        events(server)
    assert (info.value.reply_code, info.value.text) == (
        ReplyCode.COMMAND_INVALID,
        f"COMMAND_INVALID - expected 'Connection.{expected}', got 'Channel.Open'",
    )


@pytest.mark.parametrize(("sent", "expected"), [([], "StartOk"), ([START_OK], "TuneOk")])
def test_the_wrong_connection_method_names_the_expected_one(sent, expected):
    server, client = Connection(Role.SERVER), Connection(Role.CLIENT)
    deliver(server, client.send(ProtocolHeader()))
    for method in sent:
        deliver(server, client.send(Method(0, method)))
    server.receive_data(client.send(Method(0, OPEN)))
    with pytest.raises(FrameError) as info:
        events(server)
    assert (info.value.reply_code, info.value.text, info.value.class_id) == (
        ReplyCode.COMMAND_INVALID,
        f"COMMAND_INVALID - expected 'Connection.{expected}', got 'Connection.Open'",
        0,
    )
    # a sequencing error leaves the framing intact: the peer's close-ok still comes out
    assert server.state is S.CLOSING
    server.send(Method(0, commands.Connection.Close(503, "x", 0, 0)))
    assert server.close_sent
    received = deliver(server, client.send(Method(0, commands.Connection.CloseOk())))
    assert methods(received) == [(0, commands.Connection.CloseOk)]


def test_a_channel_method_before_open_is_a_channel_error():
    server, client = Connection(Role.SERVER), Connection(Role.CLIENT)
    deliver(server, client.send(ProtocolHeader()) + client.send(Method(0, START_OK)))
    server.receive_data(client.send(Method(1, commands.Channel.Open())))
    with pytest.raises(FrameError) as info:
        events(server)
    assert (info.value.reply_code, info.value.text) == (
        ReplyCode.CHANNEL_ERROR,
        "CHANNEL_ERROR - expected 'connection.open', got 'Channel.Open' on channel 1",
    )


def test_content_before_open_is_a_channel_error():
    server, client = Connection(Role.SERVER), Connection(Role.CLIENT)
    deliver(server, client.send(ProtocolHeader()))
    publish = encode_content(1, commands.Basic.Publish(), commands.Basic.Properties(), b"x", 0)
    server.receive_data(publish)
    with pytest.raises(FrameError) as info:
        events(server)
    assert (info.value.reply_code, info.value.text) == (
        ReplyCode.CHANNEL_ERROR,
        "CHANNEL_ERROR - content before connection.open",
    )


def test_close_is_accepted_in_every_handshake_state():
    server, client = Connection(Role.SERVER), Connection(Role.CLIENT)
    deliver(server, client.send(ProtocolHeader()))
    close = commands.Connection.Close(200, "bye", 0, 0)
    assert methods(deliver(server, client.send(Method(0, close)))) == [(0, type(close))]


@pytest.mark.parametrize(
    "method",
    [START_OK, commands.Connection.CloseOk(), commands.Connection.Open("/")],
)
def test_running_channel_0_takes_only_its_methods(method):
    server, client = handshake()
    server.receive_data(client.send(Method(0, method)))
    with pytest.raises(FrameError) as info:
        events(server)
    assert (info.value.reply_code, info.value.text) == (
        ReplyCode.COMMAND_INVALID,
        f"COMMAND_INVALID - unexpected method '{method.name}' on channel 0",
    )


def test_running_channel_0_passes_close_update_secret_and_blocked():
    server, client = handshake()
    sent = [
        commands.Connection.UpdateSecret("token", "reason"),
        commands.Connection.Blocked("why"),
        commands.Connection.Unblocked(),
        commands.Connection.Close(200, "bye", 0, 0),
    ]
    data = b"".join(client.send(Method(0, method)) for method in sent)
    assert methods(deliver(server, data)) == [(0, type(m)) for m in sent]


def test_after_sending_close_only_close_and_close_ok_come_out():
    server, client = handshake()
    server.send(Method(0, commands.Connection.Close(320, "shutdown", 0, 0)))
    assert server.state is S.CLOSING
    data = b"".join(
        [
            client.send(Method(1, commands.Channel.Open())),
            encode_content(1, commands.Basic.Publish(), commands.Basic.Properties(), b"x", 0),
            client.send(Heartbeat()),
            client.send(Method(0, commands.Connection.CloseOk())),
        ]
    )
    assert methods(deliver(server, data)) == [(0, commands.Connection.CloseOk)]


def test_a_bad_protocol_header_is_answered_with_ours():
    server = Connection(Role.SERVER)
    server.receive_data(b"AMQP\x01\x01\x00\x09")
    with pytest.raises(ProtocolHeaderMismatch):
        server.next_event()
    assert server.send(ProtocolHeader()) == PROTOCOL_HEADER
    assert server.state is S.ERROR


def test_a_framing_error_is_final():
    server, _ = handshake()
    server.receive_data(b"\x01\x00\x01\x00\x00\x00\x04\x00\x14\x00\x0a\x00")  # bad frame end
    for _ in range(2):
        with pytest.raises(FrameError) as info:
            server.next_event()
        assert info.value.reply_code == ReplyCode.FRAME_ERROR
    assert server.state is S.ERROR


def test_heartbeats_both_ways():
    server, client = handshake()
    assert server.send(Heartbeat()) == frame.marshal(heartbeat.Heartbeat(), 0)
    assert deliver(client, server.send(Heartbeat())) == [HeartbeatReceived()]


# -- send: the fast encoders give pamqp's bytes ------------------------------------------

short = st.text(max_size=30).filter(lambda s: len(s.encode()) <= 255)
names = st.text("abcXYZ019-_.:", max_size=60)  # what pamqp's validation accepts


def pamqp_frames(channel: int, method: Any, properties: Any, body: bytes, frame_max: int) -> bytes:
    """pamqp's own marshalling of a content-bearing method (the reference)."""
    out = frame.marshal(method, channel)
    out += frame.marshal(header.ContentHeader(0, len(body), properties), channel)
    chunk = frame_max - 8 if frame_max else max(len(body), 1)
    for start in range(0, len(body), chunk):
        out += frame.marshal(pbody.ContentBody(body[start : start + chunk]), channel)
    return out


@settings(max_examples=100, deadline=None)
@given(
    channel=st.integers(1, 65535),
    tag=short,
    delivery_tag=st.integers(1, 2**63 - 1),
    redelivered=st.booleans(),
    exchange=names,
    routing_key=short,
    content_type=st.none() | short,
    body=st.binary(max_size=10000),
    frame_max=st.sampled_from([0, 4096, 4097, 131072]),
)
def test_send_deliver_matches_pamqp(
    channel, tag, delivery_tag, redelivered, exchange, routing_key, content_type, body, frame_max
):
    server, client = handshake()
    server.frame_max = client.frame_max = frame_max
    properties = commands.Basic.Properties(content_type=content_type, delivery_mode=2)
    raw = encode_properties((content_type, None, None, 2, *[None] * 9))
    assert raw == properties.marshal()
    event = Deliver(
        channel,
        shortstr(tag),
        delivery_tag,
        redelivered,
        shortstr(exchange),
        shortstr(routing_key),
        raw,
        body,
    )
    method = commands.Basic.Deliver(tag, delivery_tag, redelivered, exchange, routing_key)
    wire = server.send(event)
    assert wire == pamqp_frames(channel, method, properties, body, frame_max)
    # and the client role decodes it back
    (received,) = deliver(client, wire)
    assert isinstance(received, ContentReceived)
    assert (received.channel, received.body) == (channel, body)


@settings(max_examples=100, deadline=None)
@given(
    channel=st.integers(1, 65535),
    exchange=names,
    routing_key=short,
    body=st.binary(max_size=10000),
    frame_max=st.sampled_from([0, 4096, 131072]),
)
def test_send_content_matches_the_general_encoder(channel, exchange, routing_key, body, frame_max):
    server, _ = handshake()
    server.frame_max = frame_max
    properties = commands.Basic.Properties(message_id="m", headers={"a": 1})
    for method in (
        commands.Basic.Return(312, "NO_ROUTE", exchange, routing_key),
        commands.Basic.GetOk(7, True, exchange, routing_key, 3),
    ):
        wire = server.send(Content(channel, method, properties.marshal(), body))
        assert wire == encode_content(channel, method, properties, body, frame_max)
        assert wire == pamqp_frames(channel, method, properties, body, frame_max)


def test_send_method_matches_pamqp_and_close_moves_to_closing():
    server, _ = handshake()
    for channel, method in [
        (1, commands.Channel.OpenOk()),
        (1, commands.Basic.ConsumeOk("ctag")),
        (0, commands.Connection.Close(320, "CONNECTION_FORCED - bye", 0, 0)),
    ]:
        assert server.send(Method(channel, method)) == frame.marshal(method, channel)
    assert server.state is S.CLOSING
    assert server.close_sent


def test_sending_close_after_a_framing_error_keeps_error():
    server, _ = handshake()
    server.receive_data(b"\x09\x00\x00\x00\x00\x00\x00\xce")  # frame type 9 does not exist
    with pytest.raises(FrameError):
        server.next_event()
    server.send(Method(0, commands.Connection.Close(501, "FRAME_ERROR", 0, 0)))
    assert (server.state, server.close_sent) == (S.ERROR, True)
