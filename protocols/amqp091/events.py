"""The AMQP 0-9-1 codec's vocabulary: events in both directions, errors, NEED_DATA.

Received events come out of :meth:`Connection.next_event
<moorage.protocols.amqp091.codec.Connection.next_event>`; outgoing events go
into :meth:`Connection.send <moorage.protocols.amqp091.codec.Connection.send>`,
which turns each into the frames it stands for. A codec error
(:class:`FrameError`) carries its wire answer: the ``connection.close`` reply
code, text and the method that caused it. Nothing here imports the broker.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

from pamqp import base, commands

_SHORTSTR_MAX: Final = 255


class _NeedDataType(enum.Enum):
    """Type of the :data:`NEED_DATA` sentinel (an enum so that type checkers narrow it)."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedDataType.NEED_DATA
"""Returned by ``next_event`` when more bytes are needed."""


def method_ids(method: base.Frame) -> tuple[int, int]:
    """Return (class_id, method_id) of a pamqp method."""
    return method.index >> 16, method.index & 0xFFFF


class ReplyCode(enum.IntEnum):
    """Connection-level reply codes a codec can produce (amqp0-9-1.xml constants)."""

    # "The sender sent a malformed frame that the recipient could not decode.
    # This strongly implies a programming error in the sending peer."
    FRAME_ERROR = 501
    # "The sender sent a frame that contained illegal values for one or more
    # fields. This strongly implies a programming error in the sending peer."
    SYNTAX_ERROR = 502
    # "The client sent an invalid sequence of frames, attempting to perform an
    # operation that was considered invalid by the server. This usually implies
    # a programming error in the client."
    COMMAND_INVALID = 503
    # "The client attempted to work with a channel that had not been correctly
    # opened. This most likely indicates a fault in the client layer."
    CHANNEL_ERROR = 504
    # "The peer sent a frame that was not expected, usually in the context of a
    # content header and body. This strongly indicates a fault in the peer's
    # content processing."
    UNEXPECTED_FRAME = 505


def reply_text(text: str) -> str:
    """`text` cut to 255 UTF-8 octets on a character boundary: what fits `reply-text`.

    Cutting by characters is not enough: an error naming a queue of 120 `é`
    is over 255 octets in fewer characters, and pamqp refuses to encode it.
    """
    raw = text.encode("utf-8")
    if len(raw) <= _SHORTSTR_MAX:
        return text
    return raw[:_SHORTSTR_MAX].decode("utf-8", "ignore")


class FrameError(Exception):
    """A codec error carrying its wire answer: ``connection.close`` with ``reply_code``.

    Attributes:
        reply_code: 501 FRAME_ERROR, 502 SYNTAX_ERROR, 503 COMMAND_INVALID, 504
            CHANNEL_ERROR or 505 UNEXPECTED_FRAME (a :class:`ReplyCode`, which is an ``int``).
        text: short reply text such as
            ``"FRAME_ERROR - frame size 200000 exceeds frame_max 131072"``; at most
            255 UTF-8 octets so that it fits ``reply-text`` (a shortstr).
        class_id, method_id: the method that caused the error when known, else 0.
    """

    def __init__(self, reply_code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        text = reply_text(text)
        super().__init__(text)
        self.reply_code = reply_code
        self.text = text
        self.class_id = class_id
        self.method_id = method_id

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(reply_code={self.reply_code!r}, text={self.text!r}, "
            f"class_id={self.class_id!r}, method_id={self.method_id!r})"
        )

    def close_method(self) -> commands.Connection.Close:
        """Return the ``connection.close`` method that answers this error on channel 0."""
        return commands.Connection.Close(
            reply_code=int(self.reply_code),
            reply_text=self.text,
            class_id=self.class_id,
            method_id=self.method_id,
        )


class ProtocolHeaderMismatch(FrameError):
    """Client sent a bad protocol header.

    The server must write :data:`PROTOCOL_HEADER` and close the socket without
    sending ``connection.close`` (spec 4.2.2).
    """


@dataclass(slots=True)
class ProtocolHeaderReceived:
    """The peer sent a valid protocol header; always the first event of a connection."""


@dataclass(slots=True)
class MethodReceived:
    """A method frame other than a content-bearing one."""

    channel: int
    method: base.Frame


@dataclass(slots=True)
class ContentReceived:
    """A content-bearing method (e.g. ``basic.publish``) with its header and whole body."""

    channel: int
    method: base.Frame
    properties: commands.Basic.Properties
    body: bytes
    # The properties re-encoded by pamqp (canonical, safe to forward to other
    # clients as they are), or None when they cannot be re-encoded as decoded.
    properties_raw: bytes | None = field(default=None, compare=False)


@dataclass(slots=True)
class HeartbeatReceived:
    """A heartbeat frame (spec 4.2.7)."""


Event = ProtocolHeaderReceived | MethodReceived | ContentReceived | HeartbeatReceived
"""Everything ``next_event`` can return besides :data:`NEED_DATA`."""


# -- outgoing events: what `Connection.send` encodes ------------------------------------


@dataclass(slots=True)
class ProtocolHeader:
    """The 8-octet protocol header (spec 4.2.2): a client's first bytes, and a
    server's answer to a bad one before it closes the socket."""


@dataclass(slots=True)
class Method:
    """One method frame: ``method`` on ``channel`` (not a content-bearing one)."""

    channel: int
    method: base.Frame


@dataclass(slots=True)
class Content:
    """A content-bearing method (basic.return, basic.get-ok, basic.publish) with its
    content: ``properties`` are the encoded basic properties (see
    :func:`~moorage.protocols.amqp091.properties.encode_properties`); the body is
    split into frames of the connection's ``frame_max``."""

    channel: int
    method: base.Frame
    properties: bytes
    body: bytes


@dataclass(slots=True)
class Deliver:
    """basic.deliver with its content, the broker's hot path.

    ``consumer_tag``, ``exchange`` and ``routing_key`` are already encoded as
    shortstrs (:func:`~moorage.protocols.amqp091.frames.shortstr`), so that a
    consumer's tag and a message's route are encoded once, not per delivery.
    """

    channel: int
    consumer_tag: bytes
    delivery_tag: int
    redelivered: bool
    exchange: bytes
    routing_key: bytes
    properties: bytes
    body: bytes


@dataclass(slots=True)
class Heartbeat:
    """A heartbeat frame (spec 4.2.7)."""


OutgoingEvent = ProtocolHeader | Method | Content | Deliver | Heartbeat
"""Everything :meth:`Connection.send` accepts."""
