"""The session queue limit: a full session queue dead-letters its oldest message.

With `mqtt_session_queue_limit` set, a persistent session's queue is declared
with `x-max-length` and `x-overflow: drop-head`, and what it drops goes to the
vhost's `mqtt.dead-letter` topic exchange. An internal connection per vhost
counts those messages (`Statistics.dead_lettered`, published as
`$SYS/broker/publish/messages/dropped`).
"""

from __future__ import annotations

import logging
from typing import Any

from moorage.broker.auth import Permission, User
from moorage.broker.broker import Broker
from moorage.broker.connection import ClientConnection
from moorage.broker.errors import BrokerError
from moorage.broker.message import Message
from moorage.protocols.mqtt.sys_topics import Statistics

log = logging.getLogger("moorage.mqtt")

DEAD_LETTER_EXCHANGE = "mqtt.dead-letter"  # where a full session queue's oldest message goes
DEAD_LETTER_COUNTER = "mqtt-dead-letter-counter"  # transient queue counting them
INTERNAL_USER = "mqtt-internal"


class SessionQueueLimit:
    """The configured limit of persistent session queues, and the count of what it dropped."""

    def __init__(self, broker: Broker, stats: Statistics) -> None:
        self.broker = broker
        self.stats = stats
        self._internal: dict[str, ClientConnection] = {}  # vhost -> dead-letter counter

    @property
    def limit(self) -> int:
        return int(getattr(self.broker.limits, "mqtt_session_queue_limit", 0))

    def queue_arguments(self) -> dict[str, Any]:
        """x-arguments of a persistent session's queue: the configured length limit."""
        limit = self.limit
        if not limit:
            return {}
        return {
            "x-max-length": limit,
            "x-overflow": "drop-head",
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        }

    def watch(self, vhost_name: str) -> None:
        """Declare the vhost's dead-letter exchange and count what reaches it (`stats`)."""
        if vhost_name in self._internal or not self.limit:
            return
        user = User(INTERNAL_USER, None, (), {vhost_name: Permission(".*", ".*", ".*")})
        try:
            core = self.broker.connect(
                vhost_name, user, protocol="mqtt", peer="internal", client=False
            )
        except BrokerError as e:
            log.warning("no MQTT dead-letter counter in %r: %s", vhost_name, e.text)
            return
        self._internal[vhost_name] = core
        session = core.open_session(_DeadLetterCounter(self.stats))
        session.declare_exchange(DEAD_LETTER_EXCHANGE, "topic", durable=True)
        session.declare_queue(DEAD_LETTER_COUNTER, durable=False, auto_delete=False)
        session.bind_queue(DEAD_LETTER_COUNTER, DEAD_LETTER_EXCHANGE, "#", {})
        session.consume(DEAD_LETTER_COUNTER, "count", no_ack=True).start()

    def close(self) -> None:
        """Close the internal connections (broker shutdown)."""
        for core in self._internal.values():
            core.close()
        self._internal.clear()


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
