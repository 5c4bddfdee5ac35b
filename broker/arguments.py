"""Queue arguments: RabbitMQ's `x-` names, validated once into `QueueOptions`.

Theory of operation
-------------------
`parse_queue_arguments` is called by `VirtualHost.declare_queue` before a
queue exists (and again by recovery). It checks every argument Moorage knows
the way RabbitMQ does -- a bad value is a 406 PRECONDITION_FAILED whose text
names the argument, as `invalid arg 'x-message-ttl' for queue 'q' in vhost
'/': {value_negative,-1}` -- and returns a `QueueOptions` that the queue reads
on its hot paths instead of looking into the argument table.

Unknown `x-` arguments are accepted and ignored, as RabbitMQ does for classic
queues; so are the known ones that mean nothing here (`x-queue-mode`,
`x-queue-master-locator`, ...). What RabbitMQ refuses is refused: a queue
type it does not know, a quorum queue that is not durable or is exclusive.

The full list, with RabbitMQ and SQS equivalents, is docs/queue-arguments.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from moorage.broker.errors import PreconditionFailed

OVERFLOW_MODES = ("drop-head", "reject-publish", "reject-publish-dlx")
QUEUE_TYPES = ("classic", "quorum", "fifo")
QUORUM_DELIVERY_LIMIT = 20  # RabbitMQ 4's default for quorum queues
MAX_DELAY_MS = 2**32 - 1  # the delayed-message plugin's ceiling (about 49 days)
DEDUP_WINDOW = 300.0  # seconds a deduplication id is remembered (SQS: 5 minutes)

# Arguments RabbitMQ clients send that have no effect here but must be accepted.
IGNORED_ARGUMENTS = frozenset(
    {
        "x-queue-mode",  # lazy: storage always pages
        "x-queue-master-locator",
        "x-queue-leader-locator",
        "x-quorum-initial-group-size",
        "x-quorum-target-group-size",
        "x-max-in-memory-length",
        "x-max-in-memory-bytes",
        "x-dead-letter-strategy",
        "x-queue-version",
        "x-ha-policy",
    }
)


@dataclass(slots=True)
class QueueOptions:
    """A queue's validated arguments (None / 0 / False: feature off)."""

    queue_type: str = "classic"
    message_ttl: int | None = None  # ms
    expires: int | None = None  # ms of disuse before the queue is deleted
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str = "drop-head"
    delivery_limit: int | None = None
    max_priority: int | None = None
    single_active_consumer: bool = False
    consumer_timeout: int | None = None  # ms
    delivery_delay: int = 0  # ms
    content_based_deduplication: bool = False

    @property
    def fifo(self) -> bool:
        return self.queue_type == "fifo"

    @property
    def limited(self) -> bool:
        return self.max_length is not None or self.max_length_bytes is not None

    @property
    def in_memory(self) -> bool:
        """Must every ready entry stay in RAM? (no paging: see docs/queue-arguments.md)"""
        return self.fifo or self.max_priority is not None or self.limited


class _Invalid(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float | Decimal):
        return "double"
    if isinstance(value, str | bytes):
        return "longstr"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def _integer(value: Any, *, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"{{unacceptable_type,{_type_name(value)}}}")
    if value < minimum:
        raise _Invalid(f"{{value_negative,{value}}}" if minimum == 0 else f"{{value_zero,{value}}}")
    if maximum is not None and value > maximum:
        raise _Invalid(f"{{value_too_large,{value},{maximum}}}")
    return value


def _string(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise _Invalid(f"{{unacceptable_type,{_type_name(value)}}}")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"{{unacceptable_type,{_type_name(value)}}}")
    return value


def parse_queue_arguments(
    arguments: Mapping[str, Any],
    *,
    queue: str,
    vhost: str,
    durable: bool = True,
    exclusive: bool = False,
) -> QueueOptions:
    """Validate a queue's argument table and return its `QueueOptions`.

    Raises:
        PreconditionFailed: a known argument has a bad type or value, a
            dead-letter routing key comes without a dead-letter exchange, the
            queue type is unknown, or the type does not allow the declaration
            (a quorum or fifo queue must be durable and not exclusive).
    """
    options = QueueOptions()
    arg = ""
    try:
        for arg, value in arguments.items():
            _apply(options, arg, value)
    except _Invalid as e:
        raise PreconditionFailed(
            f"invalid arg '{arg}' for queue '{queue}' in vhost '{vhost}': {e.reason}"
        ) from None
    if options.dead_letter_routing_key is not None and options.dead_letter_exchange is None:
        raise PreconditionFailed(  # RabbitMQ's check and words
            f"invalid arg 'x-dead-letter-routing-key' for queue '{queue}' in vhost '{vhost}': "
            "routing_key_but_no_dlx_defined"
        )
    if options.queue_type in ("quorum", "fifo"):
        if not durable:
            raise PreconditionFailed(
                f"invalid property 'non-durable' for queue '{queue}' in vhost '{vhost}'"
            )
        if exclusive:
            raise PreconditionFailed(
                f"invalid property 'exclusive-owner' for queue '{queue}' in vhost '{vhost}'"
            )
        if options.queue_type == "quorum" and options.delivery_limit is None:
            options.delivery_limit = QUORUM_DELIVERY_LIMIT
    return options


def _apply(options: QueueOptions, arg: str, value: Any) -> None:  # noqa: C901 - one table
    if arg == "x-queue-type":
        name = _string(value)
        if name not in QUEUE_TYPES:
            raise _Invalid(f"{{unknown_queue_type,{name}}} (supported: {', '.join(QUEUE_TYPES)})")
        options.queue_type = name
    elif arg == "x-message-ttl":
        options.message_ttl = _integer(value)
    elif arg == "x-expires":
        options.expires = _integer(value, minimum=1)
    elif arg == "x-dead-letter-exchange":
        options.dead_letter_exchange = _string(value)
    elif arg == "x-dead-letter-routing-key":
        options.dead_letter_routing_key = _string(value)
    elif arg == "x-max-length":
        options.max_length = _integer(value)
    elif arg == "x-max-length-bytes":
        options.max_length_bytes = _integer(value)
    elif arg == "x-overflow":
        mode = _string(value)
        if mode not in OVERFLOW_MODES:
            raise _Invalid(f"{{unacceptable_value,{mode}}}")
        options.overflow = mode
    elif arg == "x-delivery-limit":
        options.delivery_limit = _integer(value)
    elif arg == "x-max-priority":
        options.max_priority = _integer(value, minimum=1, maximum=255)
    elif arg == "x-single-active-consumer":
        options.single_active_consumer = _boolean(value)
    elif arg == "x-consumer-timeout":
        options.consumer_timeout = _integer(value, minimum=1)
    elif arg == "x-delivery-delay":
        options.delivery_delay = _integer(value, maximum=MAX_DELAY_MS)
    elif arg == "x-content-based-deduplication":
        options.content_based_deduplication = _boolean(value)
    # anything else (IGNORED_ARGUMENTS, other x- names, non-x names) is accepted as is


def message_ttl_ms(expiration: str | None) -> int | None:
    """A message's `expiration` property as milliseconds, None if absent or malformed."""
    if expiration is None:
        return None
    try:
        ttl = int(expiration)
    except ValueError:
        return None
    return ttl if ttl >= 0 else None
