"""Messages to one client: core deliveries as PUBLISH packets, and their acknowledgements.

A delivery from the core is matched against the session's subscriptions
(`SessionState.matching` for the session queue; a shared group's queue names
its subscription), which decides the QoS granted, the subscription
identifiers, no-local and retain-as-published. QoS 0 deliveries are acked to
the core at once; QoS 1 at PUBACK; QoS 2 at PUBREC, after which the packet
id waits for PUBCOMP in the session state (`outgoing_pubrel`). The client's
Receive Maximum is the core session's prefetch, so the core never has more
QoS > 0 messages in flight than packet ids are free.

Encoding: 3.1.1 and 3.1 carry no properties, so their PUBLISH comes from the
codec's fast path (`encode_publish_fast`) and a QoS 0 PUBLISH is encoded once
per message and shared by every subscriber it fans out to
(`Message.wire_cache`); MQTT 5 goes through `Connection.send`.
`tests/mqtt/test_fast_path.py` proves both give the same bytes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from moorage.broker.errors import BrokerError
from moorage.broker.message import EXPIRES_AT_ANNOTATION, Message
from moorage.broker.session import Session
from moorage.protocols.mqtt.codec import (
    MQTT_5,
    Connection,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
    encode_publish_fast,
)
from moorage.protocols.mqtt.mapping import (
    ANN_PUBLISHER,
    ANN_RETAIN,
    ANN_RETAINED_COPY,
    publish_properties,
    published_qos,
)
from moorage.protocols.mqtt.registry import SessionRegistry
from moorage.protocols.mqtt.session_state import SessionState, SubscriptionState, shared_queue_name
from moorage.protocols.mqtt.topics import routing_key_to_topic
from moorage.protocols.tcp import Shell

MAX_PACKET_SIZE = 268_435_460  # the protocol's own limit
SESSION_CONSUMER = "mqtt-session"
SHARED_CONSUMER_PREFIX = "mqtt-shared:"

# `Message.wire_cache` keys of an encoded QoS 0 PUBLISH, per (3.x version, retain).
_QOS0_CACHE_KEYS = {
    (version, retain): f"mqtt-publish-{version}-{int(retain)}"
    for version in (3, 4)
    for retain in (False, True)
}


def qos0_bytes(message: Message, topic: str, retain: bool, version: int) -> bytes:
    """A QoS 0 PUBLISH of `message` (3.x), encoded once per message for fan-out."""
    key = _QOS0_CACHE_KEYS[version, retain]
    cache = message.wire_cache
    if cache is None:
        cache = message.wire_cache = {}
    else:
        data: bytes | None = cache.get(key)
        if data is not None:
            return data
    data = cache[key] = encode_publish_fast(topic, message.body, 0, retain, False, None, version)
    return data


class Deliveries:
    """The outgoing PUBLISH flow of one connection: packet ids in flight and their acks."""

    def __init__(self, shell: Shell, codec: Connection, registry: SessionRegistry) -> None:
        self.shell = shell
        self.codec = codec
        self.registry = registry
        self.inflight: dict[int, int] = {}  # outgoing packet id -> core delivery tag
        self.client_max_packet_size = MAX_PACKET_SIZE
        # the last packet id given out; the next is found by counting on from it
        # (an `itertools.cycle` would keep every id it gave out, see `_next_packet_id`)
        self._last_packet_id = 0

    def deliver(
        self,
        session: Session,
        state: SessionState,
        client_id: str,
        consumer_tag: str,
        delivery_tag: int,
        redelivered: bool,
        message: Message,
    ) -> None:
        """Match a delivery to the session's subscriptions, then PUBLISH it (or ack it)."""
        routing_key = message.routing_key
        topic = routing_key_to_topic(routing_key)
        a = message.annotations  # read directly: what `annotation(message)` would say
        subs: Sequence[SubscriptionState]
        if consumer_tag == SESSION_CONSUMER:
            subs = state.matching(topic, routing_key)
            if a and a.get(ANN_PUBLISHER) == client_id:
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
                subs = ()  # expired [MQTT-3.3.2-5]
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
                data = qos0_bytes(message, topic, retain, version)
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

    def _next_packet_id(self, state: SessionState) -> int:
        """The next free packet id after the last one, wrapping from 65535 to 1.

        Counted, not drawn from `itertools.cycle(range(1, 65536))`: a cycle
        keeps a copy of every item of its first round, and ids above 256 are
        objects of their own, so each connection kept one int for every
        packet id it had used, up to 65,535 of them and their list (2.6 MB,
        tracemalloc), for as long as it stayed connected.
        """
        pid = self._last_packet_id
        inflight, pubrel = self.inflight, state.outgoing_pubrel
        for _ in range(65535):
            pid = pid % 65535 + 1
            if pid not in inflight and pid not in pubrel:
                self._last_packet_id = pid
                return pid
        raise RuntimeError("no free packet identifier")  # bounded by receive maximum

    # -- the client's acknowledgements ---------------------------------------------------

    def settle(self, session: Session | None, packet_id: int) -> bool:
        """The client acknowledged `packet_id`: ack its delivery to the core."""
        tag = self.inflight.pop(packet_id, None)
        if tag is None or session is None:
            return False
        with contextlib.suppress(BrokerError):
            session.ack(tag)
        return True

    def on_puback(self, session: Session | None, packet: PubAck) -> None:
        self.settle(session, packet.packet_id)

    def on_pubrec(self, session: Session | None, state: SessionState, packet: PubRec) -> None:
        known = self.settle(session, packet.packet_id)
        if packet.reason_code >= 0x80:
            return  # the client refused it; the exchange ends here [MQTT-4.3.3-4]
        if known or packet.packet_id in state.outgoing_pubrel:
            state.outgoing_pubrel.add(packet.packet_id)
            self.registry.save(state)
            self.shell.send(self.codec.send(PubRel(packet.packet_id)))
        else:
            self.shell.send(
                self.codec.send(PubRel(packet.packet_id, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND))
            )

    def on_pubcomp(self, state: SessionState, packet: PubComp) -> None:
        if packet.packet_id in state.outgoing_pubrel:
            state.outgoing_pubrel.discard(packet.packet_id)
            self.registry.save(state)
