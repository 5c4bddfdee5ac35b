"""Dead-lettering: republish a message that left a queue unconsumed, as RabbitMQ does.

Theory of operation
-------------------
A queue with `x-dead-letter-exchange` hands a message here when it is
rejected without requeue (`rejected`), expires (`expired`), is pushed out or
refused by a length limit (`maxlen`) or was delivered `x-delivery-limit`
times without an ack (`delivery_limit`). `dead_letter` builds a new message
with RabbitMQ's headers and routes it from the dead-letter exchange:

- `x-death`: an array of tables, most recent first, one per (queue, reason)
  with `count`, `reason`, `queue`, `time`, `exchange`, `routing-keys` and,
  when the message had a per-message TTL, `original-expiration`. A repeated
  death from the same queue for the same reason increments `count` and moves
  the table to the front.
- `x-first-death-reason`, `-queue`, `-exchange` (set once) and
  `x-last-death-reason`, `-queue`, `-exchange` (RabbitMQ 3.13+).
- The `expiration` property is removed (kept as `original-expiration`).

It is routed with `x-dead-letter-routing-key` when set, else with the
message's own routing key. A message that would come back to a queue it
already died in, with no rejection anywhere in its history, is a cycle and is
dropped for that queue (RabbitMQ's rule), so `x-message-ttl` loops without a
consumer cannot spin. A missing dead-letter exchange drops the message.

The caller removes the original entry from its queue (and store) after this
returns: the copies are queued first, so a crash in between duplicates a
message rather than loses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from moorage.broker.arguments import QueueOptions
from moorage.broker.message import Message

REASONS = ("rejected", "expired", "maxlen", "delivery_limit")


class DeadLetterTarget(Protocol):
    """A queue a dead-lettered copy reaches (`broker.queue.Queue`)."""

    @property
    def name(self) -> str: ...
    def publish(self, message: Message) -> int: ...


class DeadLetterRouter(Protocol):
    """Routing by exchange name (`broker.vhost.VirtualHost.route_from`)."""

    def route_from(self, exchange: str, message: Message) -> Sequence[DeadLetterTarget]: ...


class DeadLetterSource(Protocol):
    """The queue a message dies in (`broker.queue.Queue`)."""

    @property
    def name(self) -> str: ...
    @property
    def options(self) -> QueueOptions: ...
    @property
    def vhost(self) -> DeadLetterRouter: ...


def dead_lettered_copy(message: Message, queue: str, reason: str, routing_key: str) -> Message:
    """The message as it leaves `queue` for `reason`, with x-death updated."""
    copy = message.copy()
    props = copy.properties
    headers: dict[str, Any] = props.headers if props.headers is not None else {}
    props.headers = headers
    deaths = [dict(d) for d in headers.get("x-death") or () if isinstance(d, dict)]
    death: dict[str, Any] | None = None
    for i, item in enumerate(deaths):
        if item.get("queue") == queue and item.get("reason") == reason:
            death = deaths.pop(i)
            death["count"] = int(death.get("count", 0)) + 1
            death["time"] = datetime.now(UTC).replace(microsecond=0)
            break
    if death is None:
        death = {
            "count": 1,
            "reason": reason,
            "queue": queue,
            "time": datetime.now(UTC).replace(microsecond=0),
            "exchange": message.exchange,
            "routing-keys": [message.routing_key],
        }
        if props.expiration is not None:
            death["original-expiration"] = props.expiration
    deaths.insert(0, death)
    headers["x-death"] = deaths
    headers.setdefault("x-first-death-reason", reason)
    headers.setdefault("x-first-death-queue", queue)
    headers.setdefault("x-first-death-exchange", message.exchange)
    headers["x-last-death-reason"] = reason
    headers["x-last-death-queue"] = queue
    headers["x-last-death-exchange"] = message.exchange
    props.expiration = None
    copy.routing_key = routing_key
    return copy


def _is_cycle(message: Message, target: str) -> bool:
    """RabbitMQ: back to a queue it died in, and never rejected on the way."""
    deaths = message.header("x-death") or ()
    seen = False
    for death in deaths:
        if not isinstance(death, dict):
            continue
        if death.get("reason") == "rejected":
            return False
        if death.get("queue") == target:
            seen = True
    return seen


def dead_letter(queue: DeadLetterSource, message: Message, reason: str) -> int:
    """Republish `message` through `queue`'s dead-letter exchange; returns queues reached.

    Does nothing (0) when the queue has no dead-letter exchange or it does
    not exist (`route_from` reaches no queue then). Never raises a
    BrokerError: dead-lettering is best effort.
    """
    options = queue.options
    exchange_name = options.dead_letter_exchange
    if exchange_name is None:
        return 0
    routing_key = options.dead_letter_routing_key
    copy = dead_lettered_copy(
        message, queue.name, reason, message.routing_key if routing_key is None else routing_key
    )
    copy.exchange = exchange_name
    reached = 0
    for target in queue.vhost.route_from(exchange_name, copy):
        if _is_cycle(copy, target.name):
            continue
        target.publish(copy)
        reached += 1
    return reached
