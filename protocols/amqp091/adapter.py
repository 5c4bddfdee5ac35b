"""AMQP 0-9-1 connections: frames in, calls on the broker core, frames out.

Theory of operation
-------------------
`AMQPConnection` is driven by the asyncio shell (`server.py`) through four
calls: `data_received(data, now)`, `handle_timer(now)`, `set_writable(flag)`
and `connection_lost()`. It writes through a `Shell` (buffered, flushed once
per loop tick) and never touches a socket or a clock itself.

The codec (`codec.Connection`) owns the wire: it decodes every frame, keeps
the handshake's state table (spec 2.2.4) and encodes every frame sent here.
This module owns the connection: the handshake's answers (credentials,
limits, the vhost; the vocabulary is `handshake`'s), liveness (heartbeats
and the handshake timeout through the core's `KeepAlive`, plus the close-ok
timeout), dispatch, basic.publish (the hot path, kept here) and the one
mapping of errors to the wire. The rooms around it:

- `channel`: `AMQPChannel`, one core `Session`'s delivery sink, with its
  publisher confirms and ordered replies (`OrderedReplies`: replies that
  promise durability wait for the store; this adapter never touches it);
- `channel_methods`: what each channel method does in the core, by class;
- `mapping`: the core's `Message` <-> AMQP properties.

Errors: a core `BrokerError` with a soft scope closes the channel
(`channel.close` with the reply code); a hard one, or a codec `FrameError`,
closes the connection (`connection.close`), both in `channel_error` /
`_connection_error`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from typing import Any

from pamqp import commands
from pamqp.base import Frame

from moorage.broker import logs
from moorage.broker.auth import PermissionPending, User
from moorage.broker.broker import Broker
from moorage.broker.connection import ClientConnection
from moorage.broker.errors import (
    AccessRefused,
    BrokerError,
    ChannelError,
    CommandInvalid,
    ConnectionForced,
    NotAllowed,
    NotImplementedFeature,
    NotServing,
    PreconditionFailed,
)
from moorage.broker.keepalive import Due, KeepAlive
from moorage.broker.limits import LimitExceeded
from moorage.broker.message import Message
from moorage.protocols.amqp091.channel import AMQPChannel
from moorage.protocols.amqp091.channel_methods import CHANNEL_HANDLERS
from moorage.protocols.amqp091.codec import (
    NEED_DATA,
    Connection,
    ConnectionState,
    Content,
    ContentReceived,
    FrameError,
    Heartbeat,
    HeartbeatReceived,
    Method,
    MethodReceived,
    ProtocolHeader,
    ProtocolHeaderMismatch,
    ProtocolHeaderReceived,
)
from moorage.protocols.amqp091.events import method_ids, reply_text
from moorage.protocols.amqp091.handshake import FRAME_MIN_SIZE, credentials, start_method
from moorage.protocols.amqp091.mapping import PROPERTIES_KEY, properties_payload, to_properties
from moorage.protocols.tcp import Shell, hold_refusal, want_input

log = logging.getLogger("moorage.amqp")

CLOSE_OK_TIMEOUT = 3.0  # seconds a client gets to answer our connection.close


class AMQPConnection:
    """The AMQP 0-9-1 state machine of one client connection."""

    def __init__(self, broker: Broker, shell: Shell, now: float) -> None:
        self.broker = broker
        self.shell = shell
        limits = broker.limits
        self.codec = Connection(frame_max=limits.frame_max, max_body_size=limits.max_message_size)
        self.closed = False  # the transport is closed or closing: no more input
        self.frame_max = limits.frame_max
        self.channel_max = limits.channel_max
        self.heartbeat = 0
        self.capabilities: dict[str, Any] = {}
        self.client_properties: dict[str, Any] = {}
        self.core: ClientConnection | None = None
        self.channels: dict[int, AMQPChannel] = {}
        self.writable = True
        self.keepalive = KeepAlive(now, limits.handshake_timeout)
        self._now = now  # the last time the shell gave us
        self._close_deadline = math.inf  # connection.close is out: when we stop waiting
        self._confirming: set[AMQPChannel] = set()
        self.read_backs: set[asyncio.Task[None]] = set()  # basic.gets waiting for the store
        self._username = ""
        self._user: User | None = None  # set once start-ok's credentials are accepted
        # an authentication backend has not answered yet, or an authorisation backend
        # (then `_held` is the event to handle again)
        self._login_pending = False
        self._held: object = None
        self._blocked_sent = False  # connection.blocked is out, connection.unblocked owed

    # -- driven by the shell -----------------------------------------------------------

    def data_received(self, data: bytes, now: float) -> None:
        """Feed bytes from the socket; handle every complete frame in order."""
        if self.closed:
            return
        self._now = now
        self.keepalive.received(now)
        self.codec.receive_data(data)
        if not self._login_pending:
            self._handle_events()

    def _handle_events(self) -> None:
        """Handle every complete frame received, in order (until a login must be awaited)."""
        codec = self.codec
        try:
            held, self._held = self._held, None  # (a local: nothing more per frame)
            while not self.closed and not self._login_pending:
                event: object
                if held is None:
                    event = codec.next_event()
                    if event is NEED_DATA:
                        break
                else:
                    event, held = held, None
                try:
                    if isinstance(event, ContentReceived):
                        self._on_content(event)
                    elif isinstance(event, MethodReceived):
                        self._on_method(event.channel, event.method)
                    elif isinstance(event, HeartbeatReceived):
                        pass
                    elif isinstance(event, ProtocolHeaderReceived):
                        self._on_protocol_header()
                except PermissionPending as pending:
                    # A backend has not answered yet (nothing was done): this event
                    # again, and no later one, once it has (`broker.auth_users`).
                    self._held = event
                    self._login_pending = True
                    pending.then(self._permission_answered)
        except ProtocolHeaderMismatch:
            self.shell.send(codec.send(ProtocolHeader()))
            self._close_transport()
        except FrameError as e:
            self._connection_error(e.reply_code, e.text, e.class_id, e.method_id)
        except BrokerError as e:
            self._connection_error(e.code, e.reply_text, 0, 0)
        if self._confirming:
            for channel in self._confirming:
                channel.flush_confirms()
            self._confirming.clear()
        if self.broker.flow.publishers_blocked and not self._blocked_sent:
            self._on_memory_alarm(True)

    def _permission_answered(self) -> None:
        self._login_pending = False
        if not self.closed:
            self._handle_events()
        if not self._login_pending:
            want_input(self.shell)

    @property
    def waiting(self) -> bool:
        """A backend's answer is awaited (`Adapter.waiting`): the shell stops reading."""
        return self._login_pending

    @property
    def running(self) -> bool:
        """The handshake is done and no connection.close is under way."""
        return not self.closed and self.codec.state is ConnectionState.RUNNING

    @property
    def publisher(self) -> bool:
        """Has this client published? (The memory alarm pauses only publishers.)"""
        return self.core is not None and self.core.published

    def peer_held(self, now: float) -> None:
        """The shell is not reading us (flow control): missing heartbeats are not the client's."""
        self.keepalive.received(now)

    def _on_memory_alarm(self, on: bool) -> None:
        """connection.blocked / unblocked (a resource alarm: memory or disk), to publishers
        that announced the capability."""
        if not self.running or not self.capabilities.get("connection.blocked"):
            return
        if on and not self._blocked_sent and self.publisher:
            self._blocked_sent = True
            self.send_method(0, commands.Connection.Blocked(self.broker.flow.block_reason))
        elif not on and self._blocked_sent:
            self._blocked_sent = False
            self.send_method(0, commands.Connection.Unblocked())

    def next_deadline(self) -> float:
        """When `handle_timer` must run next (monotonic seconds; inf: never)."""
        if self._close_deadline != math.inf:
            return self._close_deadline
        return self.keepalive.deadline()

    def handle_timer(self, now: float) -> None:
        """Heartbeats, the handshake timeout and the close-ok timeout."""
        if self.closed:
            return
        self._now = now
        if self._close_deadline != math.inf:
            # CLOSING: the client had CLOSE_OK_TIMEOUT to answer our connection.close.
            if now >= self._close_deadline:
                log.info("closing %s: %s timeout", self.shell.peer, self.codec.state.value)
                self._close_transport()
            return
        due = self.keepalive.poll(now)
        if due is Due.HEARTBEAT:  # we sent nothing for half the interval
            self.shell.send(self.codec.send(Heartbeat()))
        elif due is Due.HANDSHAKE_TIMEOUT:
            log.info("closing %s: %s timeout", self.shell.peer, self.codec.state.value)
            self._close_transport()
        elif due is Due.PEER_SILENT:  # two heartbeat intervals without a byte
            log.info(
                "closing %s: missed heartbeats from client, timeout %ds",
                self.shell.peer,
                self.heartbeat,
            )
            self._close_transport()

    def set_writable(self, writable: bool) -> None:
        """Transport back-pressure: stop deliveries while the write buffer is full."""
        self.writable = writable
        for channel in list(self.channels.values()):
            channel.session.set_flow(writable and channel.client_flow)

    def connection_lost(self) -> None:
        """The socket is gone: release everything the connection held."""
        self.closed = True
        self._release()

    def shutdown(self, reason: str = "shutdown") -> None:
        """Broker shutdown: connection.close 320 and stop accepting frames."""
        if self.closed or self.codec.close_sent:
            return
        if self.running:
            error = ConnectionForced(f"broker forced connection closure with reason '{reason}'")
            self._connection_error(error.code, error.reply_text, 0, 0)
        else:
            self._close_transport()

    # -- output ------------------------------------------------------------------------

    def send_method(self, channel: int, method: Frame) -> None:
        """A method frame without content (and no heartbeat is owed for this interval)."""
        self.keepalive.sent()
        self.shell.send(self.codec.send(Method(channel, method)))

    def send_content(self, channel: int, method: Frame, message: Message) -> None:
        """A content-bearing method (basic.return, basic.get-ok) with the message."""
        self.shell.send(
            self.codec.send(Content(channel, method, properties_payload(message), message.body))
        )

    def _close_transport(self) -> None:
        self.closed = True
        self._release()
        self.shell.close()

    def _release(self) -> None:
        self.broker.flow.alarm_listeners.discard(self._on_memory_alarm)
        for channel in self.channels.values():
            channel.closing = True
        self.channels.clear()
        for task in self.read_backs:
            task.cancel()
        if self.core is not None:
            self.core.close()
            self.core = None

    def _connection_error(self, code: int, text: str, class_id: int, method_id: int) -> None:
        """connection.close with a hard error; only close-ok is accepted afterwards."""
        if self.closed or self.codec.close_sent:
            return
        logs.event(
            "connection.error",
            f"closing AMQP connection {self.shell.peer}: {text}",
            connection=self.core.id if self.core is not None else None,
            peer=self.shell.peer,
            protocol="amqp091",
            reason=text,
        )
        if self._user is None:  # not authenticated: no connection.close (spec 2.2.4)
            self._close_transport()
            return
        self.send_method(0, commands.Connection.Close(code, reply_text(text), class_id, method_id))
        self._release()
        self._close_deadline = self._now + CLOSE_OK_TIMEOUT

    def close_channel(self, channel: AMQPChannel) -> None:
        """channel.close from the client: release the channel (the caller sends close-ok)."""
        assert self.core is not None
        channel.closing = True
        self._confirming.discard(channel)
        self.core.close_session(channel.session)
        del self.channels[channel.number]

    def channel_error(self, channel: AMQPChannel, error: BrokerError, method: Frame | None) -> None:
        """Map a core error to the wire: channel.close (soft) or connection.close (hard)."""
        class_id, method_id = method_ids(method) if method is not None else (0, 0)
        if error.hard:
            self._connection_error(error.code, error.reply_text, class_id, method_id)
            return
        log.debug("closing channel %d of %s: %s", channel.number, self.shell.peer, error.reply_text)
        self.send_method(
            channel.number,
            commands.Channel.Close(error.code, reply_text(error.reply_text), class_id, method_id),
        )
        channel.closing = True
        self._confirming.discard(channel)
        if self.core is not None:
            self.core.close_session(channel.session)

    # -- handshake -----------------------------------------------------------------------

    def _on_protocol_header(self) -> None:
        self.send_method(0, start_method(bool(getattr(self.shell, "peer_certificate", None))))

    def _on_start_ok(self, method: commands.Connection.StartOk) -> None:
        self.client_properties = dict(method.client_properties or {})
        caps = self.client_properties.get("capabilities")
        self.capabilities = dict(caps) if isinstance(caps, dict) else {}
        certificate = getattr(self.shell, "peer_certificate", None)
        external = method.mechanism == "EXTERNAL" and bool(certificate)
        username, password = (
            (None, "") if external else credentials(method.mechanism, method.response)
        )
        done = functools.partial(self._logged_in, method.mechanism, username)
        try:
            self.broker.check_serving()
        except NotServing as e:
            # A standby: connection.close 320 naming the primary, although the client
            # is not logged in (spec 2.2.4 forbids that for a failed login only), so
            # that it knows where to go; its failover list then moves on.
            log.info("AMQP connection from %s refused: %s", self.shell.peer, e.text)
            self.send_method(0, commands.Connection.Close(e.code, e.reply_text[:255], 0, 0))
            self._close_transport()
            return
        # An authentication backend may answer later: no frame of this client is
        # handled until it has (`_login_pending`, `_handle_events`).
        self._login_pending = self.broker.begin_login(
            username,
            password,
            from_loopback=self.shell.from_loopback,
            peer=self.shell.peer,
            done=done,
            certificate=certificate if external else None,  # RabbitMQ's auth_mechanism_ssl
        )

    def _logged_in(
        self, mechanism: str, username: str | None, user: User | None, error: AccessRefused | None
    ) -> None:
        """The answer to start-ok: connection.tune, or the refusal."""
        resumed = self._login_pending
        self._login_pending = False
        want_input(self.shell)  # read again (paused while the answer was awaited)
        if self.closed:
            return
        if user is None:
            assert error is not None
            hold_refusal(self.shell, self.broker.refusal_delay(self.shell.peer))
            logs.event(
                "connection.refused",
                f"AMQP login refused for {username!r} from {self.shell.peer}: {error.text}",
                level=logging.WARNING,
                peer=self.shell.peer,
                protocol="amqp091",
                user=username,
                reason=error.text,
            )
            if self.capabilities.get("authentication_failure_close"):
                text = (
                    f"ACCESS_REFUSED - Login was refused using authentication mechanism "
                    f"{mechanism}. For details see the broker logfile."
                )
                self.send_method(0, commands.Connection.Close(403, text, 0, 0))
            self._close_transport()
            return
        self._user = user
        self._username = user.name
        tune = commands.Connection.Tune(
            self.channel_max, self.frame_max, self.broker.limits.heartbeat
        )
        self.send_method(0, tune)
        if resumed:  # answered later: the frames that came meanwhile are handled now
            self._handle_events()

    def _on_tune_ok(self, method: commands.Connection.TuneOk) -> None:
        if method.frame_max and method.frame_max < FRAME_MIN_SIZE:
            raise NotAllowed(f"frame_max={method.frame_max} < {FRAME_MIN_SIZE} min size")
        if method.frame_max > self.frame_max or (method.frame_max == 0 and self.frame_max):
            raise NotAllowed(f"frame_max={method.frame_max} > {self.frame_max} max size")
        if method.channel_max > self.channel_max:
            raise NotAllowed(f"channel_max={method.channel_max} > {self.channel_max} max")
        self.frame_max = method.frame_max or self.frame_max
        self.codec.frame_max = self.frame_max
        self.channel_max = method.channel_max or self.channel_max
        self.heartbeat = method.heartbeat

    def _on_open(self, method: commands.Connection.Open) -> None:
        vhost = method.virtual_host or "/"
        assert self._user is not None  # the codec's table: open comes after start-ok
        try:
            self.core = self.broker.connect(
                vhost,
                self._user,
                protocol="amqp091",
                peer=self.shell.peer,
                client_properties=self.client_properties,
            )
        except NotAllowed as e:
            log.warning(
                "AMQP vhost access refused for %r from %s: %s",
                self._username,
                self.shell.peer,
                e.text,
            )
            raise
        # Spec 4.2.7: heartbeat when idle for half the interval; a client silent
        # for two intervals is gone. Started before open-ok goes out, which
        # then counts as sent in the first interval.
        self.keepalive.start(
            self._now, recv_timeout=2.0 * self.heartbeat, send_interval=self.heartbeat / 2
        )
        self.send_method(0, commands.Connection.OpenOk())
        self.broker.flow.alarm_listeners.add(self._on_memory_alarm)
        self.core.closer = self.force_close

    def force_close(self, reason: str) -> None:
        """An operator closed this connection: connection.close 320 with the reason, as
        RabbitMQ's management plugin does (`CONNECTION_FORCED - Closed via management
        plugin` by default); then only close-ok is accepted."""
        if self.closed or self.codec.close_sent:
            return
        error = ConnectionForced(reason)
        self._connection_error(error.code, error.reply_text, 0, 0)

    # -- dispatch ------------------------------------------------------------------------

    def _on_method(self, number: int, method: Frame) -> None:
        """Dispatch one method; a connection error names the method, as RabbitMQ's do."""
        try:
            self._dispatch(number, method)
        except BrokerError as e:
            if not e.hard:
                raise
            self._connection_error(e.code, e.reply_text, *method_ids(method))

    def _dispatch(self, number: int, method: Frame) -> None:
        if self.codec.close_sent:  # the codec lets only close and close-ok through
            if isinstance(method, commands.Connection.Close):
                self.send_method(0, commands.Connection.CloseOk())
            self._close_transport()
            return
        if number == 0:
            self._on_connection_method(method)
            return
        channel = self.channels.get(number)
        if channel is None:
            if isinstance(method, commands.Channel.Open):
                # RabbitMQ's channel_max limits how many channels are open at
                # once; any channel number 1..65535 may be used.
                if self.channel_max and len(self.channels) >= self.channel_max:
                    error = NotAllowed(
                        f"number of channels opened ({len(self.channels)}) has reached the "
                        f"negotiated channel_max ({self.channel_max})"
                    )
                    self._connection_error(error.code, error.reply_text, 0, 0)  # as RabbitMQ
                    return
                try:
                    self._check_user_channels()
                except LimitExceeded as e:  # the user's max-channels: 530, as RabbitMQ
                    self._connection_error(e.code, e.reply_text, 20, 10)
                    return
                self._open_channel(number)
                return
            raise ChannelError(f"expected 'channel.open' on channel {number}, got '{method.name}'")
        if channel.closing:
            if isinstance(method, commands.Channel.CloseOk):
                del self.channels[number]
            elif isinstance(method, commands.Channel.Close):
                self.send_method(number, commands.Channel.CloseOk())
            return
        handler = CHANNEL_HANDLERS.get(type(method))
        if handler is None:
            raise CommandInvalid(f"unexpected method '{method.name}' on channel {number}")
        try:
            handler(self, channel, method)
        except BrokerError as e:
            self.channel_error(channel, e, method)

    def _on_connection_method(self, method: Frame) -> None:
        """A connection method the codec's state table let through (spec 2.2.4)."""
        if isinstance(method, commands.Connection.Close):
            self.send_method(0, commands.Connection.CloseOk())
            self._close_transport()
        elif isinstance(method, commands.Connection.StartOk):
            self._on_start_ok(method)
        elif isinstance(method, commands.Connection.TuneOk):
            self._on_tune_ok(method)
        elif isinstance(method, commands.Connection.Open):
            self._on_open(method)
        elif isinstance(method, commands.Connection.UpdateSecret):
            self.send_method(0, commands.Connection.UpdateSecretOk())
        elif isinstance(method, commands.Connection.Blocked | commands.Connection.Unblocked):
            pass  # from a client: ignored
        else:  # RabbitMQ: a channel's method on channel 0 is a 504
            raise ChannelError(f"unexpected method '{method.name}' on channel 0")

    def _check_user_channels(self) -> None:
        """The user's `max-channels` over all its AMQP connections (`broker.limits`)."""
        assert self.core is not None
        user = self.core.user.name
        self.broker.resource_limits.check_channel(
            user,
            (
                len(c.sessions)
                for c in self.broker.connections
                if c.protocol == "amqp091" and c.user.name == user
            ),
        )

    def _open_channel(self, number: int) -> None:
        assert self.core is not None
        channel = AMQPChannel(self, number, self.core.ordered_replies())
        channel.session = self.core.open_session(channel)
        if not self.writable:
            channel.session.set_flow(False)
        self.channels[number] = channel
        self.send_method(number, commands.Channel.OpenOk())

    def _on_content(self, event: ContentReceived) -> None:
        channel = self.channels.get(event.channel)
        if channel is None:
            raise ChannelError(f"expected 'channel.open' on channel {event.channel}")
        if channel.closing:
            return
        method = event.method
        if not isinstance(method, commands.Basic.Publish):
            raise CommandInvalid(f"unexpected content method '{method.name}'")
        properties = event.properties
        try:
            if method.immediate:
                raise NotImplementedFeature("immediate=true")  # as RabbitMQ 3.x
            if properties.user_id is not None and properties.user_id != self._username:
                raise PreconditionFailed(
                    f"user_id property set to '{properties.user_id}' but authenticated user was "
                    f"'{self._username}'"
                )
            message = Message(
                method.exchange, method.routing_key, to_properties(properties), event.body
            )
            if event.properties_raw is not None:
                message.wire_cache = {PROPERTIES_KEY: event.properties_raw}
            result = channel.session.publish(method.exchange, message, mandatory=method.mandatory)
        except BrokerError as e:
            self.channel_error(channel, e, method)
            return
        if channel.confirm:
            channel.confirm_published(result.stored, rejected=result.rejected > 0)
            self._confirming.add(channel)
