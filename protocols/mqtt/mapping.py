"""MQTT <-> core message mapping: PUBLISH to `Message`, `Message` to PUBLISH properties.

What this module owns (README.md, "Message mapping"):

- the exchange every MQTT topic lives on (`amq.topic`) and the headers
  RabbitMQ's MQTT plugin names (`x-mqtt-publish-qos`, ...);
- `to_message`: a PUBLISH as a core `Message` (topic -> routing key through
  `topics.topic_to_routing_key`, MQTT 5 properties -> AMQP properties and
  headers, QoS > 0 -> persistent);
- `publish_properties`: the MQTT 5 properties of any core message, whichever
  protocol published it; `published_qos`: the QoS a message asks for;
- `Annotation`: MQTT facts that no AMQP property carries (the publisher's
  client id for no-local, the RETAIN flag for retain-as-published, the
  absolute expiry), kept in `message.annotations` and stored with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moorage.broker.header_values import header_text
from moorage.broker.message import EXPIRES_AT_ANNOTATION, PERSISTENT, Message, Properties
from moorage.protocols.mqtt.codec import Properties as MQTTProperties
from moorage.protocols.mqtt.codec import Publish
from moorage.protocols.mqtt.topics import topic_to_routing_key

EXCHANGE = "amq.topic"
QOS_HEADER = "x-mqtt-publish-qos"  # as RabbitMQ names it
CORRELATION_HEADER = "x-mqtt-correlation-data"  # correlation data that is not UTF-8
ANN_PUBLISHER = "mqtt.publisher"
ANN_RETAIN = "mqtt.retain"
ANN_PAYLOAD_FORMAT = "mqtt.payload-format"
ANN_RETAINED_COPY = "mqtt.retained-copy"


# -- message annotations -------------------------------------------------------------------


@dataclass(slots=True)
class Annotation:
    """MQTT facts about a message that no AMQP property carries."""

    publisher: str | None = None  # client id, for no-local [MQTT-3.8.3-3]
    retain: bool = False  # the RETAIN flag as published, for retain-as-published
    expires_at: float | None = None  # wall-clock seconds, for the message expiry interval
    payload_format: int | None = None
    retained_copy: bool = False  # sent from the retained store: RETAIN=1 [MQTT-3.3.1-8]


def annotation(message: Message) -> Annotation | None:
    """The MQTT facts in a message's annotations (None when it has none)."""
    a = message.annotations
    if not a:
        return None
    expires_at = a.get(EXPIRES_AT_ANNOTATION)
    payload_format = a.get(ANN_PAYLOAD_FORMAT)
    return Annotation(
        publisher=a.get(ANN_PUBLISHER),
        retain=bool(a.get(ANN_RETAIN, False)),
        expires_at=float(expires_at) if isinstance(expires_at, int | float) else None,
        payload_format=payload_format if isinstance(payload_format, int) else None,
        retained_copy=bool(a.get(ANN_RETAINED_COPY, False)),
    )


def annotate(message: Message, note: Annotation) -> Message:
    """Write `note` into the message's annotations (only what differs from the default)."""
    a: dict[str, Any] = {}
    if note.publisher is not None:
        a[ANN_PUBLISHER] = note.publisher
    if note.retain:
        a[ANN_RETAIN] = True
    if note.expires_at is not None:
        a[EXPIRES_AT_ANNOTATION] = float(note.expires_at)  # every queue honours it
    if note.payload_format is not None:
        a[ANN_PAYLOAD_FORMAT] = note.payload_format
    if note.retained_copy:
        a[ANN_RETAINED_COPY] = True
    message.annotations = a
    return message


# -- message mapping -------------------------------------------------------------------------


def to_message(packet: Publish, client_id: str | None, now: float) -> Message:
    """An MQTT PUBLISH as a core message (README.md, "Message mapping")."""
    p = packet.properties
    headers: dict[str, Any] = dict(p.user_property) if p.user_property else {}
    headers[QOS_HEADER] = packet.qos
    correlation_id = None
    if p.correlation_data is not None:
        try:
            correlation_id = p.correlation_data.decode("utf-8")
        except UnicodeDecodeError:
            headers[CORRELATION_HEADER] = p.correlation_data
        else:
            if len(correlation_id) > 255:
                correlation_id = None
                headers[CORRELATION_HEADER] = p.correlation_data
    expiry = p.message_expiry_interval
    props = Properties(
        content_type=p.content_type,
        headers=headers,
        delivery_mode=PERSISTENT if packet.qos else 1,
        correlation_id=correlation_id,
        reply_to=p.response_topic,
        expiration=str(expiry * 1000) if expiry is not None else None,
    )
    # What `annotate(message, Annotation(...))` writes, without the Annotation.
    a: dict[str, Any] = {}
    if client_id is not None:
        a[ANN_PUBLISHER] = client_id
    if packet.retain:
        a[ANN_RETAIN] = True
    if expiry is not None:
        a[EXPIRES_AT_ANNOTATION] = float(now + expiry)
    if p.payload_format_indicator is not None:
        a[ANN_PAYLOAD_FORMAT] = p.payload_format_indicator
    return Message(
        EXCHANGE, topic_to_routing_key(packet.topic), props, packet.payload, annotations=a
    )


def publish_properties(message: Message, remaining_expiry: int | None) -> MQTTProperties:
    """MQTT 5 PUBLISH properties for a core message (any protocol published it)."""
    p = message.properties
    out = MQTTProperties(content_type=p.content_type, response_topic=p.reply_to)
    note = annotation(message)
    if note is not None:
        out.payload_format_indicator = note.payload_format
    if p.correlation_id is not None:
        out.correlation_data = p.correlation_id.encode()
    for name, value in (p.headers or {}).items():
        if name == CORRELATION_HEADER and isinstance(value, bytes):
            out.correlation_data = value
        elif name != QOS_HEADER and (text := header_text(value)) is not None:
            out.user_property.append((name, text))  # the core's one rule (header_values)
    out.message_expiry_interval = remaining_expiry
    return out


def published_qos(message: Message) -> int:
    """The QoS a message was published with; AMQP messages: persistent = 1 (as RabbitMQ)."""
    headers = message.properties.headers
    if headers:
        qos = headers.get(QOS_HEADER)
        if isinstance(qos, int) and 0 <= qos <= 2:
            return qos
    return 1 if message.persistent else 0
