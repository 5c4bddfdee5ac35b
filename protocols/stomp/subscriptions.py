"""STOMP subscriptions and acknowledgements: SUBSCRIBE, UNSUBSCRIBE, ACK, NACK, MESSAGE.

Each STOMP subscription is one core consumer whose tag is the subscription
id. `message-id` (and 1.2 `ack`) of a MESSAGE is `T_<delivery tag>`, unique
per connection; `client` mode acks are cumulative per subscription (1.2
"SUBSCRIBE ack Header"), implemented with each subscription's ordered
`outstanding` tags, since the core's `multiple` acks span the whole session.

Selectors (`broker.selector`): on a queue shared by competing consumers
(`/queue/`, `/amq/queue/`) the selector is the core consumer's filter, so a
message one consumer skips stays ready for the others. A subscription whose
queue is its own (`/topic/`, `/exchange/`, durable subscriptions) evaluates
its selector on each delivery and acknowledges away the copies that do not
match, so that its queue does not keep them forever.

`Subscriptions` is the core session's DeliverySink: `deliver` writes the
MESSAGE of each delivery. MESSAGE frames come from the codec: the general
path (`codec.message_headers_of`) or, on the hot path, from parts cached
here (the frame's start per subscription and destination) and on the
message (its headers per version, `mapping.message_wire_headers`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from moorage.broker.errors import BrokerError
from moorage.broker.message import Message
from moorage.broker.selector import Selector
from moorage.protocols.stomp.activemq import durable_subscription_name
from moorage.protocols.stomp.codec import (
    Frame,
    ProtocolError,
    State,
    encode_message,
    int_header,
    message_headers_of,
    message_prefix,
    missing_header,
)
from moorage.protocols.stomp.destinations import Kind, destination_of, parse_destination
from moorage.protocols.stomp.mapping import (
    message_headers,
    message_wire_headers,
    selector_filter,
    selector_view,
)
from moorage.protocols.stomp.queues import ensure_queue, queue_arguments

if TYPE_CHECKING:
    from moorage.broker.queue import Consumer
    from moorage.protocols.stomp.adapter import StompConnection

ACK_MODES: Final = frozenset({"auto", "client", "client-individual"})
PREFIX_CACHE_LIMIT: Final = 64  # cached MESSAGE prefixes per subscription (destinations seen)


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
    # `Subscriptions.message_bytes`. Empty: a header cannot be encoded.
    prefixes: dict[tuple[str, str], bytes] = field(default_factory=dict)


def ack_id(delivery_tag: int) -> str:
    """The `message-id` (and 1.2 `ack`) of a delivery."""
    return f"T_{delivery_tag}"


class Subscriptions:
    """The subscriptions of one connection, its unacknowledged deliveries and its
    temporary queues; the DeliverySink of the connection's core session."""

    def __init__(self, conn: StompConnection) -> None:
        self.conn = conn
        # the connection's parts the hot paths use, bound once (fixed for its life)
        self._codec = conn.codec
        self._shell = conn.shell
        self._keepalive = conn.keepalive
        self.by_id: dict[str, Subscription] = {}
        self.temp_queues: dict[str, str] = {}  # /temp-queue/<name> -> core queue name
        # subscription id -> the server-named queue its SUBSCRIBE declared, while the
        # SUBSCRIBE waits for an authorisation backend (`broker.auth_users.PermissionPending`)
        self._unbound: dict[str, str] = {}
        self._acks: dict[str, tuple[Subscription, int]] = {}

    def clear(self) -> None:
        """The connection is gone: forget every subscription and delivery."""
        self._acks.clear()
        self.by_id.clear()

    # -- SUBSCRIBE / UNSUBSCRIBE --------------------------------------------------------------

    def subscribe(self, frame: Frame) -> None:
        """SUBSCRIBE: a core consumer on the destination's queue (declared as needed)."""
        conn = self.conn
        session = conn.active_session()
        text = frame.get("destination")
        destination = parse_destination(text)
        sub_id = frame.get("id")
        if sub_id is None:
            if conn.version != "1.0":
                raise missing_header("SUBSCRIBE", "id")
            sub_id = text or ""
        if sub_id in self.by_id:
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
                core_filter = selector_filter(selector)
                selector = None
            if kind is Kind.QUEUE:
                _, durable = ensure_queue(session, destination.name, queue_arguments(frame))
            queue = destination.name
        elif kind is Kind.TEMP_QUEUE:
            queue = self.temp_queue(destination.name)
        elif kind is Kind.REPLY_QUEUE:
            raise ProtocolError(
                "invalid destination", "/reply-queue/ destinations are for SEND only."
            )
        else:
            exchange = destination.publish_target()[0]
            session.check_exchange(exchange)
            name = durable_subscription_name(frame, sub_id, conn.client_id)
            if name is not None:
                declared, _, _ = session.declare_queue(name, durable=True)
                durable = True
                queue = declared.name
            else:
                queue = self._unbound.get(sub_id, "")
                if session.vhost.find_queue(queue) is None:
                    declared, _, _ = session.declare_queue("", exclusive=True, auto_delete=True)
                    queue = declared.name
                # the backend is asked about this name: a SUBSCRIBE handled again after
                # a PermissionPending binds and consumes this same queue
                self._unbound[sub_id] = queue
            session.bind_queue(queue, exchange, destination.binding_key(), {})
        prefetch = frame.get("activemq.prefetchSize") or frame.get("prefetch-count")
        sub = Subscription(sub_id, text or "", ack_mode, queue, selector, durable_queue=durable)
        consumer = self._consume(
            sub,
            prefetch=int_header("prefetch-count", prefetch, 0, 2**31) if prefetch else 0,
            exclusive=(frame.get("exclusive") or "").lower() == "true",
            core_filter=core_filter,
            start=False,
        )
        self._unbound.pop(sub_id, None)
        # The RECEIPT goes out before the first MESSAGE, as RabbitMQ and ActiveMQ
        # send it: a client that waits for it and then counts what arrives misses
        # nothing (transcript `subscribe_receipt_before_messages`).
        conn.receipt(frame, durable=durable, after=consumer.start)

    def temp_queue(self, name: str, *, subscribe: bool = False) -> str:
        """The connection's temporary queue for /temp-queue/<name>, created on first use.

        Created through a reply-to header, it is subscribed to at once with
        subscription id `/temp-queue/<name>` and ack mode auto (RabbitMQ).
        """
        queue = self.temp_queues.get(name)
        if queue is None:
            declared, _, _ = self.conn.active_session().declare_queue("", exclusive=True)
            queue = self.temp_queues[name] = declared.name
        sub_id = Kind.TEMP_QUEUE.value + name
        if subscribe and not any(s.queue == queue for s in self.by_id.values()):
            self._consume(Subscription(sub_id, sub_id, "auto", queue), prefetch=0, exclusive=False)
        return queue

    def _consume(
        self,
        sub: Subscription,
        *,
        prefetch: int,
        exclusive: bool,
        core_filter: Callable[[Message], bool] | None = None,
        start: bool = True,
    ) -> Consumer:
        """A core consumer for `sub`, started unless `start` is False (then it is held:
        no deliveries until the caller starts it)."""
        consumer = self.conn.active_session().consume(
            sub.queue,
            sub.id,
            no_ack=sub.ack_mode == "auto",
            exclusive=exclusive,
            filter=core_filter,
        )
        consumer.prefetch = prefetch
        self.by_id[sub.id] = sub
        if start:
            consumer.start()
        else:
            consumer.held = True
        return consumer

    def unsubscribe(self, frame: Frame) -> None:
        """UNSUBSCRIBE: cancel the consumer; its unacked deliveries go back to the queue."""
        conn = self.conn
        sub_id = frame.get("id")
        if sub_id is None:
            if conn.version != "1.0" or frame.get("destination") is None:
                raise missing_header("UNSUBSCRIBE", "id")
            sub_id = frame.get("destination") or ""
        sub = self.by_id.pop(sub_id, None)
        if sub is None:
            raise ProtocolError("no such subscription", f"No subscription with id '{sub_id}'.")
        session = conn.active_session()
        session.cancel(sub.id)
        # Its unacked messages can no longer be acknowledged: back to the queue
        # (after the cancel, so that they go to other consumers).
        for tag in sub.outstanding:
            self._acks.pop(ack_id(tag), None)
            session.nack(tag, requeue=True)
        wrote = False
        if (
            sub.durable_queue
            and durable_subscription_name(frame, sub.id, conn.client_id) is not None
        ):
            session.delete_queue(sub.queue)  # ends the durable subscription
            wrote = True
        conn.receipt(frame, durable=wrote)

    # -- ACK / NACK ----------------------------------------------------------------------------

    def ack_fast(self, frame: Frame) -> bool:
        """An ACK of one client-individual delivery outside a transaction, naming it
        as this version must; False: the general path (`settle_frame`), which
        also raises every error. Headers the general path ignores are ignored."""
        version = self._codec.version
        found_id = None
        subscription = receipt = False
        id_header = "id" if version == "1.2" else "message-id"
        for name, value in frame.headers:
            if name == id_header:
                if found_id is None:
                    found_id = value
            elif name == "subscription":
                subscription = True
            elif name == "receipt":
                receipt = True
            elif name == "transaction":
                return False
        if found_id is None or (version == "1.1" and not subscription):
            return False
        found = self._acks.get(found_id)
        if found is None or found[0].ack_mode != "client-individual":
            return False
        sub, tag = found
        del self._acks[found_id]
        sub.outstanding.pop(tag, None)
        conn = self.conn
        session = conn.session
        assert session is not None  # ACK is accepted once CONNECTED
        session.ack(tag)
        if receipt:
            conn.receipt(frame)
        return True

    def settle_frame(self, frame: Frame, *, nack: bool) -> None:
        """ACK/NACK: 1.2 names the message by `id`, 1.0/1.1 by `message-id`."""
        conn = self.conn
        command = frame.command
        if conn.version == "1.2":
            named = frame.get("id")
            if named is None:
                raise missing_header(command, "id")
        else:
            named = frame.get("message-id")
            if named is None:
                raise missing_header(command, "message-id")
            if conn.version == "1.1" and frame.get("subscription") is None:
                raise missing_header(command, "subscription")
        found = self._acks.get(named)
        if found is None:
            raise ProtocolError(
                "unknown message-id",
                f"No unacknowledged message '{named}' on this connection (acknowledged "
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
        tx = conn.transactions.of(frame)
        if tx is not None:
            tx.append(lambda: self._settle(sub, tags, nack=nack, requeue=requeue))
        else:
            self._settle(sub, tags, nack=nack, requeue=requeue)
        conn.receipt(frame)

    def _settle(self, sub: Subscription, tags: list[int], *, nack: bool, requeue: bool) -> bool:
        session = self.conn.active_session()
        for tag in tags:
            if self._acks.pop(ack_id(tag), None) is None:
                continue  # settled since (e.g. a transaction's ACK repeated outside it)
            sub.outstanding.pop(tag, None)
            if nack:
                session.nack(tag, requeue=requeue)
            else:
                session.ack(tag)
        return False

    # -- the core's DeliverySink: MESSAGE ----------------------------------------------------

    def deliver(
        self, consumer_tag: str, delivery_tag: int, redelivered: bool, message: Message
    ) -> None:
        """Write the MESSAGE for one delivery (the core recorded it as unacked already):
        its bytes from cached parts (`message_bytes`, the fast path) or its frame
        (the general path); nothing when the connection is closed, the
        subscription has gone or its selector refuses the message.

        Must record the delivery as outstanding BEFORE the MESSAGE goes out: an
        ACK pipelined behind it must find it.
        """
        if self._codec.state is State.CLOSED:
            return
        sub = self.by_id.get(consumer_tag)
        if sub is None:
            return
        if sub.selector is not None and not sub.selector.matches(selector_view(message)):
            if sub.ack_mode != "auto":
                self.conn.active_session().ack(delivery_tag)  # this subscription's own copy
            return
        message_id = f"T_{delivery_tag}"  # `ack_id`, inlined: this runs once per delivery
        if sub.ack_mode != "auto":
            sub.outstanding[delivery_tag] = None
            self._acks[message_id] = (sub, delivery_tag)
        data = self.message_bytes(sub, message_id, redelivered, message)
        if data is None:
            headers = self.message_frame_headers(sub, message_id, redelivered, message)
            self.conn.send_frame(Frame("MESSAGE", headers, message.body))
            return
        self._keepalive.sent()
        self._shell.send(data)

    def returned(self, message: Message, reply_code: int, reply_text: str) -> None:
        """Never called: STOMP publishes are not mandatory."""

    def cancelled(self, consumer_tag: str, error: BrokerError | None) -> None:
        """The core ended the consumer `consumer_tag` (its queue was deleted)."""
        sub = self.by_id.pop(consumer_tag, None)
        if sub is not None:
            self.conn.subscription_ended(sub)

    def message_frame_headers(
        self, sub: Subscription, message_id: str, redelivered: bool, message: Message
    ) -> tuple[tuple[str, str], ...]:
        """The headers of the MESSAGE for one delivery (the general path)."""
        return message_headers_of(
            sub.id,
            destination_of(message.exchange, message.routing_key),
            message_id,
            ack=sub.ack_mode != "auto",
            redelivered=redelivered,
            headers=message_headers(message),
            body=message.body,
            version=self.conn.version,
        )

    def message_bytes(
        self, sub: Subscription, message_id: str, redelivered: bool, message: Message
    ) -> bytes | None:
        """``codec.send(Frame("MESSAGE", message_frame_headers(...), body))``, from parts
        (`codec.encode_message`).

        The start of the frame (subscription, destination, the `message-id:`
        name) is cached per subscription and (exchange, routing key); the
        message's own headers are encoded once per message and version
        (`message_wire_headers`); only the ids, `redelivered` and
        `content-length` are formatted per delivery. None when the
        subscription id or the destination cannot be encoded in this version:
        the general path then decides (`encode` raises ValueError).
        """
        codec = self._codec
        key = (message.exchange, message.routing_key)
        prefixes = sub.prefixes
        prefix = prefixes.get(key)
        if prefix is None:
            prefix = message_prefix(sub.id, destination_of(*key), codec.version) or b""
            if len(prefixes) >= PREFIX_CACHE_LIMIT:
                prefixes.clear()
            prefixes[key] = prefix
        if not prefix:
            return None
        version = codec.version
        return encode_message(
            prefix,
            message_id,
            ack=sub.ack_mode != "auto",
            redelivered=redelivered,
            lines=message_wire_headers(message, version),
            body=message.body,
            version=version,
        )
