"""STOMP destination names, both dialects, mapped onto exchanges, queues and keys.

- `/queue/name`: SEND to the default exchange with key `name`; SUBSCRIBE
  consumes queue `name`. Both declare it durable when it does not exist.
- `/topic/key`: SEND to `amq.topic` with key `key`; SUBSCRIBE binds a queue of
  its own (exclusive, auto-delete; durable for durable subscriptions) to
  `amq.topic` with `key`, ActiveMQ's `>` wildcard becoming `#`.
- `/exchange/x/key`: SEND to exchange `x` with `key`; SUBSCRIBE binds a queue
  of its own to `x` with `key`.
- `/amq/queue/name`: like `/queue/` but the queue must exist (never declared).
- `/temp-queue/t`: the connection's temporary queue `t` (exclusive, created on
  first use); in a `reply-to` header it becomes `/reply-queue/<real name>`.
- `/reply-queue/q`: SEND to the default exchange with key `q` (SEND only).

Names are percent-decoded after splitting (RabbitMQ: `/queue/a%2Fb` is `a/b`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import unquote

from moorage.protocols.stomp.codec import ProtocolError


class Kind(enum.Enum):
    QUEUE = "/queue/"
    TOPIC = "/topic/"
    EXCHANGE = "/exchange/"
    AMQ_QUEUE = "/amq/queue/"
    TEMP_QUEUE = "/temp-queue/"
    REPLY_QUEUE = "/reply-queue/"


@dataclass(frozen=True, slots=True)
class Destination:
    """A parsed destination: what it is, a name (queue, exchange) and a routing key."""

    kind: Kind
    name: str
    key: str = ""

    def publish_target(self) -> tuple[str, str]:
        """(exchange, routing key) for a SEND (temp queues are resolved by the adapter)."""
        if self.kind is Kind.TOPIC:
            return "amq.topic", self.key
        if self.kind is Kind.EXCHANGE:
            return self.name, self.key
        return "", self.name

    def binding_key(self) -> str:
        """The binding key of a subscription's queue; ActiveMQ's `>` wildcard is `#`."""
        if self.kind is Kind.TOPIC:
            return ".".join("#" if word == ">" else word for word in self.key.split("."))
        return self.key


def parse_destination(text: str | None) -> Destination:
    """Parse a destination header. Raises ProtocolError with a helpful body."""
    if not text:
        raise ProtocolError("missing destination", "The frame needs a 'destination' header.")
    for kind in Kind:
        if text.startswith(kind.value):
            rest = text[len(kind.value) :]
            break
    else:
        raise ProtocolError(
            "unknown destination",
            f"'{text}' is not a valid destination. Use /queue/<name>, /topic/<key>, "
            "/exchange/<exchange>[/<key>], /amq/queue/<name>, /temp-queue/<name> or "
            "/reply-queue/<name>.",
        )
    if kind is Kind.EXCHANGE:
        name, _, key = rest.partition("/")
        if not name:
            raise ProtocolError("invalid destination", f"'{text}' names no exchange.")
        return Destination(kind, unquote(name), unquote(key))
    if not rest or (kind is not Kind.TOPIC and "/" in rest):
        raise ProtocolError(
            "invalid destination",
            f"'{text}' needs exactly one name after '{kind.value}' (percent-encode a '/').",
        )
    if kind is Kind.TOPIC:
        return Destination(kind, "", unquote(rest))
    return Destination(kind, unquote(rest))


def destination_of(exchange: str, routing_key: str) -> str:
    """The `destination` header of a MESSAGE for a message published to exchange/key."""
    if exchange == "":
        return "/queue/" + routing_key
    if exchange == "amq.topic":
        return "/topic/" + routing_key
    return f"/exchange/{exchange}/{routing_key}"
