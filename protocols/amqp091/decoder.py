"""The receiving side of AMQP 0-9-1 framing: bytes in, frames and assembled content out.

Theory of operation
-------------------
:class:`FrameDecoder` holds the bytes the peer sent and turns them into
events; :class:`~moorage.protocols.amqp091.codec.Connection` wraps it with the
connection's state table. pamqp does the per-method and per-property
unmarshalling (`methods`); this module owns everything about *framing*:

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
   :class:`ContentReceived` is produced when the body is complete.  The hot path,
   a basic.publish whose header and single body frame are already buffered, is
   decoded in one go (:meth:`FrameDecoder._whole_publish`).

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

pamqp is lenient about a few things and so is this decoder: trailing octets after
the last method argument are ignored, a truncated *last* string argument decodes
as a shorter string, and the content header ``weight`` field is not checked.
Which methods are legal in which connection state is the `codec`'s table.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Final, Literal

from pamqp import base, commands, constants

from moorage.protocols.amqp091.events import (
    NEED_DATA,
    ContentReceived,
    Event,
    FrameError,
    HeartbeatReceived,
    MethodReceived,
    ProtocolHeaderMismatch,
    ProtocolHeaderReceived,
    ReplyCode,
    _NeedDataType,
    method_ids,
)
from moorage.protocols.amqp091.frames import (
    BASIC_CLASS_ID,
    CONTENT_METHODS,
    FRAME_END,
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    FRAME_OVERHEAD,
    FRAME_SIZE_FUDGE,
    PROTOCOL_HEADER,
)
from moorage.protocols.amqp091.methods import (
    DECODE_ERRORS,
    METHOD_INDEX,
    PUBLISH_INDEX,
    decode_content_header,
    decode_method,
    fast_publish,
)
from moorage.protocols.buffers import copy_out

_CONTENT_CLASS: Final = struct.Struct(">H")  # first field of a content header
_CONTENT_HEADER_MIN: Final = 14  # class, weight, body size, property flags (spec 4.2.6.1)

# Start compacting the receive buffer once this many consumed octets sit in front.
_COMPACT_THRESHOLD: Final = 64 * 1024


@dataclass(slots=True)
class _PendingContent:
    """A channel's content in assembly: method seen, header maybe, body pieces so far."""

    method: base.Frame
    properties: commands.Basic.Properties | None = None
    properties_raw: bytes | None = None
    body_size: int = 0
    received: int = 0
    pieces: list[bytes] | None = None


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
            if len(buf) - start < FRAME_HEADER_SIZE:
                return NEED_DATA
            frame_type, channel, size = FRAME_HEADER.unpack_from(buf, start)
            handler = self._HANDLERS.get(frame_type)
            if handler is None:
                # Spec 4.2.3: unknown frame type is a connection exception.
                raise FrameError(
                    ReplyCode.FRAME_ERROR, f"FRAME_ERROR - unknown frame type {frame_type}"
                )
            total = size + FRAME_OVERHEAD
            if self.frame_max and total > self.frame_max + FRAME_SIZE_FUDGE:
                # Like RabbitMQ we accept a payload of frame-max octets (FRAME_SIZE_FUDGE).
                # Spec 4.2.3 / connection.tune: frame-max bounds the whole frame.
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
            end = start + FRAME_HEADER_SIZE + size  # index of the frame-end octet
            if len(buf) <= end:
                return NEED_DATA
            if buf[end] != FRAME_END:
                # Spec 4.2.3: a bad frame-end octet is a fatal frame error.
                raise FrameError(
                    ReplyCode.FRAME_ERROR,
                    f"FRAME_ERROR - bad frame end octet {buf[end]:#04x}",
                )
            if (
                frame_type == constants.FRAME_METHOD
                and channel
                and size >= METHOD_INDEX.size
                and METHOD_INDEX.unpack_from(buf, start + FRAME_HEADER_SIZE)[0] == PUBLISH_INDEX
            ):
                content = self._whole_publish(buf, start, channel, end)
                if content is not None:
                    return content
            payload = copy_out(buf, start + FRAME_HEADER_SIZE, end)
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
            or _CONTENT_CLASS.unpack_from(buf, header_at)[0] != BASIC_CLASS_ID
        ):
            return None
        method = fast_publish(bytes(buf[start + FRAME_HEADER_SIZE : end]))
        if method is None:
            return None
        try:
            properties, raw, body_size = decode_content_header(bytes(buf[header_at:header_end]))
        except DECODE_ERRORS:
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
        if len(buf) - at < FRAME_HEADER_SIZE:
            return None
        frame_type, frame_channel, size = FRAME_HEADER.unpack_from(buf, at)
        last = at + FRAME_HEADER_SIZE + size
        if (
            frame_type != kind
            or frame_channel != channel
            or (self.frame_max and size + FRAME_OVERHEAD > self.frame_max + FRAME_SIZE_FUDGE)
            or len(buf) <= last
            or buf[last] != FRAME_END
        ):
            return None
        return at + FRAME_HEADER_SIZE, last

    # -- per frame type ----------------------------------------------------

    def _on_method(self, channel: int, payload: bytes) -> Event | None:
        pending = self._pending.get(channel)
        method = decode_method(payload)
        if pending is not None:
            # Spec 4.2.6: content frames follow their method with nothing between.
            wanted = "header" if pending.pieces is None else "body"
            raise FrameError(
                ReplyCode.UNEXPECTED_FRAME,
                f"UNEXPECTED_FRAME - expected content {wanted} on channel {channel}, "
                f"got {method.name}",
                *method_ids(method),
            )
        if isinstance(method, CONTENT_METHODS):
            if channel == 0:
                raise FrameError(
                    ReplyCode.COMMAND_INVALID,
                    f"COMMAND_INVALID - {method.name} on channel 0",
                    *method_ids(method),
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
        class_ids = method_ids(pending.method)
        if len(payload) >= _CONTENT_CLASS.size:
            (class_id,) = _CONTENT_CLASS.unpack_from(payload)
            if class_id != BASIC_CLASS_ID:
                # Spec 4.2.6.1: the header's class-id must match the method's class.
                raise FrameError(
                    ReplyCode.UNEXPECTED_FRAME,
                    f"UNEXPECTED_FRAME - content header for class {class_id}, expected 60",
                    *class_ids,
                )
        try:
            properties, raw, body_size = decode_content_header(payload)
        except DECODE_ERRORS as err:
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
                *method_ids(pending.method),
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
