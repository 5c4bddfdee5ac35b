"""MQTT topics <-> AMQP routing keys, and MQTT's own topic-filter matching.

Translation follows RabbitMQ's MQTT plugin (`mqtt_to_amqp` in
`rabbit_mqtt_processor.erl`): `/` and `.` swap places, so the mapping is a
bijection and a topic survives the trip to a routing key and back; in
filters `+` becomes `*` and `#` stays `#`.

Matching is done again on delivery (`SessionState.matching`), because one
session queue carries the messages of all its subscriptions and the adapter
must know which of them matched (granted QoS, subscription identifiers,
no-local, retain-as-published), and because MQTT's `$` rule [MQTT-4.7.2-1]
is not an AMQP rule: a topic trie finds the candidates, `matches` confirms
them.
"""

from __future__ import annotations

_SWAP = str.maketrans({"/": ".", ".": "/"})

# The swap is its own inverse, so one cache serves both directions. Caches on
# the hot path are bounded: cleared when full (topics are usually few).
_SWAPPED: dict[str, str] = {}
_MATCHES: dict[tuple[str, str], bool] = {}
CACHE_LIMIT = 4096


def topic_to_routing_key(topic: str) -> str:
    """`a/b.c` -> `a.b/c` (RabbitMQ's swap of `/` and `.`)."""
    swapped = _SWAPPED.get(topic)
    if swapped is None:
        swapped = topic.translate(_SWAP)
        if len(_SWAPPED) >= CACHE_LIMIT:
            _SWAPPED.clear()
        _SWAPPED[topic] = swapped
    return swapped


def routing_key_to_topic(routing_key: str) -> str:
    """The inverse of `topic_to_routing_key`."""
    return topic_to_routing_key(routing_key)


def filter_to_binding_key(topic_filter: str) -> str:
    """`a/+/#` -> `a.*.#`."""
    return ".".join(
        "*" if level == "+" else level.translate(_SWAP) for level in topic_filter.split("/")
    )


def split_shared(topic_filter: str) -> tuple[str | None, str]:
    """`$share/group/a/b` -> ("group", "a/b"); any other filter -> (None, filter)."""
    if topic_filter.startswith("$share/"):
        _, group, rest = topic_filter.split("/", 2)
        return group, rest
    return None, topic_filter


def matches(topic_filter: str, topic: str) -> bool:
    """Does `topic` match `topic_filter` (section 4.7)? (`match_uncached`, cached)."""
    key = (topic_filter, topic)
    result = _MATCHES.get(key)
    if result is None:
        result = match_uncached(topic_filter, topic)
        if len(_MATCHES) >= CACHE_LIMIT:
            _MATCHES.clear()
        _MATCHES[key] = result
    return result


def match_uncached(topic_filter: str, topic: str) -> bool:
    """Does `topic` match `topic_filter` (section 4.7)?

    `+` matches one level, `#` the parent and any number of levels below
    [MQTT-4.7.1-2]; filters starting with a wildcard do not match topics
    starting with `$` [MQTT-4.7.2-1].
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels):
            return False
        if level != "+" and level != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)
