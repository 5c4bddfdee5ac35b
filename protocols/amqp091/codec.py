"""Sans-IO AMQP 0-9-1 codec: bytes in, events out; events in, bytes out.

Theory of operation
-------------------
There is no IO, no asyncio and no clock here, and nothing from the broker:
importing this module loads pamqp and the package's own codec modules only
(tests/amqp091/test_standalone.py checks it in a fresh interpreter).

One :class:`Connection` per socket, in the shape the MQTT and STOMP codecs
share (h11's): the shell feeds whatever the socket produced to
:meth:`~Connection.receive_data` (``b""`` at EOF) and calls
:meth:`~Connection.next_event` until it returns :data:`NEED_DATA`; every frame
the other side is sent is an event given to :meth:`~Connection.send`, which
returns its bytes. A protocol error is a :class:`FrameError` that carries its
wire answer (the ``connection.close`` reply code, text and culprit method).

The rooms behind it:

* `decoder`: framing and content assembly (:class:`FrameDecoder`);
* `methods`: method and content-header payloads, pamqp plus fast paths;
* `frames`: the frame constants (the one frame header struct) and encoders;
* `properties`: basic properties, doubles kept, encoded once per set;
* `events`: the events of both directions and the errors.

The connection's states
-----------------------
The handshake of spec 2.2.4 is a table, :data:`HANDSHAKE`: in each state,
per role, the one connection method that may arrive on channel 0 and the
state it leads to::

    server: HEADER -(protocol header)-> START -(start-ok)-> TUNE -(tune-ok)->
            OPEN -(connection.open)-> RUNNING
    client: START -(start)-> TUNE -(tune)-> OPEN -(open-ok)-> RUNNING

Sending ``connection.close`` leads to CLOSING, where only connection.close
and close-ok still come out (spec 2.2.4: after sending close, a peer
discards everything but those). Before RUNNING:

* connection.close may arrive in any state (the peer gives up);
* any other connection method than the expected one is a 503 COMMAND_INVALID;
* a method or content on another channel is a 504 CHANNEL_ERROR.

Once RUNNING, channel 0 carries only the methods of
:data:`RUNNING_ON_CHANNEL_0` (another connection method is a 503
COMMAND_INVALID, another class's method a 504 CHANNEL_ERROR, as RabbitMQ
answers); other channels are the application's.

These sequencing errors leave the framing intact: the connection moves to
CLOSING and still hands out the peer's close-ok. A framing error (a
malformed frame) puts it in ERROR for good, like h11. The application
decides everything else: what start-ok's credentials are worth, whether the
tune-ok's limits are acceptable (it sets :attr:`Connection.frame_max`), what
a channel may do once RUNNING.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Final, Literal, NoReturn

from pamqp import base, commands, constants

from moorage.protocols.amqp091.decoder import FrameDecoder
from moorage.protocols.amqp091.events import (
    NEED_DATA,
    Content,
    ContentReceived,
    Deliver,
    Event,
    FrameError,
    Heartbeat,
    HeartbeatReceived,
    Method,
    MethodReceived,
    OutgoingEvent,
    ProtocolHeader,
    ProtocolHeaderMismatch,
    ProtocolHeaderReceived,
    ReplyCode,
    _NeedDataType,
    method_ids,
)
from moorage.protocols.amqp091.frames import (
    CONTENT_METHODS,
    HEARTBEAT_FRAME,
    PROTOCOL_HEADER,
    encode_content,
    encode_content_frames,
    encode_deliver,
    encode_delivery,
    encode_method,
    shortstr,
)
from moorage.protocols.amqp091.properties import encode_properties, marshal_properties

__all__ = [
    "CONTENT_METHODS",
    "HANDSHAKE",
    "HEARTBEAT_FRAME",
    "NEED_DATA",
    "PROTOCOL_HEADER",
    "RUNNING_ON_CHANNEL_0",
    "Connection",
    "ConnectionState",
    "Content",
    "ContentReceived",
    "Deliver",
    "Event",
    "FrameDecoder",
    "FrameError",
    "Heartbeat",
    "HeartbeatReceived",
    "Method",
    "MethodReceived",
    "OutgoingEvent",
    "ProtocolHeader",
    "ProtocolHeaderMismatch",
    "ProtocolHeaderReceived",
    "ReplyCode",
    "Role",
    "encode_content",
    "encode_content_frames",
    "encode_deliver",
    "encode_delivery",
    "encode_method",
    "encode_properties",
    "marshal_properties",
    "shortstr",
]


class Role(enum.Enum):
    """Which side of the connection this codec is: it decides the handshake's rows."""

    SERVER = "server"
    CLIENT = "client"


class ConnectionState(enum.Enum):
    """Where the connection is in its life (spec 2.2.4); values name what is awaited."""

    HEADER = "header"  # the client's protocol header
    START = "start-ok"  # server: start-ok; client: start
    TUNE = "tune-ok"  # server: tune-ok; client: tune
    OPEN = "open"  # server: connection.open; client: open-ok
    RUNNING = "running"
    CLOSING = "closing"  # connection.close was sent: only close and close-ok come out
    ERROR = "error"  # a framing error: nothing more comes out


_S = ConnectionState

HANDSHAKE: Final[dict[tuple[Role, ConnectionState], tuple[type[base.Frame], ConnectionState]]] = {
    (Role.SERVER, _S.START): (commands.Connection.StartOk, _S.TUNE),
    (Role.SERVER, _S.TUNE): (commands.Connection.TuneOk, _S.OPEN),
    (Role.SERVER, _S.OPEN): (commands.Connection.Open, _S.RUNNING),
    (Role.CLIENT, _S.START): (commands.Connection.Start, _S.TUNE),
    (Role.CLIENT, _S.TUNE): (commands.Connection.Tune, _S.OPEN),
    (Role.CLIENT, _S.OPEN): (commands.Connection.OpenOk, _S.RUNNING),
}
"""(role, state) -> (the connection method expected on channel 0, the next state)."""

RUNNING_ON_CHANNEL_0: Final[dict[Role, tuple[type[base.Frame], ...]]] = {
    Role.SERVER: (
        commands.Connection.Close,
        commands.Connection.UpdateSecret,
        commands.Connection.Blocked,  # not a client's to send; ignored as RabbitMQ does
        commands.Connection.Unblocked,
    ),
    Role.CLIENT: (
        commands.Connection.Close,
        commands.Connection.UpdateSecretOk,
        commands.Connection.Blocked,
        commands.Connection.Unblocked,
    ),
}
"""The connection methods that may arrive once RUNNING; any other is a 503."""

_CLOSING_PASSES: Final = (commands.Connection.Close, commands.Connection.CloseOk)


class Connection:
    """One side of an AMQP 0-9-1 connection, sans-IO.

    Args:
        role: SERVER (decodes a client's stream, protocol header first) or CLIENT.
        frame_max: the largest frame accepted and sent, frame overhead included;
            0 means unlimited. A plain attribute: the application sets the
            negotiated value after tune / tune-ok.
        max_body_size: the largest content ``body_size`` accepted.
    """

    def __init__(
        self,
        role: Role = Role.SERVER,
        *,
        frame_max: int = constants.FRAME_MAX_SIZE,
        max_body_size: int = 128 * 1024 * 1024,
    ) -> None:
        self.role = role
        self.state = _S.HEADER if role is Role.SERVER else _S.START
        self.close_sent = False  # connection.close went out: only close-ok is owed
        self._on_channel_0 = RUNNING_ON_CHANNEL_0[role]
        self._decoder = FrameDecoder(
            frame_max, max_body_size, expect_protocol_header=role is Role.SERVER
        )

    @property
    def frame_max(self) -> int:
        return self._decoder.frame_max

    @frame_max.setter
    def frame_max(self, value: int) -> None:
        self._decoder.frame_max = value

    # -- input -------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed its side (EOF).

        Raises:
            RuntimeError: data arrived after EOF (a bug in the caller).
        """
        self._decoder.receive_data(data)

    def next_event(self) -> Event | Literal[_NeedDataType.NEED_DATA]:
        """The next event the peer's bytes complete, or :data:`NEED_DATA`.

        Returns:
            :class:`ProtocolHeaderReceived` (a server's first event),
            :class:`MethodReceived`, :class:`ContentReceived`,
            :class:`HeartbeatReceived`, or :data:`NEED_DATA`.

        Raises:
            ProtocolHeaderMismatch: the client's first 8 octets are not
                :data:`PROTOCOL_HEADER` (answer: send :class:`ProtocolHeader`, close).
            FrameError: a framing error (then ERROR: every later call raises it
                again) or a method out of sequence (then CLOSING). Any other
                exception would be a bug.
        """
        while True:
            try:
                event = self._decoder.next_event()
            except FrameError:
                self.state = _S.ERROR
                raise
            state = self.state
            if state is _S.RUNNING:
                if type(event) is MethodReceived and not event.channel:
                    self._check_running_channel_0(event.method)
                return event
            if event is NEED_DATA:
                return event
            if state is _S.CLOSING:
                if isinstance(event, MethodReceived) and isinstance(event.method, _CLOSING_PASSES):
                    return event
                continue  # spec 2.2.4: discarded while the close is under way
            return self._in_handshake(state, event)

    def _in_handshake(self, state: ConnectionState, event: Event) -> Event:
        """Check an event against the handshake table and move on (see the module doc)."""
        if isinstance(event, MethodReceived):
            method = event.method
            if event.channel:
                self._out_of_sequence(
                    ReplyCode.CHANNEL_ERROR,
                    f"CHANNEL_ERROR - expected 'connection.open', got '{method.name}' "
                    f"on channel {event.channel}",
                )
            if isinstance(method, commands.Connection.Close):
                return event
            expected, following = HANDSHAKE[self.role, state]
            if not isinstance(method, expected):
                self._out_of_sequence(
                    ReplyCode.COMMAND_INVALID,
                    f"COMMAND_INVALID - expected '{expected.name}', got '{method.name}'",
                )
            self.state = following
        elif isinstance(event, ProtocolHeaderReceived):
            self.state = _S.START
        elif isinstance(event, ContentReceived):
            self._out_of_sequence(
                ReplyCode.CHANNEL_ERROR, "CHANNEL_ERROR - content before connection.open"
            )
        return event

    def _check_running_channel_0(self, method: base.Frame) -> None:
        if isinstance(method, self._on_channel_0):
            return
        class_id, method_id = method_ids(method)
        if class_id != commands.Connection.frame_id:
            # RabbitMQ 3.10 (recorded): another class's method on channel 0 is a 504
            # naming that method, "CHANNEL_ERROR - unexpected method in connection
            # state running".
            self._out_of_sequence(
                ReplyCode.CHANNEL_ERROR,
                "CHANNEL_ERROR - unexpected method in connection state running",
                class_id,
                method_id,
            )
        self._out_of_sequence(
            ReplyCode.COMMAND_INVALID,
            f"COMMAND_INVALID - unexpected method '{method.name}' on channel 0",
            class_id,
            method_id,
        )

    def _out_of_sequence(
        self, reply_code: ReplyCode, text: str, class_id: int = 0, method_id: int = 0
    ) -> NoReturn:
        self.state = _S.CLOSING
        raise FrameError(reply_code, text, class_id, method_id)

    # -- output ------------------------------------------------------------------------

    def send(self, event: OutgoingEvent) -> bytes:
        """The bytes of `event`, in frames of at most :attr:`frame_max` octets.

        Sending connection.close moves the connection to CLOSING.

        Raises:
            ValueError: a channel outside 0..65535, or a value too long for its field.
            TypeError: an argument pamqp cannot encode.
        """
        return _ENCODERS[type(event)](self, event)

    def _send_method(self, event: Method) -> bytes:
        method = event.method
        if isinstance(method, commands.Connection.Close) and not event.channel:
            self.close_sent = True
            if self.state is not _S.ERROR:  # after a framing error nothing comes out at all
                self.state = _S.CLOSING
        return encode_method(event.channel, method)

    def _send_content(self, event: Content) -> bytes:
        return encode_method(event.channel, event.method) + encode_content_frames(
            event.channel, event.properties, event.body, self._decoder.frame_max
        )

    def _send_deliver(self, event: Deliver) -> bytes:
        return encode_delivery(
            event.channel,
            event.consumer_tag,
            event.delivery_tag,
            event.redelivered,
            event.exchange,
            event.routing_key,
            event.properties,
            event.body,
            self._decoder.frame_max,
        )

    def _send_heartbeat(self, event: Heartbeat) -> bytes:
        return HEARTBEAT_FRAME

    def _send_protocol_header(self, event: ProtocolHeader) -> bytes:
        return PROTOCOL_HEADER


_ENCODERS: Final[dict[type[Any], Callable[[Connection, Any], bytes]]] = {
    Deliver: Connection._send_deliver,
    Method: Connection._send_method,
    Content: Connection._send_content,
    Heartbeat: Connection._send_heartbeat,
    ProtocolHeader: Connection._send_protocol_header,
}
