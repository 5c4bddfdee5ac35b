"""STOMP connections: frames in, calls on the broker core, frames out.

Theory of operation
-------------------
`StompConnection` is driven by the asyncio shell (`protocols.tcp`, or the
WebSocket shell) through `data_received(data, now)`, `handle_timer(now)`,
`set_writable(flag)`, `connection_lost()` and `shutdown(reason)`. It writes
through a `Shell` and never touches a socket or a clock itself;
`next_deadline()` tells the shell when to call `handle_timer` (heart-beats
and the CONNECT deadline share the one timer).

This module owns the connection itself: the handshake (CONNECT, version and
heart-beat negotiation, authentication, `client-id`), dispatch, receipts,
errors, heart-beats and DISCONNECT. Every byte it writes comes from its
codec (`codec.StompCodec`), which also keeps the connection's state and
refuses frames the state does not accept (its table). The frames' work
lives in rooms of their own, one object each per connection:

- `publishing.Publisher` (`sends`): SEND, general and hot path;
- `subscriptions.Subscriptions`: SUBSCRIBE, UNSUBSCRIBE, ACK, NACK and the
  MESSAGE of each delivery (it is the core session's DeliverySink);
- `transactions.Transactions`: BEGIN, COMMIT, ABORT;
- beside them `mapping` (core Message <-> STOMP headers), `queues`
  (`/queue/` declares), `destinations` and `activemq` (that dialect's pieces).

Every error is fatal (1.2 "ERROR": the server closes the connection after
sending it): a codec `ProtocolError`, a missing header, or a core
`BrokerError` becomes one ERROR frame (`message` header, a text body, the
`receipt-id` of the offending frame) and the transport is closed. Other
connections are untouched.

Receipts: a RECEIPT is sent after its frame was handled; when the frame
wrote to the store (SEND of a persistent message to a durable queue, COMMIT,
SUBSCRIBE that declared a durable queue) it waits until the store has it.
The connection's `OrderedReplies` (`broker.replies`, made at CONNECT) keeps
both that rule and the receipts' order: once one waits, the later ones
queue behind it.

Heart-beats and the CONNECT deadline: `broker.keepalive.KeepAlive`, told
what was received and sent; its `deadline()` is the shell's one timer.

`client-id`: connected at most once per broker, in the broker's STOMP
client-id registry (`Broker.client_ids`); a second holder is refused
(`activemq.refuse_second_holder`). It is claimed at CONNECT and released in
`_release`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Final

from moorage.broker import __version__, logs
from moorage.broker.auth import PermissionPending, User
from moorage.broker.broker import Broker
from moorage.broker.connection import ClientConnection
from moorage.broker.errors import AccessRefused, BrokerError
from moorage.broker.keepalive import Due, KeepAlive
from moorage.broker.overview import vhost_names
from moorage.broker.replies import OrderedReplies
from moorage.broker.selector import SelectorError
from moorage.broker.session import Session
from moorage.protocols.stomp.activemq import refuse_second_holder
from moorage.protocols.stomp.codec import (
    NEED_DATA,
    ConnectionClosed,
    Frame,
    ProtocolError,
    State,
    StompCodec,
    connected_frame,
    error_frame,
    negotiate_version,
    parse_heartbeat,
    receipt_frame,
    version_error_frame,
)
from moorage.protocols.stomp.destinations import Kind, parse_destination
from moorage.protocols.stomp.publishing import Publisher
from moorage.protocols.stomp.subscriptions import Subscription, Subscriptions
from moorage.protocols.stomp.transactions import Transactions
from moorage.protocols.tcp import Shell, hold_refusal, want_input

__all__ = ["MAX_HEADER_SIZE", "State", "StompConnection"]

log = logging.getLogger("moorage.stomp")

SERVER_NAME: Final = f"Moorage/{__version__}"
MIN_HEARTBEAT_MS: Final = 100  # floor for negotiated heart-beat intervals
HEARTBEAT_TOLERANCE: Final = 2.0  # a client may be this many intervals late before we close
PRE_AUTH_MAX_HEADER: Final = 8 * 1024
PRE_AUTH_MAX_BODY: Final = 64 * 1024
MAX_HEADER_SIZE: Final = 64 * 1024
RECEIPT_FLUSH_FRAMES: Final = 32  # frames of one read after which a RECEIPT is written at once
PROTOCOL: Final = "stomp"  # the core's name for this protocol (connections, client ids)


class StompConnection:
    """The STOMP side of one client connection (also its core DeliverySink)."""

    def __init__(self, broker: Broker, shell: Shell, now: float) -> None:
        self.broker = broker
        self.shell = shell
        self.codec = StompCodec(
            max_header_size=PRE_AUTH_MAX_HEADER, max_body_size=PRE_AUTH_MAX_BODY
        )
        self.core: ClientConnection | None = None
        self.session: Session | None = None
        self.user_name = ""
        # an authentication backend has not answered yet, or an authorisation backend
        # (then `_held` is the frame to handle again)
        self._login_pending = False
        self._held: Frame | None = None
        self.client_id: str | None = None
        self.client_ids = broker.client_ids(PROTOCOL)
        self.keepalive = KeepAlive(now, broker.limits.handshake_timeout)
        self.sends = Publisher(self)
        self.subscriptions = Subscriptions(self)
        self.transactions = Transactions()
        # The hot path, bound once: handlers that deal with the simple, frequent
        # shape of a frame and return False for anything else, which then takes
        # `_HANDLERS`' path (tests/stomp/test_fast_path.py proves both give the
        # same bytes).
        self.fast_handlers: dict[str, Callable[[Frame], bool]] = {
            "SEND": self.sends.send_fast,
            "ACK": self.subscriptions.ack_fast,
        }
        self.replies: OrderedReplies | None = None  # the receipts' order (made at CONNECT)
        # A shell that can write before the end of the tick (`TCPShell.flush`), and
        # the frames of the current read handled since it last did: see `receipt`.
        self._flush_now: Callable[[], None] | None = getattr(shell, "flush", None)
        self.frames_in_read = 0
        self._now = now

    @property
    def state(self) -> State:
        """Where the connection is (kept by the codec)."""
        return self.codec.state

    @property
    def version(self) -> str:
        """The negotiated STOMP version ("1.0" until CONNECT)."""
        return self.codec.version

    @version.setter
    def version(self, version: str) -> None:
        self.codec.version = version

    @property
    def peer(self) -> str:
        """The client's address, for logs and errors."""
        return self.shell.peer

    # -- driven by the shell -----------------------------------------------------------

    def data_received(self, data: bytes, now: float) -> None:
        """Feed bytes from the socket (b"" = EOF); handle every complete frame in order."""
        codec = self.codec
        if codec.state is State.CLOSED or codec.state is State.CLOSING:
            return
        self._now = now
        self.keepalive.received(now)
        codec.receive_data(data)
        if not self._login_pending:
            self._handle_events()

    def _handle_events(self) -> None:
        """Handle every complete frame received, in order (until a login must be awaited)."""
        codec = self.codec
        fast_handlers = self.fast_handlers
        frame: Frame | None = None
        self.frames_in_read = 0
        held, self._held = self._held, None  # (a local: nothing more per frame)
        try:
            while (
                codec.state is State.CONNECTED or codec.state is State.CONNECTING
            ) and not self._login_pending:
                if held is None:
                    event = codec.next_event()
                    if event is NEED_DATA:
                        break
                    if type(event) is not Frame:
                        assert isinstance(event, ConnectionClosed)
                        self._close_transport()
                        break
                    self.frames_in_read += 1
                else:
                    event, held = held, None
                frame = event
                try:
                    # `handle_frame`, inlined: this runs once per frame
                    command = frame.command
                    fast = fast_handlers.get(command) if codec.state is State.CONNECTED else None
                    if fast is None or not fast(frame):
                        _HANDLERS[command](self, frame)
                    if command == "SEND":
                        rest = self.sends.send_repeats(frame)
                        if rest is not None:
                            frame = rest
                            self.handle_frame(rest)
                except PermissionPending as pending:
                    # A backend has not answered yet (nothing was done): this frame
                    # again, and no later one, once it has (`broker.auth_users`).
                    self._held = pending.retry if isinstance(pending.retry, Frame) else frame
                    self._login_pending = True
                    pending.then(self._permission_answered)
        except ProtocolError as e:
            self._fatal(e.message, e.detail, e.frame if e.frame is not None else frame)
        except SelectorError as e:
            self._fatal("invalid selector", str(e), frame)
        except BrokerError as e:
            self._fatal(e.reply_text, _broker_error_detail(e, frame), frame)

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
    def closed(self) -> bool:
        """No more input is accepted (output may still be flushing)."""
        return self.codec.state is State.CLOSED

    @property
    def publisher(self) -> bool:
        """Has this client published? (The memory alarm pauses only publishers.)"""
        return self.core is not None and self.core.published

    def peer_held(self, now: float) -> None:
        """The shell is not reading us (flow control): its silence is no missed heart-beat."""
        self.keepalive.received(now)

    def next_deadline(self) -> float:
        """When `handle_timer` must run next (monotonic seconds; inf: never)."""
        return self.keepalive.deadline()

    def handle_timer(self, now: float) -> None:
        """Heart-beats in both directions and the CONNECT deadline (1.2 "Heart-beating")."""
        if self.state is State.CLOSED:
            return
        self._now = now
        due = self.keepalive.poll(now)
        if due is Due.HANDSHAKE_TIMEOUT:
            log.info("closing %s: no CONNECT in time", self.shell.peer)
            self._close_transport()
        elif due is Due.PEER_SILENT:
            log.info("closing %s: missed heart-beats", self.shell.peer)
            self._close_transport()
        elif due is Due.HEARTBEAT and self.state is State.CONNECTED:
            self.shell.send(self.codec.send_heartbeat())

    def set_writable(self, writable: bool) -> None:
        """Transport back-pressure: stop deliveries while the write buffer is full."""
        if self.session is not None:
            self.session.set_flow(writable)

    def connection_lost(self) -> None:
        """The socket is gone: release everything the connection held."""
        self.codec.close()
        self._release()

    def shutdown(self, reason: str = "shutdown") -> None:
        """Broker shutdown: an ERROR frame, then close."""
        if self.state in (State.CLOSED, State.CLOSING):
            return
        self._fatal("broker shutting down", f"The broker is shutting down ({reason}).", None)

    def force_close(self, reason: str) -> None:
        """An operator closed this connection: an ERROR frame with the reason, then close."""
        if self.state in (State.CLOSED, State.CLOSING):
            return
        self._fatal(reason, f"The connection was closed by an operator: {reason}", None)

    # -- what the rooms use ------------------------------------------------------------

    def active_session(self) -> Session:
        """The core session (there is one once CONNECTED)."""
        assert self.session is not None
        return self.session

    def subscription_ended(self, sub: Subscription) -> None:
        """The core ended `sub`'s consumer (its queue was deleted): tell the client
        with an ERROR (RabbitMQ)."""
        if self.state is not State.CONNECTED:
            return
        self._fatal(
            "subscription ended",
            f"The queue '{sub.queue}' of subscription '{sub.id}' was deleted.",
            None,
        )

    def wall_ms(self) -> int:
        """The broker clock's wall time in milliseconds (mapping.Sender)."""
        return int(self.broker.clock.wall() * 1000)

    def reply_to(self, value: str) -> str:
        """A reply-to naming /temp-queue/<t> becomes /reply-queue/<real name> (RabbitMQ)."""
        if value.startswith(Kind.TEMP_QUEUE.value):
            dest = parse_destination(value)
            return Kind.REPLY_QUEUE.value + self.subscriptions.temp_queue(dest.name, subscribe=True)
        return value

    def receipt(
        self,
        frame: Frame,
        *,
        durable: bool = False,
        then_close: bool = False,
        removals: bool = True,
        after: Callable[[], None] | None = None,
    ) -> None:
        """Answer a frame's `receipt` header, after the store when it wrote something.

        `removals=False` for a SEND: its receipt promises the message is
        safe, not that the acks before it are (`Store.when_durable`).
        `after` runs once the RECEIPT is written (at once without a `receipt`
        header): what must not reach the client before it (a SUBSCRIBE's MESSAGEs).
        """
        receipt = frame.get("receipt")
        if receipt is None:
            if after is not None:
                after()
            if then_close:
                self._close_transport()
            return
        reply = receipt_frame(receipt)

        def send(error: BaseException | None) -> None:
            if self.state is State.CLOSED:
                return
            if error is not None:
                self._fatal("store failure", f"The message could not be stored: {error}", frame)
                return
            self.send_frame(reply)
            if after is not None:
                after()
            if then_close:
                self._close_transport()

        replies = self.replies
        assert replies is not None  # receipts are asked for once CONNECTED
        waits = replies.must_wait(durable=durable)
        replies.send(send, durable=durable, removals=removals)
        if (
            not waits
            and not then_close
            and self.frames_in_read >= RECEIPT_FLUSH_FRAMES
            and self._flush_now is not None
        ):
            # Deep into a large read: a pipelining client waits for this receipt to
            # send more, and the end of the tick is the rest of the read away.
            self._flush_now()
            self.frames_in_read = 0

    # -- output ------------------------------------------------------------------------

    def send_frame(self, frame: Frame) -> None:
        """Write one frame, encoded by the codec."""
        self.keepalive.sent()
        self.shell.send(self.codec.send(frame))

    def _close_transport(self) -> None:
        self.codec.close()
        self._release()
        self.shell.close()

    def _release(self) -> None:
        if self.client_id is not None:
            self.client_ids.release(self.client_id, self)
        self.transactions.clear()
        self.subscriptions.clear()
        if self.core is not None:
            self.core.close()
            self.core = None
            self.session = None

    def _fatal(self, message: str, detail: str, frame: Frame | None) -> None:
        """Send an ERROR frame (1.2 "ERROR") and close the connection."""
        if self.state is State.CLOSED:
            return
        logs.event(
            "connection.error",
            f"closing STOMP connection {self.shell.peer}: {message}",
            connection=self.core.id if self.core is not None else None,
            peer=self.shell.peer,
            protocol="stomp",
            reason=message,
        )
        self.send_frame(error_frame(message, detail, frame, self.version))
        self._close_transport()

    # -- dispatch ------------------------------------------------------------------------

    def handle_frame(self, frame: Frame) -> None:
        """Handle one frame the codec accepted (its state and required headers checked)."""
        command = frame.command
        if self.codec.state is State.CONNECTED:
            fast = self.fast_handlers.get(command)
            if fast is not None and fast(frame):
                return
        _HANDLERS[command](self, frame)

    # -- CONNECT ------------------------------------------------------------------------

    def _on_connect(self, frame: Frame) -> None:
        version = negotiate_version(frame.get("accept-version"))
        if version is None:
            self.send_frame(version_error_frame())
            self._close_transport()
            return
        self.version = version
        cx, cy = parse_heartbeat(frame.get("heart-beat"))
        # No `login`: the core's anonymous rule (refused unless `auth.anonymous_user`).
        done = functools.partial(self._logged_in, frame, version, cx, cy)
        certificate = getattr(self.shell, "peer_certificate", None)
        if frame.get("passcode") is not None:
            certificate = None  # a password is given: it is the login, not the certificate
        # An authentication backend may answer later: no frame of this client is
        # handled until it has (`_login_pending`, `_handle_events`).
        pending = self.broker.begin_login(
            frame.get("login"),
            frame.get("passcode") or "",
            from_loopback=self.shell.from_loopback,
            peer=self.shell.peer,
            certificate=certificate or None,
            done=done,
        )
        self._login_pending = pending or self._login_pending  # `done` may have set it

    def _logged_in(
        self,
        frame: Frame,
        version: str,
        cx: int,
        cy: int,
        user: User | None,
        error: AccessRefused | None,
    ) -> None:
        resumed = self._login_pending
        self._login_pending = False
        want_input(self.shell)  # read again (paused while the answer was awaited)
        if self.closed:
            return
        try:
            if user is None:
                assert error is not None
                hold_refusal(self.shell, self.broker.refusal_delay(self.shell.peer))
                raise error
            self._connected(frame, version, cx, cy, user)
        except PermissionPending as pending:  # the vhost: again once the backend answered
            self._login_pending = True
            pending.then(functools.partial(self._logged_in, frame, version, cx, cy, user, error))
            return
        except BrokerError as e:
            self._fatal(e.reply_text, _broker_error_detail(e, frame), frame)
        if resumed:  # answered later: the frames that came meanwhile are handled now
            self._handle_events()

    def _connected(self, frame: Frame, version: str, cx: int, cy: int, user: User) -> None:
        login = user.name
        client_id = frame.get("client-id")
        if client_id is not None:
            refuse_second_holder(self.client_ids, client_id)
        host = frame.get("host")
        # A `host` naming no vhost (clients send the server's host name) means "/".
        vhost = host if host is not None and host in vhost_names(self.broker) else "/"
        self.core = self.broker.connect(
            vhost,
            user,
            protocol=PROTOCOL,
            peer=self.shell.peer,
            client_properties={"version": version, "client-id": frame.get("client-id")},
        )
        self.session = self.core.open_session(self.subscriptions)
        self.core.closer = self.force_close
        self.replies = self.core.ordered_replies()
        self.user_name = login
        self.client_id = client_id
        if client_id is not None:
            self.client_ids.claim(client_id, self)
        # We agree to what the client asks, with a floor (RabbitMQ mirrors the client).
        send_ms = max(cy, MIN_HEARTBEAT_MS) if cy else 0
        recv_ms = max(cx, MIN_HEARTBEAT_MS) if cx else 0
        # 1.2 "Heart-beating": we beat at half our interval so that a beat is never late.
        self.keepalive.start(
            self._now,
            recv_timeout=recv_ms / 1000 * HEARTBEAT_TOLERANCE,
            send_interval=send_ms / 1000 / 2,
        )
        self.codec.max_header_size = MAX_HEADER_SIZE
        self.codec.max_body_size = self.broker.limits.max_message_size
        negotiated = version if frame.get("accept-version") is not None else None
        self.send_frame(
            connected_frame(f"session-{self.core.id}", SERVER_NAME, negotiated, (send_ms, recv_ms))
        )

    # -- the other frames: their rooms ---------------------------------------------------

    def _on_send(self, frame: Frame) -> None:
        self.sends.send(frame)

    def _on_subscribe(self, frame: Frame) -> None:
        self.subscriptions.subscribe(frame)

    def _on_unsubscribe(self, frame: Frame) -> None:
        self.subscriptions.unsubscribe(frame)

    def _on_ack(self, frame: Frame) -> None:
        self.subscriptions.settle_frame(frame, nack=False)

    def _on_nack(self, frame: Frame) -> None:
        self.subscriptions.settle_frame(frame, nack=True)

    def _on_begin(self, frame: Frame) -> None:
        self.transactions.begin(frame.get("transaction") or "")
        self.receipt(frame)

    def _on_commit(self, frame: Frame) -> None:
        stored = self.transactions.commit(frame)
        self.receipt(frame, durable=stored)

    def _on_abort(self, frame: Frame) -> None:
        self.transactions.abort(frame)
        self.receipt(frame)

    def _on_disconnect(self, frame: Frame) -> None:
        # The codec is CLOSING already: nothing more is read.
        self.transactions.clear()
        self.receipt(frame, then_close=True)


def _broker_error_detail(error: BrokerError, frame: Frame | None) -> str:
    detail = error.text
    if frame is not None and frame.get("destination"):
        detail += f"\nDestination: {frame.get('destination')}"
    return detail


_HANDLERS: dict[str, Callable[[StompConnection, Frame], None]] = {
    "CONNECT": StompConnection._on_connect,
    "STOMP": StompConnection._on_connect,
    "SEND": StompConnection._on_send,
    "SUBSCRIBE": StompConnection._on_subscribe,
    "UNSUBSCRIBE": StompConnection._on_unsubscribe,
    "ACK": StompConnection._on_ack,
    "NACK": StompConnection._on_nack,
    "BEGIN": StompConnection._on_begin,
    "COMMIT": StompConnection._on_commit,
    "ABORT": StompConnection._on_abort,
    "DISCONNECT": StompConnection._on_disconnect,
}
