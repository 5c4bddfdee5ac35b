"""AMQP 0-9-1 connections and channels: frames in, calls on the broker core, frames out.

Theory of operation
-------------------
`AMQPConnection` is driven by the asyncio shell (`server.py`) through four
calls: `data_received(data, now)`, `handle_timer(now)`, `set_writable(flag)`
and `connection_lost()`. It writes through a `Shell` (buffered, flushed once
per loop tick) and never touches a socket or a clock itself.

The codec (`codec.Connection`) owns the wire: it decodes every frame, keeps
the handshake's state table (spec 2.2.4) and encodes every frame sent here.
This module decides what the handshake's answers are (credentials, limits,
the vhost) and what each channel method does in the core. Translation
between the core's `Message` and AMQP properties is `mapping`'s.

Each open channel is an `AMQPChannel`: it owns one core `Session` and is that
session's `DeliverySink`. Method frames are dispatched through a table from
pamqp class to handler. A core `BrokerError` with a soft scope closes the
channel (`channel.close` with the reply code); a hard one, or a codec
`FrameError`, closes the connection (`connection.close`).

Durability: replies that promise something is on disk (declare-ok of durable
entities, tx.commit-ok, publisher confirms) go out through `_reply_when_durable`,
which waits for the store's `when_durable` when anything is pending. Callbacks
fire in registration order, so a channel's replies keep their order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import platform
from collections import deque
from collections.abc import Callable
from typing import Any

from pamqp import commands
from pamqp.base import Frame

from moorage.broker import __version__
from moorage.broker.auth import User
from moorage.broker.broker import Broker
from moorage.broker.connection import ClientConnection
from moorage.broker.errors import (
    AccessRefused,
    BrokerError,
    ChannelError,
    CommandInvalid,
    ConnectionForced,
    NotAllowed,
    NotFound,
    NotImplementedFeature,
    PreconditionFailed,
)
from moorage.broker.message import Message
from moorage.broker.session import Session
from moorage.protocols.amqp091.codec import (
    NEED_DATA,
    Connection,
    ConnectionState,
    Content,
    ContentReceived,
    Deliver,
    FrameError,
    Heartbeat,
    HeartbeatReceived,
    Method,
    MethodReceived,
    ProtocolHeader,
    ProtocolHeaderMismatch,
    ProtocolHeaderReceived,
    shortstr,
)
from moorage.protocols.amqp091.events import method_ids
from moorage.protocols.amqp091.mapping import properties_payload, route, to_properties
from moorage.protocols.tcp import Shell

log = logging.getLogger("moorage.amqp")

FRAME_MIN_SIZE = 4096
CLOSE_OK_TIMEOUT = 3.0  # seconds a client gets to answer our connection.close
GET_READ_BACKS = 5  # reads of paged-out entries one basic.get waits for, at most


def server_properties(cluster_name: str = "moorage") -> dict[str, Any]:
    """What connection.start announces: product, version and RabbitMQ's capability flags."""
    return {
        "product": "Moorage",
        "version": __version__,
        "platform": f"Python {platform.python_version()}",
        "cluster_name": cluster_name,
        "copyright": "The Moorage authors",
        "information": "Licensed under the Apache License 2.0",
        "capabilities": {
            "publisher_confirms": True,
            "exchange_exchange_bindings": True,
            "basic.nack": True,
            "consumer_cancel_notify": True,
            "connection.blocked": True,
            "authentication_failure_close": True,
            "per_consumer_qos": True,
        },
    }


@functools.cache
def _start_method() -> commands.Connection.Start:
    """connection.start is the same for every client (the codec keeps its bytes)."""
    return commands.Connection.Start(
        server_properties=server_properties(), mechanisms="PLAIN AMQPLAIN", locales="en_US"
    )


class AMQPChannel:
    """One open channel: a core session plus confirm and reply bookkeeping."""

    def __init__(self, connection: AMQPConnection, number: int, session: Session) -> None:
        self.connection = connection
        self.number = number
        self.session = session
        self.closing = False  # we sent channel.close and wait for close-ok
        self.confirm = False
        self.publish_seq = 0  # last publish sequence number (confirm mode)
        self.confirmed = 0  # highest sequence number acked or nacked
        self.unconfirmed = 0  # highest sequence number waiting to be confirmed
        self.confirm_needs_sync = False
        self.deferred = 0  # replies waiting for the store
        # basic.gets not answered yet, each with the queue name it meant when it came
        self.gets: deque[tuple[commands.Basic.Get, str]] = deque()
        self.client_flow = True
        self.last_queue = ""  # the last queue declared here: what an empty queue name means
        self._tags: dict[str, bytes] = {}

    def queue_name(self, name: str) -> str:
        """Spec (and RabbitMQ): an empty queue name is the queue last declared on the channel."""
        if name:
            return name
        if not self.last_queue:
            raise NotFound("no previously declared queue")
        return self.last_queue

    # -- DeliverySink ------------------------------------------------------------------

    def deliver(
        self, consumer_tag: str, delivery_tag: int, redelivered: bool, message: Message
    ) -> None:
        conn = self.connection
        tag = self._tags.get(consumer_tag)
        if tag is None:
            tag = self._tags[consumer_tag] = shortstr(consumer_tag)
        exchange, routing_key = route(message)
        conn.shell.send(
            conn.codec.send(
                Deliver(
                    self.number,
                    tag,
                    delivery_tag,
                    redelivered,
                    exchange,
                    routing_key,
                    properties_payload(message),
                    message.body,
                )
            )
        )

    def returned(self, message: Message, reply_code: int, reply_text: str) -> None:
        method = commands.Basic.Return(
            reply_code, reply_text, message.exchange, message.routing_key
        )
        self.connection.send_content(self.number, method, message)

    def cancelled(self, consumer_tag: str, error: BrokerError | None) -> None:
        self._tags.pop(consumer_tag, None)
        if self.connection.capabilities.get("consumer_cancel_notify"):
            self.connection.send_method(
                self.number, commands.Basic.Cancel(consumer_tag, nowait=True)
            )

    def closed_by_broker(self, error: BrokerError) -> None:
        """The core ends this channel (consumer ack timeout with RabbitMQ's behaviour)."""
        if not self.closing and self.connection.channels.get(self.number) is self:
            self.connection.channel_error(self, error, None)

    # -- confirms ------------------------------------------------------------------------

    def confirm_published(self, stored: bool, rejected: bool = False) -> None:
        """Note one more publish in confirm mode; it is confirmed at end of input.

        A publish that a queue refused (`x-overflow: reject-publish`) is
        nacked on its own, after everything published before it is confirmed.
        """
        if rejected:
            self.flush_confirms()
            self.publish_seq += 1
            seq = self.publish_seq
            if self.deferred:  # keep order behind the confirms that wait for the store
                self.deferred += 1
                self.connection.broker.store.when_durable(
                    lambda _error: self._confirmed(seq, _RejectedPublish(), True), removals=False
                )
            else:
                self._confirmed(seq, _RejectedPublish(), False)
            return
        self.publish_seq += 1
        self.unconfirmed = self.publish_seq
        self.confirm_needs_sync |= stored

    def flush_confirms(self) -> None:
        """Confirm everything published so far, after the store has it if needed."""
        upto = self.unconfirmed
        if upto <= self.confirmed:
            return
        if self.confirm_needs_sync or self.deferred:
            self.confirm_needs_sync = False
            self.deferred += 1
            # A confirm promises the messages are safe, not that earlier acks are.
            self.connection.broker.store.when_durable(
                lambda error: self._confirmed(upto, error, True), removals=False
            )
        else:
            self._confirmed(upto, None, False)

    def _confirmed(self, upto: int, error: BaseException | None, deferred: bool) -> None:
        if deferred:
            self.deferred -= 1
        if (
            self.closing
            or self.connection.channels.get(self.number) is not self
            or upto <= self.confirmed
        ):
            return
        multiple = upto - self.confirmed > 1
        self.confirmed = upto
        if error is None:
            frame: Frame = commands.Basic.Ack(upto, multiple)
        elif isinstance(error, _RejectedPublish):
            # As RabbitMQ (rabbit_channel:coalesce_and_send): everything before it is
            # confirmed, so multiple; requeue keeps the record's default, true.
            frame = commands.Basic.Nack(upto, True, requeue=True)
        else:
            frame = commands.Basic.Nack(upto, multiple, requeue=False)
        self.connection.send_method(self.number, frame)

    def reply(
        self, method: Frame, after: Callable[[], None] | None = None, *, durable: bool = False
    ) -> None:
        """Send a synchronous reply, waiting for the store when it holds pending writes."""
        store = self.connection.broker.store
        if self.deferred or (durable and store.pending):
            self.deferred += 1

            def send(_error: BaseException | None) -> None:
                self.deferred -= 1
                if self.closing or self.connection.channels.get(self.number) is not self:
                    return
                if _error is not None:
                    self.connection.channel_error(self, InternalStoreError(str(_error)), method)
                    return
                self.connection.send_method(self.number, method)
                if after is not None:
                    after()

            store.when_durable(send)
        else:
            self.connection.send_method(self.number, method)
            if after is not None:
                after()


class _RejectedPublish(Exception):
    """A queue refused the message (x-overflow reject-publish): confirm it with a nack."""


class InternalStoreError(BrokerError):
    """The store could not write what a reply would have promised."""

    code, name, hard = 541, "INTERNAL_ERROR", True


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
        self._started = now
        self._last_recv = self._now = now
        self._sent_since_timer = False
        self._timer_due = now + limits.handshake_timeout
        self._confirming: set[AMQPChannel] = set()
        self._reading_back: set[asyncio.Task[None]] = set()  # basic.gets waiting for the store
        self._username = ""
        self._user: User | None = None  # set once start-ok's credentials are accepted
        self._blocked_sent = False  # connection.blocked is out, connection.unblocked owed

    # -- driven by the shell -----------------------------------------------------------

    def data_received(self, data: bytes, now: float) -> None:
        """Feed bytes from the socket; handle every complete frame in order."""
        if self.closed:
            return
        self._last_recv = self._now = now
        codec = self.codec
        codec.receive_data(data)
        try:
            while not self.closed:
                event = codec.next_event()
                if event is NEED_DATA:
                    break
                if isinstance(event, ContentReceived):
                    self._on_content(event)
                elif isinstance(event, MethodReceived):
                    self._on_method(event.channel, event.method)
                elif isinstance(event, HeartbeatReceived):
                    pass
                elif isinstance(event, ProtocolHeaderReceived):
                    self._on_protocol_header()
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
        if self.broker.flow.memory_alarm and not self._blocked_sent:
            self._on_memory_alarm(True)

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
        self._last_recv = now

    def _on_memory_alarm(self, on: bool) -> None:
        """connection.blocked / unblocked, to publishers that announced the capability."""
        if not self.running or not self.capabilities.get("connection.blocked"):
            return
        if on and not self._blocked_sent and self.publisher:
            self._blocked_sent = True
            self.send_method(0, commands.Connection.Blocked("low on memory"))
        elif not on and self._blocked_sent:
            self._blocked_sent = False
            self.send_method(0, commands.Connection.Unblocked())

    def next_deadline(self) -> float:
        """When `handle_timer` must run next (monotonic seconds)."""
        return self._timer_due

    def handle_timer(self, now: float) -> None:
        """Heartbeats, the handshake timeout and the close-ok timeout."""
        if self.closed:
            return
        self._now = now
        state = self.codec.state
        if state is not ConnectionState.RUNNING:
            # CLOSING (or ERROR): the client had CLOSE_OK_TIMEOUT to answer our
            # connection.close; before RUNNING: the handshake timeout.
            if now >= self._timer_due:
                log.info("closing %s: %s timeout", self.shell.peer, state.value)
                self._close_transport()
            return
        if self.heartbeat:
            if now - self._last_recv > 2 * self.heartbeat:
                log.info(
                    "closing %s: missed heartbeats from client, timeout %ds",
                    self.shell.peer,
                    self.heartbeat,
                )
                self._close_transport()
                return
            if not self._sent_since_timer:
                self.shell.send(self.codec.send(Heartbeat()))
            self._sent_since_timer = False
            self._timer_due = now + self.heartbeat / 2
        else:
            self._timer_due = now + 3600.0

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
        self._sent_since_timer = True
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
        for task in self._reading_back:
            task.cancel()
        if self.core is not None:
            self.core.close()
            self.core = None

    def _connection_error(self, code: int, text: str, class_id: int, method_id: int) -> None:
        """connection.close with a hard error; only close-ok is accepted afterwards."""
        if self.closed or self.codec.close_sent:
            return
        log.info("closing AMQP connection %s: %s", self.shell.peer, text)
        if self._user is None:  # not authenticated: no connection.close (spec 2.2.4)
            self._close_transport()
            return
        self.send_method(0, commands.Connection.Close(code, text[:255], class_id, method_id))
        self._release()
        self._timer_due = self._now + CLOSE_OK_TIMEOUT

    def channel_error(self, channel: AMQPChannel, error: BrokerError, method: Frame | None) -> None:
        """Map a core error to the wire: channel.close (soft) or connection.close (hard)."""
        class_id, method_id = method_ids(method) if method is not None else (0, 0)
        if error.hard:
            self._connection_error(error.code, error.reply_text, class_id, method_id)
            return
        log.debug("closing channel %d of %s: %s", channel.number, self.shell.peer, error.reply_text)
        self.send_method(
            channel.number,
            commands.Channel.Close(error.code, error.reply_text[:255], class_id, method_id),
        )
        channel.closing = True
        self._confirming.discard(channel)
        if self.core is not None:
            self.core.close_session(channel.session)

    # -- handshake -----------------------------------------------------------------------

    def _on_protocol_header(self) -> None:
        self.send_method(0, _start_method())

    def _on_start_ok(self, method: commands.Connection.StartOk) -> None:
        self.client_properties = dict(method.client_properties or {})
        caps = self.client_properties.get("capabilities")
        self.capabilities = dict(caps) if isinstance(caps, dict) else {}
        username, password = _credentials(method.mechanism, method.response)
        try:
            user = self.broker.authenticate(
                username, password, from_loopback=self.shell.from_loopback
            )
        except AccessRefused as e:
            log.warning("AMQP login refused for %r from %s: %s", username, self.shell.peer, e.text)
            if self.capabilities.get("authentication_failure_close"):
                text = (
                    f"ACCESS_REFUSED - Login was refused using authentication mechanism "
                    f"{method.mechanism}. For details see the broker logfile."
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
        self.send_method(0, commands.Connection.OpenOk())
        self.broker.flow.alarm_listeners.add(self._on_memory_alarm)
        self._timer_due = self._last_recv + (self.heartbeat / 2 if self.heartbeat else 3600.0)

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
                self._open_channel(number)
                return
            raise ChannelError(f"expected 'channel.open' on channel {number}, got '{method.name}'")
        if channel.closing:
            if isinstance(method, commands.Channel.CloseOk):
                del self.channels[number]
            elif isinstance(method, commands.Channel.Close):
                self.send_method(number, commands.Channel.CloseOk())
            return
        handler = _CHANNEL_HANDLERS.get(type(method))
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

    def _open_channel(self, number: int) -> None:
        assert self.core is not None
        channel = AMQPChannel(self, number, None)  # type: ignore[arg-type]
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
                message.wire_cache = {"amqp": event.properties_raw}
            result = channel.session.publish(method.exchange, message, mandatory=method.mandatory)
        except BrokerError as e:
            self.channel_error(channel, e, method)
            return
        if channel.confirm:
            channel.confirm_published(result.stored, rejected=result.rejected > 0)
            self._confirming.add(channel)

    # -- channel methods -------------------------------------------------------------------

    def _channel_close(self, channel: AMQPChannel, method: commands.Channel.Close) -> None:
        assert self.core is not None
        channel.closing = True
        self._confirming.discard(channel)
        self.core.close_session(channel.session)
        del self.channels[channel.number]
        self.send_method(channel.number, commands.Channel.CloseOk())

    def _channel_close_ok(self, channel: AMQPChannel, method: Frame) -> None:
        raise CommandInvalid("unexpected 'channel.close-ok'")  # RabbitMQ: 503

    def _channel_flow(self, channel: AMQPChannel, method: commands.Channel.Flow) -> None:
        active = bool(method.active)
        channel.client_flow = active
        channel.session.set_flow(active and self.writable)
        channel.reply(commands.Channel.FlowOk(active))

    def _channel_open(self, channel: AMQPChannel, method: Frame) -> None:
        raise ChannelError(f"second 'channel.open' seen on channel {channel.number}")

    def _exchange_declare(self, channel: AMQPChannel, m: commands.Exchange.Declare) -> None:
        exchange = channel.session.declare_exchange(
            m.exchange,
            m.exchange_type,
            passive=m.passive,
            durable=m.durable,
            auto_delete=m.auto_delete,
            internal=m.internal,
            arguments=m.arguments or {},
        )
        if not m.nowait:
            channel.reply(commands.Exchange.DeclareOk(), durable=exchange.durable)

    def _exchange_delete(self, channel: AMQPChannel, m: commands.Exchange.Delete) -> None:
        channel.session.delete_exchange(m.exchange, if_unused=m.if_unused)
        if not m.nowait:
            channel.reply(commands.Exchange.DeleteOk(), durable=True)

    def _exchange_bind(self, channel: AMQPChannel, m: commands.Exchange.Bind) -> None:
        channel.session.bind_exchange(m.destination, m.source, m.routing_key, m.arguments or {})
        if not m.nowait:
            channel.reply(commands.Exchange.BindOk(), durable=True)

    def _exchange_unbind(self, channel: AMQPChannel, m: commands.Exchange.Unbind) -> None:
        channel.session.unbind_exchange(m.destination, m.source, m.routing_key, m.arguments or {})
        if not m.nowait:
            channel.reply(commands.Exchange.UnbindOk(), durable=True)

    def _queue_declare(self, channel: AMQPChannel, m: commands.Queue.Declare) -> None:
        queue, messages, consumers = channel.session.declare_queue(
            m.queue,
            passive=m.passive,
            durable=m.durable,
            exclusive=m.exclusive,
            auto_delete=m.auto_delete,
            arguments=m.arguments or {},
        )
        channel.last_queue = queue.name
        if not m.nowait:
            channel.reply(
                commands.Queue.DeclareOk(queue.name, messages, consumers), durable=queue.stored
            )

    def _queue_bind(self, channel: AMQPChannel, m: commands.Queue.Bind) -> None:
        queue = channel.queue_name(m.queue)
        routing_key = m.routing_key if m.queue or m.routing_key else queue
        channel.session.bind_queue(queue, m.exchange, routing_key, m.arguments or {})
        if not m.nowait:
            channel.reply(commands.Queue.BindOk(), durable=True)

    def _queue_unbind(self, channel: AMQPChannel, m: commands.Queue.Unbind) -> None:
        queue = channel.queue_name(m.queue)
        routing_key = m.routing_key if m.queue or m.routing_key else queue
        channel.session.unbind_queue(queue, m.exchange, routing_key, m.arguments or {})
        channel.reply(commands.Queue.UnbindOk(), durable=True)

    def _queue_purge(self, channel: AMQPChannel, m: commands.Queue.Purge) -> None:
        count = channel.session.purge_queue(channel.queue_name(m.queue))
        if not m.nowait:
            channel.reply(commands.Queue.PurgeOk(count), durable=True)

    def _queue_delete(self, channel: AMQPChannel, m: commands.Queue.Delete) -> None:
        count = channel.session.delete_queue(
            channel.queue_name(m.queue), if_unused=m.if_unused, if_empty=m.if_empty
        )
        if not m.nowait:
            channel.reply(commands.Queue.DeleteOk(count), durable=True)

    def _basic_qos(self, channel: AMQPChannel, m: commands.Basic.Qos) -> None:
        if m.prefetch_size:
            raise NotImplementedFeature(f"prefetch_size!=0 ({m.prefetch_size})")
        channel.session.qos(m.prefetch_count, global_=m.global_)
        channel.reply(commands.Basic.QosOk())

    def _basic_consume(self, channel: AMQPChannel, m: commands.Basic.Consume) -> None:
        consumer = channel.session.consume(
            channel.queue_name(m.queue),
            m.consumer_tag,
            no_ack=m.no_ack,
            exclusive=m.exclusive,
            arguments=m.arguments or {},
        )
        if m.nowait:
            consumer.start()
        else:
            channel.reply(commands.Basic.ConsumeOk(consumer.tag), after=consumer.start)

    def _basic_cancel(self, channel: AMQPChannel, m: commands.Basic.Cancel) -> None:
        tag = m.consumer_tag or ""
        channel.session.cancel(tag)
        channel._tags.pop(tag, None)
        if not m.nowait:
            channel.reply(commands.Basic.CancelOk(m.consumer_tag))

    def _basic_get(self, channel: AMQPChannel, m: commands.Basic.Get) -> None:
        channel.gets.append((m, channel.queue_name(m.queue)))
        if len(channel.gets) == 1:  # else it is answered after the one waiting
            self._answer_gets(channel, GET_READ_BACKS)

    def _answer_gets(self, channel: AMQPChannel, read_backs: int) -> None:
        """Answer the channel's basic.gets in order, waiting while entries are paged back in.

        A queue whose ready entries are all paged out is not empty: rather
        than get-empty, the get waits for the read that brings them back
        (`read_backs` times at most, in case reads keep failing) and tries
        again. Later gets on the channel wait behind it.
        """
        gets = channel.gets
        while gets:
            m, name = gets[0]
            try:
                reading = self._answer_get(channel, m, name, read_backs > 0)
            except BrokerError as e:
                gets.clear()
                self.channel_error(channel, e, m)
                return
            if reading is not None:
                task = asyncio.get_running_loop().create_task(
                    self._after_read_back(channel, reading, read_backs - 1)
                )
                self._reading_back.add(task)
                task.add_done_callback(self._reading_back.discard)
                return
            gets.popleft()
            read_backs = GET_READ_BACKS

    async def _after_read_back(
        self, channel: AMQPChannel, reading: asyncio.Task[None], read_backs: int
    ) -> None:
        with contextlib.suppress(Exception):  # a failed read was logged by the queue
            await asyncio.shield(reading)
        if self.running and self.channels.get(channel.number) is channel and not channel.closing:
            self._answer_gets(channel, read_backs)

    def _answer_get(
        self, channel: AMQPChannel, m: commands.Basic.Get, name: str, may_wait: bool
    ) -> asyncio.Task[None] | None:
        """get-ok or get-empty; or, sending nothing, the read to wait for first."""
        got = channel.session.get(name, no_ack=m.no_ack)
        if got is None:
            reading = channel.session.read_back(name) if may_wait else None
            if reading is not None:
                return reading
            channel.reply(commands.Basic.GetEmpty())
            return None
        tag, redelivered, message, remaining = got
        method = commands.Basic.GetOk(
            tag, redelivered, message.exchange, message.routing_key, remaining
        )
        self._sent_since_timer = True
        self.send_content(channel.number, method, message)
        return None

    def _basic_ack(self, channel: AMQPChannel, m: commands.Basic.Ack) -> None:
        channel.session.ack(m.delivery_tag, multiple=m.multiple)

    def _basic_nack(self, channel: AMQPChannel, m: commands.Basic.Nack) -> None:
        channel.session.nack(m.delivery_tag, multiple=m.multiple, requeue=m.requeue)

    def _basic_reject(self, channel: AMQPChannel, m: commands.Basic.Reject) -> None:
        channel.session.nack(int(m.delivery_tag or 0), multiple=False, requeue=m.requeue)

    def _basic_recover(self, channel: AMQPChannel, m: commands.Basic.Recover) -> None:
        if not m.requeue:
            raise NotImplementedFeature("requeue=false")
        # RabbitMQ sends recover-ok before the requeued messages are delivered again
        channel.reply(commands.Basic.RecoverOk(), after=channel.session.recover)

    def _basic_recover_async(self, channel: AMQPChannel, m: commands.Basic.RecoverAsync) -> None:
        if not m.requeue:
            raise NotImplementedFeature("requeue=false")
        channel.session.recover()

    def _confirm_select(self, channel: AMQPChannel, m: commands.Confirm.Select) -> None:
        if channel.session.transactional:
            raise PreconditionFailed("cannot switch from tx to confirm mode")
        channel.confirm = True
        if not m.nowait:
            channel.reply(commands.Confirm.SelectOk())

    def _tx_select(self, channel: AMQPChannel, m: commands.Tx.Select) -> None:
        if channel.confirm:
            raise PreconditionFailed("cannot switch from confirm to tx mode")
        channel.session.tx_select()
        channel.reply(commands.Tx.SelectOk())

    def _tx_commit(self, channel: AMQPChannel, m: commands.Tx.Commit) -> None:
        channel.session.tx_commit()
        channel.reply(commands.Tx.CommitOk(), durable=True)

    def _tx_rollback(self, channel: AMQPChannel, m: commands.Tx.Rollback) -> None:
        channel.session.tx_rollback()
        channel.reply(commands.Tx.RollbackOk())


_CHANNEL_HANDLERS: dict[type[Frame], Callable[[AMQPConnection, AMQPChannel, Any], None]] = {
    commands.Channel.Open: AMQPConnection._channel_open,
    commands.Channel.Close: AMQPConnection._channel_close,
    commands.Channel.CloseOk: AMQPConnection._channel_close_ok,
    commands.Channel.Flow: AMQPConnection._channel_flow,
    commands.Exchange.Declare: AMQPConnection._exchange_declare,
    commands.Exchange.Delete: AMQPConnection._exchange_delete,
    commands.Exchange.Bind: AMQPConnection._exchange_bind,
    commands.Exchange.Unbind: AMQPConnection._exchange_unbind,
    commands.Queue.Declare: AMQPConnection._queue_declare,
    commands.Queue.Bind: AMQPConnection._queue_bind,
    commands.Queue.Unbind: AMQPConnection._queue_unbind,
    commands.Queue.Purge: AMQPConnection._queue_purge,
    commands.Queue.Delete: AMQPConnection._queue_delete,
    commands.Basic.Qos: AMQPConnection._basic_qos,
    commands.Basic.Consume: AMQPConnection._basic_consume,
    commands.Basic.Cancel: AMQPConnection._basic_cancel,
    commands.Basic.Get: AMQPConnection._basic_get,
    commands.Basic.Ack: AMQPConnection._basic_ack,
    commands.Basic.Nack: AMQPConnection._basic_nack,
    commands.Basic.Reject: AMQPConnection._basic_reject,
    commands.Basic.Recover: AMQPConnection._basic_recover,
    commands.Basic.RecoverAsync: AMQPConnection._basic_recover_async,
    commands.Confirm.Select: AMQPConnection._confirm_select,
    commands.Tx.Select: AMQPConnection._tx_select,
    commands.Tx.Commit: AMQPConnection._tx_commit,
    commands.Tx.Rollback: AMQPConnection._tx_rollback,
}


def _credentials(mechanism: str, response: str | bytes) -> tuple[str | None, str]:
    """Username and password from a PLAIN, AMQPLAIN or ANONYMOUS start-ok response.

    A user name of None means the client gave no credentials: the ANONYMOUS
    mechanism (RFC 4505, which RabbitMQ 4 offers) or a PLAIN response with an
    empty user name and password. The core's anonymous rule then decides.
    """
    raw = response.encode() if isinstance(response, str) else bytes(response)
    if mechanism == "ANONYMOUS":
        return None, ""
    if mechanism == "PLAIN":
        parts = raw.split(b"\x00")
        if len(parts) != 3:
            raise AccessRefused("malformed PLAIN response")
        if parts[1] == parts[2] == b"":
            return None, ""
        return parts[1].decode(errors="replace"), parts[2].decode(errors="replace")
    if mechanism == "AMQPLAIN":
        from pamqp import decode

        try:
            _, table = decode.field_table(len(raw).to_bytes(4, "big") + raw)
        except (ValueError, KeyError, IndexError) as e:
            raise AccessRefused("malformed AMQPLAIN response") from e
        return str(table.get("LOGIN", "")), str(table.get("PASSWORD", ""))
    raise AccessRefused(f"unsupported authentication mechanism '{mechanism}'")
