"""The core `Message` <-> STOMP headers, both ways (RabbitMQ's STOMP plugin's mapping).

- SEND -> message (:func:`message_properties`): headers named in
  `_PROPERTY_SETTERS` set a property; every other header that does not
  describe the frame (`FRAME_HEADERS`) or the queue (`QUEUE_ARGUMENT_HEADERS`)
  becomes a message header. The first occurrence of a header wins (1.2
  "Repeated Header Entries").
- message -> MESSAGE (:func:`message_headers`): the properties under the
  same names, every AMQP header with a text form under its own name (the
  core's one rule, `broker.header_values.header_text`: timestamps as epoch
  seconds, booleans as true/false, byte strings as UTF-8); cached
  on the message for fan-out, and as header lines per version
  (:func:`message_wire_headers`) for the codec's MESSAGE fast path.
- Selectors see a message through :func:`selector_view`: JMS names, message
  headers, then these STOMP names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol

from moorage.broker.errors import PreconditionFailed
from moorage.broker.fifo import GROUP_HEADER
from moorage.broker.header_values import header_text
from moorage.broker.message import PERSISTENT, Message, Properties
from moorage.broker.selector import Selector, message_lookup
from moorage.protocols.stomp.activemq import JMSX_GROUP_ID, expiration_of_expires, timestamp_of
from moorage.protocols.stomp.codec import Frame, header_lines, int_header
from moorage.protocols.stomp.queues import QUEUE_ARGUMENT_HEADERS

# Headers that describe the frame, not the message: never copied into message headers.
FRAME_HEADERS: Final = frozenset(
    {
        "destination",
        "transaction",
        "receipt",
        "content-length",
        "message-id",
        "subscription",
        "ack",
        "redelivered",
        "receipt-id",
    }
)

WIRE_KEYS: Final = {version: f"stomp-wire-{version}" for version in ("1.0", "1.1", "1.2")}


class Sender(Protocol):
    """What a SEND's headers need to know about the connection that sent it."""

    user_name: str

    def reply_to(self, value: str) -> str:
        """The `reply-to` property for a `reply-to` header (temporary queues resolved)."""
        ...

    def wall_ms(self) -> int:
        """The broker clock's wall time in milliseconds (ActiveMQ's `expires` is absolute)."""
        ...


def message_headers(message: Message) -> list[tuple[str, str]]:
    """STOMP headers for a message's properties (cached on the message for fan-out).

    Mapping (RabbitMQ's STOMP plugin): content-type, content-encoding,
    persistent (delivery mode 2), priority, correlation-id, reply-to (a bare
    queue name becomes /reply-queue/<name>), expiration, amqp-message-id
    (message_id), type, timestamp (seconds), user-id, app-id; every AMQP
    header with a text form is passed through under its own name.
    """
    cache = message.wire_cache
    if cache is None:
        cache = message.wire_cache = {}
    headers: list[tuple[str, str]] | None = cache.get("stomp-headers")
    if headers is not None:
        return headers
    headers = []
    p = message.properties
    raw_headers = p.headers or {}
    for name, value in raw_headers.items():
        text = header_text(value)
        if text is not None and name not in FRAME_HEADERS:
            headers.append((str(name), text))
    group = raw_headers.get(GROUP_HEADER)
    if group is not None and JMSX_GROUP_ID not in raw_headers:
        text = header_text(group)
        if text is not None:
            headers.append((JMSX_GROUP_ID, text))  # for JMS clients of an AMQP publisher
    reply_to = p.reply_to
    if reply_to is not None and not reply_to.startswith("/"):
        reply_to = "/reply-queue/" + reply_to
    for name, value in (
        ("content-type", p.content_type),
        ("content-encoding", p.content_encoding),
        ("persistent", "true" if p.delivery_mode == PERSISTENT else None),
        ("priority", None if p.priority is None else str(p.priority)),
        ("correlation-id", p.correlation_id),
        ("reply-to", reply_to),
        ("expiration", p.expiration),
        ("amqp-message-id", p.message_id),
        ("type", p.message_type),
        ("timestamp", header_text(p.timestamp)),
        ("user-id", p.user_id),
        ("app-id", p.app_id),
    ):
        if value is not None:
            headers.append((name, value))
    cache["stomp-headers"] = headers
    return headers


def message_wire_headers(message: Message, version: str) -> bytes:
    """The encodable `message_headers` of a message as header lines for `version`.

    Cached on the message (fan-out encodes them once per version).
    """
    cache = message.wire_cache
    key = WIRE_KEYS.get(version, version)
    if cache is not None:
        wire: bytes | None = cache.get(key)
        if wire is not None:
            return wire
    wire = header_lines(message_headers(message), version)
    cache = message.wire_cache
    assert cache is not None  # message_headers made it
    cache[key] = wire
    return wire


# The STOMP caches of a message without properties: no header in any version.
NO_HEADERS_WIRE: Final[dict[str, Any]] = {
    "stomp-headers": [],
    **dict.fromkeys(WIRE_KEYS.values(), b""),
}


def wire_cache_for(properties: Properties) -> dict[str, Any]:
    """The STOMP entries `message_headers` and `message_wire_headers` (every version)
    leave in the `wire_cache` of a message with these properties."""
    message = Message("", "", properties, b"")
    for version in WIRE_KEYS:
        message_wire_headers(message, version)
    assert message.wire_cache is not None
    return message.wire_cache


def selector_view(message: Message) -> Callable[[str], Any]:
    """Identifier lookup for selectors: JMS names, message headers, then STOMP's names."""

    def stomp_name(name: str) -> Any:
        for header, value in message_headers(message):
            if header == name:
                return value
        return None

    return message_lookup(message, stomp_name)


def selector_filter(selector: Selector) -> Callable[[Message], bool]:
    """A core consumer filter evaluating a selector on each message."""

    def accepts(message: Message) -> bool:
        return selector.matches(selector_view(message))

    return accepts


def message_properties(frame: Frame, sender: Sender) -> Properties:
    """SEND headers -> message properties (the mapping `message_headers` reverses).

    Headers named in `_PROPERTY_SETTERS` set a property; every other header
    that does not describe the frame becomes a message header. The first
    occurrence of a header wins (1.2 "Repeated Header Entries"). Queue
    argument headers are left out; ActiveMQ's `JMSXGroupID` is also set
    as the core's FIFO group header `x-message-group-id` (unless given).
    """
    p = Properties()
    headers: dict[str, Any] = {}
    seen: set[str] = set()
    for name, value in frame.headers:
        if name in FRAME_HEADERS or name in seen or name in QUEUE_ARGUMENT_HEADERS:
            continue
        seen.add(name)
        setter = _PROPERTY_SETTERS.get(name)
        if setter is None:
            headers[name] = value
        elif setter(sender, p, value):
            headers[name] = value  # also kept as a header (ActiveMQ's `expires`)
    group = headers.get(JMSX_GROUP_ID)
    if group is not None and GROUP_HEADER not in headers:
        headers[GROUP_HEADER] = group
    if headers:
        p.headers = headers
    return p


# SEND headers whose properties depend on more than their text: the clock
# (`expires`) or the connection's temporary queues (`reply-to`).
IMPURE_HEADERS: Final = frozenset({"expires", "reply-to"})

_Setter = Callable[[Sender, Properties, str], bool]


def _set(attr: str, convert: Callable[[str], Any] = str) -> _Setter:
    def setter(_sender: Sender, p: Properties, value: str) -> bool:
        setattr(p, attr, convert(value))
        return False

    return setter


def _set_expires(sender: Sender, p: Properties, value: str) -> bool:
    expiration = expiration_of_expires(value, sender.wall_ms())
    if expiration is not None:
        p.expiration = expiration
    return True


def _set_reply_to(sender: Sender, p: Properties, value: str) -> bool:
    p.reply_to = sender.reply_to(value)
    return False


def _set_user_id(sender: Sender, p: Properties, value: str) -> bool:
    if value != sender.user_name:
        raise PreconditionFailed(
            f"user-id header set to '{value}' but authenticated user was '{sender.user_name}'"
        )
    p.user_id = value
    return False


# SEND header -> how it sets a message property; True keeps it as a header as well.
_PROPERTY_SETTERS: Final[dict[str, _Setter]] = {
    "content-type": _set("content_type"),
    "content-encoding": _set("content_encoding"),
    "persistent": _set("delivery_mode", lambda v: PERSISTENT if v.lower() == "true" else 1),
    "priority": _set("priority", lambda v: int_header("priority", v, 0, 255)),
    "correlation-id": _set("correlation_id"),
    "reply-to": _set_reply_to,
    "expiration": _set("expiration", lambda v: str(int_header("expiration", v, 0, 2**31))),
    "expires": _set_expires,
    "amqp-message-id": _set("message_id"),
    "type": _set("message_type"),
    "timestamp": _set("timestamp", timestamp_of),
    "user-id": _set_user_id,
    "app-id": _set("app_id"),
}
