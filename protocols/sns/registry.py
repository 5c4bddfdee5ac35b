"""The SNS registry: topics and subscriptions, kept durable and mapped onto the core.

Theory of operation. A topic is the durable **fanout exchange** of its name
in its vhost, so an AMQP, MQTT or STOMP publisher reaches SNS subscribers by
publishing to it. A subscription owns one durable core queue
(`sns.sub.<topic>.<id>`) bound to that exchange once the subscription is
confirmed: a published message is on disk in every subscription's queue
before Publish answers (the caller waits for the store, as a publisher
confirm does), and the dispatcher (`protocols.sns.dispatcher`) acks an entry
only after its endpoint accepted the delivery. A restart therefore loses
nothing between Publish and delivery: unacked entries are simply delivered
again (at least once, as AWS promises).

One queue per subscription, not per topic, so that one slow or failing HTTP
endpoint holds back only its own deliveries, and retries and dead letters are
per subscription as in AWS. The body is stored once per message whatever the
number of subscriptions (the store keeps bodies by message id).

The SNS attributes of topics and subscriptions live in the broker's session
records of the protocol `"sns"` (`Broker.session_records`; key = the ARN,
state = JSON; see `protocols.sns.model`). The queues and the exchange are the core's own
durable entities and come back with the topology.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from moorage.broker.auth import Permission, User
from moorage.broker.broker import Broker, ClientConnection
from moorage.broker.errors import BrokerError
from moorage.broker.message import Message
from moorage.broker.session import Session
from moorage.broker.vhost import VirtualHost
from moorage.protocols.sns.model import Subscription, Topic, from_state

PROTOCOL = "sns"
SYSTEM_USER = "moorage-sns"  # the broker's own identity for SNS's internal queues


class PublishOnly:
    """The sink of a session that only publishes or changes topology (never consumes)."""

    def deliver(
        self, consumer_tag: str, delivery_tag: int, redelivered: bool, message: Message
    ) -> None:
        raise AssertionError("SNS publishing sessions do not consume")

    def returned(self, message: Message, reply_code: int, reply_text: str) -> None:
        """Never publishes with mandatory set."""

    def cancelled(self, consumer_tag: str, error: BrokerError | None) -> None:
        """Never consumes."""


class Registry:
    """Every topic and subscription of a broker, and the core entities behind them."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.topics: dict[tuple[str, str], Topic] = {}
        self.subscriptions: dict[str, Subscription] = {}  # by ARN
        self._system: dict[str, ClientConnection] = {}
        self.records = broker.session_records(PROTOCOL)
        # called with a subscription that became deliverable (confirmed) or went away
        self.on_confirmed: Callable[[Subscription], None] = lambda _s: None
        self.on_removed: Callable[[Subscription], None] = lambda _s: None

    async def load(self) -> None:
        """Read back every stored topic and subscription."""
        for record in await self.records.load():
            item = from_state(record.vhost, record.state)
            if isinstance(item, Topic):
                self.topics[(item.vhost, item.name)] = item
            elif isinstance(item, Subscription):
                self.subscriptions[item.arn] = item

    def system_connection(self, vhost: str) -> ClientConnection:
        """The broker's own connection to `vhost`, with every permission there."""
        connection = self._system.get(vhost)
        if connection is None or connection.closed:
            user = User(SYSTEM_USER, None, ("administrator",), {vhost: Permission()})
            connection = self.broker.connect(vhost, user, protocol=PROTOCOL, peer="sns")
            self._system[vhost] = connection
        return connection

    async def durable(self) -> None:
        """Return once every write queued so far is on disk. Raises the store's error."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def written(error: BaseException | None) -> None:
            if not done.done():
                if error is not None:
                    done.set_exception(error)
                else:
                    done.set_result(None)

        self.broker.ordered_replies().send(written, stored=True, removals=False)
        await done

    @contextmanager
    def system_session(self, vhost: str) -> Iterator[Session]:
        """A short session of the broker's own connection, for publishing."""
        connection = self.system_connection(vhost)
        session = connection.open_session(PublishOnly())
        try:
            yield session
        finally:
            connection.close_session(session)

    def close(self) -> None:
        """Close the broker's own SNS connections (their sessions end with them)."""
        for connection in self._system.values():
            connection.close()
        self._system.clear()

    # -- topics -------------------------------------------------------------------------

    def topic(self, vhost: str, name: str) -> Topic | None:
        """The topic `name` of `vhost`, or None (also when its exchange was deleted)."""
        topic = self.topics.get((vhost, name))
        if topic is None:
            return None
        if self.vhost(vhost).find_exchange(name) is None:  # deleted behind SNS's back (AMQP)
            self.delete_topic(topic)
            return None
        return topic

    def add_topic(self, topic: Topic) -> None:
        """Remember a topic whose exchange the caller has declared, and store it."""
        self.topics[(topic.vhost, topic.name)] = topic
        self.save(topic)

    def delete_topic(self, topic: Topic) -> None:
        """Forget a topic and its subscriptions (the caller deletes the exchange)."""
        for sub in list(self.subscriptions_of(topic)):
            self.remove_subscription(sub)
        self.topics.pop((topic.vhost, topic.name), None)
        self.records.delete(topic.vhost, topic.arn)

    def save(self, item: Topic | Subscription) -> None:
        """Write a topic's or subscription's state to the store."""
        self.records.put(item.vhost, item.arn, item.to_state())

    # -- subscriptions ------------------------------------------------------------------

    def subscriptions_of(self, topic: Topic) -> Iterator[Subscription]:
        """The subscriptions of a topic."""
        for sub in self.subscriptions.values():
            if sub.vhost == topic.vhost and sub.topic == topic.name:
                yield sub

    def add_subscription(
        self, topic: Topic, protocol: str, endpoint: str, owner: str, attributes: dict[str, str]
    ) -> Subscription:
        """A new subscription; one that needs no handshake (`sqs`) is confirmed at once."""
        sub = Subscription(
            topic.vhost,
            topic.name,
            str(uuid.uuid4()),
            protocol,
            endpoint,
            owner,
            confirmed=protocol == "sqs",
            attributes=attributes,
        )
        self.subscriptions[sub.arn] = sub
        self.save(sub)
        if sub.confirmed:
            self.confirm(sub)
        return sub

    def confirm(self, sub: Subscription) -> None:
        """Start deliveries: the subscription's queue exists and is bound to the topic."""
        vhost = self.vhost(sub.vhost)
        connection = self.system_connection(sub.vhost)
        topic = self.topics.get((sub.vhost, sub.topic))
        arguments = {"x-queue-type": "fifo"} if topic is not None and topic.fifo else {}
        queue, _created = vhost.declare_queue(
            sub.queue, owner=connection, durable=True, arguments=arguments
        )
        vhost.bind(vhost.lookup_exchange(sub.topic), queue, "", {})
        if not sub.confirmed:
            sub.confirmed = True
            self.save(sub)
        self.on_confirmed(sub)

    def remove_subscription(self, sub: Subscription) -> None:
        """Unsubscribe: the queue goes with whatever it still held."""
        self.subscriptions.pop(sub.arn, None)
        self.on_removed(sub)
        vhost = self.broker.find_vhost(sub.vhost)
        if vhost is not None and vhost.find_queue(sub.queue) is not None:
            vhost.delete_queue(sub.queue)
        self.records.delete(sub.vhost, sub.arn)

    def vhost(self, name: str) -> VirtualHost:
        """The vhost `name` (KeyError if it is gone: callers check that it exists)."""
        vhost = self.broker.find_vhost(name)
        if vhost is None:
            raise KeyError(name)
        return vhost
