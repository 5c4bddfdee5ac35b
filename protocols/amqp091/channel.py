"""One open AMQP 0-9-1 channel: the core session's delivery sink, its confirms and replies.

Theory of operation
-------------------
An `AMQPChannel` owns one core `Session` and is that session's
`DeliverySink`: deliveries, returns and consumer cancellations come back
here and leave as frames through the connection (`ChannelOwner`, which
`adapter.AMQPConnection` implements; this module never imports it).

Every synchronous reply and every publisher confirm on the channel goes out
through one `OrderedReplies` stream (`moorage.broker.replies`), so replies
keep the order the client asked for them in even when some must wait for
the store:

- a reply that promises something is on disk (declare-ok of a durable
  entity, tx.commit-ok, a delete or bind) passes `durable=True`;
- confirms are gathered per read (`confirm_published` counts, the connection
  calls `flush_confirms` once at the end of its input) and wait for the
  store only when a confirmed publish was stored (`stored=True`), with
  `removals=False`: a confirm promises the messages, not earlier acks;
- a publish a queue refused (`x-overflow: reject-publish`) is nacked in its
  own place in that order, after everything published before it.

A reply that runs after the channel closed is dropped; a store error on a
durable reply closes the connection with 541 (`InternalStoreError`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from pamqp import commands
from pamqp.base import Frame

from moorage.broker.errors import BrokerError, NotFound
from moorage.broker.message import Message
from moorage.broker.replies import OrderedReplies
from moorage.broker.session import Session
from moorage.protocols.amqp091.codec import Connection, Deliver, shortstr
from moorage.protocols.amqp091.mapping import properties_payload, route
from moorage.protocols.amqp091.methods import unchecked
from moorage.protocols.tcp import Shell


class ChannelOwner(Protocol):
    """What a channel needs of its connection (`adapter.AMQPConnection`)."""

    shell: Shell
    codec: Connection
    capabilities: dict[str, Any]
    channels: dict[int, AMQPChannel]

    def send_method(self, channel: int, method: Frame) -> None: ...
    def send_content(self, channel: int, method: Frame, message: Message) -> None: ...
    def channel_error(
        self, channel: AMQPChannel, error: BrokerError, method: Frame | None
    ) -> None: ...


class RejectedPublish(Exception):
    """A queue refused the message (x-overflow reject-publish): confirm it with a nack."""


class InternalStoreError(BrokerError):
    """The store could not write what a reply would have promised."""

    code, name, hard = 541, "INTERNAL_ERROR", True


class AMQPChannel:
    """One open channel: a core session plus confirm and reply bookkeeping."""

    def __init__(self, connection: ChannelOwner, number: int, replies: OrderedReplies) -> None:
        self.connection = connection
        self.number = number
        self.session: Session = None  # type: ignore[assignment]  # set by the opener
        self.replies = replies
        self.closing = False  # we sent channel.close and wait for close-ok
        self.confirm = False
        self.publish_seq = 0  # last publish sequence number (confirm mode)
        self.confirmed = 0  # highest sequence number acked or nacked
        self.unconfirmed = 0  # highest sequence number waiting to be confirmed
        self.confirm_needs_sync = False
        # basic.gets not answered yet, each with the queue name it meant when it came
        self.gets: deque[tuple[commands.Basic.Get, str]] = deque()
        self.client_flow = True
        self.last_queue = ""  # the last queue declared here: what an empty queue name means
        self.tags: dict[str, bytes] = {}  # consumer tag -> its encoded shortstr

    @property
    def open(self) -> bool:
        """Still the connection's channel under this number, and not closing."""
        return not self.closing and self.connection.channels.get(self.number) is self

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
        tag = self.tags.get(consumer_tag)
        if tag is None:
            tag = self.tags[consumer_tag] = shortstr(consumer_tag)
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
        method = unchecked(
            commands.Basic.Return,
            reply_code=reply_code,
            reply_text=reply_text,
            exchange=message.exchange,
            routing_key=message.routing_key,
        )
        self.connection.send_content(self.number, method, message)

    def cancelled(self, consumer_tag: str, error: BrokerError | None) -> None:
        self.tags.pop(consumer_tag, None)
        if self.connection.capabilities.get("consumer_cancel_notify"):
            self.connection.send_method(
                self.number, commands.Basic.Cancel(consumer_tag, nowait=True)
            )

    def closed_by_broker(self, error: BrokerError) -> None:
        """The core ends this channel (consumer ack timeout with RabbitMQ's behaviour)."""
        if self.open:
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
            # In order behind the confirms that wait for the store; the nack needs nothing.
            self.replies.send(
                lambda _error: self._confirmed(seq, RejectedPublish()), removals=False
            )
            return
        self.publish_seq += 1
        self.unconfirmed = self.publish_seq
        self.confirm_needs_sync |= stored

    def flush_confirms(self) -> None:
        """Confirm everything published so far, after the store has it if needed."""
        upto = self.unconfirmed
        if upto <= self.confirmed:
            return
        stored = self.confirm_needs_sync
        self.confirm_needs_sync = False
        # A confirm promises the messages are safe, not that earlier acks are.
        self.replies.send(lambda error: self._confirmed(upto, error), stored=stored, removals=False)

    def _confirmed(self, upto: int, error: BaseException | None) -> None:
        if not self.open or upto <= self.confirmed:
            return
        multiple = upto - self.confirmed > 1
        if error is None:
            self.session.stats.confirm += upto - self.confirmed  # message rates (broker.stats)
        self.confirmed = upto
        if error is None:
            frame: Frame = commands.Basic.Ack(upto, multiple)
        elif isinstance(error, RejectedPublish):
            # As RabbitMQ (rabbit_channel:coalesce_and_send): everything before it is
            # confirmed, so multiple; requeue keeps the record's default, true.
            frame = commands.Basic.Nack(upto, True, requeue=True)
        else:
            frame = commands.Basic.Nack(upto, multiple, requeue=False)
        self.connection.send_method(self.number, frame)

    # -- replies ---------------------------------------------------------------------------

    def reply(
        self, method: Frame, after: Callable[[], None] | None = None, *, durable: bool = False
    ) -> None:
        """Send a synchronous reply in order, waiting for the store when it promises durability.

        `after` runs right after the reply is sent (a consumer starts
        delivering only after its consume-ok); neither runs if the channel
        closed meanwhile.
        """

        def send(error: BaseException | None) -> None:
            if not self.open:
                return
            if error is not None:
                self.connection.channel_error(self, InternalStoreError(str(error)), method)
                return
            self.connection.send_method(self.number, method)
            if after is not None:
                after()

        self.replies.send(send, durable=durable)
