"""Sans-IO STOMP 1.0 / 1.1 / 1.2 codec: bytes in, frames out; frames in, bytes out.

Theory of operation
-------------------
There is no IO, no asyncio and no clock here. The shell feeds whatever bytes
the socket produced to :meth:`FrameCodec.receive_data` (``b""`` means EOF)
and calls :meth:`FrameCodec.next_event` until it returns :data:`NEED_DATA`.
Frames are parsed lazily, one per ``next_event`` call, so the adapter can
change :attr:`FrameCodec.version` after handling CONNECT and the frames that
follow (pipelined behind it) are unescaped by the negotiated rules.
Outgoing frames are built with :meth:`FrameCodec.send` (or :func:`encode`).

The grammar (STOMP 1.2, "Augmented BNF")::

    frame        = command EOL *( header EOL ) EOL *OCTET NULL *( EOL )
    command      = client-command | server-command
    header       = header-name ":" header-value
    EOL          = [CR] LF
    heart-beat   = EOL            ; between frames, ignored here

Parsing a frame happens in two phases:

1. **Header block.** EOLs before a command are heart-beats and skipped. The
   decoder then looks for the blank line that ends the header block,
   continuing its search where the previous call stopped (no rescans). The
   block is refused while buffering once it exceeds ``max_header_size`` bytes
   or ``max_headers`` lines, and a raw NUL anywhere before the blank line is
   refused at once: a NUL would end the frame in a receiver's parser, so
   forwarding it would let a publisher inject frames into other clients'
   streams.

2. **Body.** With a ``content-length`` header (1.2 "Body"), exactly that many
   octets (which may contain NULs) must be followed by NUL; the length is
   checked against ``max_body_size`` *before* the body is buffered, and a
   missing NUL after it is "body longer than content-length". Without one the
   body runs to the first NUL, and a body growing past ``max_body_size``
   without a NUL is refused while buffering.

Header values are escaped per version (1.2 "Value Encoding"; 1.1 has the same
list minus ``\\r``; 1.0 has none). CONNECT, STOMP and CONNECTED frames are
never escaped, so that 1.0 clients can connect. An undefined escape sequence
is a fatal error. In every version a raw CR inside a header line (other than
the CR of a CR LF line end) is refused; CR LF line ends are accepted in every
version (the 1.2 grammar; RabbitMQ and ActiveMQ accept them in 1.0/1.1 too).

A header that appears more than once keeps every occurrence in
:attr:`Frame.headers`; :meth:`Frame.get` returns the first, as 1.2
"Repeated Header Entries" requires.

Errors: every violation raises :class:`ProtocolError`, whose ``message`` is
the one-line summary for an ERROR frame's ``message`` header and ``detail``
the body. The codec then stays in ERROR: every later ``next_event`` raises
the same error. Any other exception escaping ``next_event`` is a bug.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from moorage.protocols.buffers import copy_out

__all__ = [
    "CLIENT_COMMANDS",
    "NEED_DATA",
    "SERVER_COMMANDS",
    "SUPPORTED_VERSIONS",
    "ConnectionClosed",
    "Event",
    "Frame",
    "FrameCodec",
    "HeaderBlock",
    "ProtocolError",
    "Role",
    "decode_fast",
    "decode_repeat",
    "encode",
    "header_encodable",
    "header_line",
    "negotiate_heartbeat",
    "negotiate_version",
    "parse_heartbeat",
]

SUPPORTED_VERSIONS: Final = ("1.0", "1.1", "1.2")

# 1.2 "Client Frames" / "Server Frames"
CLIENT_COMMANDS: Final = frozenset(
    {
        "CONNECT",
        "STOMP",
        "SEND",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "ACK",
        "NACK",
        "BEGIN",
        "COMMIT",
        "ABORT",
        "DISCONNECT",
    }
)
SERVER_COMMANDS: Final = frozenset({"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"})

# 1.2 "Value Encoding": "CONNECT and CONNECTED frames do not escape ... in order to
# be backward compatible with STOMP 1.0 clients". STOMP is CONNECT's 1.1+ alias.
UNESCAPED_COMMANDS: Final = frozenset({"CONNECT", "STOMP", "CONNECTED"})

DEFAULT_MAX_HEADER_SIZE: Final = 64 * 1024
DEFAULT_MAX_HEADERS: Final = 1000
DEFAULT_MAX_BODY_SIZE: Final = 128 * 1024 * 1024

_DECODE_ESCAPES: Final[dict[str, dict[int, str]]] = {
    "1.1": {ord("n"): "\n", ord("c"): ":", ord("\\"): "\\"},
    "1.2": {ord("r"): "\r", ord("n"): "\n", ord("c"): ":", ord("\\"): "\\"},
}
_ENCODE_ESCAPES: Final[dict[str, dict[int, str]]] = {
    "1.1": {ord("\\"): "\\\\", ord("\n"): "\\n", ord(":"): "\\c"},
    "1.2": {ord("\\"): "\\\\", ord("\n"): "\\n", ord(":"): "\\c", ord("\r"): "\\r"},
}


_EOL_OCTETS: Final = frozenset(b"\r\n")


class Role(enum.Enum):
    """Which side this codec is: a SERVER decodes client frames, a CLIENT server frames."""

    SERVER = "server"
    CLIENT = "client"


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


@dataclass(frozen=True, slots=True)
class Frame:
    """One STOMP frame. Header order and repetitions are kept as on the wire."""

    command: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header `name` (1.2 "Repeated Header Entries")."""
        for key, value in self.headers:
            if key == name:
                return value
        return default


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """EOF was received between frames."""


Event = Frame | ConnectionClosed


class ProtocolError(Exception):
    """A violation of the STOMP grammar or of a limit; the connection must end.

    Attributes:
        message: one line for the ERROR frame's `message` header.
        detail: a longer explanation for the ERROR frame's body.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or message


class FrameCodec:
    """The frame layer of one STOMP connection: `receive_data`, `next_event`, `send`.

    Args:
        role: SERVER decodes client commands and sends server commands; CLIENT the reverse.
        max_header_size: bytes allowed for the command line plus headers.
        max_headers: header lines allowed in one frame.
        max_body_size: body octets allowed in one frame.

    `version` selects the escaping rules for frames other than CONNECT, STOMP
    and CONNECTED in both directions; it starts at "1.0" and the adapter sets
    it once the version is negotiated. The limits may be changed at any time
    (e.g. raised after authentication); they apply to the next frame checked.
    """

    def __init__(
        self,
        role: Role = Role.SERVER,
        *,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
        max_headers: int = DEFAULT_MAX_HEADERS,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    ) -> None:
        self.role = role
        self.version: str = "1.0"
        self.max_header_size = max_header_size
        self.max_headers = max_headers
        self.max_body_size = max_body_size
        self._accept = CLIENT_COMMANDS if role is Role.SERVER else SERVER_COMMANDS
        self._buf = bytearray()
        self._eof = False
        self._error: ProtocolError | None = None
        self._repeat: HeaderBlock | None = None  # see `_remember_block` and `decode_repeat`
        self._previous_headers: tuple[tuple[str, str], ...] = ()
        self._reset_scan()

    def _reset_scan(self) -> None:
        self._line_start = 0  # start of the header line being looked at
        self._lines = 0  # header-block lines seen so far (command included)
        self._nul_checked = 0  # buffer prefix known to hold no NUL (header phase)
        self._body_start = -1  # set once the header block is complete
        self._headers: tuple[tuple[str, str], ...] = ()
        self._command = ""
        self._length: int | None = None
        self._body_scan = 0

    # -- input -------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means EOF. Never raises."""
        if self._error is not None or self._eof:
            return
        if data:
            self._buf += data
        else:
            self._eof = True

    def next_event(self) -> Event | _NeedData:
        """Parse the next frame.

        Returns a :class:`Frame`, :data:`NEED_DATA` when more bytes are needed,
        or :class:`ConnectionClosed` after a clean EOF (again on every call).

        Raises:
            ProtocolError: malformed, oversized, or truncated by EOF. Sticky:
                later calls raise it again. Any other exception is a bug.
        """
        if self._error is not None:
            raise self._error
        try:
            event = self._parse()
        except ProtocolError as e:
            self._error = e
            self._buf.clear()
            raise
        if event is NEED_DATA and self._eof:
            if self._buf or self._body_start >= 0 or self._lines:
                self._error = ProtocolError(
                    "connection closed mid-frame",
                    "The connection ended before the frame's NUL terminator.",
                )
                raise self._error
            return ConnectionClosed()
        return event

    def _parse(self) -> Event | _NeedData:
        if self._body_start < 0:
            if self._lines == 0:
                buf = self._buf
                if not buf or (buf[0] in _EOL_OCTETS and not self._skip_heartbeats()):
                    return NEED_DATA
                repeat = self._repeat
                if repeat is not None:
                    again = decode_repeat(
                        buf, repeat, self.max_header_size, self.max_headers, self.max_body_size
                    )
                    if again is not None:
                        del buf[: again[1]]
                        self._nul_checked = 0
                        return again[0]
                fast = _decode_fast(
                    buf, self._accept, self.max_header_size, self.max_headers, self.max_body_size
                )
                if fast is not None:
                    frame, size, block_size = fast
                    if block_size:
                        self._remember_block(frame, block_size)
                    del buf[:size]
                    self._nul_checked = 0  # the only scan state a NEED_DATA scan leaves at 0 lines
                    return frame
            if not self._scan_header_block():
                return NEED_DATA
        return self._take_body()

    def _remember_block(self, frame: Frame, block_size: int) -> None:
        """Keep the header block of a frame that repeats the previous one's headers.

        Only then: a client's MESSAGE frames, or a producer's SENDs with ids
        of their own, never repeat, and copying each block would be wasted.
        """
        headers = frame.headers
        if headers == self._previous_headers:
            raw = bytes(self._buf[:block_size])
            self._repeat = HeaderBlock(raw, frame.command, headers, len(frame.body))
        self._previous_headers = headers

    def _skip_heartbeats(self) -> bool:
        """Drop EOLs before a command (heart-beats); True when a command byte is next."""
        buf = self._buf
        i, n = 0, len(buf)
        while i < n:
            c = buf[i]
            if c == 0x0A:
                i += 1
            elif c == 0x0D:
                if i + 1 >= n:
                    break
                if buf[i + 1] != 0x0A:
                    raise ProtocolError(
                        "malformed frame", "CR not followed by LF before a command."
                    )
                i += 2
            else:
                break
        if i:
            del buf[:i]
        return bool(buf) and buf[0] != 0x0D

    def _scan_header_block(self) -> bool:
        """Find the blank line ending the headers, enforcing limits as bytes arrive."""
        buf = self._buf
        nul = buf.find(b"\x00", self._nul_checked)
        while True:
            nl = buf.find(b"\n", self._line_start)
            if nl < 0:
                break
            if 0 <= nul < nl:
                raise _nul_in_header()
            end = nl - 1 if nl > self._line_start and buf[nl - 1] == 0x0D else nl
            if end == self._line_start and self._lines:
                self._body_start = nl + 1
                self._parse_header_block(self._line_start)
                return True
            self._lines += 1
            if self._lines > self.max_headers + 1:
                raise ProtocolError(
                    "too many headers", f"A frame may carry at most {self.max_headers} headers."
                )
            self._line_start = nl + 1
        if nul >= 0:
            raise _nul_in_header()
        self._nul_checked = len(buf)
        if len(buf) > self.max_header_size:
            raise ProtocolError(
                "frame header too large",
                f"The command and headers of a frame may take at most "
                f"{self.max_header_size} bytes.",
            )
        return False

    def _parse_header_block(self, block_end: int) -> None:
        if block_end > self.max_header_size:
            raise ProtocolError(
                "frame header too large",
                f"The command and headers of a frame may take at most "
                f"{self.max_header_size} bytes.",
            )
        lines = bytes(self._buf[:block_end]).split(b"\n")
        lines.pop()  # what follows the last LF: the blank line's start
        lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
        command = _text(lines[0], "command")
        if command not in self._accept:
            raise ProtocolError(
                "unknown command",
                f"'{command[:100]}' is not a STOMP {self.role.value}-bound command; expected "
                + ", ".join(sorted(self._accept))
                + ".",
            )
        unescape = None if command in UNESCAPED_COMMANDS else _DECODE_ESCAPES.get(self.version)
        headers: list[tuple[str, str]] = []
        for raw in lines[1:]:
            colon = raw.find(b":")
            if colon < 0:
                raise ProtocolError(
                    "malformed header", f"Header line without ':' in {command} frame."
                )
            if b"\r" in raw:
                raise ProtocolError(
                    "malformed header", "A raw CR inside a header name or value is not allowed."
                )
            name = _text(raw[:colon], "header name")
            value = _text(raw[colon + 1 :], "header value")
            if unescape is not None:
                name = _unescape(name, unescape)
                value = _unescape(value, unescape)
            headers.append((name, value))
        self._command = command
        self._headers = tuple(headers)
        length = Frame(command, self._headers).get("content-length")
        if length is not None:
            length = length.strip()
            if not (length.isascii() and length.isdigit()):
                raise ProtocolError(
                    "invalid content-length",
                    f"content-length must be a decimal integer: {length!r}",
                )
            self._length = int(length)
            if self._length > self.max_body_size:
                raise _body_too_large(self.max_body_size)
        self._body_scan = self._body_start

    def _take_body(self) -> Event | _NeedData:
        buf = self._buf
        start = self._body_start
        if self._length is not None:
            end = start + self._length
            if len(buf) <= end:
                return NEED_DATA
            if buf[end] != 0:
                raise ProtocolError(
                    "body longer than content-length",
                    f"Expected NUL after the {self._length} body octets of content-length.",
                )
        else:
            end = buf.find(b"\x00", self._body_scan)
            if end < 0:
                self._body_scan = len(buf)
                if len(buf) - start > self.max_body_size:
                    raise _body_too_large(self.max_body_size)
                return NEED_DATA
            if end - start > self.max_body_size:
                raise _body_too_large(self.max_body_size)
        frame = Frame(self._command, self._headers, copy_out(buf, start, end))
        del buf[: end + 1]
        self._reset_scan()
        return frame

    def next_repeat(self, headers: tuple[tuple[str, str], ...]) -> bytes | None:
        """The body of the next frame when it repeats the header block of the frame
        with these `headers` (the tuple of a frame this codec returned).

        That frame is then consumed: it is ``Frame(command, headers, body)``,
        what `next_event` would have returned (`decode_repeat`). None: the
        next frame is any other (or incomplete, or the codec is in ERROR);
        nothing is consumed and `next_event` decides. Never raises.
        """
        block = self._repeat
        if block is None or block.headers is not headers or self._lines or self._error:
            return None
        buf = self._buf
        stop = _repeat_end(buf, block, self.max_header_size, self.max_headers, self.max_body_size)
        if stop < 0:
            return None
        body = copy_out(buf, len(block.raw), stop)
        del buf[: stop + 1]
        self._nul_checked = 0
        return body

    # -- output ------------------------------------------------------------------------

    def send(self, frame: Frame) -> bytes:
        """The bytes of `frame`, escaped for this codec's `version`.

        Raises ValueError when a header cannot be represented in that version
        (see :func:`header_encodable`); callers filter headers beforehand.
        """
        return encode(frame, self.version)


# -- fast path -------------------------------------------------------------------------------
#
# The frames a busy connection carries (SEND, ACK, NACK from a client; MESSAGE and
# RECEIPT to one) are nearly always simple: LF line ends, no escapes, one
# content-length. `decode_fast` parses such a frame in one go when it is complete
# in the buffer and returns None for anything else, which then takes the general
# path above: that is where every error is raised and every partial frame is
# scanned incrementally. tests/stomp/test_fast_path.py proves that both paths give
# equal frames (and the same errors, through the general path) for any input.
#
# A producer mostly sends the same headers again and again (destination,
# content-length, its own). Once two fast-decoded frames in a row have equal
# headers, the codec keeps that header block (`HeaderBlock`); a frame that starts
# with the same bytes is then taken by comparing them (`decode_repeat`, tried
# first), and shares the block's headers tuple, so the adapter can recognise it
# by identity and take the frames right behind it without making Frame objects
# (`FrameCodec.next_repeat`).


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
    fast = _decode_fast(buf, accept, max_header_size, max_headers, max_body_size)
    return None if fast is None else (fast[0], fast[1])


def _decode_fast(
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
    return Frame(command, tuple(headers), copy_out(buf, start, stop)), stop + 1, block_size


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
    stop = _repeat_end(buf, block, max_header_size, max_headers, max_body_size)
    if stop < 0:
        return None
    return Frame(block.command, block.headers, copy_out(buf, len(block.raw), stop)), stop + 1


def _repeat_end(
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


def header_line(name: str, value: str, version: str, command: str = "MESSAGE") -> bytes | None:
    """``name:value`` and LF, escaped as `encode` writes it; None if not encodable."""
    if not header_encodable(name, value, version, command):
        return None
    table = None if command in UNESCAPED_COMMANDS else _ENCODE_ESCAPES.get(version)
    if table is not None:
        name = name.translate(table)
        value = value.translate(table)
    return f"{name}:{value}\n".encode()


def _nul_in_header() -> ProtocolError:
    return ProtocolError(
        "NUL in frame header",
        "A NUL octet may only end a frame; it is not allowed in a command or header.",
    )


def _body_too_large(limit: int) -> ProtocolError:
    return ProtocolError("frame body too large", f"A frame body may be at most {limit} octets.")


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("malformed frame", f"The {what} is not valid UTF-8.") from None


def _unescape(value: str, table: dict[int, str]) -> str:
    """Undo 1.1/1.2 escaping; an undefined escape is fatal (1.2 "Value Encoding")."""
    if "\\" not in value:
        return value
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == "\\":
            if i + 1 >= n or ord(value[i + 1]) not in table:
                seq = value[i : i + 2]
                raise ProtocolError(
                    "undefined escape sequence", f"Header contains undefined escape {seq!r}."
                )
            out.append(table[ord(value[i + 1])])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def header_encodable(name: str, value: str, version: str, command: str = "MESSAGE") -> bool:
    """Can this header be written to a `version` peer in a `command` frame?

    NUL is never representable in a header. Without escaping (1.0, CONNECT,
    CONNECTED) CR and LF are not representable and neither is ':' in a name;
    1.1 has no escape for CR.
    """
    if "\x00" in name or "\x00" in value:
        return False
    if version == "1.0" or command in UNESCAPED_COMMANDS:
        return not ("\n" in name or "\r" in name or ":" in name or "\n" in value or "\r" in value)
    if version == "1.1":
        return "\r" not in name and "\r" not in value
    return True


def encode(frame: Frame, version: str) -> bytes:
    """Serialise a frame for a peer speaking `version`.

    The body is written as given: the caller adds `content-length` when the
    body may contain NUL (the adapter always does for MESSAGE and ERROR).
    Raises ValueError for a header that `header_encodable` refuses.
    """
    table = None if frame.command in UNESCAPED_COMMANDS else _ENCODE_ESCAPES.get(version)
    parts = [frame.command]
    for name, value in frame.headers:
        if not header_encodable(name, value, version, frame.command):
            raise ValueError(f"header {name!r} cannot be encoded for STOMP {version}")
        if table is not None:
            name = name.translate(table)
            value = value.translate(table)
        parts.append(f"{name}:{value}")
    parts.append("\n")
    return "\n".join(parts).encode("utf-8") + frame.body + b"\x00"


def negotiate_version(accept_version: str | None) -> str | None:
    """The highest common version (1.2 "Protocol Negotiation"); None if there is none.

    A CONNECT without `accept-version` is a 1.0 client.
    """
    if accept_version is None:
        return "1.0"
    offered = {v.strip() for v in accept_version.split(",")}
    for version in reversed(SUPPORTED_VERSIONS):
        if version in offered:
            return version
    return None


def parse_heartbeat(value: str | None) -> tuple[int, int]:
    """`heart-beat: cx,cy` as two non-negative ints of milliseconds (absent: 0,0)."""
    if value is None:
        return 0, 0
    parts = value.split(",")
    if len(parts) != 2 or not all(p.strip().isascii() and p.strip().isdigit() for p in parts):
        raise ProtocolError(
            "invalid heart-beat header", f"heart-beat must be two integers 'cx,cy': {value!r}"
        )
    return int(parts[0]), int(parts[1])


def negotiate_heartbeat(client: tuple[int, int], server: tuple[int, int]) -> tuple[int, int]:
    """(ms between server sends, ms expected between client sends); 0 disables.

    1.2 "Heart-beating": the sender's interval is MAX(its cx, the other's cy),
    and 0 on either side means no heart-beats in that direction.
    """
    cx, cy = client
    sx, sy = server
    send = 0 if sx == 0 or cy == 0 else max(sx, cy)
    receive = 0 if cx == 0 or sy == 0 else max(cx, sy)
    return send, receive
