"""SUBSCRIBE and UNSUBSCRIBE: a session's queues, bindings and consumers on the core.

Each MQTT session has one queue, `mqtt-subscription-<client id>qos1`
(durable when the session is persistent, with the session queue limit), and
each of its subscriptions is a binding of that queue on `amq.topic`, the
topic filter translated by `topics.filter_to_binding_key`. A shared
subscription `$share/<group>/<filter>` is a binding of the group's queue
`mqtt-shared-<group>-<filter>`, consumed by every member session
[MQTT-4.8.2]. Two subscriptions whose filters give the same binding key share
the binding: UNSUBSCRIBE removes it only with the last of them.

A subscription's retained messages go into the session queue after SUBACK
(section 3.3.1.3): `subscribe` returns the subscriptions that receive them,
the connection writes SUBACK, then calls `send_retained`.
"""

from __future__ import annotations

import logging
from typing import Any

from moorage.broker.auth_users import Access, TopicAccess
from moorage.broker.errors import AccessRefused, BrokerError, NotFound
from moorage.broker.session import Session
from moorage.protocols.mqtt.codec import ReasonCode, Subscribe, Subscription, Unsubscribe
from moorage.protocols.mqtt.deliveries import SESSION_CONSUMER, SHARED_CONSUMER_PREFIX
from moorage.protocols.mqtt.mapping import EXCHANGE
from moorage.protocols.mqtt.registry import SessionRegistry
from moorage.protocols.mqtt.retained import retained_copy, retained_for
from moorage.protocols.mqtt.session_state import (
    SessionState,
    SubscriptionState,
    shared_queue_name,
)
from moorage.protocols.mqtt.topics import filter_to_binding_key, split_shared

log = logging.getLogger("moorage.mqtt")


class SessionSubscriptions:
    """The subscriptions of the session a connection is attached to, on its core session."""

    def __init__(
        self, session: Session, state: SessionState, registry: SessionRegistry, client_id: str
    ) -> None:
        self.session = session
        self.state = state
        self.registry = registry
        self.client_id = client_id

    def resume(self) -> None:
        """Start consuming the session queue and every shared group queue it belongs to."""
        state = self.state
        if any(s.group is None for s in state.subscriptions.values()):
            self.ensure_queue()
        for sub in state.subscriptions.values():
            if sub.group is not None:
                self.consume(shared_queue_name(sub.group, sub.topic_filter))

    def ensure_queue(self) -> None:
        """Declare the session queue if it is missing, and consume it."""
        session, state = self.session, self.state
        persistent = state.persistent
        if session.vhost.find_queue(state.queue_name) is None:
            arguments: dict[str, Any] = {}
            if persistent:
                arguments = self.registry.queue_limit.queue_arguments()
                if arguments:
                    self.registry.queue_limit.watch(state.vhost)
            session.declare_queue(
                state.queue_name,
                durable=persistent,
                exclusive=False,
                auto_delete=False,
                arguments=arguments,
            )
        if SESSION_CONSUMER not in session.consumers:
            self.consume(state.queue_name, SESSION_CONSUMER)

    def consume(self, queue: str, tag: str | None = None) -> None:
        session = self.session
        tag = tag or SHARED_CONSUMER_PREFIX + queue
        if tag in session.consumers:
            return
        consumer = session.consume(queue, tag)
        consumer.start()

    def ask_ahead(self, packet: Subscribe) -> None:
        """For a user a backend authorises: every check `subscribe` will make, asked before
        the first filter's work (`Session.ask_ahead`). Raises PermissionPending."""
        session, state = self.session, self.state
        if session.user.authz is None:
            return
        checks: list[tuple[Access, str, str]] = []
        topics: list[tuple[str, TopicAccess, str]] = []
        for sub in packet.subscriptions:
            group, topic_filter = split_shared(sub.topic_filter)
            queue = state.queue_name if group is None else shared_queue_name(group, topic_filter)
            if session.vhost.find_queue(queue) is None:
                checks.append(("configure", queue, "queue"))
            checks += [("read", queue, "queue"), ("write", queue, "queue")]
            checks.append(("read", EXCHANGE, "exchange"))
            topics.append((EXCHANGE, "read", filter_to_binding_key(topic_filter)))
        session.ask_ahead(checks, topics)

    def ask_ahead_unsubscribe(self) -> None:
        """`ask_ahead` for UNSUBSCRIBE (its unbinding's checks)."""
        self.session.ask_ahead(
            [("write", self.state.queue_name, "queue"), ("read", EXCHANGE, "exchange")]
        )

    def subscribe(self, packet: Subscribe, v5: bool) -> tuple[list[int], list[Subscription]]:
        """Bind every filter of SUBSCRIBE; the SUBACK codes, and who gets retained messages."""
        state, session = self.state, self.session
        identifier = packet.properties.subscription_identifier
        sub_id = identifier[0] if identifier else None
        codes: list[int] = []
        retained: list[Subscription] = []
        for sub in packet.subscriptions:
            group, topic_filter = split_shared(sub.topic_filter)
            binding = filter_to_binding_key(topic_filter)
            try:
                if group is None:
                    self.ensure_queue()
                    session.bind_queue(state.queue_name, EXCHANGE, binding, {})
                else:
                    queue = shared_queue_name(group, topic_filter)
                    if session.vhost.find_queue(queue) is None:
                        session.declare_queue(queue, durable=True)
                    session.bind_queue(queue, EXCHANGE, binding, {})
                    self.registry.shared_members.setdefault((state.vhost, queue), set()).add(state)
                    self.consume(queue)
            except BrokerError as e:
                log.info(
                    "subscription %r of %s refused: %s", sub.topic_filter, self.client_id, e.text
                )
                codes.append(ReasonCode.NOT_AUTHORIZED if v5 else 0x80)
                continue
            # [MQTT-3.8.4-3]: a subscription with the same filter is replaced
            existed = state.subscribe(SubscriptionState(sub, sub_id, group, topic_filter))
            codes.append(sub.qos)  # QoS 2 is granted as asked [MQTT-3.9.3-1]
            if group is None and not (
                sub.retain_handling == 2 or (sub.retain_handling == 1 and existed)
            ):
                retained.append(sub)
        self.registry.save(state)
        return codes, retained

    def send_retained(self, subscriptions: list[Subscription]) -> None:
        """Queue the retained messages of each subscription (after SUBACK)."""
        if not subscriptions:
            return
        vhost = self.session.vhost
        queue = vhost.find_queue(self.state.queue_name)
        if queue is None:
            return
        for sub in subscriptions:
            for item in retained_for(vhost, sub.topic_filter, self.registry.clock()):
                queue.publish(retained_copy(item.message))

    def unsubscribe(self, packet: Unsubscribe) -> list[int]:
        """Remove every filter of UNSUBSCRIBE; the UNSUBACK codes."""
        state, session = self.state, self.session
        codes: list[int] = []
        for topic_filter in packet.topic_filters:
            sub = state.unsubscribe(topic_filter)
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
        return codes
