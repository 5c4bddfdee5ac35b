"""STOMP connections: frames in, calls on the broker core, frames out.

Theory of operation
-------------------
`StompConnection` is driven by the asyncio shell (`server.py`) through
`data_received(data, now)`, `handle_timer(now)`, `set_writable(flag)`,
`connection_lost()` and `shutdown(reason)`. It writes through a `Shell` and
never touches a socket or a clock itself; `next_deadline()` tells the shell
when to call `handle_timer` (heart-beats and the CONNECT deadline share the
one timer).

States and the frames each accepts (a table, `_ALLOWED`)::

    CONNECTING --CONNECT/STOMP--> CONNECTED --DISCONNECT--> CLOSING
         \\________________________\\__any error__________--> CLOSED

Every error is fatal (1.2 "ERROR": the server closes the connection after
sending it): a codec `ProtocolError`, a missing header, or a core
`BrokerError` becomes one ERROR frame (`message` header, a text body, the
`receipt-id` of the offending frame) and the transport is closed. Other
connections are untouched.

One core `Session` per connection; the connection is its `DeliverySink`.
Each STOMP subscription is one core consumer whose tag is the subscription
id. `message-id` (and 1.2 `ack`) of a MESSAGE is `T_<delivery tag>`, unique
per connection; `client` mode acks are cumulative per subscription (1.2
"SUBSCRIBE ack Header"), implemented with each subscription's ordered
`outstanding` tags, since the core's `multiple` acks span the whole session.

Transactions (1.2 "BEGIN"): the adapter buffers, one action list per
transaction name. SEND and ACK/NACK inside a transaction are validated at
once (destination, headers, message-id) and applied in order at COMMIT;
ABORT, DISCONNECT and connection loss discard them. The core's tx_* calls
are not used because they allow one transaction per session while STOMP
allows several concurrent named ones, and acks must go through the session
that holds the deliveries. A COMMIT's publishes run in one loop tick, so the
store's group commit writes them in one transaction.

Receipts: a RECEIPT is sent after its frame was handled; when the frame
wrote to the store (SEND of a persistent message to a durable queue, COMMIT,
SUBSCRIBE that declared a durable queue) it waits for `store.when_durable`.
Receipts keep their order: once one waits, the later ones queue behind it
(durability callbacks fire in registration order).

Selectors (`broker.selector`): on a queue shared by competing consumers
(`/queue/`, `/amq/queue/`) the selector is the core consumer's filter, so a
message one consumer skips stays ready for the others. A subscription whose
queue is its own (`/topic/`, `/exchange/`, durable subscriptions) evaluates
its selector on each delivery and acknowledges away the copies that do not
match, so that its queue does not keep them forever.

Message groups: `JMSXGroupID` on SEND is copied to the core's FIFO group
header `x-message-group-id`; FIFO queues (declared with the `x-queue-type`
queue argument header, see `QUEUE_ARGUMENT_HEADERS`) honour it.

`client-id`: connected at most once per broker (`_client_ids`); it is
registered at CONNECT and released in `_release`.
"""

from __future__ import annotations

import enum
import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from moorage.broker import __version__
from moorage.broker.broker import Broker
from moorage.broker.connection import ClientConnection
from moorage.broker.errors import BrokerError, PreconditionFailed
from moorage.broker.fifo import GROUP_HEADER
from moorage.broker.message import PERSISTENT, Message, Properties
from moorage.broker.queue import Queue
from moorage.broker.selector import Selector, SelectorError, message_lookup
from moorage.broker.session import Session
from moorage.protocols.stomp.codec import (
    NEED_DATA,
    ConnectionClosed,
    Frame,
    FrameCodec,
    ProtocolError,
    encode,
    header_encodable,
    header_line,
    negotiate_version,
    parse_heartbeat,
)
from moorage.protocols.stomp.destinations import (
    Destination,
    Kind,
    destination_of,
    parse_destination,
)
from moorage.protocols.tcp import Shell

log = logging.getLogger("moorage.stomp")

SERVER_NAME = f"Moorage/{__version__}"
MIN_HEARTBEAT_MS = 100  # floor for negotiated heart-beat intervals
HEARTBEAT_TOLERANCE = 2.0  # a client may be this many intervals late before we close
PRE_AUTH_MAX_HEADER = 8 * 1024
PRE_AUTH_MAX_BODY = 64 * 1024
MAX_HEADER_SIZE = 64 * 1024
ACK_MODES = frozenset({"auto", "client", "client-individual"})
PREFIX_CACHE_LIMIT = 64  # cached MESSAGE prefixes per subscription (destinations seen)
SEND_TARGET_CACHE_LIMIT = 256  # cached SEND destinations per connection
SEND_PLAN_CACHE_LIMIT = 64  # cached SEND header sets per connection
RECEIPT_FLUSH_FRAMES = 32  # frames of one read after which a RECEIPT is written at once
_WIRE_KEYS = {version: f"stomp-wire-{version}" for version in ("1.0", "1.1", "1.2")}

# ActiveMQ's message group header, mapped onto the core's FIFO group header.
JMSX_GROUP_ID = "JMSXGroupID"

# SEND/SUBSCRIBE headers on /queue/ destinations that are queue arguments
# (docs/queue-arguments.md), used when the adapter declares the queue, as
# RabbitMQ's STOMP plugin does; never copied into message headers.
QUEUE_ARGUMENT_HEADERS: dict[str, Callable[[str], Any]] = {
    "x-queue-type": str,
    "x-message-ttl": int,
    "x-expires": int,
    "x-dead-letter-exchange": str,
    "x-dead-letter-routing-key": str,
    "x-max-length": int,
    "x-max-length-bytes": int,
    "x-overflow": str,
    "x-delivery-limit": int,
    "x-max-priority": int,
    "x-single-active-consumer": lambda v: v.lower() == "true",
    "x-consumer-timeout": int,
    "x-delivery-delay": int,
    "x-content-based-deduplication": lambda v: v.lower() == "true",
}

# Connected STOMP clients by `client-id`, per broker (ActiveMQ: a client id is
# connected at most once, so a durable subscription has one reader).
_client_ids: weakref.WeakKeyDictionary[Broker, dict[str, StompConnection]] = (
    weakref.WeakKeyDictionary()
)

# Headers that describe the frame, not the message: never copied into message headers.
FRAME_HEADERS = frozenset(
    {
        "destination",
        "transaction",
        "receipt",
        "content-length",
        "message-id",
        "subscription",
        "ack",
        "redelivered",
        "receipt-id",
    }
)


class State(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSING = "closing"  # DISCONNECT seen, waiting to send its receipt
    CLOSED = "closed"


_ALLOWED: dict[State, frozenset[str]] = {
    State.CONNECTING: frozenset({"CONNECT", "STOMP"}),
    State.CONNECTED: frozenset(
        {
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
    ),
}

# Required headers per command (1.2 "Frames and Headers"); version-dependent ones in code.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "SEND": ("destination",),
    "SUBSCRIBE": ("destination",),
    "BEGIN": ("transaction",),
    "COMMIT": ("transaction",),
    "ABORT": ("transaction",),
}


@dataclass(slots=True)
class Subscription:
    """One SUBSCRIBE: a core consumer on `queue`, tagged with the subscription id."""

    id: str
    destination: str
    ack_mode: str
    queue: str
    selector: Selector | None = None
    durable_queue: bool = False
    outstanding: OrderedDict[int, None] = field(default_factory=OrderedDict)
    # MESSAGE frames up to the message-id value, per (exchange, routing key): see
    # `StompConnection._message_bytes`. False: a header cannot be encoded.
    prefixes: dict[tuple[str, str], bytes | bool] = field(default_factory=dict)


def _ack_id(delivery_tag: int) -> str:
    return f"T_{delivery_tag}"


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ").replace("\x00", " ")


def _header_text(value: Any) -> str | None:
    """An AMQP header value as STOMP header text; None when it has no text form."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, datetime):
        return str(int(value.timestamp()))
    return None


def message_headers(message: Message) -> list[tuple[str, str]]:
    """STOMP headers for a message's properties (cached on the message for fan-out).

    Mapping (RabbitMQ's STOMP plugin): content-type, content-encoding,
    persistent (delivery mode 2), priority, correlation-id, reply-to (a bare
    queue name becomes /reply-queue/<name>), expiration, amqp-message-id
    (message_id), type, timestamp (seconds), user-id, app-id; every AMQP
    header with a text form is passed through under its own name.
    """
    cache = message.wire_cache
    if cache is None:
        cache = message.wire_cache = {}
    headers: list[tuple[str, str]] | None = cache.get("stomp-headers")
    if headers is not None:
        return headers
    headers = []
    p = message.properties
    raw_headers = p.headers or {}
    for name, value in raw_headers.items():
        text = _header_text(value)
        if text is not None and name not in FRAME_HEADERS:
            headers.append((str(name), text))
    group = raw_headers.get(GROUP_HEADER)
    if group is not None and JMSX_GROUP_ID not in raw_headers:
        text = _header_text(group)
        if text is not None:
            headers.append((JMSX_GROUP_ID, text))  # for JMS clients of an AMQP publisher
    reply_to = p.reply_to
    if reply_to is not None and not reply_to.startswith("/"):
        reply_to = "/reply-queue/" + reply_to
    for name, value in (
        ("content-type", p.content_type),
        ("content-encoding", p.content_encoding),
        ("persistent", "true" if p.delivery_mode == PERSISTENT else None),
        ("priority", None if p.priority is None else str(p.priority)),
        ("correlation-id", p.correlation_id),
        ("reply-to", reply_to),
        ("expiration", p.expiration),
        ("amqp-message-id", p.message_id),
        ("type", p.message_type),
        ("timestamp", None if p.timestamp is None else str(int(p.timestamp.timestamp()))),
        ("user-id", p.user_id),
        ("app-id", p.app_id),
    ):
        if value is not None:
            headers.append((name, value))
    cache["stomp-headers"] = headers
    return headers


def selector_view(message: Message) -> Callable[[str], Any]:
    """Identifier lookup for selectors: JMS names, message headers, then STOMP's names."""

    def stomp_name(name: str) -> Any:
        for header, value in message_headers(message):
            if header == name:
                return value
        return None

    return message_lookup(message, stomp_name)


class StompConnection:
    """The STOMP state machine of one client connection (also its core DeliverySink)."""

    def __init__(self, broker: Broker, shell: Shell, now: float) -> None:
        self.broker = broker
        self.shell = shell
        self.codec = FrameCodec(
            max_header_size=PRE_AUTH_MAX_HEADER, max_body_size=PRE_AUTH_MAX_BODY
        )
        self.state = State.CONNECTING
        self.version = "1.0"
        self.core: ClientConnection | None = None
        self.session: Session | None = None
        self.user_name = ""
        self.client_id: str | None = None
        self.subscriptions: dict[str, Subscription] = {}
        self.transactions: dict[str, list[Callable[[], bool]]] = {}
        self.temp_queues: dict[str, str] = {}  # /temp-queue/<name> -> core queue name
        self._acks: dict[str, tuple[Subscription, int]] = {}
        # Simple SENDs' destinations already checked: text -> (exchange, routing
        # key, the /queue/'s Queue object or None); see `_send_fast`.
        self._send_targets: dict[str, tuple[str, str, Queue | None]] = {}
        # Plain SENDs' header sets: what they decide (`_SendPlan`); see `_send_plan`.
        self._send_plans: dict[tuple[tuple[str, str], ...], _SendPlan] = {}
        self._last_plan: _SendPlan | None = None
        self._deferred = 0  # receipts waiting for the store
        # A shell that can write before the end of the tick (`TCPShell.flush`), and
        # the frames of the current read handled since it last did: see `_receipt`.
        self._flush_now: Callable[[], None] | None = getattr(shell, "flush", None)
        self._handled = 0
        self._send_interval = 0.0  # seconds; 0 = we send no heart-beats
        self._recv_interval = 0.0  # seconds; 0 = we expect none
        self._now = now
        self._last_recv = now
        self._sent_since_tick = False
        self._timer_due = now + broker.limits.handshake_timeout

    # -- driven by the shell -----------------------------------------------------------

    def data_received(self, data: bytes, now: float) -> None:
        """Feed bytes from the socket (b"" = EOF); handle every complete frame in order."""
        if self.state in (State.CLOSED, State.CLOSING):
            return
        self._now = self._last_recv = now
        codec = self.codec
        codec.receive_data(data)
        frame: Frame | None = None
        self._handled = 0
        try:
            while self.state is State.CONNECTED or self.state is State.CONNECTING:
                event = codec.next_event()
                if event is NEED_DATA:
                    break
                if isinstance(event, ConnectionClosed):
                    self._close_transport()
                    break
                assert isinstance(event, Frame)
                frame = event
                self._handled += 1
                self._on_frame(frame)
                if frame.command == "SEND":
                    self._send_repeats(frame)
        except ProtocolError as e:
            self._fatal(e.message, e.detail, frame)
        except SelectorError as e:
            self._fatal("invalid selector", str(e), frame)
        except BrokerError as e:
            self._fatal(e.reply_text, _broker_error_detail(e, frame), frame)

    @property
    def closed(self) -> bool:
        """No more input is accepted (output may still be flushing)."""
        return self.state is State.CLOSED

    @property
    def publisher(self) -> bool:
        """Has this client published? (The memory alarm pauses only publishers.)"""
        return self.core is not None and self.core.published

    def peer_held(self, now: float) -> None:
        """The shell is not reading us (flow control): its silence is no missed heart-beat."""
        self._last_recv = now

    def next_deadline(self) -> float:
        """When `handle_timer` must run next (monotonic seconds)."""
        return self._timer_due

    def handle_timer(self, now: float) -> None:
        """Heart-beats in both directions and the CONNECT deadline (1.2 "Heart-beating")."""
        if self.state is State.CLOSED:
            return
        self._now = now
        if self.state is not State.CONNECTED:
            if now >= self._timer_due:
                log.info("closing %s: no CONNECT in time", self.shell.peer)
                self._close_transport()
            return
        due = now + 3600.0
        if self._recv_interval:
            limit = self._last_recv + self._recv_interval * HEARTBEAT_TOLERANCE
            if now >= limit:
                log.info("closing %s: missed heart-beats", self.shell.peer)
                self._close_transport()
                return
            due = min(due, limit)
        if self._send_interval:
            if not self._sent_since_tick:
                self.shell.send(b"\n")
            self._sent_since_tick = False
            due = min(due, now + self._send_interval / 2)
        self._timer_due = due

    def set_writable(self, writable: bool) -> None:
        """Transport back-pressure: stop deliveries while the write buffer is full."""
        if self.session is not None:
            self.session.set_flow(writable)

    def connection_lost(self) -> None:
        """The socket is gone: release everything the connection held."""
        self.state = State.CLOSED
        self._release()

    def shutdown(self, reason: str = "shutdown") -> None:
        """Broker shutdown: an ERROR frame, then close."""
        if self.state in (State.CLOSED, State.CLOSING):
            return
        self._fatal("broker shutting down", f"The broker is shutting down ({reason}).", None)

    # -- output ------------------------------------------------------------------------

    def _send(self, frame: Frame) -> None:
        self._sent_since_tick = True
        self.shell.send(encode(frame, self.version))

    def _close_transport(self) -> None:
        self.state = State.CLOSED
        self._release()
        self.shell.close()

    def _release(self) -> None:
        if self.client_id is not None:
            owners = _client_ids.get(self.broker)
            if owners is not None and owners.get(self.client_id) is self:
                del owners[self.client_id]
        self.transactions.clear()
        self._acks.clear()
        self.subscriptions.clear()
        if self.core is not None:
            self.core.close()
            self.core = None
            self.session = None

    def _fatal(self, message: str, detail: str, frame: Frame | None) -> None:
        """Send an ERROR frame (1.2 "ERROR") and close the connection."""
        if self.state is State.CLOSED:
            return
        log.info("closing STOMP connection %s: %s", self.shell.peer, message)
        headers = [("message", _one_line(message)), ("content-type", "text/plain")]
        receipt = frame.get("receipt") if frame is not None else None
        if receipt is not None and header_encodable("receipt-id", receipt, self.version):
            headers.append(("receipt-id", receipt))
        body = detail.encode()
        if frame is not None:
            body += f"\n\nThe failing frame was {frame.command}.".encode()
        headers.append(("content-length", str(len(body))))
        self._send(Frame("ERROR", tuple(headers), body))
        self._close_transport()

    def _receipt(
        self,
        frame: Frame,
        *,
        durable: bool = False,
        then_close: bool = False,
        removals: bool = True,
    ) -> None:
        """Answer a frame's `receipt` header, after the store when it wrote something.

        `removals=False` for a SEND: its receipt promises the message is
        safe, not that the acks before it are (`Store.when_durable`).
        """
        receipt = frame.get("receipt")
        if receipt is None:
            if then_close:
                self._close_transport()
            return
        reply = Frame("RECEIPT", (("receipt-id", receipt),))
        store = self.broker.store
        if self._deferred or (durable and store.pending):
            self._deferred += 1

            def send(error: BaseException | None) -> None:
                self._deferred -= 1
                if self.state is State.CLOSED:
                    return
                if error is not None:
                    self._fatal("store failure", f"The message could not be stored: {error}", frame)
                    return
                self._send(reply)
                if then_close:
                    self._close_transport()

            store.when_durable(send, removals=removals)
            return
        self._send(reply)
        if then_close:
            self._close_transport()
        elif self._handled >= RECEIPT_FLUSH_FRAMES and self._flush_now is not None:
            # Deep into a large read: a pipelining client waits for this receipt to
            # send more, and the end of the tick is the rest of the read away.
            self._flush_now()
            self._handled = 0

    # -- dispatch ------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        command = frame.command
        if self.state is State.CONNECTED:
            fast = _FAST_HANDLERS.get(command)
            if fast is not None and fast(self, frame):
                return
        allowed = _ALLOWED.get(self.state, frozenset())
        if command not in allowed:
            if self.state is State.CONNECTING:
                raise ProtocolError(
                    "not connected", f"Send CONNECT (or STOMP) first, not {command}."
                )
            raise ProtocolError("unexpected frame", f"{command} is not allowed once connected.")
        for name in _REQUIRED.get(command, ()):
            if frame.get(name) is None:
                raise _missing(command, name)
        _HANDLERS[command](self, frame)

    # -- CONNECT ------------------------------------------------------------------------

    def _on_connect(self, frame: Frame) -> None:
        version = negotiate_version(frame.get("accept-version"))
        if version is None:
            self._send(
                Frame(
                    "ERROR",
                    (
                        ("version", "1.0,1.1,1.2"),
                        ("content-type", "text/plain"),
                        ("message", "Supported protocol versions are 1.0 1.1 1.2"),
                    ),
                    b"Supported protocol versions are 1.0, 1.1 and 1.2.",
                )
            )
            self._close_transport()
            return
        self.version = self.codec.version = version
        cx, cy = parse_heartbeat(frame.get("heart-beat"))
        # No `login`: the core's anonymous rule (refused unless `auth.anonymous_user`).
        user = self.broker.authenticate(
            frame.get("login"), frame.get("passcode") or "", from_loopback=self.shell.from_loopback
        )
        login = user.name
        client_id = frame.get("client-id")
        if client_id is not None:
            owners = _client_ids.setdefault(self.broker, {})
            holder = owners.get(client_id)
            if holder is not None and holder.state is not State.CLOSED:
                raise ProtocolError(
                    "InvalidClientIDException - client-id already connected",
                    f"Client '{client_id}' is already connected (from {holder.shell.peer}); "
                    "a client-id may be connected only once (ActiveMQ's rule), so that a "
                    "durable subscription has one reader.",
                )
        host = frame.get("host")
        vhost = host if host is not None and host in self.broker.vhosts else "/"
        self.core = self.broker.connect(
            vhost,
            user,
            protocol="stomp",
            peer=self.shell.peer,
            client_properties={"version": version, "client-id": frame.get("client-id")},
        )
        self.session = self.core.open_session(self)
        self.user_name = login
        self.client_id = client_id
        if client_id is not None:
            _client_ids.setdefault(self.broker, {})[client_id] = self
        # We agree to what the client asks, with a floor (RabbitMQ mirrors the client).
        send_ms = max(cy, MIN_HEARTBEAT_MS) if cy else 0
        recv_ms = max(cx, MIN_HEARTBEAT_MS) if cx else 0
        self._send_interval = send_ms / 1000
        self._recv_interval = recv_ms / 1000
        self.codec.max_header_size = MAX_HEADER_SIZE
        self.codec.max_body_size = self.broker.limits.max_message_size
        self.state = State.CONNECTED
        headers = [("session", f"session-{self.core.id}"), ("server", SERVER_NAME)]
        if frame.get("accept-version") is not None:
            headers[:0] = [("version", version), ("heart-beat", f"{send_ms},{recv_ms}")]
        self._send(Frame("CONNECTED", tuple(headers)))
        self._timer_due = self._now + (
            min(x for x in (self._send_interval / 2, self._recv_interval) if x)
            if self._send_interval or self._recv_interval
            else 3600.0
        )

    # -- SEND -----------------------------------------------------------------------------

    def _on_send(self, frame: Frame) -> None:
        session = self._session()
        destination = parse_destination(frame.get("destination"))
        exchange, routing_key = self._publish_target(destination, _queue_arguments(frame))
        message = Message(exchange, routing_key, self._properties(frame), frame.body)
        session.vhost.lookup_exchange(exchange)  # NotFound now, not at COMMIT
        tx = self._transaction(frame)
        if tx is not None:
            tx.append(lambda: session.publish(exchange, message).stored)
            self._receipt(frame)
            return
        stored = session.publish(exchange, message).stored
        if destination.kind is not Kind.TEMP_QUEUE and _plain_send(frame) is not None:
            text = frame.get("destination") or ""
            self._remember_target(text, destination.kind, exchange, routing_key)
        self._receipt(frame, durable=stored, removals=False)

    def _send_fast(self, frame: Frame) -> bool:
        """A plain SEND (`_plain_send`) to a destination seen before; False: general path.

        It does what `_on_send` does for such a frame, minus the work whose
        answer cannot have changed: parsing the destination, and for /queue/
        the declare (the same Queue object is still there, so the passive
        declare's exclusive-owner check passes again; `touch` restarts its
        `x-expires` clock as that declare would). Properties come from the
        headers as in `_on_send`, once per header set (`_send_plan`); the
        message then starts with the STOMP header caches such properties
        give. `Session.publish` raises NotFound, as `lookup_exchange` would,
        when the exchange has gone.
        """
        plan = self._send_plan(frame)
        return plan is not None and self._send_planned(plan, frame.body, frame)

    def _send_planned(self, plan: _SendPlan, body: bytes, frame: Frame | None) -> bool:
        """`_send_fast` once the plan is known; `frame` (None: a repeat, see
        `_send_repeats`) is needed only while the plan's properties are not
        known yet and for a receipt."""
        target = self._send_targets.get(plan.destination)
        if target is None:
            return False
        exchange, routing_key, queue = target
        session = self._session()
        if queue is not None:
            if session.vhost.queues.get(routing_key) is not queue:
                del self._send_targets[plan.destination]
                return False
            queue.touch()
        properties = plan.properties
        if properties is None:  # the header set's first SEND, or one not cacheable
            assert frame is not None
            properties = self._properties(frame)
            message = Message(exchange, routing_key, properties, body)
            if plan.cacheable:
                plan.properties = properties
        else:
            message = Message(exchange, routing_key, properties, body)
            wire = plan.wire
            if wire is None:
                wire = plan.wire = _wire_cache_for(properties)
            message.wire_cache = wire.copy()
        if queue is not None:
            stored = session.publish_to_queue(queue, message).stored
        else:
            stored = session.publish(exchange, message).stored
        if plan.receipt:
            assert frame is not None
            self._receipt(frame, durable=stored, removals=False)
        return True

    def _send_repeats(self, frame: Frame) -> None:
        """After `frame` took the SEND fast path: the SENDs right behind it in the
        buffer that repeat its header block, without making frames of them.

        Each is what `_on_frame` would do with it: `_send_fast` with the same
        plan (kept, its properties known, no receipt); the first one the plan
        cannot take (its destination changed) goes to `_on_frame` as a frame,
        and the main loop carries on from there.
        """
        plan = self._last_plan
        headers = frame.headers
        if plan is None or plan.headers is not headers or plan.properties is None or plan.receipt:
            return
        codec = self.codec
        while self.state is State.CONNECTED:
            body = codec.next_repeat(headers)
            if body is None:
                return
            self._handled += 1
            if not self._send_planned(plan, body, None):
                self._on_frame(Frame(frame.command, headers, body))
                return

    def _send_plan(self, frame: Frame) -> _SendPlan | None:
        """What a SEND's headers decide, or None when it is not plain (`_plain_send`).

        Kept per header set: the codec gives a frame that repeats the
        previous one's header block the same headers tuple
        (`decode_repeat`), so the usual case is one identity check. Plans
        with a receipt are not kept (receipt ids do not repeat).
        """
        headers = frame.headers
        plan = self._last_plan
        if plan is not None and plan.headers is headers:
            return plan
        plans = self._send_plans
        plan = plans.get(headers)
        if plan is None:
            shape = _plain_send(frame)
            if shape is None:
                return None
            destination, receipt, others = shape
            plan = _SendPlan(
                headers,
                destination,
                receipt,
                cacheable=not any(name in _IMPURE_HEADERS for name, _ in headers),
            )
            if not others:
                plan.properties = Properties()
                plan.wire = _NO_HEADERS_WIRE
            if not receipt:
                if len(plans) >= SEND_PLAN_CACHE_LIMIT:
                    plans.clear()
                plans[headers] = plan
        else:
            plan.headers = headers  # an equal tuple: the codec's latest (decoded again)
        self._last_plan = plan
        return plan

    def _remember_target(self, text: str, kind: Kind, exchange: str, routing_key: str) -> None:
        """Cache a destination a simple SEND reached (see `_send_fast`)."""
        queue = None
        if kind is Kind.QUEUE:
            queue = self._session().vhost.queues.get(routing_key)
            if queue is None:  # published, then gone (e.g. an exclusive auto-delete)
                return
        if len(self._send_targets) >= SEND_TARGET_CACHE_LIMIT:
            self._send_targets.clear()
        self._send_targets[text] = (exchange, routing_key, queue)

    def _publish_target(
        self, destination: Destination, arguments: dict[str, Any]
    ) -> tuple[str, str]:
        if destination.kind is Kind.TEMP_QUEUE:
            return "", self._temp_queue(destination.name)
        if destination.kind is Kind.QUEUE:
            self._ensure_queue(destination.name, arguments)
        return destination.publish_target()

    def _properties(self, frame: Frame) -> Properties:
        """SEND headers -> message properties (the mapping `message_headers` reverses).

        Headers named in `_PROPERTY_SETTERS` set a property; every other header
        that does not describe the frame becomes a message header. The first
        occurrence of a header wins (1.2 "Repeated Header Entries"). Queue
        argument headers are left out; ActiveMQ's `JMSXGroupID` is also set
        as the core's FIFO group header `x-message-group-id` (unless given).
        """
        p = Properties()
        headers: dict[str, Any] = {}
        seen: set[str] = set()
        for name, value in frame.headers:
            if name in FRAME_HEADERS or name in seen or name in QUEUE_ARGUMENT_HEADERS:
                continue
            seen.add(name)
            setter = _PROPERTY_SETTERS.get(name)
            if setter is None:
                headers[name] = value
            elif setter(self, p, value):
                headers[name] = value  # also kept as a header (ActiveMQ's `expires`)
        group = headers.get(JMSX_GROUP_ID)
        if group is not None and GROUP_HEADER not in headers:
            headers[GROUP_HEADER] = group
        if headers:
            p.headers = headers
        return p

    def _set_reply_to(self, p: Properties, value: str) -> bool:
        p.reply_to = self._reply_to(value)
        return False

    def _set_user_id(self, p: Properties, value: str) -> bool:
        if value != self.user_name:
            raise PreconditionFailed(
                f"user-id header set to '{value}' but authenticated user was '{self.user_name}'"
            )
        p.user_id = value
        return False

    def _reply_to(self, value: str) -> str:
        """A reply-to naming /temp-queue/<t> becomes /reply-queue/<real name> (RabbitMQ)."""
        if value.startswith(Kind.TEMP_QUEUE.value):
            dest = parse_destination(value)
            return Kind.REPLY_QUEUE.value + self._temp_queue(dest.name, subscribe=True)
        return value

    # -- queues -----------------------------------------------------------------------------

    def _session(self) -> Session:
        assert self.session is not None
        return self.session

    def _ensure_queue(self, name: str, arguments: dict[str, Any] | None = None) -> bool:
        """Declare /queue/<name> as a durable queue unless it exists; True if declared.

        `arguments` (from queue argument headers) are used to declare it; an
        existing queue must have the same value for each one given (else
        PreconditionFailed, as an inequivalent AMQP redeclare); the others
        are not checked.
        """
        session = self._session()
        existing = session.vhost.queues.get(name)
        if existing is not None:
            session.declare_queue(name, passive=True)  # exclusive-owner check
            for arg, value in (arguments or {}).items():
                current = existing.arguments.get(arg)
                if arg == "x-queue-type":
                    current = existing.options.queue_type
                if current != value:
                    raise PreconditionFailed(
                        f"inequivalent arg '{arg}' for queue '{name}' in vhost "
                        f"'{session.vhost.name}': received {value!r} but current is {current!r}"
                    )
            return False
        session.declare_queue(name, durable=True, arguments=arguments)
        return True

    def _temp_queue(self, name: str, *, subscribe: bool = False) -> str:
        """The connection's temporary queue for /temp-queue/<name>, created on first use.

        Created through a reply-to header, it is subscribed to at once with
        subscription id `/temp-queue/<name>` and ack mode auto (RabbitMQ).
        """
        queue = self.temp_queues.get(name)
        if queue is None:
            declared, _, _ = self._session().declare_queue("", exclusive=True)
            queue = self.temp_queues[name] = declared.name
        sub_id = Kind.TEMP_QUEUE.value + name
        if subscribe and not any(s.queue == queue for s in self.subscriptions.values()):
            self._consume(Subscription(sub_id, sub_id, "auto", queue), prefetch=0, exclusive=False)
        return queue

    # -- SUBSCRIBE / UNSUBSCRIBE --------------------------------------------------------------

    def _on_subscribe(self, frame: Frame) -> None:
        session = self._session()
        text = frame.get("destination")
        destination = parse_destination(text)
        sub_id = frame.get("id")
        if sub_id is None:
            if self.version != "1.0":
                raise _missing("SUBSCRIBE", "id")
            sub_id = text or ""
        if sub_id in self.subscriptions:
            raise ProtocolError("duplicate subscription", f"Subscription id '{sub_id}' is in use.")
        ack_mode = frame.get("ack", "auto") or "auto"
        if ack_mode not in ACK_MODES:
            raise ProtocolError(
                "invalid ack mode", f"ack must be auto, client or client-individual: {ack_mode!r}"
            )
        selector_text = frame.get("selector")
        selector = Selector(selector_text) if selector_text else None
        core_filter: Callable[[Message], bool] | None = None
        durable = False
        kind = destination.kind
        if kind is Kind.QUEUE or kind is Kind.AMQ_QUEUE:
            if selector is not None:
                # Competing consumers: the queue skips what this one does not
                # accept, leaving it ready for others (the core's consumer filter).
                core_filter = _selector_filter(selector)
                selector = None
            if kind is Kind.QUEUE:
                durable = self._ensure_queue(destination.name, _queue_arguments(frame))
            queue = destination.name
        elif kind is Kind.TEMP_QUEUE:
            queue = self._temp_queue(destination.name)
        elif kind is Kind.REPLY_QUEUE:
            raise ProtocolError(
                "invalid destination", "/reply-queue/ destinations are for SEND only."
            )
        else:
            exchange = destination.publish_target()[0]
            session.vhost.lookup_exchange(exchange)
            name = self._durable_subscription_name(frame, sub_id)
            if name is not None:
                declared, _, _ = session.declare_queue(name, durable=True)
                durable = True
            else:
                declared, _, _ = session.declare_queue("", exclusive=True, auto_delete=True)
            queue = declared.name
            session.bind_queue(queue, exchange, destination.binding_key(), {})
        prefetch = frame.get("activemq.prefetchSize") or frame.get("prefetch-count")
        sub = Subscription(sub_id, text or "", ack_mode, queue, selector, durable_queue=durable)
        self._consume(
            sub,
            prefetch=_int_header("prefetch-count", prefetch, 0, 2**31) if prefetch else 0,
            exclusive=(frame.get("exclusive") or "").lower() == "true",
            core_filter=core_filter,
        )
        self._receipt(frame, durable=durable)

    def _durable_subscription_name(self, frame: Frame, sub_id: str) -> str | None:
        """The queue of a durable topic subscription, or None for a plain one.

        ActiveMQ: `client-id` on CONNECT plus `activemq.subscriptionName` (or
        `durable-subscription-name`). RabbitMQ: `durable:true` (or
        `persistent:true`) with the subscription `id`.
        """
        name = frame.get("activemq.subscriptionName") or frame.get("durable-subscription-name")
        if name is not None:
            if not self.client_id:
                raise ProtocolError(
                    "client-id required",
                    "A durable subscription needs a 'client-id' header on CONNECT.",
                )
            return f"stomp-subscription-{self.client_id}-{name}"
        if (frame.get("durable") or frame.get("persistent") or "").lower() == "true":
            return f"stomp-subscription-{self.client_id or ''}-{sub_id}"
        return None

    def _consume(
        self,
        sub: Subscription,
        *,
        prefetch: int,
        exclusive: bool,
        core_filter: Callable[[Message], bool] | None = None,
    ) -> None:
        session = self._session()
        consumer = session.consume(
            sub.queue,
            sub.id,
            no_ack=sub.ack_mode == "auto",
            exclusive=exclusive,
            filter=core_filter,
        )
        consumer.prefetch = prefetch
        self.subscriptions[sub.id] = sub
        consumer.start()

    def _on_unsubscribe(self, frame: Frame) -> None:
        sub_id = frame.get("id")
        if sub_id is None:
            if self.version != "1.0" or frame.get("destination") is None:
                raise _missing("UNSUBSCRIBE", "id")
            sub_id = frame.get("destination") or ""
        sub = self.subscriptions.pop(sub_id, None)
        if sub is None:
            raise ProtocolError("no such subscription", f"No subscription with id '{sub_id}'.")
        session = self._session()
        session.cancel(sub.id)
        # Its unacked messages can no longer be acknowledged: back to the queue
        # (after the cancel, so that they go to other consumers).
        for tag in sub.outstanding:
            self._acks.pop(_ack_id(tag), None)
            session.nack(tag, requeue=True)
        wrote = False
        if sub.durable_queue and self._durable_subscription_name(frame, sub.id) is not None:
            session.delete_queue(sub.queue)  # ends the durable subscription
            wrote = True
        self._receipt(frame, durable=wrote)

    # -- ACK / NACK ----------------------------------------------------------------------------

    def _on_ack(self, frame: Frame) -> None:
        self._settle_frame(frame, nack=False)

    def _ack_fast(self, frame: Frame) -> bool:
        """An ACK of one client-individual delivery outside a transaction, naming it
        as this version must; False: the general path (`_settle_frame`), which
        also raises every error. Headers the general path ignores are ignored."""
        ack_id = None
        subscription = receipt = False
        id_header = "id" if self.version == "1.2" else "message-id"
        for name, value in frame.headers:
            if name == id_header:
                if ack_id is None:
                    ack_id = value
            elif name == "subscription":
                subscription = True
            elif name == "receipt":
                receipt = True
            elif name == "transaction":
                return False
        if ack_id is None or (self.version == "1.1" and not subscription):
            return False
        found = self._acks.get(ack_id)
        if found is None or found[0].ack_mode != "client-individual":
            return False
        sub, tag = found
        del self._acks[ack_id]
        sub.outstanding.pop(tag, None)
        self._session().ack(tag)
        if receipt:
            self._receipt(frame)
        return True

    def _on_nack(self, frame: Frame) -> None:
        self._settle_frame(frame, nack=True)

    def _settle_frame(self, frame: Frame, *, nack: bool) -> None:
        """ACK/NACK: 1.2 names the message by `id`, 1.0/1.1 by `message-id`."""
        command = frame.command
        if self.version == "1.2":
            ack_id = frame.get("id")
            if ack_id is None:
                raise _missing(command, "id")
        else:
            ack_id = frame.get("message-id")
            if ack_id is None:
                raise _missing(command, "message-id")
            if self.version == "1.1" and frame.get("subscription") is None:
                raise _missing(command, "subscription")
        found = self._acks.get(ack_id)
        if found is None:
            raise ProtocolError(
                "unknown message-id",
                f"No unacknowledged message '{ack_id}' on this connection (acknowledged "
                "already, or its subscription is in auto mode).",
            )
        sub, tag = found
        if sub.ack_mode == "client":  # cumulative on this subscription
            tags = []
            for t in sub.outstanding:
                tags.append(t)
                if t == tag:
                    break
        else:
            tags = [tag]
        requeue = (frame.get("requeue") or "true").lower() != "false"
        tx = self._transaction(frame)
        if tx is not None:
            tx.append(lambda: self._settle(sub, tags, nack=nack, requeue=requeue))
        else:
            self._settle(sub, tags, nack=nack, requeue=requeue)
        self._receipt(frame)

    def _settle(self, sub: Subscription, tags: list[int], *, nack: bool, requeue: bool) -> bool:
        session = self._session()
        for tag in tags:
            if self._acks.pop(_ack_id(tag), None) is None:
                continue  # settled since (e.g. a transaction's ACK repeated outside it)
            sub.outstanding.pop(tag, None)
            if nack:
                session.nack(tag, requeue=requeue)
            else:
                session.ack(tag)
        return False

    # -- transactions ------------------------------------------------------------------------

    def _transaction(self, frame: Frame) -> list[Callable[[], bool]] | None:
        name = frame.get("transaction")
        if name is None:
            return None
        tx = self.transactions.get(name)
        if tx is None:
            raise ProtocolError("unknown transaction", f"Transaction '{name}' was not begun.")
        return tx

    def _on_begin(self, frame: Frame) -> None:
        name = frame.get("transaction") or ""
        if name in self.transactions:
            raise ProtocolError("transaction already begun", f"Transaction '{name}' is open.")
        self.transactions[name] = []
        self._receipt(frame)

    def _on_commit(self, frame: Frame) -> None:
        actions = self._transaction(frame)
        assert actions is not None
        del self.transactions[frame.get("transaction") or ""]
        stored = False
        for action in actions:
            stored |= action()
        self._receipt(frame, durable=stored)

    def _on_abort(self, frame: Frame) -> None:
        self._transaction(frame)
        del self.transactions[frame.get("transaction") or ""]
        self._receipt(frame)

    # -- DISCONNECT ----------------------------------------------------------------------------

    def _on_disconnect(self, frame: Frame) -> None:
        self.state = State.CLOSING
        self.transactions.clear()
        self._receipt(frame, then_close=True)

    # -- DeliverySink --------------------------------------------------------------------------

    def deliver(
        self, consumer_tag: str, delivery_tag: int, redelivered: bool, message: Message
    ) -> None:
        """A MESSAGE frame for one delivery (the core recorded it as unacked already)."""
        sub = self.subscriptions.get(consumer_tag)
        if sub is None or self.state is State.CLOSED:
            return
        if sub.selector is not None and not sub.selector.matches(selector_view(message)):
            if sub.ack_mode != "auto":
                self._session().ack(delivery_tag)  # this subscription's own copy
            return
        ack_id = _ack_id(delivery_tag)
        if sub.ack_mode != "auto":
            sub.outstanding[delivery_tag] = None
            self._acks[ack_id] = (sub, delivery_tag)
        data = self._message_bytes(sub, ack_id, redelivered, message)
        if data is not None:
            self._sent_since_tick = True
            self.shell.send(data)
            return
        self._send(
            Frame(
                "MESSAGE",
                self.message_frame_headers(sub, ack_id, redelivered, message),
                message.body,
            )
        )

    def message_frame_headers(
        self, sub: Subscription, ack_id: str, redelivered: bool, message: Message
    ) -> tuple[tuple[str, str], ...]:
        """The headers of the MESSAGE for one delivery (the general path; see `deliver`)."""
        headers = [
            ("subscription", sub.id),
            ("destination", destination_of(message.exchange, message.routing_key)),
            ("message-id", ack_id),
        ]
        if sub.ack_mode != "auto" and self.version == "1.2":
            headers.append(("ack", ack_id))
        if redelivered:
            headers.append(("redelivered", "true"))
        version = self.version
        headers.extend(
            (n, v) for n, v in message_headers(message) if header_encodable(n, v, version)
        )
        headers.append(("content-length", str(len(message.body))))
        return tuple(headers)

    def _message_bytes(
        self, sub: Subscription, ack_id: str, redelivered: bool, message: Message
    ) -> bytes | None:
        """`encode(Frame("MESSAGE", message_frame_headers(...), body))`, hand-made.

        The start of the frame (subscription, destination, the `message-id:`
        name) is cached per subscription and (exchange, routing key); the
        message's own headers are encoded once per message and version
        (`message_wire_headers`); only the ids, `redelivered` and
        `content-length` are formatted per delivery. None when the
        subscription id or the destination cannot be encoded in this version:
        the general path then decides (`encode` raises ValueError).
        """
        key = (message.exchange, message.routing_key)
        prefixes = sub.prefixes
        prefix = prefixes.get(key)
        if prefix is None:
            prefix = _message_prefix(sub.id, destination_of(*key), self.version)
            if len(prefixes) >= PREFIX_CACHE_LIMIT:
                prefixes.clear()
            prefixes[key] = prefix
        if prefix is False:
            return None
        body = message.body
        ids = ack_id.encode()
        if sub.ack_mode != "auto" and self.version == "1.2":
            ids += b"\nack:" + ids
        return b"%s%s\n%s%scontent-length:%d\n\n%s\x00" % (
            prefix,
            ids,
            b"redelivered:true\n" if redelivered else b"",
            message_wire_headers(message, self.version),
            len(body),
            body,
        )

    def returned(self, message: Message, reply_code: int, reply_text: str) -> None:
        """Never called: STOMP publishes are not mandatory."""

    def cancelled(self, consumer_tag: str, error: BrokerError | None) -> None:
        """The subscription's queue was deleted: tell the client with an ERROR (RabbitMQ)."""
        sub = self.subscriptions.pop(consumer_tag, None)
        if sub is None or self.state is not State.CONNECTED:
            return
        self._fatal(
            "subscription ended",
            f"The queue '{sub.queue}' of subscription '{sub.id}' was deleted.",
            None,
        )


def _message_prefix(sub_id: str, destination: str, version: str) -> bytes | bool:
    """``MESSAGE``, the subscription and destination headers and ``message-id:``,
    escaped for `version`; False when one of them cannot be encoded there."""
    subscription = header_line("subscription", sub_id, version)
    target = header_line("destination", destination, version)
    if subscription is None or target is None:
        return False
    return b"MESSAGE\n" + subscription + target + b"message-id:"


def message_wire_headers(message: Message, version: str) -> bytes:
    """The encodable `message_headers` of a message as header lines for `version`.

    Cached on the message (fan-out encodes them once per version).
    """
    cache = message.wire_cache
    key = _WIRE_KEYS.get(version, version)
    if cache is not None:
        wire: bytes | None = cache.get(key)
        if wire is not None:
            return wire
    lines = [header_line(n, v, version) for n, v in message_headers(message)]
    wire = b"".join(line for line in lines if line is not None)
    cache = message.wire_cache
    assert cache is not None  # message_headers made it
    cache[key] = wire
    return wire


@dataclass(slots=True, eq=False)
class _SendPlan:
    """A plain SEND's header set and what it decides (`StompConnection._send_plan`).

    `properties` are the message properties those headers give, set by the
    first SEND that has them unless they depend on more than the headers
    (`_IMPURE_HEADERS`); messages share them (a published message is never
    changed). `wire` is the `Message.wire_cache` such properties give, each
    message starting with a copy.
    """

    headers: tuple[tuple[str, str], ...]
    destination: str
    receipt: bool
    cacheable: bool
    properties: Properties | None = None
    wire: dict[str, Any] | None = None


# SEND headers whose properties depend on more than their text: the clock
# (`expires`) or the connection's temporary queues (`reply-to`).
_IMPURE_HEADERS = frozenset({"expires", "reply-to"})

# The STOMP caches of a message without properties: no header in any version.
_NO_HEADERS_WIRE: dict[str, Any] = {"stomp-headers": [], **dict.fromkeys(_WIRE_KEYS.values(), b"")}


def _wire_cache_for(properties: Properties) -> dict[str, Any]:
    """The STOMP entries `message_headers` and `message_wire_headers` (every version)
    leave in the `wire_cache` of a message with these properties."""
    message = Message("", "", properties, b"")
    for version in _WIRE_KEYS:
        message_wire_headers(message, version)
    assert message.wire_cache is not None
    return message.wire_cache


def _plain_send(frame: Frame) -> tuple[str, bool, bool] | None:
    """(destination, asks for a receipt, has other headers) of a SEND outside a
    transaction whose headers declare nothing (no queue argument header); else None."""
    destination = None
    receipt = False
    others = False
    for name, value in frame.headers:
        if name == "destination":
            if destination is None:
                destination = value
        elif name == "receipt":
            receipt = True
        elif name == "content-length":
            continue
        elif name == "transaction" or name in QUEUE_ARGUMENT_HEADERS:
            return None
        else:
            others = True
    return None if destination is None else (destination, receipt, others)


def _selector_filter(selector: Selector) -> Callable[[Message], bool]:
    """A core consumer filter evaluating a selector on each message."""

    def accepts(message: Message) -> bool:
        return selector.matches(selector_view(message))

    return accepts


def _queue_arguments(frame: Frame) -> dict[str, Any]:
    """Queue arguments from a frame's `x-` queue argument headers (first occurrence wins)."""
    arguments: dict[str, Any] = {}
    for name, value in frame.headers:
        convert = QUEUE_ARGUMENT_HEADERS.get(name)
        if convert is None or name in arguments:
            continue
        try:
            arguments[name] = convert(value)
        except ValueError:
            raise ProtocolError(
                f"invalid '{name}' header", f"'{name}' must be an integer, not {value!r}."
            ) from None
    return arguments


def _missing(command: str, header: str) -> ProtocolError:
    return ProtocolError(
        f"missing '{header}' header", f"A {command} frame must carry a '{header}' header."
    )


def _int_header(name: str, value: str | None, low: int, high: int) -> int:
    text = (value or "").strip()
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise ProtocolError(
            f"invalid '{name}' header", f"'{name}' must be an integer in [{low}, {high}]."
        )
    return int(text)


def _broker_error_detail(error: BrokerError, frame: Frame | None) -> str:
    detail = error.text
    if frame is not None and frame.get("destination"):
        detail += f"\nDestination: {frame.get('destination')}"
    return detail


def _set(attr: str, convert: Callable[[str], Any] = str) -> Callable[..., bool]:
    def setter(_conn: StompConnection, p: Properties, value: str) -> bool:
        setattr(p, attr, convert(value))
        return False

    return setter


def _set_expires(conn: StompConnection, p: Properties, value: str) -> bool:
    """ActiveMQ `expires`: absolute time in ms since the epoch, 0 = never."""
    at = _int_header("expires", value, 0, 2**63)
    if at:
        p.expiration = str(max(0, at - int(conn.broker.clock.wall() * 1000)))
    return True


def _timestamp(value: str) -> datetime:
    seconds = _int_header("timestamp", value, 0, 2**63)
    if seconds > 10**11:  # ActiveMQ sends milliseconds, RabbitMQ seconds
        seconds //= 1000
    return datetime.fromtimestamp(seconds, UTC)


# SEND header -> how it sets a message property; True keeps it as a header as well.
_PROPERTY_SETTERS: dict[str, Callable[[StompConnection, Properties, str], bool]] = {
    "content-type": _set("content_type"),
    "content-encoding": _set("content_encoding"),
    "persistent": _set("delivery_mode", lambda v: PERSISTENT if v.lower() == "true" else 1),
    "priority": _set("priority", lambda v: _int_header("priority", v, 0, 255)),
    "correlation-id": _set("correlation_id"),
    "reply-to": StompConnection._set_reply_to,
    "expiration": _set("expiration", lambda v: str(_int_header("expiration", v, 0, 2**31))),
    "expires": _set_expires,
    "amqp-message-id": _set("message_id"),
    "type": _set("message_type"),
    "timestamp": _set("timestamp", _timestamp),
    "user-id": StompConnection._set_user_id,
    "app-id": _set("app_id"),
}

# The hot path: handlers that deal with the simple, frequent shape of a frame
# and return False for anything else, which then takes `_HANDLERS`' path.
_FAST_HANDLERS: dict[str, Callable[[StompConnection, Frame], bool]] = {
    "SEND": StompConnection._send_fast,
    "ACK": StompConnection._ack_fast,
}

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
