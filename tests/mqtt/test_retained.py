"""Retained messages on the core's word tree (`broker/retained.py`) and MQTT's rules over it.

The tree must give exactly what testing every retained topic with
`topics.matches` gave, and a SUBSCRIBE must cost the branches its filter can
match, not the number of retained topics: counted in tree nodes visited
(`RetainedMessages.last_visits`), never in time.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from moorage.broker.message import EXPIRES_AT_ANNOTATION, Message, Properties
from moorage.broker.retained import RetainedMessages
from moorage.protocols.mqtt.codec import Subscription
from moorage.protocols.mqtt.retained import retained_for
from moorage.protocols.mqtt.session_state import SessionState, SubscriptionState
from moorage.protocols.mqtt.topics import match_uncached, split_shared, topic_to_routing_key


class _Store:
    """Records the retained writes a `RetainedMessages` asks for."""

    def __init__(self) -> None:
        self.retained: dict[tuple[str, str], int] = {}

    def put_retained(self, vhost: str, topic: str, message_id: int) -> None:
        self.retained[vhost, topic] = message_id

    def delete_retained(self, vhost: str, topic: str) -> None:
        del self.retained[vhost, topic]


class _VHost:
    """A vhost as `RetainedMessages` (`RetainedOwner`) and `retained_for` see it."""

    def __init__(self) -> None:
        self.name = "/"
        self.store: Any = _Store()
        self.bodies: dict[int, bytes] = {}
        self.retained = RetainedMessages(self)

    def store_body(self, message: Message) -> int:
        if not message.store_id:
            message.store_id = len(self.bodies) + 1
            self.bodies[message.store_id] = message.body
        return message.store_id


def _message(topic: str, body: bytes = b"x", **annotations: Any) -> Message:
    return Message(
        "amq.topic", topic_to_routing_key(topic), Properties(), body, annotations=annotations
    )


def _retain(vhost: _VHost, topic: str, body: bytes = b"x", **annotations: Any) -> bool:
    return vhost.retained.put(topic, _message(topic, body, **annotations))


def _topics(vhost: Any, topic_filter: str, now: float = 0.0) -> list[str]:
    return [item.topic for item in retained_for(vhost, topic_filter, now)]


def test_subscribe_visits_the_matching_branches_not_every_retained_topic():
    vhost = _VHost()
    for i in range(10_000):
        topic = f"sensors/{i}/temperature"
        vhost.retained.put(topic, _message(topic), persist=False)
    for room in ("kitchen", "hall", "attic"):
        _retain(vhost, f"home/{room}/temperature")
    _retain(vhost, "home/kitchen/humidity")
    assert len(vhost.retained) == 10_004

    found = _topics(vhost, "home/+/temperature")

    assert found == ["home/kitchen/temperature", "home/hall/temperature", "home/attic/temperature"]
    # root, home, its three rooms, and one leaf per room that has a temperature
    assert vhost.retained.last_visits <= 10
    _topics(vhost, "home/#")
    assert vhost.retained.last_visits <= 20
    _topics(vhost, "sensors/17/temperature")
    assert vhost.retained.last_visits == 4  # one node per level, and the root


def test_a_leading_wildcard_skips_dollar_topics_without_walking_them():
    vhost = _VHost()
    for i in range(1000):
        vhost.retained.put(f"$SYS/broker/{i}", _message(f"$SYS/broker/{i}"), persist=False)
    _retain(vhost, "a")
    assert _topics(vhost, "#") == ["a"]
    assert vhost.retained.last_visits <= 4  # [MQTT-4.7.2-1], and the $SYS branch is not entered
    assert len(_topics(vhost, "$SYS/#")) == 1000


def test_retained_writes_and_clears_go_to_the_store_once():
    vhost = _VHost()
    assert _retain(vhost, "a/b", b"one")
    first = vhost.store.retained["/", "a/b"]
    assert _retain(vhost, "a/b", b"two")  # replaced: a new body, the same topic
    assert vhost.store.retained["/", "a/b"] != first
    assert vhost.retained.put("a/b", _message("a/b", b""))  # empty payload clears it
    assert vhost.store.retained == {}
    assert not vhost.retained.put("a/b", _message("a/b", b""))  # nothing left to clear
    assert not vhost.retained.put("m", _message("m"), persist=False)
    assert vhost.store.retained == {}


def test_expired_retained_messages_are_dropped_when_found():
    vhost = _VHost()
    _retain(vhost, "a/old", **{EXPIRES_AT_ANNOTATION: 100.0})
    _retain(vhost, "a/new", **{EXPIRES_AT_ANNOTATION: 300.0})
    assert _topics(vhost, "a/+", now=50.0) == ["a/old", "a/new"]
    assert _topics(vhost, "a/+", now=200.0) == ["a/new"]  # [MQTT-3.3.2-5]
    assert vhost.retained.get("a/old") is None
    assert ("/", "a/old") not in vhost.store.retained


def test_a_replaced_topic_keeps_its_place_and_a_cleared_one_goes_to_the_end():
    vhost = _VHost()
    for topic in ("t/1", "t/2", "t/3"):
        _retain(vhost, topic)
    _retain(vhost, "t/1", b"again")
    assert _topics(vhost, "t/#") == ["t/1", "t/2", "t/3"]
    vhost.retained.clear("t/2")
    _retain(vhost, "t/2")
    assert _topics(vhost, "t/#") == ["t/1", "t/3", "t/2"]


def test_clearing_prunes_the_branch():
    vhost = _VHost()
    _retain(vhost, "a/b/c/d")
    vhost.retained.clear("a/b/c/d")
    _topics(vhost, "#")
    assert vhost.retained.last_visits <= 2  # only the root is left


# Topics and filters from a small alphabet, so that they collide often; `*` and
# `.` check that the translation to routing keys changes nothing.
_LEVEL = st.text(st.sampled_from("ab$*."), max_size=2)
# (a topic name is never empty [MQTT-4.7.3-1]: the codec refuses one)
_TOPICS = st.lists(_LEVEL, min_size=1, max_size=4).map("/".join).filter(bool)
_FILTER_LEVEL = st.one_of(_LEVEL, st.just("+"))
_FILTERS = st.builds(
    lambda levels, tail: "/".join(levels + tail),
    st.lists(_FILTER_LEVEL, min_size=1, max_size=4),
    st.sampled_from([[], ["#"]]),
) | st.just("#")


@settings(max_examples=400, deadline=None)
@given(st.lists(_TOPICS, max_size=12, unique=True), _FILTERS)
def test_the_tree_finds_what_matching_every_topic_finds(topics: list[str], topic_filter: str):
    vhost = _VHost()
    for topic in topics:
        _retain(vhost, topic)
    expected = [topic for topic in topics if match_uncached(topic_filter, topic)]
    assert _topics(vhost, topic_filter) == expected


@settings(max_examples=400, deadline=None)
@given(st.lists(_FILTERS, max_size=8), st.lists(_FILTERS, max_size=3), _TOPICS)
def test_session_matching_finds_what_matching_every_subscription_finds(
    filters: list[str], removed: list[str], topic: str
):
    state = SessionState("/", "c")
    for name in [*filters, "$share/g/#"]:
        group, topic_filter = split_shared(name)
        state.subscribe(SubscriptionState(Subscription(name), None, group, topic_filter))
    routing_key = topic_to_routing_key(topic)
    state.matching(topic, routing_key)  # cached now: every change below must forget it
    for name in removed:
        state.unsubscribe(name)
    expected = {
        name
        for name, sub in state.subscriptions.items()
        if sub.group is None and match_uncached(sub.topic_filter, topic)
    }
    found = state.matching(topic, routing_key)
    assert {sub.options.topic_filter for sub in found} == expected
    restored = SessionState.decode("/", "c", state.encode())  # as after a restart
    assert {sub.options.topic_filter for sub in restored.matching(topic, routing_key)} == expected
