"""STOMP frames and their grammar: the model, escaping, encoding, errors (no IO, no state).

Everything here is shared by the frame layer (`framing.FrameCodec`, bytes ->
frames), its fast paths (`fast_path`) and the connection codec (`codec`):

- :class:`Frame` (command, headers in wire order, body), :class:`ConnectionClosed`
  and :data:`NEED_DATA`;
- the command sets of each side (1.2 "Client Frames" / "Server Frames");
- header value escaping per version (1.2 "Value Encoding"; 1.1 has the same
  list minus ``\\r``; 1.0 has none; CONNECT, STOMP and CONNECTED frames are
  never escaped, so that 1.0 clients can connect);
- :func:`encode`, the general encoder every outgoing frame can take, and
  :func:`header_line`, one header as `encode` writes it;
- :class:`ProtocolError`, which carries its wire answer: an ERROR frame
  (:meth:`ProtocolError.error_frame`, built by :func:`error_frame`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

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

DECODE_ESCAPES: Final[dict[str, dict[int, str]]] = {
    "1.1": {ord("n"): "\n", ord("c"): ":", ord("\\"): "\\"},
    "1.2": {ord("r"): "\r", ord("n"): "\n", ord("c"): ":", ord("\\"): "\\"},
}
ENCODE_ESCAPES: Final[dict[str, dict[int, str]]] = {
    "1.1": {ord("\\"): "\\\\", ord("\n"): "\\n", ord(":"): "\\c"},
    "1.2": {ord("\\"): "\\\\", ord("\n"): "\\n", ord(":"): "\\c", ord("\r"): "\\r"},
}


EOL_OCTETS: Final = frozenset(b"\r\n")


class Role(enum.Enum):
    """Which side this codec is: a SERVER decodes client frames, a CLIENT server frames."""

    SERVER = "server"
    CLIENT = "client"


class NeedData:
    """The type of :data:`NEED_DATA`: a frame is incomplete, feed more bytes."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


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
    """A violation of the STOMP grammar, of a limit or of the connection's state.

    Every one ends the connection (1.2 "ERROR": the server closes the
    connection after sending it); the ERROR frame is :meth:`error_frame`.

    Attributes:
        message: one line for the ERROR frame's `message` header.
        detail: a longer explanation for the ERROR frame's body.
        frame: the offending frame when it was decoded whole (a frame not
            allowed in the connection's state, a missing header); None for
            bytes that never made a frame.
    """

    def __init__(self, message: str, detail: str = "", frame: Frame | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or message
        self.frame = frame

    def error_frame(self, version: str, failing: Frame | None = None) -> Frame:
        """The ERROR frame that answers this error for a `version` peer.

        `failing` names the frame to report when the error has none of its own
        (the frame being handled when an adapter raised it).
        """
        return error_frame(
            self.message, self.detail, self.frame if self.frame is not None else failing, version
        )


def error_frame(message: str, detail: str, failing: Frame | None, version: str) -> Frame:
    """An ERROR frame (1.2 "ERROR"): `message` on one line, `detail` as a text body.

    It carries the `receipt-id` of the failing frame's `receipt` (when it can
    be encoded for `version`) and names that frame's command in the body.
    """
    headers = [("message", _one_line(message)), ("content-type", "text/plain")]
    receipt = failing.get("receipt") if failing is not None else None
    if receipt is not None and header_encodable("receipt-id", receipt, version):
        headers.append(("receipt-id", receipt))
    body = detail.encode()
    if failing is not None:
        body += f"\n\nThe failing frame was {failing.command}.".encode()
    headers.append(("content-length", str(len(body))))
    return Frame("ERROR", tuple(headers), body)


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ").replace("\x00", " ")


def header_line(name: str, value: str, version: str, command: str = "MESSAGE") -> bytes | None:
    """``name:value`` and LF, escaped as `encode` writes it; None if not encodable."""
    if not header_encodable(name, value, version, command):
        return None
    table = None if command in UNESCAPED_COMMANDS else ENCODE_ESCAPES.get(version)
    if table is not None:
        name = name.translate(table)
        value = value.translate(table)
    return f"{name}:{value}\n".encode()


def nul_in_header() -> ProtocolError:
    return ProtocolError(
        "NUL in frame header",
        "A NUL octet may only end a frame; it is not allowed in a command or header.",
    )


def body_too_large(limit: int) -> ProtocolError:
    return ProtocolError("frame body too large", f"A frame body may be at most {limit} octets.")


def decode_text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("malformed frame", f"The {what} is not valid UTF-8.") from None


def unescape(value: str, table: dict[int, str]) -> str:
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
    table = None if frame.command in UNESCAPED_COMMANDS else ENCODE_ESCAPES.get(version)
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


def int_header(name: str, value: str | None, low: int, high: int) -> int:
    """A header's decimal integer value in [low, high]; ProtocolError otherwise."""
    text = (value or "").strip()
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise ProtocolError(
            f"invalid '{name}' header", f"'{name}' must be an integer in [{low}, {high}]."
        )
    return int(text)
