"""Sans-IO AMQP 0-9-1 codec: bytes in, events out; method/content in, bytes out.

Theory of operation
-------------------
There is no IO, no asyncio and no clock here.  The shell feeds whatever bytes the
socket produced to :meth:`FrameDecoder.receive_data` and then calls
:meth:`FrameDecoder.next_event` until it returns :data:`NEED_DATA`.  Outgoing
traffic is built with :func:`encode_method`, :func:`encode_content` and
:data:`HEARTBEAT_FRAME`.  pamqp does the per-method and per-property
(un)marshalling; this module owns everything about *framing*:

1. **Protocol header** (spec 4.2.2).  The first 8 bytes must be exactly
   :data:`PROTOCOL_HEADER`.  A mismatch is reported at the first differing byte
   (:class:`ProtocolHeaderMismatch`); the server then writes its own header and
   closes the socket.

2. **Frames** (spec 4.2.3)::

       type:octet  channel:short  size:long  payload:size octets  frame-end:0xCE

   The 7-byte header is read first.  The frame type is checked and the total
   frame size (``7 + size + 1``) is compared with :attr:`FrameDecoder.frame_max`
   *before* the payload is buffered, so an oversized frame is refused as soon as
   its header arrives.  Only once the whole frame is buffered is the frame-end
   octet checked and the payload handed to a per-type handler (a table,
   :attr:`FrameDecoder._HANDLERS`).  ``pamqp.frame.unmarshal`` is never called on
   a short buffer.

3. **Content assembly** (spec 4.2.6).  A content-bearing method
   (:data:`CONTENT_METHODS`) opens an assembly on its channel; exactly one
   content header frame and then body frames up to ``body_size`` octets must
   follow on that channel.  Frames of *other* channels may interleave.  One
   :class:`ContentReceived` is produced when the body is complete.

4. **Errors** (spec 4.2.3, 4.2.6, 4.2.7 and the reply-code constants of amqp0-9-1.xml).
   Every protocol violation raises :class:`FrameError`, which carries the
   ``connection.close`` reply code and text.  The decoder then enters ERROR:
   every later ``next_event`` re-raises the same error and further input is
   discarded.

Reply codes chosen where the spec leaves room (documented here once):

* unknown method index -> 503 COMMAND_INVALID (RabbitMQ answers 540 or 503 depending
  on version; 503 tells the client that *it* sent something wrong);
* content-bearing method on channel 0 -> 503 COMMAND_INVALID (as RabbitMQ);
* header/body frame nobody expects, method frame while a channel waits for
  content, content header for a class other than basic (60) -> 505 UNEXPECTED_FRAME;
* body frames carrying more than ``body_size`` octets -> 501 FRAME_ERROR;
* ``body_size`` above ``max_body_size`` -> 501 FRAME_ERROR (a codec cannot answer
  with the channel-level 406 RabbitMQ would use);
* a method frame whose payload is shorter than the 4-octet method index, and any
  pamqp decode failure of a method or content header -> 502 SYNTAX_ERROR.

pamqp is lenient about a few things and so is this codec: trailing octets after
the last method argument are ignored, a truncated *last* string argument decodes
as a shorter string, and the content header ``weight`` field is not checked.
The codec also does not check which method classes may appear on channel 0 (spec
4.2.3: connection class on channel 0 only); that is connection state, which
belongs to the adapter.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Final, Literal

from pamqp import (
    base,
    commands,
    common,
    constants,
    decode,
    encode,
    exceptions,
    frame,
    header,
    heartbeat,
)

from moorage.protocols.amqp091.wire import marshal_properties
from moorage.protocols.buffers import copy_out

__all__ = [
    "CONTENT_METHODS",
    "HEARTBEAT_FRAME",
    "NEED_DATA",
    "PROTOCOL_HEADER",
    "ContentReceived",
    "Event",
    "FrameDecoder",
    "FrameError",
    "HeartbeatReceived",
    "MethodReceived",
    "ProtocolHeaderMismatch",
    "ProtocolHeaderReceived",
    "ReplyCode",
    "encode_content",
    "encode_method",
]


class _NeedDataType(enum.Enum):
    """Type of the :data:`NEED_DATA` sentinel (an enum so that type checkers narrow it)."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedDataType.NEED_DATA
"""Returned by :meth:`FrameDecoder.next_event` when more bytes are needed."""

# Spec 4.2.2: "AMQP" 0 0 9 1
PROTOCOL_HEADER: Final = b"AMQP\x00\x00\x09\x01"

# Spec 4.2.7: type 8, channel 0, size 0, frame-end.
HEARTBEAT_FRAME: Final = heartbeat.Heartbeat.marshal()

# Spec 4.2.3: the general frame header is type:octet channel:short size:long.
_FRAME_HEADER: Final = struct.Struct(">BHI")
_FRAME_HEADER_SIZE: Final = 7
_FRAME_END: Final = constants.FRAME_END  # 0xCE
_FRAME_OVERHEAD: Final = _FRAME_HEADER_SIZE + 1  # header + frame-end octet
# Incoming frames may be this much larger than frame_max: RabbitMQ
# (rabbit_reader's ?FRAME_SIZE_FUDGE) accepts a payload of frame_max octets,
# and clients such as amqpstorm send body frames of exactly that size.
FRAME_SIZE_FUDGE: Final = _FRAME_OVERHEAD
_METHOD_INDEX: Final = struct.Struct(">I")  # class-id:short method-id:short
_CONTENT_CLASS: Final = struct.Struct(">H")  # first field of a content header
_BASIC_CLASS_ID: Final = commands.Basic.frame_id  # 60
_CONTENT_HEADER_MIN: Final = 14  # class, weight, body size, property flags (spec 4.2.6.1)
_SHORTSTR_MAX: Final = 255

# Start compacting the receive buffer once this many consumed octets sit in front.
_COMPACT_THRESHOLD: Final = 64 * 1024

CONTENT_METHODS: Final[tuple[type[base.Frame], ...]] = (
    commands.Basic.Publish,  # client -> server
    commands.Basic.Return,  # server -> client
    commands.Basic.Deliver,  # server -> client
    commands.Basic.GetOk,  # server -> client
)
"""Methods that are followed by a content header and body frames (spec 4.2.6)."""


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
    # "The peer sent a frame that was not expected, usually in the context of a
    # content header and body. This strongly indicates a fault in the peer's
    # content processing."
    UNEXPECTED_FRAME = 505


class FrameError(Exception):
    """A codec error carrying its wire answer: ``connection.close`` with ``reply_code``.

    Attributes:
        reply_code: 501 FRAME_ERROR, 502 SYNTAX_ERROR, 503 COMMAND_INVALID or
            505 UNEXPECTED_FRAME (a :class:`ReplyCode`, which is an ``int``).
        text: short reply text such as
            ``"FRAME_ERROR - frame size 200000 exceeds frame_max 131072"``; at most
            255 UTF-8 octets so that it fits ``reply-text`` (a shortstr).
        class_id, method_id: the method that caused the error when known, else 0.
    """

    def __init__(self, reply_code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        text = text.encode("utf-8")[:_SHORTSTR_MAX].decode("utf-8", "ignore")
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
"""Everything :meth:`FrameDecoder.next_event` can return besides :data:`NEED_DATA`."""


@dataclass(slots=True)
class _PendingContent:
    """A channel's content in assembly: method seen, header maybe, body pieces so far."""

    method: base.Frame
    properties: commands.Basic.Properties | None = None
    properties_raw: bytes | None = None
    body_size: int = 0
    received: int = 0
    pieces: list[bytes] | None = None


def _ids(method: base.Frame) -> tuple[int, int]:
    """Return (class_id, method_id) of a pamqp method."""
    return method.index >> 16, method.index & 0xFFFF


# What pamqp lets escape when handed malformed method or header payloads:
# struct.error/ValueError (incl. UnicodeDecodeError) from the decoders,
# OverflowError/OSError from datetime.fromtimestamp on absurd timestamps, and
# RecursionError from deeply nested field tables or arrays.
_DECODE_ERRORS: Final = (
    exceptions.UnmarshalingException,
    struct.error,
    ValueError,
    TypeError,
    OverflowError,
    OSError,
    RecursionError,
)


_Handler = Callable[["FrameDecoder", int, bytes], Event | None]


class FrameDecoder:
    """Incremental AMQP 0-9-1 frame decoder and content assembler (receiving side).

    Args:
        frame_max: largest acceptable frame in octets, including the 8 octets of
            frame overhead; 0 means unlimited.  A plain attribute: the adapter
            changes it after ``connection.tune-ok``; it applies to the next frame
            header that is examined.
        max_body_size: largest acceptable content ``body_size`` in octets.
        expect_protocol_header: keyword only; ``False`` for the client role, where
            the server's byte stream starts directly with frames.

    The decoder never raises from ``receive_data`` on bad input; every protocol
    error surfaces from :meth:`next_event`.
    """

    def __init__(
        self,
        frame_max: int = constants.FRAME_MAX_SIZE,
        max_body_size: int = 128 * 1024 * 1024,
        *,
        expect_protocol_header: bool = True,
    ) -> None:
        self.frame_max = frame_max
        self.max_body_size = max_body_size
        self._buf = bytearray()
        self._pos = 0  # octets of _buf already consumed
        self._need_header = expect_protocol_header
        self._eof = False
        self._error: FrameError | None = None
        self._pending: dict[int, _PendingContent] = {}

    # -- input -------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Append bytes received from the peer; ``b""`` means the peer closed (EOF).

        After EOF, :meth:`next_event` returns the events still complete in the
        buffer and then :data:`NEED_DATA` forever, even if a partial frame is left
        (a truncated stream is simply the end of the connection, not a frame
        error).  In the ERROR state the data is discarded.

        Raises:
            RuntimeError: data arrived after EOF (a bug in the caller).
        """
        if self._error is not None:
            return
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("received data after EOF")
        self._compact()
        self._buf += data

    def _compact(self) -> None:
        """Drop consumed octets: free when all is consumed, else only once past a threshold.

        The threshold keeps the copying amortised O(1) per octet while one large
        read holding many frames is decoded by offset without any copying.
        """
        if self._pos == 0:
            return
        if self._pos >= len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos >= _COMPACT_THRESHOLD:
            del self._buf[: self._pos]
            self._pos = 0

    # -- output ------------------------------------------------------------

    def next_event(self) -> Event | Literal[_NeedDataType.NEED_DATA]:
        """Return the next complete event, or :data:`NEED_DATA`.

        Returns:
            :class:`ProtocolHeaderReceived` (first, unless disabled),
            :class:`MethodReceived`, :class:`ContentReceived`,
            :class:`HeartbeatReceived`, or :data:`NEED_DATA` when the buffered
            bytes do not complete another event (always, after EOF, once the
            complete events are drained).

        Raises:
            ProtocolHeaderMismatch: the first 8 octets are not :data:`PROTOCOL_HEADER`.
            FrameError: any other framing, syntax or sequencing violation.  After
                one is raised the decoder is in ERROR and every later call raises
                the same error again.  Any other exception would be a bug.
        """
        if self._error is not None:
            raise self._error.with_traceback(None)
        try:
            return self._next_event()
        except FrameError as err:
            self._error = err
            self._buf = bytearray()
            self._pos = 0
            self._pending.clear()
            raise

    def _next_event(self) -> Event | Literal[_NeedDataType.NEED_DATA]:
        buf = self._buf
        if self._need_header:
            # Spec 4.2.2: the client opens with the protocol header.
            got = bytes(buf[self._pos : self._pos + len(PROTOCOL_HEADER)])
            if not PROTOCOL_HEADER.startswith(got):
                raise ProtocolHeaderMismatch(
                    ReplyCode.FRAME_ERROR, f"FRAME_ERROR - bad protocol header {got!r}"
                )
            if len(got) < len(PROTOCOL_HEADER):
                return NEED_DATA
            self._pos += len(PROTOCOL_HEADER)
            self._need_header = False
            return ProtocolHeaderReceived()
        while True:
            start = self._pos
            if len(buf) - start < _FRAME_HEADER_SIZE:
                return NEED_DATA
            frame_type, channel, size = _FRAME_HEADER.unpack_from(buf, start)
            handler = self._HANDLERS.get(frame_type)
            if handler is None:
                # Spec 4.2.3: unknown frame type is a connection exception.
                raise FrameError(
                    ReplyCode.FRAME_ERROR, f"FRAME_ERROR - unknown frame type {frame_type}"
                )
            total = size + _FRAME_OVERHEAD
            if self.frame_max and total > self.frame_max + FRAME_SIZE_FUDGE:
                # Spec 4.2.3 / connection.tune: frame-max bounds the whole frame;
                # like RabbitMQ we accept a payload of frame-max octets (FRAME_SIZE_FUDGE).
                raise FrameError(
                    ReplyCode.FRAME_ERROR,
                    f"FRAME_ERROR - frame size {total} exceeds frame_max {self.frame_max}",
                )
            if frame_type == constants.FRAME_HEARTBEAT and (channel != 0 or size != 0):
                # Spec 4.2.7: heartbeats use channel 0; an invalid one is a 501.
                raise FrameError(
                    ReplyCode.FRAME_ERROR,
                    f"FRAME_ERROR - invalid heartbeat frame on channel {channel} size {size}",
                )
            end = start + _FRAME_HEADER_SIZE + size  # index of the frame-end octet
            if len(buf) <= end:
                return NEED_DATA
            if buf[end] != _FRAME_END:
                # Spec 4.2.3: a bad frame-end octet is a fatal frame error.
                raise FrameError(
                    ReplyCode.FRAME_ERROR,
                    f"FRAME_ERROR - bad frame end octet {buf[end]:#04x}",
                )
            if (
                frame_type == constants.FRAME_METHOD
                and channel
                and size >= _METHOD_INDEX.size
                and _METHOD_INDEX.unpack_from(buf, start + _FRAME_HEADER_SIZE)[0] == _PUBLISH_INDEX
            ):
                content = self._whole_publish(buf, start, channel, end)
                if content is not None:
                    return content
            payload = copy_out(buf, start + _FRAME_HEADER_SIZE, end)
            self._pos = end + 1
            event = handler(self, channel, payload)
            if event is not None:
                return event

    def _whole_publish(
        self, buf: bytearray, start: int, channel: int, end: int
    ) -> ContentReceived | None:
        """A basic.publish whose header and single body frame are in `buf` too, in one go.

        The hot path for publishers: what the general path (`_on_method`,
        `_on_header`, `_on_body`) gives for the same three frames, without
        copying each payload and assembling the content piece by piece. The
        method frame at `start` (ending at `end`) has passed the general
        checks; anything else unusual (another channel's frame between, a
        body in several frames, a limit reached, a malformed header) returns
        None and the general path decides, errors included. Never raises.
        tests/amqp091/test_codec.py checks that both paths give the same events.
        """
        if channel in self._pending:
            return None
        header = self._frame_at(buf, end + 1, constants.FRAME_HEADER, channel)
        if header is None:
            return None
        header_at, header_end = header
        if (
            header_end - header_at < _CONTENT_HEADER_MIN
            or _CONTENT_CLASS.unpack_from(buf, header_at)[0] != _BASIC_CLASS_ID
        ):
            return None
        method = _fast_publish(bytes(buf[start + _FRAME_HEADER_SIZE : end]))
        if method is None:
            return None
        try:
            properties, raw, body_size = _decode_content_header(bytes(buf[header_at:header_end]))
        except _DECODE_ERRORS:
            return None
        if body_size > self.max_body_size:
            return None
        last = header_end
        body = b""
        if body_size:
            found = self._frame_at(buf, header_end + 1, constants.FRAME_BODY, channel)
            if found is None:
                return None
            body_at, last = found
            if last - body_at != body_size:
                return None
            body = copy_out(buf, body_at, last)
        self._pos = last + 1
        return ContentReceived(channel, method, properties, body, raw)

    def _frame_at(self, buf: bytearray, at: int, kind: int, channel: int) -> tuple[int, int] | None:
        """(payload start, frame-end index) of a whole, well-formed frame of `kind` on
        `channel` starting at `at`, within frame_max; None for anything else."""
        if len(buf) - at < _FRAME_HEADER_SIZE:
            return None
        frame_type, frame_channel, size = _FRAME_HEADER.unpack_from(buf, at)
        last = at + _FRAME_HEADER_SIZE + size
        if (
            frame_type != kind
            or frame_channel != channel
            or (self.frame_max and size + _FRAME_OVERHEAD > self.frame_max + FRAME_SIZE_FUDGE)
            or len(buf) <= last
            or buf[last] != _FRAME_END
        ):
            return None
        return at + _FRAME_HEADER_SIZE, last

    # -- per frame type ----------------------------------------------------

    def _on_method(self, channel: int, payload: bytes) -> Event | None:
        pending = self._pending.get(channel)
        method = _decode_method(payload)
        if pending is not None:
            # Spec 4.2.6: content frames follow their method with nothing between.
            wanted = "header" if pending.pieces is None else "body"
            raise FrameError(
                ReplyCode.UNEXPECTED_FRAME,
                f"UNEXPECTED_FRAME - expected content {wanted} on channel {channel}, "
                f"got {method.name}",
                *_ids(method),
            )
        if isinstance(method, CONTENT_METHODS):
            if channel == 0:
                raise FrameError(
                    ReplyCode.COMMAND_INVALID,
                    f"COMMAND_INVALID - {method.name} on channel 0",
                    *_ids(method),
                )
            self._pending[channel] = _PendingContent(method)
            return None
        return MethodReceived(channel, method)

    def _on_header(self, channel: int, payload: bytes) -> Event | None:
        pending = self._pending.get(channel)
        if pending is None or pending.pieces is not None:
            raise FrameError(
                ReplyCode.UNEXPECTED_FRAME,
                f"UNEXPECTED_FRAME - content header on channel {channel} not expected",
            )
        class_ids = _ids(pending.method)
        if len(payload) >= _CONTENT_CLASS.size:
            (class_id,) = _CONTENT_CLASS.unpack_from(payload)
            if class_id != _BASIC_CLASS_ID:
                # Spec 4.2.6.1: the header's class-id must match the method's class.
                raise FrameError(
                    ReplyCode.UNEXPECTED_FRAME,
                    f"UNEXPECTED_FRAME - content header for class {class_id}, expected 60",
                    *class_ids,
                )
        try:
            properties, raw, body_size = _decode_content_header(payload)
        except _DECODE_ERRORS as err:
            raise FrameError(
                ReplyCode.SYNTAX_ERROR,
                f"SYNTAX_ERROR - cannot decode content header: {err}",
                *class_ids,
            ) from err
        if body_size > self.max_body_size:
            raise FrameError(
                ReplyCode.FRAME_ERROR,
                f"FRAME_ERROR - message size {body_size} exceeds max {self.max_body_size}",
                *class_ids,
            )
        pending.properties = properties
        pending.properties_raw = raw
        pending.body_size = body_size
        pending.pieces = []
        return self._complete(channel, pending)

    def _on_body(self, channel: int, payload: bytes) -> Event | None:
        pending = self._pending.get(channel)
        if pending is None or pending.pieces is None:
            raise FrameError(
                ReplyCode.UNEXPECTED_FRAME,
                f"UNEXPECTED_FRAME - content body on channel {channel} not expected",
            )
        pending.received += len(payload)
        if pending.received > pending.body_size:
            raise FrameError(
                ReplyCode.FRAME_ERROR,
                f"FRAME_ERROR - content body exceeds body_size {pending.body_size}",
                *_ids(pending.method),
            )
        if payload:
            pending.pieces.append(payload)
        return self._complete(channel, pending)

    def _on_heartbeat(self, channel: int, payload: bytes) -> Event | None:
        # Channel and size were validated from the frame header already.
        return HeartbeatReceived()

    def _complete(self, channel: int, pending: _PendingContent) -> Event | None:
        """Produce :class:`ContentReceived` once ``body_size`` octets are in."""
        if pending.received < pending.body_size:
            return None
        del self._pending[channel]
        assert pending.properties is not None
        assert pending.pieces is not None
        return ContentReceived(
            channel,
            pending.method,
            pending.properties,
            b"".join(pending.pieces),
            pending.properties_raw,
        )

    # Frame type -> handler (spec 4.2.3 frame types).
    _HANDLERS: ClassVar[dict[int, _Handler]] = {
        constants.FRAME_METHOD: _on_method,
        constants.FRAME_HEADER: _on_header,
        constants.FRAME_BODY: _on_body,
        constants.FRAME_HEARTBEAT: _on_heartbeat,
    }


_BODY_SIZE: Final = struct.Struct(">Q")
_PROPERTIES_CACHE_SIZE: Final = 1024
_properties_cache: dict[bytes, tuple[commands.Basic.Properties, bytes | None]] = {}


def _decode_content_header(
    payload: bytes,
) -> tuple[commands.Basic.Properties, bytes | None, int]:
    """A content header's properties, their canonical encoding, and the body size.

    Most publishers send the same few property sets over and over, so decoded
    properties are cached by their bytes (a bounded cache shared by every
    connection): a hit skips pamqp's decoding here and its re-encoding for
    each delivery. The cached `Properties` object is shared: treat it as
    read-only. Raises what pamqp raises for a malformed header.
    """
    raw = payload[12:]
    cached = _properties_cache.get(raw) if len(raw) >= 2 else None
    if cached is None:
        content_header = header.ContentHeader()
        content_header.unmarshal(payload)
        properties = content_header.properties
        try:
            canonical: bytes | None = marshal_properties(properties)
        except (ValueError, TypeError):
            canonical = None  # e.g. a cluster_id pamqp will not send again
        if len(_properties_cache) >= _PROPERTIES_CACHE_SIZE:
            _properties_cache.clear()
        _properties_cache[raw] = cached = (properties, canonical)
        return properties, canonical, content_header.body_size
    return cached[0], cached[1], _BODY_SIZE.unpack_from(payload, 4)[0]


_PUBLISH_INDEX: Final = commands.Basic.Publish.index
_ACK_INDEX: Final = commands.Basic.Ack.index
_ACK_ARGS: Final = struct.Struct(">qB")  # signed, as pamqp decodes a longlong
_TICKET: Final = struct.Struct(">H")


def _fast_publish(payload: bytes) -> base.Frame | None:
    """basic.publish decoded by hand; None when the general path must decide.

    Gives exactly what pamqp's generic unmarshal gives for a well-formed
    frame (checked by tests/amqp091/test_wire.py); anything unusual (short,
    trailing bytes, bad UTF-8) goes to the general path and its errors.
    """
    try:
        ex_end = 7 + payload[6]
        rk_end = ex_end + 1 + payload[ex_end]
        bits = payload[rk_end]
        if len(payload) != rk_end + 1:
            return None
        exchange = payload[7:ex_end].decode()
        routing_key = payload[ex_end + 1 : rk_end].decode()
    except (IndexError, UnicodeDecodeError):
        return None
    method = commands.Basic.Publish.__new__(commands.Basic.Publish)
    method.ticket = _TICKET.unpack_from(payload, 4)[0]
    method.exchange = exchange
    method.routing_key = routing_key
    method.mandatory = bool(bits & 1)
    method.immediate = bool(bits & 2)
    return method


def _fast_ack(payload: bytes) -> base.Frame | None:
    """basic.ack decoded by hand; None when the general path must decide."""
    if len(payload) != 13:
        return None
    method = commands.Basic.Ack.__new__(commands.Basic.Ack)
    method.delivery_tag, bits = _ACK_ARGS.unpack_from(payload, 4)
    method.multiple = bool(bits & 1)
    return method


# -- the handshake: what every client sends once per connection (spec 2.2.4) --------------

_LONG: Final = struct.Struct(">I")
_TUNE_OK_ARGS: Final = struct.Struct(">HIH")  # channel_max, frame_max, heartbeat
_CLOSE_HEAD: Final = struct.Struct(">H")  # reply_code, before reply_text
_CLOSE_TAIL: Final = struct.Struct(">HH")  # class_id, method_id, after reply_text
_TABLE_CACHE_SIZE: Final = 256
# Decoded client-properties tables by their bytes: every client of one library
# and version sends the same table. Shared objects: treat them as read-only.
_tables: dict[bytes, common.FieldTable] = {}


def _shortstr_end(payload: bytes, at: int) -> int:
    """Where the shortstr at `at` ends; IndexError when its length octet is missing."""
    return at + 1 + payload[at]


def _fast_start_ok(payload: bytes) -> base.Frame | None:
    """connection.start-ok decoded by hand (client properties cached by their bytes).

    None when the general path must decide: anything short, trailing or not
    UTF-8 where pamqp wants text, and any table pamqp cannot decode.
    """
    try:
        table_end = 8 + _LONG.unpack_from(payload, 4)[0]
        mechanism_end = _shortstr_end(payload, table_end)
        response_end = mechanism_end + 4 + _LONG.unpack_from(payload, mechanism_end)[0]
        locale_end = _shortstr_end(payload, response_end)
        if locale_end != len(payload):
            return None
        mechanism = payload[table_end + 1 : mechanism_end].decode()
        locale = payload[response_end + 1 : locale_end].decode()
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    raw_table = payload[4:table_end]
    table = _tables.get(raw_table)
    if table is None:
        # pamqp decodes the table from the rest of the payload. Only a table whose
        # own bytes decode to the same is cached: nothing in it reads past its end,
        # so its value cannot depend on what follows it.
        try:
            table = decode.field_table(raw_table)[1]
            if decode.field_table(payload[4:])[1] != table:
                return None
        except _DECODE_ERRORS:
            return None
        if len(_tables) >= _TABLE_CACHE_SIZE:
            _tables.clear()
        _tables[raw_table] = table
    raw_response = payload[mechanism_end + 4 : response_end]
    try:  # pamqp's longstr: text when it is UTF-8, else the bytes
        response: str | bytes = raw_response.decode()
    except UnicodeDecodeError:
        response = raw_response
    method = commands.Connection.StartOk.__new__(commands.Connection.StartOk)
    method.client_properties = table
    method.mechanism = mechanism
    method.response = response  # type: ignore[assignment]  # pamqp gives bytes too
    method.locale = locale
    return method


def _fast_tune_ok(payload: bytes) -> base.Frame | None:
    """connection.tune-ok decoded by hand; None unless exactly its 12 octets."""
    if len(payload) != 12:
        return None
    method = commands.Connection.TuneOk.__new__(commands.Connection.TuneOk)
    method.channel_max, method.frame_max, method.heartbeat = _TUNE_OK_ARGS.unpack_from(payload, 4)
    return method


def _fast_open(payload: bytes) -> base.Frame | None:
    """connection.open decoded by hand; None when the general path must decide."""
    try:
        vhost_end = _shortstr_end(payload, 4)
        capabilities_end = _shortstr_end(payload, vhost_end)
        if capabilities_end + 1 != len(payload):
            return None
        virtual_host = payload[5:vhost_end].decode()
        capabilities = payload[vhost_end + 1 : capabilities_end].decode()
    except (IndexError, UnicodeDecodeError):
        return None
    method = commands.Connection.Open.__new__(commands.Connection.Open)
    method.virtual_host = virtual_host
    method.capabilities = capabilities
    method.insist = bool(payload[capabilities_end] & 1)
    return method


def _fast_channel_open(payload: bytes) -> base.Frame | None:
    """channel.open decoded by hand; None when the general path must decide."""
    try:
        end = _shortstr_end(payload, 4)
        if end != len(payload):
            return None
        out_of_band = payload[5:end].decode()
    except (IndexError, UnicodeDecodeError):
        return None
    method = commands.Channel.Open.__new__(commands.Channel.Open)
    method.out_of_band = out_of_band
    return method


def _fast_close(payload: bytes) -> base.Frame | None:
    """connection.close decoded by hand; None when the general path must decide."""
    try:
        text_end = _shortstr_end(payload, 6)
        if text_end + 4 != len(payload):
            return None
        reply_text = payload[7:text_end].decode()
    except (IndexError, UnicodeDecodeError):
        return None
    method = commands.Connection.Close.__new__(commands.Connection.Close)
    method.reply_code = _CLOSE_HEAD.unpack_from(payload, 4)[0]
    method.reply_text = reply_text
    method.class_id, method.method_id = _CLOSE_TAIL.unpack_from(payload, text_end)
    return method


_FAST_METHODS: Final[dict[int, Callable[[bytes], base.Frame | None]]] = {
    _PUBLISH_INDEX: _fast_publish,
    _ACK_INDEX: _fast_ack,
    commands.Connection.StartOk.index: _fast_start_ok,
    commands.Connection.TuneOk.index: _fast_tune_ok,
    commands.Connection.Open.index: _fast_open,
    commands.Channel.Open.index: _fast_channel_open,
    commands.Connection.Close.index: _fast_close,
}


def _decode_method(payload: bytes) -> base.Frame:
    """Decode a method frame payload (spec 4.2.4): class-id, method-id, arguments.

    The two methods a busy client sends most, basic.publish and basic.ack, and
    the handshake's (start-ok, tune-ok, connection.open, channel.open,
    connection.close: every connection sends them once) take a hand-written
    path; every other method, and any frame a fast path does not recognise as
    well-formed, goes through pamqp.

    Raises:
        FrameError: 502 when the payload is malformed, 503 for an unknown method.
    """
    if len(payload) < _METHOD_INDEX.size:
        raise FrameError(
            ReplyCode.SYNTAX_ERROR, f"SYNTAX_ERROR - method frame of {len(payload)} octets"
        )
    (index,) = _METHOD_INDEX.unpack_from(payload)
    fast_decode = _FAST_METHODS.get(index)
    if fast_decode is not None:
        fast = fast_decode(payload)
        if fast is not None:
            return fast
    class_id, method_id = index >> 16, index & 0xFFFF
    method_class: type[base.Frame] | None = commands.INDEX_MAPPING.get(index)
    if method_class is None:
        raise FrameError(
            ReplyCode.COMMAND_INVALID,
            f"COMMAND_INVALID - unknown method {class_id}.{method_id}",
            class_id,
            method_id,
        )
    # Skip __init__: unmarshal assigns every slot, and some constructors (e.g.
    # basic.recover-async) emit a DeprecationWarning the peer should not trigger.
    method: base.Frame = method_class.__new__(method_class)
    try:
        method.unmarshal(payload[_METHOD_INDEX.size :])
    except _DECODE_ERRORS as err:
        raise FrameError(
            ReplyCode.SYNTAX_ERROR,
            f"SYNTAX_ERROR - cannot decode {method.name}: {err}",
            class_id,
            method_id,
        ) from err
    return method


def _check_channel(channel: int) -> None:
    if not 0 <= channel <= 0xFFFF:
        raise ValueError(f"channel {channel} outside 0..65535")


def encode_method(channel: int, method: base.Frame) -> bytes:
    """Return one method frame (spec 4.2.4) carrying ``method`` on ``channel``.

    It does not check that the method belongs on that channel, nor that a
    content-bearing method is followed by content (use :func:`encode_content`).

    pamqp's name validation is skipped: it refuses names RabbitMQ accepts
    (``@`` in Celery's pidbox queues, exchange names over 127 characters), and
    the broker must be able to echo any name a client was allowed to use.

    Raises:
        ValueError: ``channel`` is outside 0..65535, or a string is too long
            for its field.
        TypeError: an argument has a type pamqp cannot encode.
    """
    _check_channel(channel)
    payload = _METHOD_INDEX.pack(method.index) + _marshal_arguments(method)
    return (
        _FRAME_HEADER.pack(constants.FRAME_METHOD, channel, len(payload))
        + payload
        + _FRAME_END_BYTE
    )


_FRAME_END_BYTE: Final = bytes((constants.FRAME_END,))


def _marshal_arguments(method: base.Frame) -> bytes:
    """pamqp's `Frame.marshal` without its `validate()` call (same encoding rules)."""
    output: list[bytes] = []
    bits, offset, in_bits = 0, 0, False
    for argument in method.__slots__:
        data_type = method.amqp_type(argument)
        value = getattr(method, argument, 0)
        if data_type == "bit":
            if not in_bits:
                bits, offset, in_bits = 0, 0, True
            bits = encode.bit(value, bits, offset)
            offset += 1
            if offset == 8:
                output.append(encode.octet(bits))
                in_bits = False
            continue
        if in_bits:
            output.append(encode.octet(bits))
            in_bits = False
        output.append(encode.by_type(value, data_type))
    if in_bits:
        output.append(encode.octet(bits))
    return b"".join(output)


def encode_content(
    channel: int,
    method: base.Frame,
    properties: commands.Basic.Properties,
    body: bytes,
    frame_max: int,
) -> bytes:
    """Return the frames of a content-bearing method: method, content header, body frames.

    Spec 4.2.6: one method frame, one content header frame whose ``body_size`` is
    ``len(body)``, then body frames each at most ``frame_max`` octets *in total*
    (payload plus the 8 octets of frame overhead).  ``frame_max`` 0 means
    unlimited: the body goes in a single frame.  An empty body has no body frame.

    The method and content header frames cannot be split: with huge properties
    (a big ``headers`` table) they may exceed ``frame_max``, as with RabbitMQ.  A
    caller that cares compares the first frames' sizes with its ``frame_max``.

    Raises:
        ValueError: ``channel`` is outside 0..65535; ``frame_max`` is 1..8 (no room
            for a payload octet); or pamqp's validation of the method/properties failed.
        TypeError: a method argument or property has a type pamqp cannot encode.
    """
    _check_channel(channel)
    if 0 < frame_max <= _FRAME_OVERHEAD:
        raise ValueError(f"frame_max {frame_max} leaves no room for a payload")
    method_frame = frame.marshal(method, channel)
    header_frame = frame.marshal(header.ContentHeader(0, len(body), properties), channel)
    parts: list[bytes | memoryview] = [method_frame, header_frame]
    chunk = frame_max - _FRAME_OVERHEAD if frame_max else max(len(body), 1)
    end_octet = constants.FRAME_END_CHAR
    with memoryview(body) as view:
        for offset in range(0, len(body), chunk):
            piece = view[offset : offset + chunk]
            parts += (
                _FRAME_HEADER.pack(constants.FRAME_BODY, channel, len(piece)),
                piece,
                end_octet,
            )
        return b"".join(parts)
