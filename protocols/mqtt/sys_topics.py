"""`$SYS/broker/...`: the broker's MQTT statistics, as Mosquitto names them.

Every `mqtt_sys_interval` seconds the values are retained (in memory only,
never written to the store) and sent straight to the queues of connected
sessions with a matching subscription, not through `amq.topic`, so offline
sessions and `#` subscribers [MQTT-4.7.2-1] do not collect them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from moorage.broker import __version__
from moorage.broker.broker import Broker
from moorage.broker.message import Message, Properties
from moorage.protocols.mqtt.mapping import EXCHANGE, QOS_HEADER, Annotation, annotate
from moorage.protocols.mqtt.retained import retain
from moorage.protocols.mqtt.session_state import SessionState
from moorage.protocols.mqtt.topics import topic_to_routing_key

Schedule = Callable[[float, Callable[[], None]], Any]


@dataclass(slots=True)
class Statistics:
    """Broker-wide MQTT counters, published under $SYS/broker/."""

    received: int = 0  # PUBLISH packets from clients
    sent: int = 0  # PUBLISH packets to clients
    dead_lettered: int = 0  # dropped by a session queue's limit (dead-lettered)


class SysTopics:
    """Publishes the `$SYS` topics of one broker periodically."""

    def __init__(
        self,
        broker: Broker,
        sessions: Mapping[tuple[str, str], SessionState],
        stats: Statistics,
        now: Callable[[], float],
        connected: Callable[[SessionState], bool],
    ) -> None:
        self.broker = broker
        self.sessions = sessions  # the registry's, read only
        self._connected = connected  # is a connection attached to the session?
        self.stats = stats
        self._now = now
        self.started_at = now()
        self._timer: Any = None
        self._schedule: Schedule | None = None

    @property
    def interval(self) -> float:
        return float(getattr(self.broker.limits, "mqtt_sys_interval", 0))

    def start(self, schedule: Schedule) -> None:
        """Publish now and every `interval` seconds (if configured)."""
        if self.interval > 0 and self._timer is None:
            self._schedule = schedule
            self.publish()
            self._timer = schedule(self.interval, self._tick)

    def _tick(self) -> None:
        assert self._schedule is not None
        self.publish()
        self._timer = self._schedule(self.interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def values(self) -> dict[str, str]:
        """The $SYS/broker/... topics and their current values (as Mosquitto names them)."""
        sessions = self.sessions
        connected = sum(1 for s in sessions.values() if self._connected(s))
        stats = self.stats
        retained = sum(len(vhost.retained) for vhost in self.broker.all_vhosts())
        return {
            "$SYS/broker/version": f"moorage {__version__}",
            "$SYS/broker/uptime": f"{int(self._now() - self.started_at)} seconds",
            "$SYS/broker/clients/connected": str(connected),
            "$SYS/broker/clients/disconnected": str(len(sessions) - connected),
            "$SYS/broker/clients/total": str(len(sessions)),
            "$SYS/broker/messages/received": str(stats.received),
            "$SYS/broker/messages/sent": str(stats.sent),
            "$SYS/broker/publish/messages/received": str(stats.received),
            "$SYS/broker/publish/messages/sent": str(stats.sent),
            "$SYS/broker/publish/messages/dropped": str(stats.dead_lettered),
            "$SYS/broker/retained messages/count": str(retained),
            "$SYS/broker/subscriptions/count": str(
                sum(len(s.subscriptions) for s in sessions.values())
            ),
        }

    def publish(self) -> None:
        """Retain the $SYS values (in memory only) and send them to connected subscribers."""
        for vhost in self.broker.all_vhosts():
            owners = [
                s
                for s in self.sessions.values()
                if s.vhost == vhost.name and s.subscriptions and self._connected(s)
            ]
            for topic, value in self.values().items():
                routing_key = topic_to_routing_key(topic)
                message = Message(
                    EXCHANGE,
                    routing_key,
                    Properties(headers={QOS_HEADER: 0}, delivery_mode=1),
                    value.encode(),
                )
                annotate(message, Annotation(retain=True))
                retain(vhost, topic, message, persist=False)
                for state in owners:
                    if not state.matching(topic, routing_key):
                        continue
                    queue = vhost.find_queue(state.queue_name)
                    if queue is not None:
                        queue.publish(message)
