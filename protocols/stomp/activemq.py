"""ActiveMQ's STOMP dialect: the pieces an ActiveMQ (or JMS-over-STOMP) client expects.

- `client-id` on CONNECT is connected at most once per broker, so that a
  durable subscription has one reader: the broker's STOMP registry
  (`Broker.client_ids`) knows the holder, and :func:`refuse_second_holder`
  turns a newcomer away (InvalidClientIDException);
- durable topic subscriptions named by `activemq.subscriptionName` (with the
  client id), beside RabbitMQ's `durable:true` (:func:`durable_subscription_name`);
- `JMSXGroupID`, the message group, is the core's FIFO group header
  `x-message-group-id` (the mapping in `mapping.py` copies it both ways);
- `expires`, an absolute time in milliseconds, becomes an AMQP `expiration`
  (:func:`expiration_of_expires`), and a `timestamp` in milliseconds is
  accepted beside RabbitMQ's seconds (:func:`timestamp_of`).

The other ActiveMQ spellings (`activemq.prefetchSize`, `/topic/` with `>`)
are read where their frames are handled.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final, Protocol

from moorage.broker.client_ids import ClientIds
from moorage.protocols.stomp.codec import Frame, ProtocolError, int_header

# ActiveMQ's message group header, mapped onto the core's FIFO group header.
JMSX_GROUP_ID: Final = "JMSXGroupID"


class ClientHolder(Protocol):
    """A connection that may hold a `client-id`."""

    @property
    def closed(self) -> bool: ...

    @property
    def peer(self) -> str: ...


def refuse_second_holder(client_ids: ClientIds[Any], client_id: str) -> None:
    """Raise ProtocolError when a live connection holds `client_id` already.

    ActiveMQ refuses the newcomer (MQTT would take over instead). A holder
    whose connection is closed no longer counts; the newcomer's `claim`,
    once it is connected, replaces it.
    """
    current: ClientHolder | None = client_ids.holder(client_id)
    if current is not None and not current.closed:
        raise ProtocolError(
            "InvalidClientIDException - client-id already connected",
            f"Client '{client_id}' is already connected (from {current.peer}); "
            "a client-id may be connected only once (ActiveMQ's rule), so that a "
            "durable subscription has one reader.",
        )


def durable_subscription_name(frame: Frame, sub_id: str, client_id: str | None) -> str | None:
    """The queue of a durable topic subscription, or None for a plain one.

    ActiveMQ: `client-id` on CONNECT plus `activemq.subscriptionName` (or
    `durable-subscription-name`). RabbitMQ: `durable:true` (or
    `persistent:true`) with the subscription `id`.
    """
    name = frame.get("activemq.subscriptionName") or frame.get("durable-subscription-name")
    if name is not None:
        if not client_id:
            raise ProtocolError(
                "client-id required",
                "A durable subscription needs a 'client-id' header on CONNECT.",
            )
        return f"stomp-subscription-{client_id}-{name}"
    if (frame.get("durable") or frame.get("persistent") or "").lower() == "true":
        return f"stomp-subscription-{client_id or ''}-{sub_id}"
    return None


def expiration_of_expires(value: str, now_ms: int) -> str | None:
    """ActiveMQ `expires` (absolute ms since the epoch, 0 = never) as an AMQP
    `expiration` (ms from `now_ms`); None for never."""
    at = int_header("expires", value, 0, 2**63)
    if not at:
        return None
    return str(max(0, at - now_ms))


def timestamp_of(value: str) -> datetime:
    """A `timestamp` header: RabbitMQ sends seconds, ActiveMQ milliseconds."""
    seconds = int_header("timestamp", value, 0, 2**63)
    if seconds > 10**11:  # ActiveMQ sends milliseconds, RabbitMQ seconds
        seconds //= 1000
    return datetime.fromtimestamp(seconds, UTC)
