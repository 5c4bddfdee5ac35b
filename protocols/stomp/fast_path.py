"""The STOMP fast paths: whole simple frames decoded in one go, MESSAGE frames built from parts.

Decoding
--------
The frames a busy connection carries (SEND, ACK, NACK from a client; MESSAGE and
RECEIPT to one) are nearly always simple: LF line ends, no escapes, one
content-length. `decode_fast` parses such a frame in one go when it is complete
in the buffer and returns None for anything else, which then takes the general
path (`framing.FrameCodec`): that is where every error is raised and every partial frame is
scanned incrementally. tests/stomp/test_fast_path.py proves that both paths give
equal frames (and the same errors, through the general path) for any input.

A producer mostly sends the same headers again and again (destination,
content-length, its own). Once two fast-decoded frames in a row have equal
headers, the codec keeps that header block (`HeaderBlock`); a frame that starts
with the same bytes is then taken by comparing them (`decode_repeat`, tried
first), and shares the block's headers tuple, so the adapter can recognise it
by identity and take the frames right behind it without making Frame objects
(`FrameCodec.next_repeat`).

Encoding
--------
A MESSAGE frame is mostly the same bytes again and again: the subscription
and destination headers (the same per subscription and destination), the
message's own headers (the same for every subscriber of one message), then
the ids. :func:`message_prefix` and :func:`header_lines` build those parts
once (callers cache them), and :func:`encode_message` joins them with what
changes per delivery. The result is byte for byte what :func:`encode` gives
for the headers :func:`message_headers_of` lists (tests/stomp/test_fast_path.py).

Nothing here raises: None sends the caller to the general path, which
decides (and raises every error).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from moorage.protocols.buffers import ONE_COPY_FROM, copy_out
from moorage.protocols.stomp.frames import (
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_HEADERS,
    Frame,
    header_encodable,
    header_line,
)


@dataclass(frozen=True, slots=True)
class HeaderBlock:
    """A header block (with a `content-length`) that `decode_fast` parsed and saw
    repeated: `decode_repeat` recognises the next frame that starts with the
    same bytes without parsing it (`FrameCodec` keeps one)."""

    raw: bytes  # the command line, the header lines and the blank line, as on the wire
    command: str
    headers: tuple[tuple[str, str], ...]
    length: int  # the body octets its content-length gives


def decode_fast(
    buf: bytes | bytearray,
    accept: frozenset[str],
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    max_headers: int = DEFAULT_MAX_HEADERS,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
) -> tuple[Frame, int] | None:
    """The frame at the start of `buf` and the octets it takes (NUL included), or None.

    `buf` must start with a command (heart-beat EOLs already skipped). None
    means "use the general path": the frame is incomplete, has a CR, a
    backslash (an escape) or a NUL in its headers, an unusual `content-length`,
    is not UTF-8, breaks a limit, or is malformed; without `content-length`
    the body runs to the first NUL, as in the general path. Without a backslash, 1.0,
    1.1 and 1.2 header values read the same, so the version does not matter;
    repeated headers are kept as the general path keeps them. A frame
    returned equals the general path's. Never raises.
    """
    fast = decode_fast_block(buf, accept, max_header_size, max_headers, max_body_size)
    return None if fast is None else (fast[0], fast[1])


def decode_fast_block(
    buf: bytes | bytearray,
    accept: frozenset[str],
    max_header_size: int,
    max_headers: int,
    max_body_size: int,
) -> tuple[Frame, int, int] | None:
    """`decode_fast`, and the size of the frame's header block (blank line included)
    when its body length comes from a content-length (else 0)."""
    end = buf.find(b"\n\n", 0, max_header_size + 1)
    if end < 0:
        return None
    try:
        text = buf[:end].decode()
    except UnicodeDecodeError:
        return None
    if "\\" in text or "\r" in text or "\x00" in text:
        return None
    lines = text.split("\n")
    command = lines[0]
    if command not in accept or len(lines) > max_headers + 1:
        return None
    headers = []
    length_text = None
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            return None
        if length_text is None and name == "content-length":
            length_text = value
        headers.append((name, value))
    start = end + 2
    if length_text is None:  # the body runs to the first NUL (ACK, NACK, RECEIPT: none)
        stop = buf.find(b"\x00", start, start + max_body_size + 1)
        if stop < 0:
            return None
        block_size = 0
    elif length_text.isascii() and length_text.isdigit():
        stop = start + int(length_text)
        if stop - start > max_body_size or len(buf) <= stop or buf[stop]:
            return None
        block_size = start
    else:
        return None
    # `copy_out`, inlined for the usual small body: this runs once per frame
    body = bytes(buf[start:stop]) if stop - start < ONE_COPY_FROM else copy_out(buf, start, stop)
    return Frame(command, tuple(headers), body), stop + 1, block_size


def decode_repeat(
    buf: bytes | bytearray,
    block: HeaderBlock,
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    max_headers: int = DEFAULT_MAX_HEADERS,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
) -> tuple[Frame, int] | None:
    """`decode_fast(buf, ...)` for a frame whose header block is `block`'s, byte for byte.

    A producer sends the same headers again and again (destination,
    content-length, its own): this compares them instead of parsing them.
    The headers decode as they did, so only the limits (which may have
    changed since) and the body's NUL are checked again; the frame shares
    `block.headers`, so a caller may recognise it by identity. None when
    `buf` does not start with the block or `decode_fast` would return None
    (then it decides). Never raises.
    """
    stop = repeat_end(buf, block, max_header_size, max_headers, max_body_size)
    if stop < 0:
        return None
    return Frame(block.command, block.headers, copy_out(buf, len(block.raw), stop)), stop + 1


def repeat_end(
    buf: bytes | bytearray,
    block: HeaderBlock,
    max_header_size: int,
    max_headers: int,
    max_body_size: int,
) -> int:
    """Where the body of `decode_repeat`'s frame ends (its NUL), or -1 for None."""
    raw = block.raw
    if not buf.startswith(raw):
        return -1
    start = len(raw)
    length = block.length
    stop = start + length
    if (
        start > max_header_size + 1  # decode_fast's search for the blank line stops there
        or len(block.headers) > max_headers
        or length > max_body_size
        or len(buf) <= stop
        or buf[stop]
    ):
        return -1
    return stop


# -- MESSAGE frames ----------------------------------------------------------------------------


def message_headers_of(
    subscription: str,
    destination: str,
    message_id: str,
    *,
    ack: bool,
    redelivered: bool,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    version: str,
) -> tuple[tuple[str, str], ...]:
    """The headers of a MESSAGE frame (1.2 "MESSAGE"), the general path.

    `ack`: the client acknowledges it (a 1.2 MESSAGE then carries `ack`,
    equal to `message-id`). The message's own `headers` that cannot be
    encoded for `version` are left out; `content-length` comes last.
    """
    frame_headers = [
        ("subscription", subscription),
        ("destination", destination),
        ("message-id", message_id),
    ]
    if ack and version == "1.2":
        frame_headers.append(("ack", message_id))
    # Always present, as RabbitMQ sends it (transcript `send_receipt_queue`).
    frame_headers.append(("redelivered", "true" if redelivered else "false"))
    frame_headers.extend((n, v) for n, v in headers if header_encodable(n, v, version))
    frame_headers.append(("content-length", str(len(body))))
    return tuple(frame_headers)


def message_prefix(subscription: str, destination: str, version: str) -> bytes | None:
    """``MESSAGE``, the subscription and destination headers and ``message-id:``,
    escaped for `version`; None when one of them cannot be encoded there."""
    sub_line = header_line("subscription", subscription, version)
    target = header_line("destination", destination, version)
    if sub_line is None or target is None:
        return None
    return b"MESSAGE\n" + sub_line + target + b"message-id:"


def header_lines(headers: Iterable[tuple[str, str]], version: str) -> bytes:
    """A MESSAGE's own headers as header lines for `version`, leaving out those
    that cannot be encoded there (as `message_headers_of` does)."""
    lines = [header_line(n, v, version) for n, v in headers]
    return b"".join(line for line in lines if line is not None)


def encode_message(
    prefix: bytes,
    message_id: str,
    *,
    ack: bool,
    redelivered: bool,
    lines: bytes,
    body: bytes,
    version: str,
) -> bytes:
    """``encode(Frame("MESSAGE", message_headers_of(...), body), version)`` from its
    parts: `prefix` from `message_prefix`, `lines` from `header_lines`."""
    ids = message_id.encode()
    if ack and version == "1.2":
        ids += b"\nack:" + ids
    return b"%s%s\n%s%scontent-length:%d\n\n%s\x00" % (
        prefix,
        ids,
        b"redelivered:true\n" if redelivered else b"redelivered:false\n",
        lines,
        len(body),
        body,
    )
