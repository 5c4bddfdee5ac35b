"""Sans-IO STOMP 1.0 / 1.1 / 1.2 codec: one connection's frames and the states they move it through.

Theory of operation
-------------------
The codec has the shape of every Moorage codec (and of h11's ``Connection``):
the shell feeds whatever bytes the socket produced to
:meth:`StompCodec.receive_data` (``b""`` means EOF), pulls events with
:meth:`StompCodec.next_event` until it returns :data:`NEED_DATA`, and asks
:meth:`StompCodec.send` for the bytes of every frame it answers with. There
is no IO, no asyncio and no clock here, and nothing from the broker core:
the codec can be tested with plain bytes and used by a client.

It is built in three layers, each a module of its own:

- `frames`: the frame model, escaping, :func:`encode` and :class:`ProtocolError`;
- `framing`: :class:`FrameCodec`, bytes -> frames with limits and no state;
- `fast_path`: the simple frames a busy connection carries, decoded and
  encoded without the general machinery, proven byte-identical to it;

and this module adds the connection's state (1.2 "Connecting", "DISCONNECT",
"ERROR"), as a table rather than scattered ``if``s::

    CONNECTING --CONNECTED sent--> CONNECTED --DISCONNECT received--> CLOSING
         \\_______________\\__ERROR sent, EOF or close()__________________--> CLOSED

`_LEGAL` says which peer frames each state accepts, `_REQUIRED` which
headers each frame must carry whatever the version (the version-dependent
ones, such as SUBSCRIBE's `id` from 1.1 on, are the adapter's), and
`_TRANSITIONS` which frames, received or sent, move the connection on. A
frame that breaks them raises :class:`ProtocolError` carrying the frame; the
codec then stays in ERROR and every later `next_event` raises that error
again. Its wire answer is :meth:`ProtocolError.error_frame`.

Outgoing frames are built here too, so the adapter writes no bytes of its
own: :func:`connected_frame`, :func:`receipt_frame`, :func:`version_error_frame`,
:func:`error_frame`, MESSAGE frames (:func:`message_headers_of`, the general
path, and :func:`encode_message` from cached parts, the hot path)
and the heart-beat EOL (:meth:`StompCodec.send_heartbeat`).
"""

from __future__ import annotations

import enum
from typing import Final

from moorage.protocols.stomp.fast_path import (
    HeaderBlock,
    decode_fast,
    decode_repeat,
    encode_message,
    header_lines,
    message_headers_of,
    message_prefix,
)
from moorage.protocols.stomp.frames import (
    CLIENT_COMMANDS,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_HEADERS,
    NEED_DATA,
    SERVER_COMMANDS,
    SUPPORTED_VERSIONS,
    ConnectionClosed,
    Event,
    Frame,
    NeedData,
    ProtocolError,
    Role,
    encode,
    error_frame,
    header_encodable,
    header_line,
    int_header,
)
from moorage.protocols.stomp.framing import FrameCodec

__all__ = [
    "CLIENT_COMMANDS",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_HEADER_SIZE",
    "NEED_DATA",
    "SERVER_COMMANDS",
    "SUPPORTED_VERSIONS",
    "ConnectionClosed",
    "Event",
    "Frame",
    "FrameCodec",
    "HeaderBlock",
    "NeedData",
    "ProtocolError",
    "Role",
    "State",
    "StompCodec",
    "connected_frame",
    "decode_fast",
    "decode_repeat",
    "encode",
    "encode_message",
    "error_frame",
    "header_encodable",
    "header_line",
    "header_lines",
    "int_header",
    "message_headers_of",
    "message_prefix",
    "missing_header",
    "negotiate_heartbeat",
    "negotiate_version",
    "parse_heartbeat",
    "receipt_frame",
    "version_error_frame",
]


class State(enum.Enum):
    """Where a STOMP connection is (both sides see the same states)."""

    CONNECTING = "connecting"  # before CONNECTED
    CONNECTED = "connected"
    CLOSING = "closing"  # DISCONNECT seen, its receipt not yet sent
    CLOSED = "closed"  # ERROR sent, EOF, or closed by the shell


# The peer's frames each state accepts, per side of the connection.
_LEGAL: Final[dict[Role, dict[State, frozenset[str]]]] = {
    Role.SERVER: {
        # 1.2 "Connecting": a client's first frame is CONNECT (or its 1.1+ alias STOMP)
        State.CONNECTING: frozenset({"CONNECT", "STOMP"}),
        State.CONNECTED: CLIENT_COMMANDS - {"CONNECT", "STOMP"},
        State.CLOSING: frozenset(),
        State.CLOSED: frozenset(),
    },
    Role.CLIENT: {
        State.CONNECTING: frozenset({"CONNECTED", "ERROR"}),
        State.CONNECTED: frozenset({"MESSAGE", "RECEIPT", "ERROR"}),
        State.CLOSING: frozenset({"MESSAGE", "RECEIPT", "ERROR"}),  # until DISCONNECT's receipt
        State.CLOSED: frozenset(),
    },
}

# Headers a frame must carry in every version (1.2 "Frames and Headers").
_REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    "SEND": ("destination",),
    "SUBSCRIBE": ("destination",),
    "BEGIN": ("transaction",),
    "COMMIT": ("transaction",),
    "ABORT": ("transaction",),
}

# Frames that move the connection on, whichever side sent them.
_TRANSITIONS: Final[dict[tuple[State, str], State]] = {
    (State.CONNECTING, "CONNECTED"): State.CONNECTED,
    (State.CONNECTED, "DISCONNECT"): State.CLOSING,
    # 1.2 "ERROR": "the server MUST then close the connection just after sending"
    (State.CONNECTING, "ERROR"): State.CLOSED,
    (State.CONNECTED, "ERROR"): State.CLOSED,
    (State.CLOSING, "ERROR"): State.CLOSED,
}

_Rule = tuple[tuple[str, ...], State | None]  # (required headers, the state it leads to)

# `_LEGAL`, `_REQUIRED` and `_TRANSITIONS` compiled: what a received command means in a state.
_RULES: Final[dict[Role, dict[State, dict[str, _Rule]]]] = {
    role: {
        state: {
            command: (_REQUIRED.get(command, ()), _TRANSITIONS.get((state, command)))
            for command in legal
        }
        for state, legal in states.items()
    }
    for role, states in _LEGAL.items()
}

HEARTBEAT: Final = b"\n"  # 1.2 "Heart-beating": an EOL between frames


class StompCodec(FrameCodec):
    """One STOMP connection's codec: `receive_data`, `next_event`, `send`, and its `state`.

    Args:
        role: SERVER decodes client commands and sends server commands; CLIENT the reverse.
        max_header_size, max_headers, max_body_size: the frame layer's limits
            (see :class:`FrameCodec`); they may be changed at any time, e.g.
            raised after authentication.
    """

    def __init__(
        self,
        role: Role = Role.SERVER,
        *,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
        max_headers: int = DEFAULT_MAX_HEADERS,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    ) -> None:
        super().__init__(
            role,
            max_header_size=max_header_size,
            max_headers=max_headers,
            max_body_size=max_body_size,
        )
        self.state = State.CONNECTING
        self._rules = _RULES[role][State.CONNECTING]

    def _enter(self, state: State) -> None:
        self.state = state
        self._rules = _RULES[self.role][state]

    def next_event(self) -> Event | NeedData:
        """The next frame, :data:`NEED_DATA`, or :class:`ConnectionClosed` (then CLOSED).

        A frame is returned only when the connection's state accepts it and it
        carries its required headers; it moves the state on as `_TRANSITIONS`
        says (a DISCONNECT received: CLOSING).

        Raises:
            ProtocolError: a malformed or oversized frame (see
                :meth:`FrameCodec.next_event`), a frame the state does not
                accept ("not connected" before CONNECTED, "unexpected frame"
                after), or a missing header; the last two carry the frame.
                Sticky: later calls raise it again. Any other exception is a bug.
        """
        # `FrameCodec.next_event`, inlined: this runs once per frame
        if self._error is not None:
            raise self._error
        try:
            event = self._parse()
        except ProtocolError as e:
            self.fail(e)
            raise
        if event is NEED_DATA:
            if not self._eof:
                return event
            event = self._end_of_input()
        if type(event) is Frame:
            rule = self._rules.get(event.command)
            if rule is None:
                raise self.fail(self._not_allowed(event))
            required, then = rule
            if required:
                for name in required:
                    if event.get(name) is None:
                        raise self.fail(missing_header(event.command, name, event))
            if then is not None:
                self._enter(then)
        elif type(event) is ConnectionClosed:
            self._enter(State.CLOSED)
        return event

    def _not_allowed(self, frame: Frame) -> ProtocolError:
        command = frame.command
        if self.state is State.CONNECTING:
            if self.role is Role.SERVER:
                detail = f"Send CONNECT (or STOMP) first, not {command}."
            else:
                detail = f"Expected CONNECTED (or ERROR) first, not {command}."
            return ProtocolError("not connected", detail, frame)
        if self.state is State.CONNECTED:
            detail = f"{command} is not allowed once connected."
        else:
            detail = f"{command} is not allowed once the connection is {self.state.value}."
        return ProtocolError("unexpected frame", detail, frame)

    # `next_repeat` (inherited) needs no check: a repeat has the command and the
    # headers of the frame before it, which the table accepted, and the adapter
    # takes repeats only of SENDs while CONNECTED.

    def send(self, frame: Frame) -> bytes:
        """The bytes of `frame`, escaped for this codec's `version`; it moves the
        state on as `_TRANSITIONS` says (CONNECTED sent: CONNECTED; ERROR sent: CLOSED).

        The codec does not police its own side: the adapter decides what to send.
        Raises ValueError when a header cannot be represented in that version
        (see :func:`header_encodable`); nothing changes then.
        """
        data = encode(frame, self.version)
        then = _TRANSITIONS.get((self.state, frame.command))
        if then is not None:
            self._enter(then)
        return data

    def send_heartbeat(self) -> bytes:
        """A heart-beat (1.2 "Heart-beating": an EOL)."""
        return HEARTBEAT

    def close(self) -> None:
        """The connection ended outside the protocol (the transport closed, a
        timeout): CLOSED."""
        self._enter(State.CLOSED)


def missing_header(command: str, header: str, frame: Frame | None = None) -> ProtocolError:
    """The error for a `command` frame without its `header`."""
    return ProtocolError(
        f"missing '{header}' header", f"A {command} frame must carry a '{header}' header.", frame
    )


def connected_frame(
    session: str, server: str, version: str | None, heart_beat: tuple[int, int]
) -> Frame:
    """CONNECTED (1.2 "Connected"); `version` None answers a 1.0 CONNECT (no
    `accept-version`): 1.0 has neither header, but RabbitMQ sends `version:1.0` and
    `heart-beat:0,0` there too (no heart-beats in 1.0), and so does Moorage
    (transcript `connect_10`)."""
    if version is None:
        version, heart_beat = "1.0", (0, 0)
    headers = [
        ("version", version),
        ("heart-beat", f"{heart_beat[0]},{heart_beat[1]}"),
        ("session", session),
        ("server", server),
    ]
    return Frame("CONNECTED", tuple(headers))


def receipt_frame(receipt: str) -> Frame:
    """RECEIPT for a frame's `receipt` header (1.2 "RECEIPT")."""
    return Frame("RECEIPT", (("receipt-id", receipt),))


def version_error_frame() -> Frame:
    """The ERROR for a CONNECT offering no version we speak (1.2 "Protocol Negotiation")."""
    return Frame(
        "ERROR",
        (
            ("version", ",".join(SUPPORTED_VERSIONS)),
            ("content-type", "text/plain"),
            ("message", "Supported protocol versions are " + " ".join(SUPPORTED_VERSIONS)),
        ),
        b"Supported protocol versions are 1.0, 1.1 and 1.2.",
    )


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
