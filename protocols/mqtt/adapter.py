"""MQTT connections on the broker core: packets in, calls on the core, packets out.

Theory of operation
-------------------
`MQTTConnection` is one network connection. The asyncio shell (`server.py`,
`websocket.py`) drives it with `data_received(data, now)`,
`handle_timer(now)`, `set_writable(flag)` and `connection_lost()`; it writes
through a `Shell` and never touches a socket or a clock itself. Bytes become
packets in the codec (`codec.Connection`), and every packet it sends is
encoded there too.

The package is split along MQTT's concerns, one module each (mosquitto keeps
one file per concern the same way):

- `session_state`: what survives a disconnect (subscriptions, QoS 2 packet
  ids, expiry, will), matched against deliveries through a topic trie;
- `registry`: every session of a broker, their lifetime and persistence,
  takeover by client id [MQTT-3.1.4-3];
- `mapping`: MQTT PUBLISH <-> core `Message`, topic <-> routing key;
- `retained`: MQTT's rules over the core's retained messages
  (`broker.retained`);
- `subscriptions`: SUBSCRIBE / UNSUBSCRIBE as queues, bindings and
  consumers on the core;
- `deliveries`: core deliveries to the client as PUBLISH, and their acks;
- `wills`, `sys_topics`, `dead_letters`: will messages, `$SYS`, the session
  queue limit;
- `connect`: the CONNECT handshake (login, vhost, session take-over or
  resume, CONNACK), a base class of the connection.

This module is the connection: PUBLISH from the client and its
acknowledgement, DISCONNECT,
keep-alive, dispatch of every packet, and the one place protocol errors meet
the wire.

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
  when the publish was written to the store (retained messages included),
  through the connection's `OrderedReplies` (`broker.replies`).
  A PUBREC or PUBCOMP that follows a session change is sent only after the
  store has it, so QoS 2 exactly-once holds across a broker restart.

Ordering constraints:
- SUBACK is written before retained messages are put into the session's
  queue, so they reach the client after it.
- A PUBACK/PUBREC/PUBCOMP that must wait for the store makes every later
  one wait too (`OrderedReplies`), so acknowledgements keep the order of the
  packets they answer.
- On takeover the old connection releases its core connection (requeueing
  its unacked deliveries) before the new one starts consuming.
"""

from __future__ import annotations

import logging
from typing import Any

from moorage.broker import logs
from moorage.broker.auth import PermissionPending
from moorage.broker.broker import Broker
from moorage.broker.connection import ClientConnection
from moorage.broker.errors import AccessRefused, BrokerError
from moorage.broker.keepalive import Due, KeepAlive
from moorage.broker.message import Message
from moorage.broker.replies import OrderedReplies
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
    UnsubAck,
    Unsubscribe,
    Will,
    encode_puback_fast,
)
from moorage.protocols.mqtt.codec import Properties as MQTTProperties
from moorage.protocols.mqtt.connect import (
    DEFAULT_VHOST,
    SERVER_RECEIVE_MAXIMUM,
    TOPIC_ALIAS_MAXIMUM,
    ConnectHandling,
    State,
)
from moorage.protocols.mqtt.deliveries import (
    MAX_PACKET_SIZE,
    Deliveries,
)
from moorage.protocols.mqtt.mapping import EXCHANGE, to_message
from moorage.protocols.mqtt.registry import registry_for
from moorage.protocols.mqtt.retained import retain
from moorage.protocols.mqtt.session_state import (
    PendingWill,
    SessionState,
)
from moorage.protocols.mqtt.subscriptions import SessionSubscriptions
from moorage.protocols.tcp import Shell, want_input

__all__ = ["MQTTConnection"]

log = logging.getLogger("moorage.mqtt")


class MQTTConnection(ConnectHandling):
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
        self.replies: OrderedReplies  # PUBACK/PUBREC/PUBCOMP in order; set with `core`
        self.session: Session | None = None
        self.mqtt: SessionState | None = None
        self.subscriptions: SessionSubscriptions | None = None  # once attached to a session
        self.user: Any = None
        # an authentication backend has not answered yet, or an authorisation backend
        # (then `_held` is the packet to handle again)
        self._login_pending = False
        self._held: Any = None
        self.vhost = DEFAULT_VHOST
        self.will: Will | None = None
        self.client_receive_maximum = 65535
        self.topic_aliases: dict[int, str] = {}
        self.deliveries = Deliveries(shell, self.codec, self.registry)
        self.incoming_unacked = 0  # QoS 1 publishes whose PUBACK waits for the store
        self._now = now
        self.liveness = KeepAlive(now, limits.handshake_timeout)  # CONNECT timeout, Keep Alive
        self.writable = True

    # -- driven by the shell -----------------------------------------------------------

    def data_received(self, data: bytes, now: float) -> None:
        """Feed bytes from the socket; handle every complete packet in order."""
        if self.state is State.CLOSED:
            return
        self._now = now
        self.liveness.received(now)
        self.codec.receive_data(data)
        if not self._login_pending:
            self._handle_events()

    def _handle_events(self) -> None:
        """Handle every complete packet received, in order (until a login must be awaited)."""
        next_event = self.codec.next_event
        try:
            held, self._held = self._held, None  # (a local: nothing more per frame)
            while not self.closed and not self._login_pending:
                if held is None:
                    event = next_event()
                    if event is NEED_DATA:
                        break
                else:
                    event, held = held, None
                if isinstance(event, ConnectionClosed):
                    self._close(publish_will=True)
                    break
                try:
                    self._handle(event)
                except PermissionPending as pending:
                    # A backend has not answered yet (nothing was done): this packet
                    # again, and no later one, once it has (`broker.auth_users`).
                    self._held = event
                    self._login_pending = True
                    pending.then(self._permission_answered)
        except ProtocolError as e:
            self._protocol_error(e)

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
        return self.state is State.CLOSED

    @property
    def publisher(self) -> bool:
        """Has this client published? (The memory alarm pauses only publishers.)"""
        return self.core is not None and self.core.published

    def peer_held(self, now: float) -> None:
        """The shell is not reading us (flow control): its silence is no missed keep-alive."""
        self.liveness.received(now)

    def next_deadline(self) -> float:
        """When `handle_timer` must run next (loop time; inf = never)."""
        return self.liveness.deadline()

    def handle_timer(self, now: float) -> None:
        """The CONNECT timeout and keep-alive (1.5 x Keep Alive, [MQTT-3.1.2-24])."""
        if self.state is State.CLOSED:
            return
        self._now = now
        due = self.liveness.poll(now)
        if due is Due.HANDSHAKE_TIMEOUT:
            log.info("closing %s: no CONNECT in time", self.shell.peer)
            self._close(publish_will=False)
        elif due is Due.PEER_SILENT:
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
        logs.event(
            "connection.error",
            f"closing MQTT connection {self.shell.peer}: {error}",
            connection=self.core.id if self.core is not None else None,
            peer=self.shell.peer,
            protocol="mqtt",
            reason=str(error),
        )
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
        if state is not None and self.registry.release(state, self):
            if self.will is not None and publish_will:
                self.registry.wills.schedule(
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
            self.deliveries.on_puback(self.session, packet)
        elif isinstance(packet, PubRec):
            assert self.mqtt is not None
            self.deliveries.on_pubrec(self.session, self.mqtt, packet)
        elif isinstance(packet, PubRel):
            self._on_pubrel(packet)
        elif isinstance(packet, PubComp):
            assert self.mqtt is not None
            self.deliveries.on_pubcomp(self.mqtt, packet)
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

    def force_close(self, reason: str) -> None:
        """An operator closed this connection: DISCONNECT 0x98 "Administrative action"
        with the reason string (5.0), a plain close (3.1.1, which has no server
        DISCONNECT). The will is published: the client did not say goodbye."""
        if self.state is State.CONNECTED:
            self._disconnect(ReasonCode.ADMINISTRATIVE_ACTION, publish_will=True, text=reason)
        else:
            self._close(publish_will=False)

    def core_session(self) -> Session:
        if self.session is None:
            assert self.core is not None
            self.session = self.core.open_session(self)
        return self.session

    # -- PUBLISH from the client ---------------------------------------------------------------

    def _resolve_alias(self, packet: Publish) -> bool:
        """Apply a PUBLISH's topic alias (MQTT 5); False when it was refused (and the
        connection is being closed)."""
        props = packet.properties
        alias = props.topic_alias
        if alias is None:
            return True
        if alias > TOPIC_ALIAS_MAXIMUM:
            self._disconnect(ReasonCode.TOPIC_ALIAS_INVALID, publish_will=True)  # [MQTT-3.3.2-9]
            return False
        if packet.topic:
            self.topic_aliases[alias] = packet.topic  # [MQTT-3.3.2-12]
        else:
            topic = self.topic_aliases.get(alias)
            if topic is None:
                self._disconnect(ReasonCode.PROTOCOL_ERROR, publish_will=True)
                return False
            packet.topic = topic
        props.topic_alias = None
        return True

    def _drop_sys_publish(self, packet: Publish, v5: bool) -> None:
        """The broker's own `$SYS` topics are read-only for clients: a PUBLISH there is
        acknowledged (QoS 2 through PUBCOMP) and dropped, as Mosquitto does (transcript
        `publish_to_sys_topic`); MQTT 5 is told no subscriber matched."""
        if packet.qos == 2 and self.mqtt is not None and packet.packet_id is not None:
            self.mqtt.incoming_qos2.add(packet.packet_id)
        if packet.qos:
            reason = ReasonCode.NO_MATCHING_SUBSCRIBERS if v5 else ReasonCode.SUCCESS
            self._ack_publish(packet, reason, stored=False)

    def _on_publish(self, packet: Publish) -> None:
        v5 = self.version == MQTT_5
        if not self._resolve_alias(packet):
            return
        if packet.topic.startswith("$SYS"):
            self._drop_sys_publish(packet, v5)
            return
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
            result = session.publish(EXCHANGE, message)
        except PermissionPending:
            self.registry.stats.received -= 1  # counted when it is handled again
            raise
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
        stored = result.stored
        # MQTT 5: 0x10 when no subscription matched (the message is accepted, and
        # kept if retained), as Mosquitto answers (transcript `retain_handling_2_5`).
        unheard = v5 and not result.routed
        reason = ReasonCode.NO_MATCHING_SUBSCRIBERS if unheard else ReasonCode.SUCCESS
        if packet.retain and retain(session.vhost, packet.topic, message):
            stored = True  # PUBACK/PUBREC once the retained message is on disk
        if qos == 2:
            state.incoming_qos2.add(packet_id)  # type: ignore[arg-type]
            if self.registry.save(state):
                stored = True  # PUBREC sent => the packet id survives a restart
        if qos:
            self._ack_publish(packet, reason, stored=stored)

    def _inflight_in(self) -> int:
        assert self.mqtt is not None
        return self.incoming_unacked + len(self.mqtt.incoming_qos2)

    def _ack_publish(self, packet: Publish, reason: ReasonCode, *, stored: bool) -> None:
        """PUBACK (QoS 1) or PUBREC (QoS 2), after the store has the message [DESIGN.md]."""
        pid = packet.packet_id or 0
        if reason >= 0x80 and packet.qos == 2 and self.mqtt is not None:
            self.mqtt.incoming_qos2.discard(pid)
        ack: Packet = PubAck(pid, reason) if packet.qos == 1 else PubRec(pid, reason)
        if reason < 0x80 and self.session is not None:
            self.session.stats.confirm += 1  # message rates (broker.stats): a promise made
        replies = self.replies
        if not replies.must_wait(stored=stored):
            if packet.qos == 1 and reason == ReasonCode.SUCCESS and self.codec.version != MQTT_5:
                self.shell.send(encode_puback_fast(pid))  # == self.codec.send(ack)
            else:
                self.send(ack)
            return
        qos1 = packet.qos == 1
        self.incoming_unacked += qos1

        def send(error: BaseException | None) -> None:
            self.incoming_unacked -= qos1
            if self.state is not State.CONNECTED:
                return
            if error is not None:
                self._disconnect(ReasonCode.UNSPECIFIED_ERROR, publish_will=True)
                return
            self.send(ack)

        # PUBACK/PUBREC promise the message is safe, not that earlier acks are.
        replies.send(send, stored=stored, removals=False)

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

        def send(_error: BaseException | None) -> None:
            if self.state is State.CONNECTED:
                self.send(comp)

        # PUBCOMP only once the store forgot the packet id: else a restart
        # would take a new PUBLISH reusing it for a duplicate
        self.replies.send(send, stored=saved)

    # -- SUBSCRIBE / UNSUBSCRIBE ------------------------------------------------------------------

    def _on_subscribe(self, packet: Subscribe) -> None:
        assert self.subscriptions is not None
        self.subscriptions.ask_ahead(packet)  # a backend's answers, before any filter's work
        codes, retained = self.subscriptions.subscribe(packet, self.version == MQTT_5)
        self.send(SubAck(packet.packet_id, codes))
        self.subscriptions.send_retained(retained)  # after SUBACK (section 3.3.1.3)

    def _on_unsubscribe(self, packet: Unsubscribe) -> None:
        assert self.subscriptions is not None
        self.subscriptions.ask_ahead_unsubscribe()
        self.send(UnsubAck(packet.packet_id, self.subscriptions.unsubscribe(packet)))

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
        self.deliveries.deliver(
            session, state, self.client_id, consumer_tag, delivery_tag, redelivered, message
        )

    def returned(self, message: Message, reply_code: int, reply_text: str) -> None:
        """MQTT never publishes mandatory messages."""

    def cancelled(self, consumer_tag: str, error: BrokerError | None) -> None:
        """A queue we consumed was deleted (by an operator): end the connection."""
        if self.state is State.CONNECTED:
            self._disconnect(ReasonCode.ADMINISTRATIVE_ACTION, publish_will=True)
