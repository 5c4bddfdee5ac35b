"""The queues STOMP declares for `/queue/` destinations, and their argument headers.

A SEND or SUBSCRIBE to `/queue/<name>` declares the queue durable when it
does not exist, as RabbitMQ's STOMP plugin does; `x-` headers named in
`QUEUE_ARGUMENT_HEADERS` (docs/queue-arguments.md) are the queue arguments
of that declare, and are never copied into message headers. An existing
queue must agree with every argument given (:func:`ensure_queue`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from moorage.broker.errors import NotFound, PreconditionFailed
from moorage.broker.queue import Queue
from moorage.broker.session import Session
from moorage.protocols.stomp.codec import Frame, ProtocolError

# Queue argument header -> how its text becomes the argument's value.
QUEUE_ARGUMENT_HEADERS: Final[dict[str, Callable[[str], Any]]] = {
    "x-queue-type": str,
    "x-message-ttl": int,
    "x-expires": int,
    "x-dead-letter-exchange": str,
    "x-dead-letter-routing-key": str,
    "x-max-length": int,
    "x-max-length-bytes": int,
    "x-overflow": str,
    "x-delivery-limit": int,
    "x-max-priority": int,
    "x-single-active-consumer": lambda v: v.lower() == "true",
    "x-consumer-timeout": int,
    "x-delivery-delay": int,
    "x-content-based-deduplication": lambda v: v.lower() == "true",
}


def queue_arguments(frame: Frame) -> dict[str, Any]:
    """Queue arguments from a frame's `x-` queue argument headers (first occurrence wins)."""
    arguments: dict[str, Any] = {}
    for name, value in frame.headers:
        convert = QUEUE_ARGUMENT_HEADERS.get(name)
        if convert is None or name in arguments:
            continue
        try:
            arguments[name] = convert(value)
        except ValueError:
            raise ProtocolError(
                f"invalid '{name}' header", f"'{name}' must be an integer, not {value!r}."
            ) from None
    return arguments


def ensure_queue(
    session: Session, name: str, arguments: dict[str, Any] | None = None
) -> tuple[Queue, bool]:
    """Declare /queue/<name> as a durable queue unless it exists; returns
    (the queue, True if this call declared it).

    `arguments` (from queue argument headers) are used to declare it; an
    existing queue must have the same value for each one given (else
    PreconditionFailed, as an inequivalent AMQP redeclare); the others
    are not checked.
    """
    try:
        existing, _, _ = session.declare_queue(name, passive=True)  # exclusive-owner check
    except NotFound:
        existing = None
    if existing is None:
        declared, _, _ = session.declare_queue(name, durable=True, arguments=arguments)
        return declared, True
    for arg, value in (arguments or {}).items():
        current = existing.arguments.get(arg)
        if arg == "x-queue-type":
            current = existing.options.queue_type
        if current != value:
            raise PreconditionFailed(
                f"inequivalent arg '{arg}' for queue '{name}' in vhost "
                f"'{session.vhost.name}': received {value!r} but current is {current!r}"
            )
    return existing, False
