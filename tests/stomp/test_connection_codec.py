"""The STOMP connection codec with plain bytes: its state table, its errors' wire
answers, the frames it builds, and that it stands alone (no core, no pamqp)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moorage.protocols.stomp.codec import (
    NEED_DATA,
    ConnectionClosed,
    Frame,
    ProtocolError,
    Role,
    State,
    StompCodec,
    connected_frame,
    encode,
    encode_message,
    header_lines,
    message_headers_of,
    message_prefix,
    receipt_frame,
    version_error_frame,
)

CONNECT = b"CONNECT\naccept-version:1.2\nhost:/\n\n\x00"
CONNECTED = Frame("CONNECTED", (("version", "1.2"),))


def pull(codec: StompCodec) -> list[Any]:
    """Every event until NEED_DATA (or ConnectionClosed)."""
    found: list[Any] = []
    while (event := codec.next_event()) is not NEED_DATA:
        found.append(event)
        if isinstance(event, ConnectionClosed):
            break
    return found


def connected_server() -> StompCodec:
    codec = StompCodec()
    codec.receive_data(CONNECT)
    assert pull(codec) == [Frame("CONNECT", (("accept-version", "1.2"), ("host", "/")))]
    assert codec.state is State.CONNECTING  # until the adapter answers
    codec.send(CONNECTED)
    assert codec.state is State.CONNECTED
    return codec


def test_the_codec_imports_neither_the_core_nor_pamqp() -> None:
    """A client (or a test) can use the codec without the broker (issue 12)."""
    code = (
        "import sys, moorage.protocols.stomp.codec\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('moorage.broker')"
        " or m.startswith('moorage.storage') or m == 'pamqp')\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("command", ["SEND", "SUBSCRIBE", "ACK", "DISCONNECT", "BEGIN"])
def test_a_frame_before_connect_is_refused_with_its_frame(command: str) -> None:
    codec = StompCodec()
    wire = encode(Frame(command, (("receipt", "r1"),)), "1.0")
    codec.receive_data(wire + CONNECT)
    with pytest.raises(ProtocolError) as caught:
        codec.next_event()
    error = caught.value
    assert error.message == "not connected"
    assert error.frame is not None
    assert error.frame.command == command
    answer = error.error_frame("1.0")
    assert answer.command == "ERROR"
    assert answer.get("receipt-id") == "r1"
    assert answer.body.endswith(f"The failing frame was {command}.".encode())
    with pytest.raises(ProtocolError) as again:  # sticky: the CONNECT behind it is not read
        codec.next_event()
    assert again.value is error


def test_connect_after_connected_is_an_unexpected_frame() -> None:
    codec = connected_server()
    codec.receive_data(CONNECT)
    with pytest.raises(ProtocolError, match="unexpected frame"):
        codec.next_event()


def test_required_headers_are_checked_in_every_version() -> None:
    codec = connected_server()
    codec.receive_data(b"SEND\nreceipt:7\n\nx\x00")
    with pytest.raises(ProtocolError) as caught:
        codec.next_event()
    assert caught.value.message == "missing 'destination' header"
    assert caught.value.error_frame("1.2").get("receipt-id") == "7"


def test_disconnect_moves_to_closing_and_error_to_closed() -> None:
    codec = connected_server()
    codec.receive_data(b"SEND\ndestination:/queue/a\n\nx\x00DISCONNECT\nreceipt:9\n\n\x00")
    send, disconnect = pull(codec)
    assert send.command == "SEND"
    assert disconnect.command == "DISCONNECT"
    assert codec.state is State.CLOSING
    assert codec.send(receipt_frame("9")) == b"RECEIPT\nreceipt-id:9\n\n\x00"
    assert codec.state is State.CLOSING
    codec.send(Frame("ERROR", (("message", "x"),)))
    assert codec.state is State.CLOSED


def test_eof_closes() -> None:
    codec = connected_server()
    codec.receive_data(b"")
    assert pull(codec) == [ConnectionClosed()]
    assert codec.state is State.CLOSED


def test_a_failed_send_changes_nothing() -> None:
    codec = StompCodec()
    with pytest.raises(ValueError, match="cannot be encoded"):
        codec.send(Frame("CONNECTED", (("session", "a\nb"),)))
    assert codec.state is State.CONNECTING


def test_client_side_states() -> None:
    codec = StompCodec(Role.CLIENT)
    codec.receive_data(b"MESSAGE\nsubscription:s\n\n\x00")
    with pytest.raises(ProtocolError, match="not connected"):
        codec.next_event()
    codec = StompCodec(Role.CLIENT)
    codec.receive_data(encode(CONNECTED, "1.2") + b"MESSAGE\nsubscription:s\n\nm\x00")
    connected, message = pull(codec)
    assert (connected.command, message.body) == ("CONNECTED", b"m")
    assert codec.state is State.CONNECTED
    codec.send(Frame("DISCONNECT", (("receipt", "1"),)))
    assert codec.state is State.CLOSING
    codec.receive_data(b"RECEIPT\nreceipt-id:1\n\n\x00ERROR\n\n\x00")
    assert [f.command for f in pull(codec)] == ["RECEIPT", "ERROR"]
    assert codec.state is State.CLOSED


def test_frames_the_server_builds() -> None:
    assert encode(connected_frame("session-1", "Moorage/x", "1.2", (0, 100)), "1.2") == (
        b"CONNECTED\nversion:1.2\nheart-beat:0,100\nsession:session-1\nserver:Moorage/x\n\n\x00"
    )
    assert encode(connected_frame("s", "M", None, (5, 5)), "1.0") == (
        b"CONNECTED\nversion:1.0\nheart-beat:0,0\nsession:s\nserver:M\n\n\x00"
    )
    assert encode(version_error_frame(), "1.0") == (
        b"ERROR\nversion:1.0,1.1,1.2\ncontent-type:text/plain\n"
        b"message:Supported protocol versions are 1.0 1.1 1.2\n\n"
        b"Supported protocol versions are 1.0, 1.1 and 1.2.\x00"
    )
    assert StompCodec().send_heartbeat() == b"\n"


_text = st.text(st.sampled_from("ab:\\\r\n\x00é1/"), max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    _text,
    _text,
    st.lists(st.tuples(_text, _text), max_size=3),
    st.booleans(),
    st.booleans(),
    st.binary(max_size=20),
    st.sampled_from(["1.0", "1.1", "1.2"]),
)
def test_encode_message_equals_send(
    subscription: str,
    destination: str,
    headers: list[tuple[str, str]],
    ack: bool,
    redelivered: bool,
    body: bytes,
    version: str,
) -> None:
    """The MESSAGE hot path (from cached parts) writes what the general path writes."""
    codec = StompCodec()
    codec.version = version
    frame = Frame(
        "MESSAGE",
        message_headers_of(
            subscription,
            destination,
            "T_1",
            ack=ack,
            redelivered=redelivered,
            headers=headers,
            body=body,
            version=version,
        ),
        body,
    )
    prefix = message_prefix(subscription, destination, version)
    if prefix is None:
        with pytest.raises(ValueError, match="cannot be encoded"):
            codec.send(frame)
        return
    fast = encode_message(
        prefix,
        "T_1",
        ack=ack,
        redelivered=redelivered,
        lines=header_lines(headers, version),
        body=body,
        version=version,
    )
    assert fast == codec.send(frame)
