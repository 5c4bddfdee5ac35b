"""The sans-IO STOMP codec: literal bytes, any chunking, round trips, garbage, limits."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moorage.protocols.stomp.codec import (
    CLIENT_COMMANDS,
    NEED_DATA,
    SERVER_COMMANDS,
    ConnectionClosed,
    Frame,
    FrameCodec,
    ProtocolError,
    Role,
    encode,
    header_encodable,
    negotiate_heartbeat,
    negotiate_version,
    parse_heartbeat,
)


def decode_chunks(
    chunks: list[bytes], version: str = "1.2", role: Role = Role.SERVER, **limits: int
) -> list[object]:
    """Feed chunks to a fresh codec and collect events until NEED_DATA."""
    codec = FrameCodec(role, **limits)
    codec.version = version
    events: list[object] = []
    for chunk in chunks:
        codec.receive_data(chunk)
        while True:
            event = codec.next_event()
            if event is NEED_DATA:
                break
            events.append(event)
            if isinstance(event, ConnectionClosed):
                return events
    return events


def all_chunkings(wire: bytes) -> list[list[bytes]]:
    return [
        [wire],
        [wire[i : i + 1] for i in range(len(wire))],
        *[[wire[:i], wire[i:]] for i in range(1, len(wire))],
    ]


# (frame, version, bytes on the wire) — what the server decodes from a client
CASES = [
    (Frame("DISCONNECT"), "1.2", b"DISCONNECT\n\n\x00"),
    (
        Frame("SEND", (("destination", "/queue/a"),), b"hello"),
        "1.2",
        b"SEND\ndestination:/queue/a\n\nhello\x00",
    ),
    (
        Frame("SEND", (("content-length", "3"), ("destination", "/q")), b"a\x00b"),
        "1.1",
        b"SEND\ncontent-length:3\ndestination:/q\n\na\x00b\x00",
    ),
    (
        Frame("SEND", (("k", "a:b\nc\\d\re"),)),
        "1.2",
        b"SEND\nk:a\\cb\\nc\\\\d\\re\n\n\x00",
    ),
    (Frame("SEND", (("k", "a:b\nc\\d"),)), "1.1", b"SEND\nk:a\\cb\\nc\\\\d\n\n\x00"),
    (Frame("SEND", (("k", "a\\nb"),)), "1.0", b"SEND\nk:a\\nb\n\n\x00"),
    (
        Frame("CONNECT", (("accept-version", "1.2"), ("passcode", "a\\c:b"))),
        "1.2",
        b"CONNECT\naccept-version:1.2\npasscode:a\\c:b\n\n\x00",
    ),
    (Frame("SEND", (("a", "1"), ("a", "2"))), "1.2", b"SEND\na:1\na:2\n\n\x00"),
    (Frame("SEND", (("a", ""),)), "1.2", b"SEND\na:\n\n\x00"),
]


@pytest.mark.parametrize(("frame", "version", "wire"), CASES)
def test_encode(frame: Frame, version: str, wire: bytes) -> None:
    assert encode(frame, version) == wire


@pytest.mark.parametrize(("frame", "version", "wire"), CASES)
def test_decode_in_any_chunking(frame: Frame, version: str, wire: bytes) -> None:
    for chunks in all_chunkings(wire):
        assert decode_chunks(chunks, version) == [frame]
    assert decode_chunks([wire + b"\n\r\n" + wire], version) == [frame, frame]


def test_crlf_line_ends_and_heartbeats() -> None:
    wire = b"\r\n\n\r\nSEND\r\ndestination:/q\r\nx:y\r\n\r\nbody\x00\r\n\n"
    expected = Frame("SEND", (("destination", "/q"), ("x", "y")), b"body")
    for chunks in all_chunkings(wire):
        assert decode_chunks(chunks) == [expected]


def test_repeated_header_first_wins() -> None:
    frame = Frame("SEND", (("a", "1"), ("a", "2")))
    assert frame.get("a") == "1"
    assert frame.get("b") is None


def test_version_switch_applies_to_next_frame() -> None:
    codec = FrameCodec()
    codec.receive_data(b"CONNECT\nlogin:a\\cb\n\n\x00SEND\nk:a\\cb\n\n\x00")
    connect = codec.next_event()
    assert isinstance(connect, Frame)
    assert connect.get("login") == "a\\cb"
    codec.version = "1.2"
    send = codec.next_event()
    assert isinstance(send, Frame)
    assert send.get("k") == "a:b"


def test_eof() -> None:
    assert decode_chunks([b"DISCONNECT\n\n\x00\n", b""]) == [
        Frame("DISCONNECT"),
        ConnectionClosed(),
    ]
    with pytest.raises(ProtocolError, match="mid-frame"):
        decode_chunks([b"SEND\ndestination:/q\n\nabc", b""])
    with pytest.raises(ProtocolError, match="mid-frame"):
        decode_chunks([b"SEND\ndestin", b""])


def test_client_role_decodes_server_frames() -> None:
    wire = b"MESSAGE\nsubscription:1\nmessage-id:7\ncontent-length:1\n\n\x00\x00"
    assert decode_chunks([wire], role=Role.CLIENT) == [
        Frame(
            "MESSAGE",
            (("subscription", "1"), ("message-id", "7"), ("content-length", "1")),
            b"\x00",
        )
    ]
    with pytest.raises(ProtocolError, match="unknown command"):
        decode_chunks([b"SEND\n\n\x00"], role=Role.CLIENT)


MALFORMED = [
    (b"FOO\n\n\x00", "unknown command"),
    (b"send\n\n\x00", "unknown command"),
    (b"SEND\nnocolon\n\n\x00", "malformed header"),
    (b"SEND\nk:a\x00b\n\n\x00", "NUL in frame header"),
    (b"SEND\x00\n\n\x00", "NUL in frame header"),
    (b"SEND\nk:v\x00", "NUL in frame header"),
    (b"SEND\nk:a\rb\n\n\x00", "malformed header"),
    (b"SEND\nk\r:v\n\n\x00", "malformed header"),
    (b"SEND\nk:a\\tb\n\n\x00", "undefined escape"),
    (b"SEND\nk:ab\\\n\n\x00", "undefined escape"),
    (b"SEND\ncontent-length:2\n\nabc\x00", "body longer than content-length"),
    (b"SEND\ncontent-length:x\n\nabc\x00", "invalid content-length"),
    (b"SEND\ncontent-length:-1\n\nabc\x00", "invalid content-length"),
    (b"SEND\nk:\xff\n\n\x00", "malformed frame"),
    (b"\rSEND\n\n\x00", "malformed frame"),
]


@pytest.mark.parametrize(("wire", "error"), MALFORMED)
def test_malformed(wire: bytes, error: str) -> None:
    for chunks in all_chunkings(wire):
        with pytest.raises(ProtocolError, match=error):
            decode_chunks(chunks)


def test_escape_1_1_has_no_cr() -> None:
    with pytest.raises(ProtocolError, match="undefined escape"):
        decode_chunks([b"SEND\nk:\\r\n\n\x00"], "1.1")


def test_error_is_sticky() -> None:
    codec = FrameCodec()
    codec.receive_data(b"BAD\n\n\x00DISCONNECT\n\n\x00")
    with pytest.raises(ProtocolError) as first:
        codec.next_event()
    codec.receive_data(b"DISCONNECT\n\n\x00")
    with pytest.raises(ProtocolError) as second:
        codec.next_event()
    assert first.value is second.value


def test_header_limit_while_buffering() -> None:
    codec = FrameCodec(max_header_size=100)
    codec.receive_data(b"SEND\n" + b"x" * 50)
    assert codec.next_event() is NEED_DATA
    codec.receive_data(b"x" * 60)
    with pytest.raises(ProtocolError, match="header too large"):
        codec.next_event()


def test_header_count_limit() -> None:
    wire = b"SEND\n" + b"a:b\n" * 11 + b"\n\x00"
    with pytest.raises(ProtocolError, match="too many headers"):
        decode_chunks([wire], max_headers=10)
    assert len(decode_chunks([wire], max_headers=11)) == 1


def test_body_limit_with_content_length_checked_before_buffering() -> None:
    codec = FrameCodec(max_body_size=10)
    codec.receive_data(b"SEND\ncontent-length:11\n\n")
    with pytest.raises(ProtocolError, match="body too large"):
        codec.next_event()


def test_body_limit_without_content_length_checked_while_buffering() -> None:
    codec = FrameCodec(max_body_size=10)
    codec.receive_data(b"SEND\n\n" + b"x" * 10)
    assert codec.next_event() is NEED_DATA
    codec.receive_data(b"x")
    with pytest.raises(ProtocolError, match="body too large"):
        codec.next_event()
    assert decode_chunks([b"SEND\n\n" + b"x" * 10 + b"\x00"], max_body_size=10)


def test_unencodable_headers_are_refused() -> None:
    assert not header_encodable("k", "a\x00b", "1.2")
    assert not header_encodable("k", "a\nb", "1.0")
    assert not header_encodable("k:", "v", "1.0")
    assert not header_encodable("k", "a\rb", "1.1")
    assert header_encodable("k", "a\rb", "1.2")
    assert not header_encodable("k", "a\nb", "1.2", "CONNECTED")
    with pytest.raises(ValueError, match="cannot be encoded"):
        encode(Frame("MESSAGE", (("k", "a\x00b"),)), "1.2")


def test_negotiation() -> None:
    assert negotiate_version(None) == "1.0"
    assert negotiate_version("1.0,1.1") == "1.1"
    assert negotiate_version("1.1, 1.2") == "1.2"
    assert negotiate_version("2.0") is None
    assert parse_heartbeat(None) == (0, 0)
    assert parse_heartbeat("100,200") == (100, 200)
    with pytest.raises(ProtocolError):
        parse_heartbeat("1")
    with pytest.raises(ProtocolError):
        parse_heartbeat("a,b")
    assert negotiate_heartbeat((100, 200), (500, 50)) == (500, 100)
    assert negotiate_heartbeat((0, 200), (500, 50)) == (500, 0)
    assert negotiate_heartbeat((100, 0), (500, 50)) == (0, 100)


# -- properties -----------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_characters="\x00", codec="utf-8"), max_size=20)


@st.composite
def frames(draw: st.DrawFn, version: str, commands: frozenset[str]) -> Frame:
    command = draw(st.sampled_from(sorted(commands)))
    names = _text.filter(lambda s: header_encodable(s, "", version, command))
    values = _text.filter(lambda s: header_encodable("k", s, version, command))
    headers = draw(st.lists(st.tuples(names, values), max_size=5))
    headers = [(n, v) for n, v in headers if n != "content-length"]
    if draw(st.booleans()):
        body = draw(st.binary(max_size=50))
        headers.insert(0, ("content-length", str(len(body))))
    else:
        body = draw(st.binary(max_size=50)).replace(b"\x00", b"")
    return Frame(command, tuple(headers), body)


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_round_trip(version: str, data: st.DataObject) -> None:
    client_frame = data.draw(frames(version, CLIENT_COMMANDS))
    wire = encode(client_frame, version)
    assert decode_chunks([wire], version) == [client_frame]
    split = data.draw(st.integers(0, len(wire)))
    chunks = [c for c in (wire[:split], wire[split:]) if c]  # b"" would mean EOF
    assert decode_chunks(chunks, version) == [client_frame]
    server_frame = data.draw(frames(version, SERVER_COMMANDS))
    wire = encode(server_frame, version)
    assert decode_chunks([wire], version, Role.CLIENT) == [server_frame]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6), st.sampled_from(["1.0", "1.1", "1.2"]))
def test_garbage_raises_only_protocol_error(chunks: list[bytes], version: str) -> None:
    with contextlib.suppress(ProtocolError):
        decode_chunks([*chunks, b""], version, max_header_size=128, max_body_size=64)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_after_valid_prefix(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_chunks([b"SEND\ndestination:/q\n\n", data, b""])
