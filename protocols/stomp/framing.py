"""The STOMP frame layer: bytes in, frames out; frames in, bytes out (no connection state).

Theory of operation
-------------------
There is no IO, no asyncio and no clock here. The shell feeds whatever bytes
the socket produced to :meth:`FrameCodec.receive_data` (``b""`` means EOF)
and calls :meth:`FrameCodec.next_event` until it returns :data:`NEED_DATA`.
Frames are parsed lazily, one per ``next_event`` call, so the adapter can
change :attr:`FrameCodec.version` after handling CONNECT and the frames that
follow (pipelined behind it) are unescaped by the negotiated rules.
Outgoing frames are built with :meth:`FrameCodec.send` (or :func:`encode`).
Which frames are legal when is the connection codec's business
(`codec.StompCodec`, built on this class); the frame layer alone decodes any
frame of the peer's side, which is what tests and benchmark clients want.

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

from moorage.protocols.buffers import ONE_COPY_FROM, copy_out
from moorage.protocols.stomp.fast_path import (
    HeaderBlock,
    decode_fast_block,
    decode_repeat,
    repeat_end,
)
from moorage.protocols.stomp.frames import (
    CLIENT_COMMANDS,
    DECODE_ESCAPES,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_HEADERS,
    EOL_OCTETS,
    NEED_DATA,
    SERVER_COMMANDS,
    UNESCAPED_COMMANDS,
    ConnectionClosed,
    Event,
    Frame,
    NeedData,
    ProtocolError,
    Role,
    body_too_large,
    decode_text,
    encode,
    nul_in_header,
    unescape,
)


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

    def next_event(self) -> Event | NeedData:
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
            self.fail(e)
            raise
        if event is NEED_DATA and self._eof:
            return self._end_of_input()
        return event

    def _end_of_input(self) -> ConnectionClosed:
        """`next_event` at EOF with no complete frame left: ConnectionClosed, or raise
        (sticky) when EOF cut a frame."""
        if self._buf or self._body_start >= 0 or self._lines:
            self._error = ProtocolError(
                "connection closed mid-frame",
                "The connection ended before the frame's NUL terminator.",
            )
            raise self._error
        return ConnectionClosed()

    def fail(self, error: ProtocolError) -> ProtocolError:
        """Enter ERROR with `error` (returned): every later `next_event` raises it."""
        self._error = error
        self._buf.clear()
        return error

    def _parse(self) -> Event | NeedData:
        if self._body_start < 0:
            if self._lines == 0:
                buf = self._buf
                if not buf or (buf[0] in EOL_OCTETS and not self._skip_heartbeats()):
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
                fast = decode_fast_block(
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
                raise nul_in_header()
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
            raise nul_in_header()
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
        command = decode_text(lines[0], "command")
        if command not in self._accept:
            raise ProtocolError(
                "unknown command",
                f"'{command[:100]}' is not a STOMP {self.role.value}-bound command; expected "
                + ", ".join(sorted(self._accept))
                + ".",
            )
        escapes = None if command in UNESCAPED_COMMANDS else DECODE_ESCAPES.get(self.version)
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
            name = decode_text(raw[:colon], "header name")
            value = decode_text(raw[colon + 1 :], "header value")
            if escapes is not None:
                name = unescape(name, escapes)
                value = unescape(value, escapes)
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
                raise body_too_large(self.max_body_size)
        self._body_scan = self._body_start

    def _take_body(self) -> Event | NeedData:
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
                    raise body_too_large(self.max_body_size)
                return NEED_DATA
            if end - start > self.max_body_size:
                raise body_too_large(self.max_body_size)
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
        stop = repeat_end(buf, block, self.max_header_size, self.max_headers, self.max_body_size)
        if stop < 0:
            return None
        start = len(block.raw)
        # `copy_out`, inlined for the usual small body: this runs once per frame
        if stop - start < ONE_COPY_FROM:
            body = bytes(buf[start:stop])
        else:
            body = copy_out(buf, start, stop)
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
