"""Alerts: the broker's own alarms, published to a system SNS topic for operators.

The topic `[sns] alerts_topic` (default `moorage-alerts`) in `[sns]
alerts_vhost` (default `/`) is created at start. Operators subscribe to it
like to any topic (email, HTTP/S, an SQS queue), the way CloudWatch alarms
feed SNS. What is published:

- every WARNING-or-worse record of the core's alarm loggers (`ALARM_LOGGERS`:
  the memory and disk alarms raised and cleared, the `alarm.raised` and
  `alarm.cleared` events of `moorage.events` (`broker.logs`); the failover node's
  events such as a lost standby or witness, `moorage.failover`; the
  shared-storage lease, `moorage.shared_storage`) — the log line is the
  message, state `cleared` when it says so ("cleared", "... again",
  "recovered"), else `raised`;
- a queue whose ready messages exceed `[sns] alert_queue_depth`, or whose
  oldest ready message (by its `timestamp` property, which SNS, SQS and most
  AMQP clients set) is older than `[sns] alert_queue_age` seconds, checked
  every `alert_interval` seconds on the broker's clock: one "raised" alert
  when it crosses, one "cleared" alert when it is back under.

Each alert carries the message attributes `alarm` (memory, queue_depth,
queue_age, ...), `state` (raised, cleared, or the log level) and, for queue
alarms, `vhost` and `queue`, so subscriptions can filter on them. The
system topic's own subscription queues are never checked (no alert loops).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING

from moorage.broker.config import SnsConfig
from moorage.broker.errors import BrokerError
from moorage.broker.queue import Queue
from moorage.protocols.sns.envelope import core_message
from moorage.protocols.sns.model import Topic

if TYPE_CHECKING:
    from moorage.protocols.sns.core import Sns

log = logging.getLogger("moorage.sns")

# The core's loggers whose warnings are alarms: the memory alarm; the failover work's
# node (standby lost, witness unreachable, promotion) and shared-storage lease; a
# disk alarm as it lands. Each record is one alert named after the logger's last part.
ALARM_LOGGERS = (
    "moorage.memory",
    "moorage.disk",
    "moorage.failover",
    "moorage.shared_storage",
    "moorage.events",
)
EVENTS_LOGGER = "moorage.events"  # `broker.logs.event`: the memory and disk alarms' records
_CLEARED_WORDS = ("cleared", " again", "recovered")


class _AlarmLog(logging.Handler):
    """Turns the alarm loggers' warnings into alerts (on the broker's loop)."""

    def __init__(self, alerts: Alerts, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.WARNING)
        self.alerts = alerts
        self.loop = loop

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.name == EVENTS_LOGGER:  # `broker.logs` events: only the alarms
            event = str(getattr(record, "event", ""))
            if not event.startswith("alarm."):
                return
            alarm = str(getattr(record, "alarm", "alarm"))
            state = "cleared" if event == "alarm.cleared" else "raised"
        else:
            alarm = record.name.rsplit(".", 1)[-1]
            state = "cleared" if any(w in text for w in _CLEARED_WORDS) else "raised"
        where = {"level": record.levelname.lower()}
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self.loop.call_soon_threadsafe(self.alerts.publish, alarm, state, text, where)


class Alerts:
    """Publishes alarms to the system topic while SNS runs."""

    def __init__(self, sns: Sns, config: SnsConfig) -> None:
        self.sns = sns
        self.config = config
        self.raised: set[tuple[str, str, str]] = set()  # (alarm, vhost, queue)
        self._handler: _AlarmLog | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        """Whether an alerts topic is configured and its vhost exists."""
        broker = self.sns.broker
        return (
            bool(self.config.alerts_topic)
            and broker.find_vhost(self.config.alerts_vhost) is not None
        )

    async def start(self) -> None:
        """Create the system topic, listen to the alarm loggers, watch the queues."""
        if not self.enabled:
            return
        self._ensure_topic()
        self._handler = _AlarmLog(self, asyncio.get_running_loop())
        for name in ALARM_LOGGERS:
            logging.getLogger(name).addHandler(self._handler)
        if self.config.alert_queue_depth or self.config.alert_queue_age:
            self._task = asyncio.get_running_loop().create_task(self._watch_queues())

    async def close(self) -> None:
        """Stop listening and watching."""
        if self._handler is not None:
            for name in ALARM_LOGGERS:
                logging.getLogger(name).removeHandler(self._handler)
            self._handler = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _ensure_topic(self) -> Topic:
        vhost_name, name = self.config.alerts_vhost, self.config.alerts_topic
        registry = self.sns.registry
        topic = registry.topic(vhost_name, name)
        if topic is None:
            vhost = self.sns.registry.vhost(vhost_name)
            vhost.declare_exchange(name, "fanout", durable=True)
            topic = Topic(vhost_name, name, {"DisplayName": "Moorage alerts"})
            registry.add_topic(topic)
        return topic

    def publish(self, alarm: str, state: str, text: str, where: dict[str, str]) -> None:
        """Publish one alert to the system topic (best effort: an alert is never an error)."""
        if not self.enabled:
            return
        topic = self._ensure_topic()
        attributes = {"alarm": ("String", alarm), "state": ("String", state)}
        attributes.update({k: ("String", v) for k, v in where.items()})
        message = core_message(
            topic.name,
            text,
            message_id=str(uuid.uuid4()),
            now=self.sns.broker.clock.wall(),
            subject=f"Moorage alarm {alarm} {state}"[:100],
            attributes=attributes,
            structure=None,
        )
        with self.sns.registry.system_session(topic.vhost) as session:
            try:
                session.publish(topic.name, message)
            except BrokerError as e:
                log.warning("sns: could not publish alert %s: %s", alarm, e)

    # -- queue depth and age ----------------------------------------------------------------

    async def _watch_queues(self) -> None:
        while True:
            await self.sns.broker.clock.sleep(self.config.alert_interval)
            self.check_queues()

    def check_queues(self) -> None:
        """Raise or clear the depth and age alarms of every queue (one pass)."""
        now = self.sns.broker.clock.wall()
        seen: set[tuple[str, str, str]] = set()
        for vhost in self.sns.broker.all_vhosts():
            for queue in vhost.all_queues():
                if queue.name.startswith(f"sns.sub.{self.config.alerts_topic}."):
                    continue
                for alarm, over, detail in self._measure(queue, now):
                    key = (alarm, vhost.name, queue.name)
                    where = {"vhost": vhost.name, "queue": queue.name}
                    if over:
                        seen.add(key)
                        if key not in self.raised:
                            self.raised.add(key)
                            self.publish(alarm, "raised", detail, where)
                    elif key in self.raised:
                        self.raised.discard(key)
                        self.publish(alarm, "cleared", detail, where)
        for key in self.raised - seen:  # deleted queues clear silently
            home = self.sns.broker.find_vhost(key[1])
            if home is None or home.find_queue(key[2]) is None:
                self.raised.discard(key)

    def _measure(self, queue: Queue, now: float) -> list[tuple[str, bool, str]]:
        found = []
        depth_limit = self.config.alert_queue_depth
        if depth_limit:
            depth = queue.message_count
            found.append(
                (
                    "queue_depth",
                    depth > depth_limit,
                    f"queue '{queue.name}' in vhost '{queue.vhost.name}' holds {depth} "
                    f"messages (alarm over {depth_limit})",
                )
            )
        age_limit = self.config.alert_queue_age
        if age_limit:
            head = queue.ready.peek()
            stamp = head.message.properties.timestamp if head is not None else None
            age = now - stamp.timestamp() if stamp is not None else 0.0
            found.append(
                (
                    "queue_age",
                    age > age_limit,
                    f"queue '{queue.name}' in vhost '{queue.vhost.name}': oldest message is "
                    f"{age:.0f} s old (alarm over {age_limit:.0f} s)",
                )
            )
        return found
