"""The STOMP fast paths give exactly what the general paths give (issue 7).

- `decode_fast` returns the same frame and size as the general decoder, or
  None where the general path must decide (errors included); a whole stream
  decodes to the same events, in any chunking, with the fast path on or off;
- `decode_repeat` (a frame repeating a known header block) returns what
  `decode_fast` returns, or None; `FrameCodec.next_repeat`, taken after each
  frame as the adapter takes it, leaves the stream's events unchanged;
- `header_line` writes a header as `encode` does;
- `Subscriptions.message_bytes` (the codec's MESSAGE from cached parts) is byte
  for byte `encode(Frame("MESSAGE", message_frame_headers(...)))`;
- the adapter's SEND and ACK fast handlers, and its runs of repeated SENDs
  (`Publisher.send_repeats`, with per-header-set properties and header caches), leave
  the broker and the client with the same bytes and the same queue contents
  as the general handlers on the general decoder, including when a cached
  destination has gone, mid-read too;
- a RECEIPT deep into a large read is written at once (`TCPShell.flush`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections.abc import Callable
from datetime import UTC
from typing import Any
from unittest import mock

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from moorage.broker.auth import UserDirectory
from moorage.broker.broker import Broker
from moorage.broker.config import default_guest
from moorage.broker.message import Message, Properties
from moorage.protocols.stomp import adapter, codec, framing, mapping, subscriptions
from moorage.protocols.stomp.adapter import StompConnection
from moorage.protocols.stomp.codec import (
    CLIENT_COMMANDS,
    NEED_DATA,
    SERVER_COMMANDS,
    ConnectionClosed,
    Frame,
    FrameCodec,
    ProtocolError,
    Role,
    decode_fast,
    encode,
    header_encodable,
    header_line,
)
from moorage.protocols.stomp.subscriptions import Subscription
from moorage.storage import MemoryStore
from tests.harness import remember_guest
from tests.stomp.test_adapter import FakeShell

VERSIONS = st.sampled_from(["1.0", "1.1", "1.2"])

# Header text: mostly plain, sometimes with what forces the general path
# (escapes, CR, ':' in values, non-ASCII, NUL).
_plain = st.text(st.sampled_from("abc-/.:_ 1"), max_size=10)
_any = st.text(st.characters(codec="utf-8"), max_size=10)
_header_text = st.one_of(_plain, _plain, _any, st.sampled_from(["a\\cb", "x\ry", "é", ""]))


def general_events(chunks: list[bytes], role: Role = Role.SERVER, **limits: int) -> list[Any]:
    """Events of a codec with the fast paths switched off (no repeats without them)."""
    with mock.patch.object(framing, "decode_fast_block", return_value=None):
        return events(chunks, role, **limits)


def events(
    chunks: list[bytes], role: Role = Role.SERVER, *, repeats: bool = False, **limits: int
) -> list[Any]:
    """Feed `chunks` then EOF; collect frames, then ConnectionClosed or the error's message.

    With `repeats`, each frame is followed by `next_repeat` with its headers
    until None, as the adapter does after a SEND.
    """
    decoder = FrameCodec(role, **limits)
    decoder.version = "1.2"
    out: list[Any] = []
    for chunk in [*chunks, b""]:
        decoder.receive_data(chunk)
        while True:
            try:
                event = decoder.next_event()
            except ProtocolError as e:
                out.append(("error", e.message))
                return out
            if event is NEED_DATA:
                break
            out.append(event)
            if isinstance(event, ConnectionClosed):
                return out
            while repeats and (body := decoder.next_repeat(event.headers)) is not None:
                out.append(Frame(event.command, event.headers, body))
    return out


@st.composite
def client_frames(draw: st.DrawFn, commands: frozenset[str] = CLIENT_COMMANDS) -> Frame:
    command = draw(st.sampled_from(sorted(commands)))
    headers = draw(st.lists(st.tuples(_header_text, _header_text), max_size=5))
    headers = [
        (n, v)
        for n, v in headers
        if n != "content-length" and header_encodable(n, v, "1.2", command)
    ]
    shape = draw(st.sampled_from(["length", "no-length", "odd-length"]))
    body = draw(st.binary(max_size=60))
    if shape == "length":
        headers.insert(draw(st.integers(0, len(headers))), ("content-length", str(len(body))))
    elif shape == "no-length":
        body = body.replace(b"\x00", b"")
    else:  # a content-length the fast path leaves alone (the general path decides)
        value = draw(st.sampled_from(["+1", " 1", "1 ", "x", "", "٣", "01"]))
        headers.insert(0, ("content-length", value))
        body = body.replace(b"\x00", b"")
    return Frame(command, tuple(headers), body)


def first_frame_general(data: bytes, role: Role = Role.SERVER) -> tuple[Frame, int] | None:
    """The general decoder's first frame in `data` and how many octets it took."""
    with mock.patch.object(framing, "decode_fast_block", return_value=None):
        decoder = FrameCodec(role)
        decoder.version = "1.2"
        decoder.receive_data(data)
        try:
            event = decoder.next_event()
        except ProtocolError:
            return None
        if not isinstance(event, Frame):
            return None
        return event, len(data) - len(decoder._buf)


def check_same(data: bytes, accept: frozenset[str] = CLIENT_COMMANDS) -> tuple[Frame, int] | None:
    """decode_fast agrees with the general path on `data`; returns the fast result."""
    fast = decode_fast(data, accept)
    assert fast == decode_fast(bytearray(data), accept)
    if fast is not None:
        role = Role.SERVER if accept is CLIENT_COMMANDS else Role.CLIENT
        assert fast == first_frame_general(data, role)
    return fast


@settings(max_examples=500, deadline=None)
@given(client_frames(), st.binary(max_size=12))
def test_fast_decode_equals_general(frame: Frame, trailer: bytes) -> None:
    try:
        wire = encode(frame, "1.2")
    except ValueError:
        return
    fast = check_same(wire + trailer)
    text = "".join(n + v for n, v in frame.headers)
    common = (
        not any(c in text for c in "\\\r\n:\x00")
        and all(n != "content-length" or v == str(len(frame.body)) for n, v in frame.headers)
        and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    )
    if common:
        assert fast == (frame, len(wire))  # the common shape really takes the fast path


def test_fast_decode_takes_the_frames_a_busy_connection_carries() -> None:
    send = b"SEND\ndestination:/queue/a\ncontent-length:3\nreceipt:7\n\nabc\x00"
    ack = b"ACK\nid:T_s@@1\n\n\x00"
    message = b"MESSAGE\nsubscription:s\ndestination:/queue/a\nmessage-id:1\n\nhi\x00"
    assert decode_fast(send + ack, CLIENT_COMMANDS) == (
        Frame(
            "SEND", (("destination", "/queue/a"), ("content-length", "3"), ("receipt", "7")), b"abc"
        ),
        len(send),
    )
    assert decode_fast(ack, CLIENT_COMMANDS) == (Frame("ACK", (("id", "T_s@@1"),)), len(ack))
    assert decode_fast(message, SERVER_COMMANDS) is not None
    assert decode_fast(message, CLIENT_COMMANDS) is None  # not a client command
    for cut in range(len(send)):
        assert decode_fast(send[:cut], CLIENT_COMMANDS) is None  # incomplete: general path


@settings(max_examples=1000, deadline=None)
@given(
    st.sampled_from([b"SEND\n", b"ACK\n", b"NACK\n", b"SEND\ncontent-length:", b"SEND", b"X\n"]),
    st.binary(max_size=60),
)
def test_fast_decode_of_garbage_agrees(prefix: bytes, rest: bytes) -> None:
    """Arbitrary bytes: a frame from the fast path is the general one; errors go general."""
    check_same(prefix + rest)
    check_same(prefix + rest.replace(b"\r", b""))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 40), st.integers(0, 30))
def test_fast_decode_respects_limits(header_size: int, body_size: int) -> None:
    wire = b"SEND\ndestination:/queue/abc\ncontent-length:20\n\n" + b"b" * 20 + b"\x00"
    fast = decode_fast(wire, CLIENT_COMMANDS, max_header_size=header_size, max_body_size=body_size)
    assert fast is None  # every limit above is too small for this frame
    assert events([wire], max_header_size=header_size, max_body_size=body_size) == (
        general_events([wire], max_header_size=header_size, max_body_size=body_size)
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(client_frames(), max_size=5),
    st.lists(st.integers(1, 40), max_size=8),
    st.sampled_from([b"", b"\n", b"\r\n", b"\n\n"]),
    st.binary(max_size=6),
)
def test_stream_decodes_the_same_with_and_without_fast_path(
    frames: list[Frame], cuts: list[int], heartbeat: bytes, tail: bytes
) -> None:
    data = b""
    for frame in frames:
        with contextlib.suppress(ValueError):
            data += heartbeat + encode(frame, "1.2")
    data += tail
    chunks, pos = [], 0
    for size in cuts:
        if pos < len(data):
            chunks.append(data[pos : pos + size])
            pos += size
    if pos < len(data):
        chunks.append(data[pos:])
    assert events(chunks) == general_events(chunks)
    assert events([data]) == general_events([data])


# -- repeated header blocks ------------------------------------------------------------------


def _block_of(frame: Frame) -> codec.HeaderBlock | None:
    """The HeaderBlock a codec keeps once `frame` came twice (None: it keeps none)."""
    wire = encode(frame, "1.2")
    decoder = FrameCodec()
    decoder.receive_data(wire + wire)
    try:
        decoder.next_event()
        decoder.next_event()
    except ProtocolError:
        return None
    return decoder._repeat


@settings(max_examples=500, deadline=None)
@given(
    client_frames(),
    st.binary(max_size=60),
    st.booleans(),
    st.binary(max_size=12),
    st.integers(0, 80),
    st.integers(0, 4),
    st.integers(0, 70),
)
# an empty body whose NUL comes from the drawn bytes, one more NUL behind it
@example(Frame("ABORT", (("content-length", "0"),), b""), b"\x00", False, b"", 0, 0, 0)
# a body shorter than its length: the NUL after it and the trailer's are the body's
@example(Frame("ABORT", (("content-length", "2"),), b"\0\0"), b"\0", False, b"\0", 0, 0, 0)
def test_decode_repeat_equals_decode_fast(
    frame: Frame,
    body: bytes,
    same_length: bool,
    trailer: bytes,
    header_limit: int,
    headers_limit: int,
    body_limit: int,
) -> None:
    """A block from one frame, tried on another with its headers (or any bytes)."""
    try:
        block = _block_of(frame)
    except ValueError:  # not encodable
        return
    if block is None:
        return
    if same_length:  # the headers again, another body of their content-length
        body = (body * (block.length // max(1, len(body)) + 1))[: block.length]
        if len(body) < block.length:
            body = bytes(block.length)
    data = block.raw + body + b"\x00" + trailer
    for limits in (
        (codec.DEFAULT_MAX_HEADER_SIZE, 1000, codec.DEFAULT_MAX_BODY_SIZE),
        (header_limit, headers_limit, body_limit),
    ):
        again = codec.decode_repeat(data, block, *limits)
        fast = decode_fast(data, CLIENT_COMMANDS, *limits)
        assert again is None or again == fast
        # The frame ends where its content-length says, if a NUL is there: the
        # body drawn may itself hold that NUL, with the rest a trailer, or be
        # shorter than the length, the NUL and the trailer then part of the body.
        length = block.length
        after = body + b"\x00" + trailer
        if limits[0] == codec.DEFAULT_MAX_HEADER_SIZE:
            if after[length : length + 1] == b"\x00":
                expected = Frame(block.command, block.headers, after[:length])
                assert again == fast == (expected, len(block.raw) + length + 1)
                assert again[0].headers is block.headers  # the adapter's identity check
            else:
                assert again is None
    if body[block.length : block.length + 1] != b"\x00":
        assert codec.decode_repeat(data[: -1 - len(trailer)], block) is None  # no NUL yet
    assert codec.decode_repeat(b"\n" + data, block) is None  # a heart-beat first


@st.composite
def repeating_streams(draw: st.DrawFn) -> bytes:
    """Frames drawn from a few header sets, with bodies of their content-length,
    heart-beats and odd frames between them, and maybe a broken one."""
    templates = draw(st.lists(client_frames(frozenset({"SEND", "ACK"})), min_size=1, max_size=3))
    data = b""
    for _ in range(draw(st.integers(0, 12))):
        frame = draw(st.sampled_from(templates))
        length = next((v for n, v in frame.headers if n == "content-length"), None)
        body = frame.body
        if length is not None and length.isdigit() and draw(st.booleans()):
            body = draw(st.binary(min_size=int(length), max_size=int(length)))
        with contextlib.suppress(ValueError):
            data += draw(st.sampled_from([b"", b"", b"\n"])) + encode(
                Frame(frame.command, frame.headers, body), "1.2"
            )
    return data + draw(st.sampled_from([b"", b"x\x00", b"SEND\n\n\x00", b"\x00"]))


@settings(max_examples=300, deadline=None)
@given(repeating_streams(), st.lists(st.integers(1, 300), max_size=6))
def test_repeated_frames_decode_as_the_general_path(data: bytes, cuts: list[int]) -> None:
    chunks, pos = [], 0
    for size in cuts:
        if pos < len(data):
            chunks.append(data[pos : pos + size])
            pos += size
    if pos < len(data):
        chunks.append(data[pos:])
    expected = general_events(chunks)
    assert events(chunks) == expected
    assert events(chunks, repeats=True) == expected
    assert events([data], repeats=True) == general_events([data])


def test_a_producer_s_frames_take_the_repeat_path() -> None:
    """The second SEND with the same headers sets the block; later ones share its tuple."""
    sends = [send("/queue/a", b"%03d" % i, "pad:xx") for i in range(5)]
    decoder = FrameCodec()
    decoder.receive_data(b"".join(sends))
    first = decoder.next_event()
    second = decoder.next_event()
    assert isinstance(first, Frame)
    assert isinstance(second, Frame)
    assert first.headers == second.headers
    assert first.headers is not second.headers
    assert decoder.next_repeat(first.headers) is None  # only the latest tuple
    assert decoder.next_repeat(second.headers) == b"002"
    third = decoder.next_event()  # next_event takes repeats too
    assert isinstance(third, Frame)
    assert third.headers is second.headers
    assert decoder.next_repeat(third.headers) == b"004"
    assert decoder.next_repeat(third.headers) is None
    assert decoder.next_event() is NEED_DATA


@settings(max_examples=500, deadline=None)
@given(_header_text, _header_text, VERSIONS, st.sampled_from(["MESSAGE", "CONNECTED", "ERROR"]))
def test_header_line_equals_encode(name: str, value: str, version: str, command: str) -> None:
    line = header_line(name, value, version, command)
    try:
        wire = encode(Frame(command, ((name, value),)), version)
    except ValueError:
        assert line is None
        return
    assert line is not None
    assert wire == command.encode() + b"\n" + line + b"\n\x00"


# -- MESSAGE frames -------------------------------------------------------------------------


# Core header values of every AMQP type (`broker.header_values.header_text` gives their text).
_header_value = st.one_of(
    _header_text,
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.binary(max_size=8),
    st.decimals(allow_nan=False, allow_infinity=False, places=2),
    st.datetimes(timezones=st.just(UTC)),
    st.none(),
    st.lists(st.integers(), max_size=2),
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    p = Properties()
    if draw(st.booleans()):
        p.headers = dict(draw(st.lists(st.tuples(_header_text, _header_value), max_size=4)))
        if draw(st.booleans()):
            p.headers["x-message-group-id"] = draw(_header_text)
    p.content_type = draw(st.none() | _plain)
    p.delivery_mode = draw(st.sampled_from([None, 1, 2]))
    p.priority = draw(st.none() | st.integers(0, 9))
    p.correlation_id = draw(st.none() | _header_text)
    p.reply_to = draw(st.none() | st.sampled_from(["q", "/queue/r", "/temp-queue/t"]))
    p.message_id = draw(st.none() | _plain)
    p.timestamp = draw(st.none() | st.datetimes(timezones=st.just(UTC)))
    exchange = draw(st.sampled_from(["", "amq.topic", "amq.direct", "ex:1"]))
    return Message(exchange, draw(_header_text), p, draw(st.binary(max_size=80)))


def _connection(version: str) -> StompConnection:
    broker = Broker(store=MemoryStore(), users=UserDirectory([default_guest()]))
    conn = StompConnection(broker, FakeShell(), now=0.0)
    conn.version = version
    return conn


@settings(max_examples=500, deadline=None)
@given(
    messages(),
    _header_text,
    st.sampled_from(sorted(subscriptions.ACK_MODES)),
    st.integers(1, 10**9),
    st.booleans(),
    VERSIONS,
)
def test_message_bytes_equal_encode(
    message: Message, sub_id: str, ack_mode: str, tag: int, redelivered: bool, version: str
) -> None:
    conn = _connection(version)
    sub = Subscription(sub_id, "/queue/q", ack_mode, "q")
    ack_id = subscriptions.ack_id(tag)
    headers = conn.subscriptions.message_frame_headers(sub, ack_id, redelivered, message)
    try:
        expected = encode(Frame("MESSAGE", headers, message.body), version)
    except ValueError:
        assert conn.subscriptions.message_bytes(sub, ack_id, redelivered, message) is None
        return
    # twice: the second takes the prefix and the message's headers from the caches
    assert conn.subscriptions.message_bytes(sub, ack_id, redelivered, message) == expected
    assert conn.subscriptions.message_bytes(sub, ack_id, redelivered, message) == expected
    other = _connection("1.2" if version != "1.2" else "1.0")  # one message, two versions
    sub = Subscription(sub_id, "/queue/q", ack_mode, "q")  # a subscription has one version
    headers = other.subscriptions.message_frame_headers(sub, ack_id, redelivered, message)
    with contextlib.suppress(ValueError):
        expected = encode(Frame("MESSAGE", headers, message.body), other.version)
        assert other.subscriptions.message_bytes(sub, ack_id, redelivered, message) == expected


# -- SEND and ACK in the adapter -------------------------------------------------------------

Step = bytes | Callable[[StompConnection], object]


def connect_frame(version: str) -> bytes:
    return (
        f"CONNECT\naccept-version:{version}\nhost:/\nlogin:guest\npasscode:guest\n\n\x00"
    ).encode()


def send(destination: str, body: bytes = b"m", *extra: str) -> bytes:
    headers = "".join(f"{h}\n" for h in (f"destination:{destination}", *extra))
    return f"SEND\n{headers}content-length:{len(body)}\n\n".encode() + body + b"\x00"


def ack(version: str, tag: int, *extra: str) -> bytes:
    ids = {"1.2": f"id:T_{tag}", "1.1": f"message-id:T_{tag}\nsubscription:s"}
    headers = "".join(f"{h}\n" for h in (ids.get(version, f"message-id:T_{tag}"), *extra))
    return f"ACK\n{headers}\n\x00".encode()


def subscribe(destination: str, ack_mode: str, sub_id: str = "s") -> bytes:
    return f"SUBSCRIBE\nid:{sub_id}\ndestination:{destination}\nack:{ack_mode}\n\n\x00".encode()


def _queues(broker: Broker) -> dict[str, list[tuple[str, str, Properties, bytes]]]:
    """Each queue's ready messages, in order (server-named queues as `amq.gen-N`)."""
    names = itertools.count()
    return {
        f"amq.gen-{next(names)}" if name.startswith("amq.gen-") else name: [
            (e.message.exchange, e.message.routing_key, e.message.properties, e.message.body)
            for e in queue.ready
        ]
        for name, queue in sorted(broker.vhosts["/"].queues.items())
    }


async def run_steps(steps: list[Step], *, fast: bool) -> tuple[list[Frame], Any, list[str], bytes]:
    """Drive one connection of a fresh broker through `steps` (bytes, or calls on it).

    Returns the frames the client got, the queues' ready messages, the
    commands the fast handlers took ("SEND+" for each repeat taken by
    `Publisher.send_repeats`; none when `fast` is off, which also switches the
    codec's fast paths off) and the bytes the client got (session id
    blanked: a counter).
    """
    broker = Broker(store=MemoryStore(), users=UserDirectory([default_guest()]))
    await broker.start()
    await remember_guest(broker)
    try:
        shell = FakeShell()
        conn = StompConnection(broker, shell, now=0.0)
        taken: list[str] = []

        def spy(handler: Callable[[Frame], bool]) -> Callable[[Frame], bool]:
            def handle(frame: Frame) -> bool:
                done = handler(frame)
                if done:
                    taken.append(frame.command)
                return done

            return handle

        real_next_repeat = FrameCodec.next_repeat

        def next_repeat(self: FrameCodec, headers: tuple[tuple[str, str], ...]) -> bytes | None:
            body = real_next_repeat(self, headers)
            if body is not None:
                taken.append("SEND+")
            return body

        # the connection's hot path, spied on, or switched off
        conn.fast_handlers = {c: spy(h) for c, h in conn.fast_handlers.items()} if fast else {}
        with contextlib.ExitStack() as patches:
            if fast:
                patches.enter_context(mock.patch.object(FrameCodec, "next_repeat", next_repeat))
            else:
                patches.enter_context(
                    mock.patch.object(framing, "decode_fast_block", return_value=None)
                )
            for step in steps:
                if isinstance(step, bytes):
                    conn.data_received(step, now=0.0)
                else:
                    step(conn)
                for _ in range(3):
                    await asyncio.sleep(0)  # deliveries and receipts run on the loop
        decoder = FrameCodec(Role.CLIENT)
        decoder.version = conn.version
        decoder.receive_data(bytes(shell.out))
        frames = []
        while (event := decoder.next_event()) is not NEED_DATA:
            assert isinstance(event, Frame)
            headers = tuple((n, v) for n, v in event.headers if n != "session")  # a counter
            frames.append(Frame(event.command, headers, event.body))
        raw = re.sub(rb"\nsession:session-\d+\n", b"\nsession:-\n", bytes(shell.out))
        return frames, _queues(broker), taken, raw
    finally:
        await broker.stop()


def _delete_queue(name: str) -> Callable[[StompConnection], object]:
    return lambda conn: conn.active_session().delete_queue(name)


def _delete_exchange(name: str) -> Callable[[StompConnection], object]:
    return lambda conn: conn.active_session().delete_exchange(name)


def _declare_exchange(name: str) -> Callable[[StompConnection], object]:
    return lambda conn: conn.active_session().declare_exchange(name, "direct")


def _cut(data: bytes, sizes: list[int]) -> list[Step]:
    """`data` as reads of these sizes (the rest in one more)."""
    chunks: list[Step] = []
    for size in sizes:
        chunks.append(data[:size])
        data = data[size:]
    return [*chunks, data] if data else chunks


def _sends(destination: str, tag: bytes, n: int, *extra: str) -> bytes:
    """`n` SENDs with the same headers (bodies of one length), as one read."""
    return b"".join(send(destination, tag + b"%02d" % i, *extra) for i in range(n))


class _DeletingShell(FakeShell):
    """A subscriber's shell that runs `delete` when its `after`-th MESSAGE is written:
    the destination of a run of repeated SENDs goes away in the middle of a read."""

    def __init__(self, after: int, delete: Callable[[], object]) -> None:
        super().__init__()
        self.after = after
        self.delete = delete
        self.seen = 0

    def send(self, data: bytes) -> None:
        super().send(data)
        if data.startswith(b"MESSAGE"):
            self.seen += 1
            if self.seen == self.after:
                self.delete()


def _subscriber_deleting(
    destination: str, after: int, delete: Callable[[Broker], object]
) -> Callable[[StompConnection], object]:
    """A step: another connection subscribes to `destination` with a `_DeletingShell`."""

    def step(conn: StompConnection) -> None:
        broker = conn.broker
        other = StompConnection(broker, _DeletingShell(after, lambda: delete(broker)), now=0.0)
        other.data_received(connect_frame(conn.version) + subscribe(destination, "auto"), now=0.0)

    return step


SCENARIOS: dict[str, Callable[[str], list[Step]]] = {
    "queue, repeated, receipts": lambda v: [
        connect_frame(v),
        *(send("/queue/a", bytes([i])) for i in range(3)),
        send("/queue/a", b"r", "receipt:1"),
        send("/queue/a", b"r2", "receipt:2"),
    ],
    "topic and exchange destinations": lambda v: [
        connect_frame(v),
        subscribe("/topic/t.x", "auto"),
        *(send("/topic/t.x", b"t%d" % i) for i in range(3)),
        *(send("/exchange/amq.direct/k", b"e%d" % i, f"receipt:e{i}") for i in range(2)),
    ],
    "headers become properties": lambda v: [
        connect_frame(v),
        send("/queue/a", b"1"),
        send("/queue/a", b"2", "persistent:true", "priority:3", "custom:h\\cx"),
        send("/queue/a", b"3", "content-type:text/plain", "JMSXGroupID:g", "reply-to:r"),
        send("/queue/a", b"4", "destination:/queue/other", "receipt:1", "receipt:2"),
        send("/queue/a", b"5", "user-id:someone-else"),  # PreconditionFailed: ERROR
    ],
    "queue arguments and transactions keep the general path": lambda v: [
        connect_frame(v),
        send("/queue/args", b"1", "x-max-length:2"),
        send("/queue/args", b"2", "x-max-length:2"),
        b"BEGIN\ntransaction:t\n\n\x00",
        send("/queue/args", b"3", "transaction:t"),
        b"COMMIT\ntransaction:t\n\n\x00",
        send("/queue/args", b"4", "x-max-length:3"),  # another argument: refused
    ],
    "a cached queue deleted, then declared again": lambda v: [
        connect_frame(v),
        send("/queue/gone", b"1"),
        send("/queue/gone", b"2"),
        _delete_queue("gone"),
        send("/queue/gone", b"3"),
        send("/queue/gone", b"4"),
    ],
    "a cached exchange deleted": lambda v: [
        connect_frame(v),
        _declare_exchange("ex"),
        send("/exchange/ex/k", b"1"),
        send("/exchange/ex/k", b"2"),
        _delete_exchange("ex"),
        send("/exchange/ex/k", b"3", "receipt:x"),  # NotFound: ERROR, connection closed
    ],
    "client-individual acks": lambda v: [
        connect_frame(v),
        *(send("/queue/w", b"w%d" % i) for i in range(4)),
        subscribe("/queue/w", "client-individual"),
        ack(v, 2),
        ack(v, 1, "receipt:a1"),
        ack(v, 4, "pad:xx", "id:T_1", "message-id:T_2"),  # repeated: the first counts
        ack(v, 3),
        ack(v, 3),  # twice: unknown message-id, ERROR
    ],
    "client acks are cumulative (general path)": lambda v: [
        connect_frame(v),
        *(send("/queue/c", b"c%d" % i) for i in range(4)),
        subscribe("/queue/c", "client"),
        ack(v, 2),
        ack(v, 4),
    ],
    "repeated header sets in one read": lambda v: [
        connect_frame(v),
        subscribe("/queue/live", "auto"),
        b"".join(
            [
                _sends("/queue/live", b"a", 6, "pad:xxxx"),
                send("/queue/live", b"r00", "pad:xxxx", "receipt:r1"),
                _sends("/queue/live", b"b", 6, "pad:xxxx"),
                _sends("/queue/live", b"p", 4, "persistent:true", "priority:4", "custom:a\\cb"),
                _sends("/queue/live", b"q", 4, "persistent:true", "priority:4", "custom:a:b"),
                _sends("/queue/stay", b"s", 4, "content-type:text/plain", "JMSXGroupID:g"),
                _sends("/queue/stay", b"e", 3, "reply-to:/queue/back"),  # not kept
                _sends("/topic/t.x", b"t", 3, "x:1"),
            ]
        ),
    ],
    "repeats cut across reads and interrupted by receipts": lambda v: [
        connect_frame(v),
        subscribe("/queue/cut", "auto"),
        *_cut(
            b"".join(
                [
                    _sends("/queue/cut", b"a", 5, "pad:xx"),
                    send("/queue/cut", b"r00", "pad:xx", "receipt:r1"),
                    _sends("/queue/cut", b"b", 5, "pad:xx"),
                    b"\n\n",  # heart-beats
                    send("/queue/cut", b"r01", "pad:xx", "receipt:r2"),
                    _sends("/queue/cut", b"c", 5, "pad:xx"),
                ]
            ),
            [37, 120, 5, 64, 300, 1, 90],
        ),
    ],
    "repeats to a queue deleted between reads": lambda v: [
        connect_frame(v),
        _sends("/queue/gone", b"a", 4, "pad:x"),
        _delete_queue("gone"),
        _sends("/queue/gone", b"b", 4, "pad:x"),
    ],
    "repeats to a queue deleted mid-read": lambda v: [
        connect_frame(v),
        send("/queue/mid", b"m"),  # declares it
        _subscriber_deleting("/queue/mid", 3, lambda b: b.vhosts["/"].delete_queue("mid")),
        _sends("/queue/mid", b"a", 8, "pad:x"),
    ],
    "repeats to an exchange deleted mid-read": lambda v: [
        connect_frame(v),
        _declare_exchange("ex"),
        _subscriber_deleting("/exchange/ex/k", 3, lambda b: b.vhosts["/"].delete_exchange("ex")),
        _sends("/exchange/ex/k", b"a", 8, "pad:x"),  # NotFound: ERROR, connection closed
    ],
    "a broken repeat is an ERROR": lambda v: [
        connect_frame(v),
        _sends("/queue/broken", b"a", 5, "pad:x") + send("/queue/broken", b"a99", "pad:x")[:-1],
        b"yz\x00",  # longer than its content-length
    ],
    "acks in a transaction (general path)": lambda v: [
        connect_frame(v),
        *(send("/queue/x", b"x%d" % i) for i in range(3)),
        subscribe("/queue/x", "client-individual"),
        b"BEGIN\ntransaction:t\n\n\x00",
        ack(v, 1, "transaction:t"),
        b"ABORT\ntransaction:t\n\n\x00",
        ack(v, 1),
    ],
}


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_fast_handlers_equal_general(scenario: str, version: str) -> None:
    steps = SCENARIOS[scenario](version)
    frames, queues, taken, raw = await run_steps(steps, fast=True)
    general_frames, general_queues, none, general_raw = await run_steps(steps, fast=False)
    assert none == []
    assert frames == general_frames
    assert raw == general_raw  # byte for byte
    assert queues == general_queues
    if scenario == "queue arguments and transactions keep the general path":
        assert taken == []
        assert frames[-1].command == "ERROR"
    else:
        assert taken, "the fast path was never taken"
    if scenario == "headers become properties":
        assert taken.count("SEND") == 3  # the last raises (user-id) before it is counted
        assert frames[-1].command == "ERROR"
    if scenario == "client-individual acks":
        assert taken.count("ACK") == 4  # not the repeated one
        assert frames[-1].command == "ERROR"
    if scenario in ("a cached exchange deleted", "repeats to an exchange deleted mid-read"):
        assert frames[-1].command == "ERROR"
    if scenario == "a broken repeat is an ERROR":
        assert frames[-1].command == "ERROR"
        assert frames[-1].get("message") == "body longer than content-length"
    if scenario.startswith("repeat"):
        assert "SEND+" in taken, "no repeat was taken"
    if scenario == "repeated header sets in one read":
        # each set: the first SEND goes general (new destination) or fast (new
        # plan), the next one fast, the rest repeat; none for the escaped header
        # (general decoding) and the reply-to (its properties are not kept)
        assert taken.count("SEND+") == 4 + 5 + 0 + 2 + 2 + 0 + 1


def test_fast_send_seeds_the_header_caches_with_what_they_would_hold() -> None:
    """`Publisher.send_fast` stores "no header" for a message without properties: it must be so."""
    plain = Message("", "q", Properties(), b"x")
    assert mapping.message_headers(plain) == []
    for version in ("1.0", "1.1", "1.2"):
        assert mapping.message_wire_headers(Message("", "q", Properties(), b"x"), version) == b""


# -- receipts deep into a large read ---------------------------------------------------------


class FlushingShell(FakeShell):
    """A shell that can write before the end of the tick; records what each flush wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes: list[bytes] = []

    def flush(self) -> None:
        self.flushes.append(bytes(self.out))
        self.out.clear()


async def test_a_receipt_deep_into_a_read_is_flushed_at_once() -> None:
    broker = Broker(store=MemoryStore(), users=UserDirectory([default_guest()]))
    await broker.start()
    await remember_guest(broker)
    try:
        shell = FlushingShell()
        conn = StompConnection(broker, shell, now=0.0)
        conn.data_received(connect_frame("1.2"), now=0.0)
        few = _sends("/queue/f", b"a", 5) + send("/queue/f", b"r00", "receipt:few")
        conn.data_received(few, now=0.0)
        assert shell.flushes == []  # a short read: the end of the tick writes it
        limit = adapter.RECEIPT_FLUSH_FRAMES
        many = [_sends("/queue/f", b"b", limit), send("/queue/f", b"r01", "receipt:deep")]
        conn.data_received(b"".join([*many, _sends("/queue/f", b"c", 5)]), now=0.0)
        assert len(shell.flushes) == 1
        assert shell.flushes[0].endswith(b"RECEIPT\nreceipt-id:deep\n\n\x00")
        assert b"receipt-id:few" in shell.flushes[0]  # what was waiting goes first
        conn.data_received(b"".join(many), now=0.0)  # the count starts again with each read
        assert len(shell.flushes) == 2
        assert broker.vhosts["/"].queues["f"].message_count == 6 + 2 * (limit + 1) + 5
    finally:
        await broker.stop()
