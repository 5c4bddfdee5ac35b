"""MQTT retained messages on the core's retained store (`broker.retained`).

The core keeps each vhost's retained messages (one per topic, written to the
store, found through a word tree); this module holds MQTT's rules on top:

- `retain`: a PUBLISH with RETAIN=1 replaces the topic's retained message,
  and one with an empty payload clears it [MQTT-3.3.1-5..7];
- `retained_for`: what a new subscription receives. The filter becomes a
  binding key (`topics.filter_to_binding_key`); the core walks only the
  branches it can match, skips `$` topics for a leading wildcard
  [MQTT-4.7.2-1] and drops expired messages [MQTT-3.3.2-5]; `topics.matches`
  confirms each result with MQTT's own grammar;
- `retained_copy`: the copy a subscriber is sent, with RETAIN=1
  [MQTT-3.3.1-8] and without the publisher's id (no-local does not apply).

The core reads them back after a restart (`Broker.recover_retained`, which
the registry calls); this module never touches the store.

Topics are the store's keys, as they always were (`Store.put_retained`).
"""

from __future__ import annotations

from moorage.broker.message import Message
from moorage.broker.retained import RetainedMessage
from moorage.broker.vhost import VirtualHost
from moorage.protocols.mqtt.mapping import Annotation, annotate, annotation
from moorage.protocols.mqtt.topics import filter_to_binding_key, matches

HIDDEN_PREFIX = "$"  # topics a leading wildcard does not match [MQTT-4.7.2-1]


def retain(vhost: VirtualHost, topic: str, message: Message, *, persist: bool = True) -> bool:
    """Keep (or with an empty payload, clear) a topic's retained message [MQTT-3.3.1-5..7].

    The message is written to the store unless `persist` is False.

    Returns:
        True when something was queued to the store, so that a PUBACK/PUBREC
        must wait for `when_durable`.
    """
    return vhost.retained.put(topic, message, persist=persist)


def retained_for(vhost: VirtualHost, topic_filter: str, now: float) -> list[RetainedMessage]:
    """The live retained messages that match `topic_filter` (not shared), oldest topic first."""
    found = vhost.retained.match(
        filter_to_binding_key(topic_filter), now, hidden_prefix=HIDDEN_PREFIX
    )
    return [item for item in found if matches(topic_filter, item.topic)]


def retained_copy(original: Message) -> Message:
    """The message a subscriber receives for a retained message."""
    note = annotation(original) or Annotation()
    copy = Message(original.exchange, original.routing_key, original.properties, original.body)
    return annotate(
        copy,
        Annotation(
            publisher=None,  # no-local does not apply to retained messages
            retain=True,
            expires_at=note.expires_at,
            payload_format=note.payload_format,
            retained_copy=True,
        ),
    )
