"""The dispatcher: consumes every confirmed subscription's queue and delivers to its endpoint.

Theory of operation. One core session of the broker's own SNS connection per
vhost consumes the queue of each confirmed subscription (`protocols.sns.
registry`). For each delivery:

1. the filter policy is evaluated; a message it rejects is acked at once;
2. otherwise a task hands it to the endpoint (`protocols.sns.endpoints`):
   SQS — published into the target Moorage queue, *and written to disk
   there*; HTTP/S — a 2xx answer; email — the SMTP relay accepted it;
3. only then is the entry acked. A failed attempt is retried after the
   delays of the subscription's delivery policy (`protocols.sns.retry`); when
   they run out the message goes to the subscription's dead-letter queue
   (RedrivePolicy `deadLetterTargetArn`), or is dropped and logged.

So a broker stopped (or killed) at any moment delivers again, after restart,
every message that was not yet accepted: at least once, as in AWS. Retry
counts are not kept across a restart (a message starts its policy again).

Ordering rule: a delivery is acked through `loop.call_soon`, never inside the
core's `deliver` call, so the queue's dispatch loop is never re-entered.
A FIFO topic's subscription queues are core FIFO queues: at most one message
per MessageGroupId is in flight (retries included), which keeps each group's
order, while different groups are delivered in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

from moorage.broker.broker import Broker
from moorage.broker.errors import BrokerError
from moorage.broker.message import Message
from moorage.broker.session import Session
from moorage.protocols.sns.envelope import SnsMessage, sns_message
from moorage.protocols.sns.filter_policy import FilterPolicy, FilterPolicyError, parse_policy
from moorage.protocols.sns.model import Subscription
from moorage.protocols.sns.registry import Registry
from moorage.protocols.sns.retry import QUEUE_RETRY, http_retry_policy, retry_delays

log = logging.getLogger("moorage.sns")

PREFETCH = 16  # deliveries in flight per subscription (FIFO: at most one per group)

Deliver = Callable[[Subscription, SnsMessage], Awaitable[None]]
"""Hands a message to a subscription's endpoint; raises DeliveryFailed (or OSError) on failure."""

DeadLetter = Callable[[Subscription, SnsMessage], Awaitable[None]]


class DeliveryFailed(Exception):
    """The endpoint did not accept a delivery (the text says how)."""


class _Sink:
    """The core's callbacks for one vhost's session (`broker.session.DeliverySink`)."""

    def __init__(self, dispatcher: Dispatcher, vhost: str) -> None:
        self.dispatcher = dispatcher
        self.vhost = vhost

    def deliver(
        self, consumer_tag: str, delivery_tag: int, redelivered: bool, message: Message
    ) -> None:
        self.dispatcher.received(self.vhost, consumer_tag, delivery_tag, message)

    def returned(self, message: Message, reply_code: int, reply_text: str) -> None:
        """Never publishes with mandatory set."""

    def cancelled(self, consumer_tag: str, error: BrokerError | None) -> None:
        self.dispatcher.consumers.pop((self.vhost, consumer_tag), None)


class Dispatcher:
    """Runs the deliveries of every subscription of a broker."""

    def __init__(
        self, broker: Broker, registry: Registry, deliver: Deliver, dead_letter: DeadLetter
    ) -> None:
        self.broker = broker
        self.registry = registry
        self.deliver = deliver
        self.dead_letter = dead_letter
        self.sessions: dict[str, Session] = {}
        self.consumers: dict[tuple[str, str], Subscription] = {}  # (vhost, tag) -> subscription
        self.tasks: set[asyncio.Task[None]] = set()
        self._filters: dict[str, tuple[str, str, FilterPolicy | None]] = {}
        self.closed = False

    def start(self, sub: Subscription) -> None:
        """Consume a confirmed subscription's queue (idempotent)."""
        if self.closed or (sub.vhost, sub.id) in self.consumers:
            return
        session = self._session(sub.vhost)
        session.qos(PREFETCH)
        consumer = session.consume(sub.queue, sub.id)
        self.consumers[(sub.vhost, sub.id)] = sub
        consumer.start()

    def stop(self, sub: Subscription) -> None:
        """Stop consuming a subscription's queue (it is being deleted)."""
        self._filters.pop(sub.arn, None)
        if self.consumers.pop((sub.vhost, sub.id), None) is not None:
            session = self.sessions.get(sub.vhost)
            if session is not None and not session.closed:
                session.cancel(sub.id)

    async def close(self) -> None:
        """Stop every delivery; what was not acked goes back to its queue."""
        self.closed = True
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for vhost, session in self.sessions.items():
            if not session.closed:
                self.registry.system_connection(vhost).close_session(session)
        self.sessions.clear()
        self.consumers.clear()

    def _session(self, vhost: str) -> Session:
        session = self.sessions.get(vhost)
        if session is None or session.closed:
            connection = self.registry.system_connection(vhost)
            session = connection.open_session(_Sink(self, vhost))
            self.sessions[vhost] = session
        return session

    # -- deliveries ---------------------------------------------------------------------

    def received(self, vhost: str, tag: str, delivery_tag: int, message: Message) -> None:
        """The core delivered `message` from a subscription's queue."""
        sub = self.consumers.get((vhost, tag))
        session = self.sessions[vhost]
        loop = asyncio.get_running_loop()
        if sub is None or self.closed:
            loop.call_soon(self._settle, session, delivery_tag, True)
            return
        sns = sns_message(message, self.broker.clock.wall())
        if not self._accepts(sub, sns):
            loop.call_soon(self._settle, session, delivery_tag, False)
            return
        task = loop.create_task(self._run(sub, sns, session, delivery_tag))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _settle(self, session: Session, delivery_tag: int, requeue: bool) -> None:
        if session.closed:
            return
        with contextlib.suppress(BrokerError):
            if requeue:
                session.nack(delivery_tag, requeue=True)
            else:
                session.ack(delivery_tag)

    def _accepts(self, sub: Subscription, message: SnsMessage) -> bool:
        text = sub.attributes.get("FilterPolicy", "")
        scope = sub.attributes.get("FilterPolicyScope", "MessageAttributes")
        cached = self._filters.get(sub.arn)
        if cached is None or cached[:2] != (text, scope):
            policy = None
            if text:
                try:
                    policy = parse_policy(text, scope)
                except FilterPolicyError:
                    policy = None  # validated when set; an old stored one matches all
            cached = self._filters[sub.arn] = (text, scope, policy)
        policy = cached[2]
        if policy is None:
            return True
        if policy.scope == "MessageBody":
            return policy.matches_body(message.text)
        return policy.matches_attributes(message.attributes)

    async def _run(
        self, sub: Subscription, message: SnsMessage, session: Session, delivery_tag: int
    ) -> None:
        delays = retry_delays(self.retry_policy(sub))
        attempt = 0
        while True:
            try:
                await self.deliver(sub, message)
                break
            except (DeliveryFailed, OSError, BrokerError, TimeoutError) as e:
                if attempt >= len(delays) or sub.arn not in self.registry.subscriptions:
                    await self._give_up(sub, message, e)
                    break
                log.info(
                    "sns delivery to %s failed (%s); retry %d of %d in %.1fs",
                    sub.endpoint,
                    e,
                    attempt + 1,
                    len(delays),
                    delays[attempt],
                )
                await self.broker.clock.sleep(delays[attempt])
                attempt += 1
        self._settle(session, delivery_tag, False)

    def retry_policy(self, sub: Subscription) -> dict[str, object]:
        """The retry policy of a subscription: its own, its topic's, or the default."""
        if sub.protocol not in ("http", "https"):
            return dict(QUEUE_RETRY)
        for text in (
            sub.attributes.get("DeliveryPolicy"),
            self._topic_policy(sub),
        ):
            if text:
                with contextlib.suppress(ValueError):
                    doc = json.loads(text)
                    if isinstance(doc, dict):
                        return http_retry_policy(doc)
        return http_retry_policy({})

    def _topic_policy(self, sub: Subscription) -> str | None:
        topic = self.registry.topics.get((sub.vhost, sub.topic))
        return topic.attributes.get("DeliveryPolicy") if topic is not None else None

    async def _give_up(self, sub: Subscription, message: SnsMessage, error: BaseException) -> None:
        target = ""
        redrive = sub.attributes.get("RedrivePolicy", "")
        if redrive:
            with contextlib.suppress(ValueError, AttributeError):
                target = str(json.loads(redrive).get("deadLetterTargetArn", ""))
        if target:
            try:
                await self.dead_letter(sub, message)
                log.warning(
                    "sns delivery to %s failed (%s): message %s moved to %s",
                    sub.endpoint,
                    error,
                    message.message_id,
                    target,
                )
                return
            except (DeliveryFailed, OSError, BrokerError) as e:
                error = e
        log.warning(
            "sns delivery to %s failed (%s): message %s dropped",
            sub.endpoint,
            error,
            message.message_id,
        )
