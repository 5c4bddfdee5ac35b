"""MQTT sessions on the broker core: packets in, calls on the core, packets out.

Theory of operation
-------------------
`MQTTConnection` is one network connection. The asyncio shell (`server.py`)
drives it with `data_received(data, now)`, `handle_timer(now)`,
`set_writable(flag)` and `connection_lost()`; it writes through a `Shell` and
never touches a socket or a clock itself.

An MQTT *session* outlives its network connections, so its state lives in a
`SessionState` kept by the broker-wide `SessionRegistry` (one per `Broker`):
subscriptions, QoS 2 packet identifiers in both directions, the session
expiry and a pending will. A network connection attaches to a session after
CONNECT and detaches when it ends; a second connection with the same client
identifier takes the session over [MQTT-3.1.4-3].

Mapping onto the core (see README.md):

- each attached connection is one core `ClientConnection` with one `Session`,
  and this object is that session's `DeliverySink`;
- each MQTT session has one queue, `mqtt-subscription-<client id>qos1`, and
  each subscription is a binding of it on `amq.topic` (topic filters
  translated by `topics.filter_to_binding_key`); a shared subscription
  `$share/<group>/<filter>` is a binding of the group's queue
  `mqtt-shared-<group>-<filter>`, consumed by every member session;
- PUBLISH is `session.publish("amq.topic", Message(...))`; QoS 1 and 2 make
  the message persistent, and PUBACK/PUBREC wait for `store.when_durable`
  when the publish was written to the store;
- deliveries are matched again against the session's subscriptions, which
  decides the QoS granted, the subscription identifiers, no-local and
  retain-as-published. QoS 0 deliveries are acked to the core at once; QoS 1
  at PUBACK; QoS 2 at PUBREC (then the packet id waits for PUBCOMP in the
  session state). The client's Receive Maximum is the core session's
  prefetch, so the core never has more QoS>0 messages in flight.

MQTT-only metadata that has no AMQP property (the publisher's client id for
no-local, the RETAIN flag for retain-as-published, the absolute expiry) rides
on the message as annotations (`message.annotations`, stored with it).

Persistence: a persistent session's state (protocol version, expiry,
subscriptions with their options and identifiers, QoS 2 packet ids in both
directions, when it was left) is written to the store with `put_session`
whenever it changes, and read back by `SessionRegistry.recover` when the
first listener starts; its queue and messages are the core's durable queue.
Retained messages are stored with `put_retained` (their own body). A PUBREC
or PUBCOMP that follows a session change is sent only after the store has
it, so QoS 2 exactly-once holds across a broker restart.

Ordering constraints:
- SUBACK is written before retained messages are put into the session's
  queue, so they reach the client after it.
- A PUBACK/PUBREC that must wait for the store makes every later one wait
  too (`_deferred`), so acknowledgements keep the order of the publishes.
- On takeover the old connection releases its core connection (requeueing
  its unacked deliveries) before the new one starts consuming.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import json
import logging
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from moorage.broker import __version__
from moorage.broker.auth import Permission, User
from moorage.broker.broker import Broker
from moorage.broker.connection import ClientConnection
from moorage.broker.errors import AccessRefused, BrokerError, NotFound
from moorage.broker.message import EXPIRES_AT_ANNOTATION, PERSISTENT, Message, Properties
from moorage.broker.serialization import decode_message, encode_message
from moorage.broker.session import Session
from moorage.protocols.mqtt.codec import (
    MQTT_5,
    NEED_DATA,
    Auth,
    ConnAck,
    Connect,
    Connection,
    ConnectionClosed,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    ProtocolError,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
    encode_publish_fast,
)
from moorage.protocols.mqtt.codec import Properties as MQTTProperties
from moorage.protocols.mqtt.topics import (
    filter_to_binding_key,
    matches,
    routing_key_to_topic,
    split_shared,
    topic_to_routing_key,
)
from moorage.protocols.tcp import Shell
from moorage.storage import StoreError

log = logging.getLogger("moorage.mqtt")

EXCHANGE = "amq.topic"
DEFAULT_VHOST = "/"
SESSION_NEVER_EXPIRES = 0xFFFFFFFF
SERVER_RECEIVE_MAXIMUM = 1024
TOPIC_ALIAS_MAXIMUM = 64
MAX_PACKET_SIZE = 268_435_460  # the protocol's own limit
QOS_HEADER = "x-mqtt-publish-qos"  # as RabbitMQ names it
CORRELATION_HEADER = "x-mqtt-correlation-data"  # correlation data that is not UTF-8
SESSION_CONSUMER = "mqtt-session"
SHARED_CONSUMER_PREFIX = "mqtt-shared:"
STORE_PROTOCOL = "mqtt"  # the `protocol` of our Store sessions
DEAD_LETTER_EXCHANGE = "mqtt.dead-letter"  # where a full session queue's oldest message goes
DEAD_LETTER_COUNTER = "mqtt-dead-letter-counter"  # transient queue counting them
INTERNAL_USER = "mqtt-internal"
ANN_PUBLISHER = "mqtt.publisher"
ANN_RETAIN = "mqtt.retain"
ANN_PAYLOAD_FORMAT = "mqtt.payload-format"
ANN_RETAINED_COPY = "mqtt.retained-copy"


# -- message annotations -------------------------------------------------------------------


@dataclass(slots=True)
class Annotation:
    """MQTT facts about a message that no AMQP property carries."""

    publisher: str | None = None  # client id, for no-local [MQTT-3.8.3-3]
    retain: bool = False  # the RETAIN flag as published, for retain-as-published
    expires_at: float | None = None  # wall-clock seconds, for the message expiry interval
    payload_format: int | None = None
    retained_copy: bool = False  # sent from the retained store: RETAIN=1 [MQTT-3.3.1-8]


def annotation(message: Message) -> Annotation | None:
    """The MQTT facts in a message's annotations (None when it has none)."""
    a = message.annotations
    if not a:
        return None
    expires_at = a.get(EXPIRES_AT_ANNOTATION)
    payload_format = a.get(ANN_PAYLOAD_FORMAT)
    return Annotation(
        publisher=a.get(ANN_PUBLISHER),
        retain=bool(a.get(ANN_RETAIN, False)),
        expires_at=float(expires_at) if isinstance(expires_at, int | float) else None,
        payload_format=payload_format if isinstance(payload_format, int) else None,
        retained_copy=bool(a.get(ANN_RETAINED_COPY, False)),
    )


def _annotate(message: Message, note: Annotation) -> Message:
    """Write `note` into the message's annotations (only what differs from the default)."""
    a: dict[str, Any] = {}
    if note.publisher is not None:
        a[ANN_PUBLISHER] = note.publisher
    if note.retain:
        a[ANN_RETAIN] = True
    if note.expires_at is not None:
        a[EXPIRES_AT_ANNOTATION] = float(note.expires_at)  # every queue honours it
    if note.payload_format is not None:
        a[ANN_PAYLOAD_FORMAT] = note.payload_format
    if note.retained_copy:
        a[ANN_RETAINED_COPY] = True
    message.annotations = a
    return message


# -- session state -------------------------------------------------------------------------


@dataclass(slots=True)
class SubscriptionState:
    options: Subscription
    identifier: int | None
    group: str | None  # shared subscription group, or None
    topic_filter: str  # without the $share/group/ prefix


@dataclass(slots=True)
class PendingWill:
    will: Will
    user: Any
    vhost: str
    client_id: str
    timer: Any = None


@dataclass(eq=False)
class SessionState:
    """What survives a client's disconnect (section 4.1)."""

    vhost: str
    client_id: str
    expiry_interval: int = 0
    subscriptions: dict[str, SubscriptionState] = field(default_factory=dict)
    incoming_qos2: set[int] = field(default_factory=set)  # PUBREC sent, PUBREL awaited
    outgoing_pubrel: set[int] = field(default_factory=set)  # PUBREL sent, PUBCOMP awaited
    owner: MQTTConnection | None = None
    expiry_timer: Any = None
    will: PendingWill | None = None
    queue_declared: bool = False
    version: int = 4
    saved: bool = False  # a record of it is in the store
    disconnected_at: float | None = None  # wall clock, while no connection owns it

    @property
    def queue_name(self) -> str:
        return f"mqtt-subscription-{self.client_id}qos1"

    @property
    def persistent(self) -> bool:
        return self.expiry_interval != 0

    def encode(self) -> bytes:
        """The state kept in the store (JSON; pending wills are not kept)."""
        return json.dumps(
            {
                "version": self.version,
                "expiry": self.expiry_interval,
                "disconnected_at": self.disconnected_at,
                "subscriptions": [
                    [
                        name,
                        sub.options.qos,
                        sub.options.no_local,
                        sub.options.retain_as_published,
                        sub.options.retain_handling,
                        sub.identifier,
                    ]
                    for name, sub in self.subscriptions.items()
                ],
                "incoming_qos2": sorted(self.incoming_qos2),
                "outgoing_pubrel": sorted(self.outgoing_pubrel),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, vhost: str, client_id: str, data: bytes) -> SessionState:
        """Inverse of `encode`. Raises ValueError (or KeyError/TypeError) on a bad record."""
        d = json.loads(data)
        state = cls(vhost, client_id, int(d["expiry"]), version=int(d["version"]))
        state.disconnected_at = d.get("disconnected_at")
        for name, qos, no_local, rap, rh, identifier in d["subscriptions"]:
            group, topic_filter = split_shared(name)
            options = Subscription(name, int(qos), bool(no_local), bool(rap), int(rh))
            state.subscriptions[name] = SubscriptionState(options, identifier, group, topic_filter)
        state.incoming_qos2 = {int(i) for i in d["incoming_qos2"]}
        state.outgoing_pubrel = {int(i) for i in d["outgoing_pubrel"]}
        return state


@dataclass(slots=True)
class RetainedMessage:
    topic: str
    message: Message
    qos: int
    store_id: int = 0  # its body in the store (0: not stored, e.g. $SYS)


@dataclass(slots=True)
class Statistics:
    """Broker-wide MQTT counters, published under $SYS/broker/."""

    received: int = 0  # PUBLISH packets from clients
    sent: int = 0  # PUBLISH packets to clients
    dead_lettered: int = 0  # dropped by a session queue's limit (dead-lettered)


class SessionRegistry:
    """Every MQTT session and retained message of one broker (in memory for now)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.sessions: dict[tuple[str, str], SessionState] = {}
        self.shared_members: dict[tuple[str, str], set[SessionState]] = {}  # (vhost, queue)
        self.retained: dict[tuple[str, str], RetainedMessage] = {}
        self.call_later: Callable[[float, Callable[[], None]], Any] | None = None
        self.clock: Callable[[], float] = time.time
        self.stats = Statistics()
        self.started_at = time.time()
        self.recovered = False
        self._sys_timer: Any = None
        self._internal: dict[str, ClientConnection] = {}  # vhost -> dead-letter counter

    def schedule(self, delay: float, callback: Callable[[], None]) -> Any:
        if self.call_later is None:
            raise RuntimeError("SessionRegistry has no timer (started outside a listener)")
        return self.call_later(delay, callback)

    # -- retained messages -------------------------------------------------------------

    def retain(
        self, vhost: str, topic: str, message: Message, qos: int, *, persist: bool = True
    ) -> bool:
        """Keep (or with an empty payload, clear) a topic's retained message [MQTT-3.3.1-5..7].

        The message is written to the store (its own body, `put_retained`)
        unless `persist` is False. Returns True when something was queued to
        the store, so that a PUBACK/PUBREC must wait for `when_durable`.
        """
        store = self.broker.store
        key = (vhost, topic)
        if not message.body:
            old = self.retained.pop(key, None)
            if old is not None and old.store_id:
                store.delete_retained(vhost, topic)
                return True
            return False
        item = RetainedMessage(topic, message, qos)
        self.retained[key] = item
        if not persist:
            return False
        copy = message.copy()
        item.store_id = self.broker.next_message_id()
        data = encode_message(copy)
        store.put_message(item.store_id, data)
        store.put_retained(vhost, topic, item.store_id)
        self.broker.flow.wrote(len(data))
        return True

    def retained_for(self, vhost: str, topic_filter: str) -> list[RetainedMessage]:
        now = self.clock()
        found = []
        for (v, topic), item in list(self.retained.items()):
            if v != vhost or not matches(topic_filter, topic):
                continue
            note = annotation(item.message)
            if note is not None and note.expires_at is not None and note.expires_at <= now:
                del self.retained[(v, topic)]  # [MQTT-3.3.2-5]
                if item.store_id:
                    self.broker.store.delete_retained(v, topic)
                continue
            found.append(item)
        return found

    # -- session lifetime ----------------------------------------------------------------

    def end_session(self, state: SessionState) -> None:
        """The session is over: drop its queue and shared memberships, send a pending will."""
        if self.sessions.get((state.vhost, state.client_id)) is state:
            del self.sessions[(state.vhost, state.client_id)]
        if state.expiry_timer is not None:
            state.expiry_timer.cancel()
            state.expiry_timer = None
        if state.saved:
            state.saved = False
            self.broker.store.delete_session(state.vhost, STORE_PROTOCOL, state.client_id)
        vhost = self.broker.vhosts.get(state.vhost)
        if vhost is not None:
            for sub in state.subscriptions.values():
                if sub.group is not None:
                    self.leave_group(state, shared_queue_name(sub.group, sub.topic_filter))
            if state.queue_name in vhost.queues:
                vhost.delete_queue(state.queue_name)
        state.subscriptions.clear()
        if state.will is not None:
            self.publish_will(state)  # the session ended before the will delay [MQTT-3.1.3-9]

    def leave_group(self, state: SessionState, queue: str) -> None:
        members = self.shared_members.get((state.vhost, queue))
        if members is None:
            return
        members.discard(state)
        if not members:
            del self.shared_members[(state.vhost, queue)]
            vhost = self.broker.vhosts.get(state.vhost)
            if vhost is not None and queue in vhost.queues:
                vhost.delete_queue(queue)

    def save(self, state: SessionState) -> bool:
        """Write a persistent session's state to the store; True if something was queued."""
        if not state.persistent or self.sessions.get((state.vhost, state.client_id)) is not state:
            return False
        self.broker.store.put_session(state.vhost, STORE_PROTOCOL, state.client_id, state.encode())
        state.saved = True
        return True

    def detached(self, state: SessionState) -> None:
        """Its connection is gone: expire it now or after its expiry interval."""
        state.owner = None
        if state.expiry_interval == 0:
            self.end_session(state)
            return
        state.disconnected_at = self.clock()
        with contextlib.suppress(StoreError):  # a closed store at shutdown: nothing to do
            self.save(state)
        if state.expiry_interval != SESSION_NEVER_EXPIRES:
            state.expiry_timer = self.schedule(
                state.expiry_interval, lambda: self.end_session(state)
            )

    # -- recovery after a restart ------------------------------------------------------

    async def recover(self) -> None:
        """Read sessions and retained messages back from the store (once per broker).

        A session whose expiry passed while the broker was down (counted from
        when it was left, or from now for one that was connected when the
        broker died) is removed with its queue [MQTT-3.1.2-23].
        """
        if self.recovered:
            return
        self.recovered = True
        store = self.broker.store
        now = self.clock()
        for record in await store.load_sessions(STORE_PROTOCOL):
            try:
                state = SessionState.decode(record.vhost, record.client_id, record.state)
            except (ValueError, KeyError, TypeError) as e:
                log.warning("dropping unreadable MQTT session %r: %s", record.client_id, e)
                store.delete_session(record.vhost, STORE_PROTOCOL, record.client_id)
                continue
            state.saved = True
            self.sessions[(state.vhost, state.client_id)] = state
            for sub in state.subscriptions.values():
                if sub.group is not None:
                    queue = shared_queue_name(sub.group, sub.topic_filter)
                    self.shared_members.setdefault((state.vhost, queue), set()).add(state)
            left = state.disconnected_at if state.disconnected_at is not None else now
            if state.disconnected_at is None:
                state.disconnected_at = now
                self.save(state)
            if state.expiry_interval == SESSION_NEVER_EXPIRES:
                continue
            remaining = left + state.expiry_interval - now
            if remaining <= 0 or record.vhost not in self.broker.vhosts:
                self.end_session(state)
            else:
                state.expiry_timer = self.schedule(remaining, self._ender(state))
        for item in await store.load_retained():
            try:
                message = decode_message(item.data)
            except ValueError as e:
                log.warning("dropping unreadable retained message of %r: %s", item.topic, e)
                store.delete_retained(item.vhost, item.topic)
                continue
            self.retained[(item.vhost, item.topic)] = RetainedMessage(
                item.topic, message, published_qos(message), item.message_id
            )
        for name in self.broker.vhosts:
            self.watch_dead_letters(name)
        self.start_sys()

    def _ender(self, state: SessionState) -> Callable[[], None]:
        return lambda: self.end_session(state)

    # -- the session queue limit -------------------------------------------------------

    def session_queue_arguments(self) -> dict[str, Any]:
        """x-arguments of a persistent session's queue: the configured length limit."""
        limit = getattr(self.broker.limits, "mqtt_session_queue_limit", 0)
        if not limit:
            return {}
        return {
            "x-max-length": limit,
            "x-overflow": "drop-head",
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        }

    def watch_dead_letters(self, vhost_name: str) -> None:
        """Declare the vhost's dead-letter exchange and count what reaches it (`stats`)."""
        if vhost_name in self._internal or not getattr(
            self.broker.limits, "mqtt_session_queue_limit", 0
        ):
            return
        user = User(INTERNAL_USER, None, (), {vhost_name: Permission(".*", ".*", ".*")})
        try:
            core = self.broker.connect(vhost_name, user, protocol="mqtt", peer="internal")
        except BrokerError as e:
            log.warning("no MQTT dead-letter counter in %r: %s", vhost_name, e.text)
            return
        self._internal[vhost_name] = core
        session = core.open_session(_DeadLetterCounter(self.stats))
        session.declare_exchange(DEAD_LETTER_EXCHANGE, "topic", durable=True)
        session.declare_queue(DEAD_LETTER_COUNTER, durable=False, auto_delete=False)
        session.bind_queue(DEAD_LETTER_COUNTER, DEAD_LETTER_EXCHANGE, "#", {})
        session.consume(DEAD_LETTER_COUNTER, "count", no_ack=True).start()

    # -- $SYS ------------------------------------------------------------------------------

    def start_sys(self) -> None:
        interval = float(getattr(self.broker.limits, "mqtt_sys_interval", 0))
        if interval > 0 and self._sys_timer is None and self.call_later is not None:
            self.publish_sys()
            self._sys_timer = self.schedule(interval, self._sys_tick)

    def _sys_tick(self) -> None:
        interval = float(getattr(self.broker.limits, "mqtt_sys_interval", 0))
        self.publish_sys()
        self._sys_timer = self.schedule(interval, self._sys_tick)

    def sys_values(self) -> dict[str, str]:
        """The $SYS/broker/... topics and their current values (as Mosquitto names them)."""
        connected = sum(1 for s in self.sessions.values() if s.owner is not None)
        stats = self.stats
        return {
            "$SYS/broker/version": f"moorage {__version__}",
            "$SYS/broker/uptime": f"{int(self.clock() - self.started_at)} seconds",
            "$SYS/broker/clients/connected": str(connected),
            "$SYS/broker/clients/disconnected": str(len(self.sessions) - connected),
            "$SYS/broker/clients/total": str(len(self.sessions)),
            "$SYS/broker/messages/received": str(stats.received),
            "$SYS/broker/messages/sent": str(stats.sent),
            "$SYS/broker/publish/messages/received": str(stats.received),
            "$SYS/broker/publish/messages/sent": str(stats.sent),
            "$SYS/broker/publish/messages/dropped": str(stats.dead_lettered),
            "$SYS/broker/retained messages/count": str(len(self.retained)),
            "$SYS/broker/subscriptions/count": str(
                sum(len(s.subscriptions) for s in self.sessions.values())
            ),
        }

    def publish_sys(self) -> None:
        """Retain the $SYS values (in memory only) and send them to connected subscribers.

        They go straight to the queues of connected sessions with a matching
        subscription (not through `amq.topic`), so offline sessions and `#`
        subscribers [MQTT-4.7.2-1] do not collect them.
        """
        for vhost_name, vhost in self.broker.vhosts.items():
            owners = [
                s
                for s in self.sessions.values()
                if s.vhost == vhost_name and s.owner is not None and s.subscriptions
            ]
            for topic, value in self.sys_values().items():
                message = Message(
                    EXCHANGE,
                    topic_to_routing_key(topic),
                    Properties(headers={QOS_HEADER: 0}, delivery_mode=1),
                    value.encode(),
                )
                _annotate(message, Annotation(retain=True))
                self.retain(vhost_name, topic, message, 0, persist=False)
                for state in owners:
                    if not any(
                        s.group is None and matches(s.topic_filter, topic)
                        for s in state.subscriptions.values()
                    ):
                        continue
                    queue = vhost.queues.get(state.queue_name)
                    if queue is not None:
                        queue.publish(message)

    def close(self) -> None:
        """Stop the $SYS timer and the internal connections (broker shutdown)."""
        if self._sys_timer is not None:
            self._sys_timer.cancel()
            self._sys_timer = None
        for core in self._internal.values():
            core.close()
        self._internal.clear()

    def schedule_will(self, state: SessionState, pending: PendingWill) -> None:
        """Publish a will now, or after its delay unless the session is resumed first."""
        delay = pending.will.properties.will_delay_interval or 0
        if delay and state.expiry_interval:
            state.will = pending
            pending.timer = self.schedule(
                min(delay, state.expiry_interval), lambda: self.publish_will(state)
            )
        else:
            state.will = pending
            self.publish_will(state)

    def publish_will(self, state: SessionState) -> None:
        pending, state.will = state.will, None
        if pending is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        try:
            core = self.broker.connect(
                pending.vhost, pending.user, protocol="mqtt", peer=f"will:{pending.client_id}"
            )
        except BrokerError as e:
            log.info("will of %s not published: %s", pending.client_id, e.text)
            return
        try:
            session = core.open_session(_NullSink())
            will = pending.will
            publish = Publish(will.topic, will.payload, will.qos, will.retain, False, None)
            publish.properties = will.properties
            message = to_message(publish, pending.client_id, self.clock())
            if will.retain:
                self.retain(pending.vhost, will.topic, message, will.qos)
            session.publish(EXCHANGE, message)
        except BrokerError as e:
            log.info("will of %s not published: %s", pending.client_id, e.text)
        finally:
            core.close()


class _DeadLetterCounter:
    """Counts what the session queues' length limit dead-lettered (reason maxlen)."""

    def __init__(self, stats: Statistics) -> None:
        self.stats = stats

    def deliver(self, consumer_tag: str, delivery_tag: int, redelivered: bool, m: Message) -> None:
        if m.header("x-last-death-reason") == "maxlen":
            self.stats.dead_lettered += 1

    def returned(self, message: Message, reply_code: int, reply_text: str) -> None:
        pass

    def cancelled(self, consumer_tag: str, error: BrokerError | None) -> None:
        pass


class _NullSink:
    def deliver(self, consumer_tag: str, delivery_tag: int, redelivered: bool, m: Message) -> None:
        pass

    def returned(self, message: Message, reply_code: int, reply_text: str) -> None:
        pass

    def cancelled(self, consumer_tag: str, error: BrokerError | None) -> None:
        pass


_registries: weakref.WeakKeyDictionary[Broker, SessionRegistry] = weakref.WeakKeyDictionary()


def registry_for(broker: Broker) -> SessionRegistry:
    """The one session registry of `broker` (shared by every MQTT listener)."""
    reg = _registries.get(broker)
    if reg is None:
        reg = _registries[broker] = SessionRegistry(broker)
    return reg


def shared_queue_name(group: str, topic_filter: str) -> str:
    return f"mqtt-shared-{group}-{topic_filter}"


# -- message mapping -------------------------------------------------------------------------


def to_message(packet: Publish, client_id: str | None, now: float) -> Message:
    """An MQTT PUBLISH as a core message (README.md, "Message mapping")."""
    p = packet.properties
    headers: dict[str, Any] = dict(p.user_property) if p.user_property else {}
    headers[QOS_HEADER] = packet.qos
    correlation_id = None
    if p.correlation_data is not None:
        try:
            correlation_id = p.correlation_data.decode("utf-8")
        except UnicodeDecodeError:
            headers[CORRELATION_HEADER] = p.correlation_data
        else:
            if len(correlation_id) > 255:
                correlation_id = None
                headers[CORRELATION_HEADER] = p.correlation_data
    expiry = p.message_expiry_interval
    props = Properties(
        content_type=p.content_type,
        headers=headers,
        delivery_mode=PERSISTENT if packet.qos else 1,
        correlation_id=correlation_id,
        reply_to=p.response_topic,
        expiration=str(expiry * 1000) if expiry is not None else None,
    )
    # What `_annotate(message, Annotation(...))` writes, without the Annotation.
    a: dict[str, Any] = {}
    if client_id is not None:
        a[ANN_PUBLISHER] = client_id
    if packet.retain:
        a[ANN_RETAIN] = True
    if expiry is not None:
        a[EXPIRES_AT_ANNOTATION] = float(now + expiry)
    if p.payload_format_indicator is not None:
        a[ANN_PAYLOAD_FORMAT] = p.payload_format_indicator
    return Message(
        EXCHANGE, topic_to_routing_key(packet.topic), props, packet.payload, annotations=a
    )


def _header_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def publish_properties(message: Message, remaining_expiry: int | None) -> MQTTProperties:
    """MQTT 5 PUBLISH properties for a core message (any protocol published it)."""
    p = message.properties
    out = MQTTProperties(content_type=p.content_type, response_topic=p.reply_to)
    note = annotation(message)
    if note is not None:
        out.payload_format_indicator = note.payload_format
    if p.correlation_id is not None:
        out.correlation_data = p.correlation_id.encode()
    for name, value in (p.headers or {}).items():
        if name == CORRELATION_HEADER and isinstance(value, bytes):
            out.correlation_data = value
        elif name != QOS_HEADER and isinstance(value, str | bytes | int | float | bool):
            out.user_property.append((name, _header_text(value)))
    out.message_expiry_interval = remaining_expiry
    return out


def published_qos(message: Message) -> int:
    """The QoS a message was published with; AMQP messages: persistent = 1 (as RabbitMQ)."""
    headers = message.properties.headers
    if headers:
        qos = headers.get(QOS_HEADER)
        if isinstance(qos, int) and 0 <= qos <= 2:
            return qos
    return 1 if message.persistent else 0


# -- the connection ---------------------------------------------------------------------------

# `Message.wire_cache` keys of an encoded QoS 0 PUBLISH, per (3.x version, retain).
_QOS0_CACHE_KEYS = {
    (version, retain): f"mqtt-publish-{version}-{int(retain)}"
    for version in (3, 4)
    for retain in (False, True)
}


class State(enum.Enum):
    CONNECT = "connect"  # waiting for CONNECT
    CONNECTED = "connected"
    CLOSED = "closed"


class MQTTConnection:
    """The MQTT state machine of one network connection; the DeliverySink of its session."""

    def __init__(self, broker: Broker, shell: Shell, now: float) -> None:
        self.broker = broker
        self.shell = shell
        self.registry = registry_for(broker)
        limits = broker.limits
        self.max_packet_size = min(MAX_PACKET_SIZE, limits.max_message_size + 65536)
        self.codec = Connection(max_packet_size=self.max_packet_size)
        self.state = State.CONNECT
        self.version = 4
        self.client_id = ""
        self.keep_alive = 0
        self.core: ClientConnection | None = None
        self.session: Session | None = None
        self.mqtt: SessionState | None = None
        self.user: Any = None
        self.vhost = DEFAULT_VHOST
        self.will: Will | None = None
        self.client_receive_maximum = 65535
        self.client_max_packet_size = MAX_PACKET_SIZE
        self.topic_aliases: dict[int, str] = {}
        self.inflight: dict[int, int] = {}  # outgoing packet id -> core delivery tag
        self.incoming_unacked = 0  # QoS 1 publishes whose PUBACK waits for the store
        self._packet_ids = itertools.cycle(range(1, 65536))
        self._deferred = 0
        self._now = now
        self._last_recv = now
        self._deadline = now + limits.handshake_timeout
        self.writable = True

    # -- driven by the shell -----------------------------------------------------------

    def data_received(self, data: bytes, now: float) -> None:
        """Feed bytes from the socket; handle every complete packet in order."""
        if self.state is State.CLOSED:
            return
        self._now = self._last_recv = now
        if self.state is State.CONNECTED and self.keep_alive:
            self._deadline = now + self.keep_alive * 1.5  # [MQTT-3.1.2-24]
        self.codec.receive_data(data)
        next_event = self.codec.next_event
        try:
            while not self.closed:
                event = next_event()
                if event is NEED_DATA:
                    break
                if isinstance(event, ConnectionClosed):
                    self._close(publish_will=True)
                    break
                self._handle(event)
        except ProtocolError as e:
            self._protocol_error(e)

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def publisher(self) -> bool:
        """Has this client published? (The memory alarm pauses only publishers.)"""
        return self.core is not None and self.core.published

    def peer_held(self, now: float) -> None:
        """The shell is not reading us (flow control): its silence is no missed keep-alive."""
        self._last_recv = now

    def next_deadline(self) -> float:
        """When `handle_timer` must run next (loop time; inf = never)."""
        return self._deadline

    def handle_timer(self, now: float) -> None:
        """The CONNECT timeout and keep-alive (1.5 x Keep Alive, [MQTT-3.1.2-24])."""
        if self.state is State.CLOSED:
            return
        self._now = now
        if now < self._deadline:
            return
        if self.state is State.CONNECT:
            log.info("closing %s: no CONNECT in time", self.shell.peer)
            self._close(publish_will=False)
        else:
            log.info("closing %s (%s): keep-alive timeout", self.shell.peer, self.client_id)
            self._disconnect(ReasonCode.KEEP_ALIVE_TIMEOUT, publish_will=True)

    def set_writable(self, writable: bool) -> None:
        """Transport back-pressure: stop deliveries while the write buffer is full."""
        self.writable = writable
        if self.session is not None:
            self.session.set_flow(writable)

    def connection_lost(self) -> None:
        """The socket is gone (without DISCONNECT unless we already closed)."""
        if self.state is not State.CLOSED:
            self._close(publish_will=True)

    def shutdown(self, reason: str = "shutdown") -> None:
        """Broker shutdown: DISCONNECT 0x8B (5.0) and close; session state is kept."""
        if self.state is State.CONNECTED:
            self._disconnect(ReasonCode.SERVER_SHUTTING_DOWN, publish_will=False)
        elif self.state is State.CONNECT:
            self._close(publish_will=False)

    def taken_over(self) -> None:
        """Another connection with our client id arrived [MQTT-3.1.4-3]."""
        if self.state is State.CONNECTED:
            self._disconnect(ReasonCode.SESSION_TAKEN_OVER, publish_will=True, keep_session=True)

    # -- output --------------------------------------------------------------------------

    def send(self, packet: Packet) -> None:
        self.shell.send(self.codec.send(packet))

    def _protocol_error(self, error: ProtocolError) -> None:
        """The one place codec errors meet the wire (DESIGN.md, "Errors at the boundary")."""
        log.info("closing MQTT connection %s: %s", self.shell.peer, error)
        if self.state is State.CONNECT:
            reason = error.reason
            if reason == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION:
                self.codec.version = 4  # [MQTT-3.1.2-2]: return code 1 in a 3.1.1 CONNACK
                self.send(ConnAck(reason_code=reason))
            elif self.codec.version == MQTT_5 and error.in_connect:
                self.send(ConnAck(reason_code=reason))  # [MQTT-4.13.1-1]
            self._close(publish_will=False)
        else:
            self._disconnect(error.reason, publish_will=True)

    def _disconnect(
        self, reason: int, *, publish_will: bool, keep_session: bool = False, text: str = ""
    ) -> None:
        """Send DISCONNECT with a reason code (5.0 only [MQTT-4.13.1-1]) and close."""
        if self.version == MQTT_5 and self.state is State.CONNECTED:
            props = MQTTProperties(reason_string=text or None)
            self.send(Disconnect(reason, props))
        self._close(publish_will=publish_will, keep_session=keep_session)

    def _close(self, *, publish_will: bool, keep_session: bool = False) -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        if self.core is not None:
            self.core.close()  # requeues unacked deliveries
            self.core = None
            self.session = None
        state = self.mqtt
        if state is not None and state.owner is self:
            state.owner = None
            if self.will is not None and publish_will:
                self.registry.schedule_will(
                    state, PendingWill(self.will, self.user, self.vhost, self.client_id)
                )
            if not keep_session:
                self.registry.detached(state)
        self.shell.close()

    # -- dispatch --------------------------------------------------------------------------

    def _handle(self, packet: Packet) -> None:
        if isinstance(packet, Publish):
            self._on_publish(packet)
        elif isinstance(packet, PubAck):
            self._on_puback(packet)
        elif isinstance(packet, PubRec):
            self._on_pubrec(packet)
        elif isinstance(packet, PubRel):
            self._on_pubrel(packet)
        elif isinstance(packet, PubComp):
            self._on_pubcomp(packet)
        elif isinstance(packet, Subscribe):
            self._on_subscribe(packet)
        elif isinstance(packet, Unsubscribe):
            self._on_unsubscribe(packet)
        elif isinstance(packet, PingReq):
            self.send(PingResp())  # [MQTT-3.12.4-1]
        elif isinstance(packet, Disconnect):
            self._on_disconnect(packet)
        elif isinstance(packet, Connect):
            self._on_connect(packet)
        elif isinstance(packet, Auth):
            # no enhanced authentication methods are offered [MQTT-4.12.0-1]
            self._disconnect(ReasonCode.PROTOCOL_ERROR, publish_will=True)

    # -- CONNECT -----------------------------------------------------------------------------

    def _refuse(self, reason: ReasonCode, text: str) -> None:
        log.info("refusing MQTT connection from %s: %s", self.shell.peer, text)
        props = MQTTProperties(reason_string=text) if self.version == MQTT_5 else MQTTProperties()
        self.send(ConnAck(reason_code=reason, properties=props))
        self._close(publish_will=False)

    def _authenticate(self, packet: Connect) -> bool:
        # No user name means no credentials, even with a password (MQTT 5 allows
        # that): the core's anonymous rule decides, never a built-in default user.
        username, password = packet.username, packet.password
        password_text = (password or b"").decode("utf-8", "replace")
        if username is not None and ":" in username:  # RabbitMQ's "vhost:username" form
            self.vhost, username = username.split(":", 1)
        try:
            self.user = self.broker.authenticate(
                username, password_text, from_loopback=self.shell.from_loopback
            )
        except AccessRefused as e:
            # Mosquitto answers an anonymous client it refuses with "not authorised"
            # (its test 01-connect-anon-denied), and bad credentials with code 4 / 0x86.
            reason = (
                ReasonCode.NOT_AUTHORIZED
                if username is None
                else ReasonCode.BAD_USER_NAME_OR_PASSWORD
            )
            self._refuse(reason, e.text)
            return False
        try:
            self.core = self.broker.connect(
                self.vhost,
                self.user,
                protocol="mqtt",
                peer=self.shell.peer,
                client_properties={
                    "client_id": packet.client_id,
                    "version": packet.protocol_version,
                },
            )
        except BrokerError as e:
            self._refuse(ReasonCode.NOT_AUTHORIZED, e.text)
            return False
        return True

    def _on_connect(self, packet: Connect) -> None:  # noqa: C901 - section 3.1.4 in order
        self.version = packet.protocol_version
        v5 = self.version == MQTT_5
        props = packet.properties
        client_id = packet.client_id
        assigned = None
        if not client_id:
            if not packet.clean_start and not v5:
                # [MQTT-3.1.3-8]: zero-length id needs clean session in 3.1.1
                self._refuse(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "empty client id")
                return
            client_id = assigned = f"moorage-{uuid.uuid4().hex}"  # [MQTT-3.1.3-6]
        if not self._authenticate(packet):
            return
        self.client_id = client_id
        self.keep_alive = packet.keep_alive
        self.will = packet.will
        if v5:
            self.client_receive_maximum = props.receive_maximum or 65535
            self.client_max_packet_size = props.maximum_packet_size or MAX_PACKET_SIZE
            expiry = props.session_expiry_interval or 0
        else:
            expiry = 0 if packet.clean_start else SESSION_NEVER_EXPIRES
        if self.will is not None:
            try:  # the will is published as this user later [MQTT-3.1.2-7]
                self.user.check(self.vhost, "write", EXCHANGE, "exchange")
            except AccessRefused as e:
                self._refuse(ReasonCode.NOT_AUTHORIZED, e.text)
                return

        registry = self.registry
        key = (self.vhost, client_id)
        state = registry.sessions.get(key)
        if state is not None and state.owner is not None:
            state.owner.taken_over()
        if state is not None and packet.clean_start:
            registry.end_session(state)  # [MQTT-3.1.2-4]
            state = None
        session_present = state is not None
        if state is None:
            state = registry.sessions[key] = SessionState(self.vhost, client_id)
        else:
            if state.expiry_timer is not None:
                state.expiry_timer.cancel()
                state.expiry_timer = None
            if state.will is not None:
                if state.will.timer is not None:
                    state.will.timer.cancel()
                state.will = None  # resumed before the will delay [MQTT-3.1.3-9]
        state.expiry_interval = expiry
        state.version = self.version
        state.owner = self
        state.disconnected_at = None
        self.mqtt = state
        registry.save(state)
        self.state = State.CONNECTED
        if self.keep_alive:
            self._deadline = self._now + self.keep_alive * 1.5
        else:
            self._deadline = float("inf")

        connack_props = MQTTProperties()
        if v5:
            connack_props = MQTTProperties(
                assigned_client_identifier=assigned,
                receive_maximum=SERVER_RECEIVE_MAXIMUM,
                topic_alias_maximum=TOPIC_ALIAS_MAXIMUM,
                maximum_packet_size=self.max_packet_size,
                maximum_qos=None,  # QoS 2 is supported
                retain_available=1,
            )
        # [MQTT-3.2.2-2], [MQTT-3.2.2-3]: session present only when resumed
        self.send(ConnAck(session_present, ReasonCode.SUCCESS, connack_props))
        session = self.core_session()
        session.qos(self.client_receive_maximum, global_=True)  # [MQTT-3.3.4-9]
        for packet_id in sorted(state.outgoing_pubrel):
            self.send(PubRel(packet_id))  # [MQTT-4.4.0-1]: resend PUBREL on resume
        self._resume_consumers(state)

    def core_session(self) -> Session:
        if self.session is None:
            assert self.core is not None
            self.session = self.core.open_session(self)
        return self.session

    def _resume_consumers(self, state: SessionState) -> None:
        """Start consuming the session queue and every shared group queue it belongs to."""
        if any(s.group is None for s in state.subscriptions.values()):
            self._ensure_queue(state)
        for sub in state.subscriptions.values():
            if sub.group is not None:
                self._consume(shared_queue_name(sub.group, sub.topic_filter))

    def _ensure_queue(self, state: SessionState) -> None:
        session = self.core_session()
        persistent = state.persistent
        vhost = session.vhost
        existing = vhost.queues.get(state.queue_name)
        if existing is None:
            arguments: dict[str, Any] = {}
            if persistent:
                arguments = self.registry.session_queue_arguments()
                if arguments:
                    self.registry.watch_dead_letters(self.vhost)
            session.declare_queue(
                state.queue_name,
                durable=persistent,
                exclusive=False,
                auto_delete=False,
                arguments=arguments,
            )
        if SESSION_CONSUMER not in session.consumers:
            self._consume(state.queue_name, SESSION_CONSUMER)

    def _consume(self, queue: str, tag: str | None = None) -> None:
        session = self.core_session()
        tag = tag or SHARED_CONSUMER_PREFIX + queue
        if tag in session.consumers:
            return
        consumer = session.consume(queue, tag)
        consumer.start()

    # -- PUBLISH from the client ---------------------------------------------------------------

    def _on_publish(self, packet: Publish) -> None:
        v5 = self.version == MQTT_5
        props = packet.properties
        alias = props.topic_alias
        if alias is not None:
            if alias > TOPIC_ALIAS_MAXIMUM:
                self._disconnect(
                    ReasonCode.TOPIC_ALIAS_INVALID, publish_will=True
                )  # [MQTT-3.3.2-9]
                return
            if packet.topic:
                self.topic_aliases[alias] = packet.topic  # [MQTT-3.3.2-12]
            else:
                topic = self.topic_aliases.get(alias)
                if topic is None:
                    self._disconnect(ReasonCode.PROTOCOL_ERROR, publish_will=True)
                    return
                packet.topic = topic
            props.topic_alias = None
        state = self.mqtt
        assert state is not None
        qos, packet_id = packet.qos, packet.packet_id
        if qos == 2 and packet_id in state.incoming_qos2:
            self._ack_publish(packet, ReasonCode.SUCCESS, stored=False)  # duplicate: no re-route
            return
        if qos and self._inflight_in() >= SERVER_RECEIVE_MAXIMUM and v5:
            self._disconnect(ReasonCode.RECEIVE_MAXIMUM_EXCEEDED, publish_will=True)
            return
        self.registry.stats.received += 1
        message = to_message(packet, self.client_id, self.registry.clock())
        session = self.core_session()
        try:
            stored = session.publish(EXCHANGE, message).stored
        except AccessRefused as e:
            log.info("publish to %r by %s refused: %s", packet.topic, self.client_id, e.text)
            if not v5:
                self._close(publish_will=True)  # 3.1.1 has no way to say no [RabbitMQ]
            elif qos:
                self._ack_publish(packet, ReasonCode.NOT_AUTHORIZED, stored=False)
            return
        except BrokerError as e:
            self._disconnect(
                ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR, publish_will=True, text=e.text
            )
            return
        if packet.retain and self.registry.retain(self.vhost, packet.topic, message, qos):
            stored = True  # PUBACK/PUBREC once the retained message is on disk
        if qos == 2:
            state.incoming_qos2.add(packet_id)  # type: ignore[arg-type]
            if self.registry.save(state):
                stored = True  # PUBREC sent => the packet id survives a restart
        if qos:
            self._ack_publish(packet, ReasonCode.SUCCESS, stored=stored)

    def _inflight_in(self) -> int:
        assert self.mqtt is not None
        return self.incoming_unacked + len(self.mqtt.incoming_qos2)

    def _ack_publish(self, packet: Publish, reason: ReasonCode, *, stored: bool) -> None:
        """PUBACK (QoS 1) or PUBREC (QoS 2), after the store has the message [DESIGN.md]."""
        pid = packet.packet_id or 0
        if reason >= 0x80 and packet.qos == 2 and self.mqtt is not None:
            self.mqtt.incoming_qos2.discard(pid)
        ack: Packet = PubAck(pid, reason) if packet.qos == 1 else PubRec(pid, reason)
        if not stored and not self._deferred:
            if packet.qos == 1 and reason == ReasonCode.SUCCESS and self.codec.version != MQTT_5:
                self.shell.send(b"\x40\x02" + pid.to_bytes(2, "big"))  # == encode(ack)
            else:
                self.send(ack)
            return
        self._deferred += 1
        self.incoming_unacked += packet.qos == 1

        def send(error: BaseException | None) -> None:
            self._deferred -= 1
            self.incoming_unacked -= packet.qos == 1
            if self.state is not State.CONNECTED:
                return
            if error is not None:
                self._disconnect(ReasonCode.UNSPECIFIED_ERROR, publish_will=True)
                return
            self.send(ack)

        # PUBACK/PUBREC promise the message is safe, not that earlier acks are.
        self.broker.store.when_durable(send, removals=False)

    def _on_pubrel(self, packet: PubRel) -> None:
        state = self.mqtt
        assert state is not None
        saved = False
        if packet.packet_id in state.incoming_qos2:
            state.incoming_qos2.discard(packet.packet_id)
            saved = self.registry.save(state)
            reason = ReasonCode.SUCCESS
        else:
            reason = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND  # [MQTT-4.3.3-12]
        comp = PubComp(packet.packet_id, reason)
        # PUBCOMP only once the store forgot the packet id: else a restart
        # would take a new PUBLISH reusing it for a duplicate
        if self._deferred or saved:
            self._deferred += 1

            def send(_error: BaseException | None) -> None:
                self._deferred -= 1
                if self.state is State.CONNECTED:
                    self.send(comp)

            self.broker.store.when_durable(send)
        else:
            self.send(comp)

    # -- acknowledgements of our deliveries ----------------------------------------------------

    def _settle(self, packet_id: int) -> bool:
        tag = self.inflight.pop(packet_id, None)
        if tag is None or self.session is None:
            return False
        with contextlib.suppress(BrokerError):
            self.session.ack(tag)
        return True

    def _on_puback(self, packet: PubAck) -> None:
        self._settle(packet.packet_id)

    def _on_pubrec(self, packet: PubRec) -> None:
        state = self.mqtt
        assert state is not None
        known = self._settle(packet.packet_id)
        if packet.reason_code >= 0x80:
            return  # the client refused it; the exchange ends here [MQTT-4.3.3-4]
        if known or packet.packet_id in state.outgoing_pubrel:
            state.outgoing_pubrel.add(packet.packet_id)
            self.registry.save(state)
            self.send(PubRel(packet.packet_id))
        else:
            self.send(PubRel(packet.packet_id, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND))

    def _on_pubcomp(self, packet: PubComp) -> None:
        assert self.mqtt is not None
        if packet.packet_id in self.mqtt.outgoing_pubrel:
            self.mqtt.outgoing_pubrel.discard(packet.packet_id)
            self.registry.save(self.mqtt)

    # -- SUBSCRIBE / UNSUBSCRIBE ------------------------------------------------------------------

    def _on_subscribe(self, packet: Subscribe) -> None:
        state = self.mqtt
        assert state is not None
        session = self.core_session()
        v5 = self.version == MQTT_5
        identifier = packet.properties.subscription_identifier
        sub_id = identifier[0] if identifier else None
        codes: list[int] = []
        retained: list[tuple[Subscription, bool]] = []
        for sub in packet.subscriptions:
            group, topic_filter = split_shared(sub.topic_filter)
            binding = filter_to_binding_key(topic_filter)
            try:
                if group is None:
                    self._ensure_queue(state)
                    session.bind_queue(state.queue_name, EXCHANGE, binding, {})
                else:
                    queue = shared_queue_name(group, topic_filter)
                    if queue not in session.vhost.queues:
                        session.declare_queue(queue, durable=True)
                    session.bind_queue(queue, EXCHANGE, binding, {})
                    self.registry.shared_members.setdefault((self.vhost, queue), set()).add(state)
                    self._consume(queue)
            except BrokerError as e:
                log.info(
                    "subscription %r of %s refused: %s", sub.topic_filter, self.client_id, e.text
                )
                codes.append(ReasonCode.NOT_AUTHORIZED if v5 else 0x80)
                continue
            existed = sub.topic_filter in state.subscriptions
            # [MQTT-3.8.4-3]: a subscription with the same filter is replaced
            state.subscriptions[sub.topic_filter] = SubscriptionState(
                sub, sub_id, group, topic_filter
            )
            codes.append(sub.qos)  # QoS 2 is granted as asked [MQTT-3.9.3-1]
            if group is None:
                retained.append((sub, existed))
        self.registry.save(state)
        self.send(SubAck(packet.packet_id, codes))
        # retained messages go after SUBACK (section 3.3.1.3)
        for sub, existed in retained:
            if sub.retain_handling == 2 or (sub.retain_handling == 1 and existed):
                continue
            self._send_retained(state, sub)

    def _send_retained(self, state: SessionState, sub: Subscription) -> None:
        vhost = self.core_session().vhost
        queue = vhost.queues.get(state.queue_name)
        if queue is None:
            return
        for item in self.registry.retained_for(self.vhost, sub.topic_filter):
            original = item.message
            note = annotation(original) or Annotation()
            copy = Message(
                original.exchange, original.routing_key, original.properties, original.body
            )
            _annotate(
                copy,
                Annotation(
                    publisher=None,  # no-local does not apply to retained messages
                    retain=True,
                    expires_at=note.expires_at,
                    payload_format=note.payload_format,
                    retained_copy=True,
                ),
            )
            queue.publish(copy)

    def _on_unsubscribe(self, packet: Unsubscribe) -> None:
        state = self.mqtt
        assert state is not None
        session = self.core_session()
        codes: list[int] = []
        for topic_filter in packet.topic_filters:
            sub = state.subscriptions.pop(topic_filter, None)
            if sub is None:
                codes.append(ReasonCode.NO_SUBSCRIPTION_EXISTED)
                continue
            binding = filter_to_binding_key(sub.topic_filter)
            try:
                if sub.group is None:
                    if not any(
                        s.group is None and filter_to_binding_key(s.topic_filter) == binding
                        for s in state.subscriptions.values()
                    ):
                        session.unbind_queue(state.queue_name, EXCHANGE, binding, {})
                else:
                    queue = shared_queue_name(sub.group, sub.topic_filter)
                    session.cancel(SHARED_CONSUMER_PREFIX + queue)
                    self.registry.leave_group(state, queue)
            except (NotFound, AccessRefused):
                pass
            codes.append(ReasonCode.SUCCESS)
        self.registry.save(state)
        self.send(UnsubAck(packet.packet_id, codes))

    # -- DISCONNECT from the client ----------------------------------------------------------------

    def _on_disconnect(self, packet: Disconnect) -> None:
        state = self.mqtt
        expiry = packet.properties.session_expiry_interval
        if expiry is not None and state is not None:
            if state.expiry_interval == 0 and expiry != 0:
                # [MQTT-3.14.2-2]: cannot turn a non-persistent session persistent
                self._disconnect(ReasonCode.PROTOCOL_ERROR, publish_will=True)
                return
            state.expiry_interval = expiry
        # [MQTT-3.14.4-3]: a normal DISCONNECT discards the will; 0x04 asks for it
        self._close(publish_will=packet.reason_code == ReasonCode.DISCONNECT_WITH_WILL_MESSAGE)

    # -- DeliverySink ------------------------------------------------------------------------------

    def deliver(
        self, consumer_tag: str, delivery_tag: int, redelivered: bool, message: Message
    ) -> None:
        """A message for this client: match it to subscriptions, then PUBLISH it."""
        session = self.session
        state = self.mqtt
        if session is None or state is None or self.state is not State.CONNECTED:
            return
        topic = routing_key_to_topic(message.routing_key)
        a = message.annotations  # read directly: what `annotation(message)` would say
        if consumer_tag == SESSION_CONSUMER:
            subs = [
                s
                for s in state.subscriptions.values()
                if s.group is None and matches(s.topic_filter, topic)
            ]
            if a and a.get(ANN_PUBLISHER) == self.client_id:
                subs = [s for s in subs if not s.options.no_local]  # [MQTT-3.8.3-3]
        else:
            queue = consumer_tag[len(SHARED_CONSUMER_PREFIX) :]
            subs = [
                s
                for s in state.subscriptions.values()
                if s.group is not None and shared_queue_name(s.group, s.topic_filter) == queue
            ]
        remaining: int | None = None
        expires_at = a.get(EXPIRES_AT_ANNOTATION) if a else None
        if isinstance(expires_at, int | float):
            left = float(expires_at) - self.registry.clock()
            if left <= 0:
                subs = []  # expired [MQTT-3.3.2-5]
            else:
                remaining = max(1, round(left))  # [MQTT-3.3.2-6]
        elif message.properties.expiration:
            with contextlib.suppress(ValueError):
                remaining = max(1, int(message.properties.expiration) // 1000)
        if not subs:
            session.ack(delivery_tag)
            return
        granted = subs[0].options.qos if len(subs) == 1 else max(s.options.qos for s in subs)
        qos = min(published_qos(message), granted)
        retain = False
        if a:
            retain = bool(a.get(ANN_RETAINED_COPY, False)) or (
                bool(a.get(ANN_RETAIN, False)) and any(s.options.retain_as_published for s in subs)
            )
        packet_id = None
        if qos:
            packet_id = self._next_packet_id(state)
            self.inflight[packet_id] = delivery_tag
        version = self.codec.version
        if version != MQTT_5:
            # Fast path: no properties to carry, so the bytes come from the cached
            # topic (and, for QoS 0, from the message's cache when fanned out).
            if qos:
                data = encode_publish_fast(
                    topic, message.body, qos, retain, redelivered, packet_id, version
                )
            else:
                data = self._qos0_bytes(message, topic, retain, version)
        else:
            packet = Publish(topic, message.body, qos, retain, redelivered and qos > 0, packet_id)
            packet.properties = publish_properties(message, remaining)
            packet.properties.subscription_identifier = sorted(
                {s.identifier for s in subs if s.identifier is not None}
            )
            data = self.codec.send(packet)
        if len(data) > self.client_max_packet_size:
            # [MQTT-3.1.2-25]: too large for the client: discard as if delivered
            self.inflight.pop(packet_id or 0, None)
            session.ack(delivery_tag)
            return
        self.shell.send(data)
        self.registry.stats.sent += 1
        if not qos:
            session.ack(delivery_tag)

    @staticmethod
    def _qos0_bytes(message: Message, topic: str, retain: bool, version: int) -> bytes:
        """A QoS 0 PUBLISH of `message` (3.x), encoded once per message for fan-out."""
        key = _QOS0_CACHE_KEYS[version, retain]
        cache = message.wire_cache
        if cache is None:
            cache = message.wire_cache = {}
        else:
            data: bytes | None = cache.get(key)
            if data is not None:
                return data
        data = cache[key] = encode_publish_fast(
            topic, message.body, 0, retain, False, None, version
        )
        return data

    def _next_packet_id(self, state: SessionState) -> int:
        for _ in range(65535):
            pid = next(self._packet_ids)
            if pid not in self.inflight and pid not in state.outgoing_pubrel:
                return pid
        raise RuntimeError("no free packet identifier")  # bounded by receive maximum

    def returned(self, message: Message, reply_code: int, reply_text: str) -> None:
        """MQTT never publishes mandatory messages."""

    def cancelled(self, consumer_tag: str, error: BrokerError | None) -> None:
        """A queue we consumed was deleted (by an operator): end the connection."""
        if self.state is State.CONNECTED:
            self._disconnect(ReasonCode.ADMINISTRATIVE_ACTION, publish_will=True)
