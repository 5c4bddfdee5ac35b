"""paho-mqtt (3.1.1 and 5.0) against the broker over real sockets: one test per feature."""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from moorage.protocols.mqtt.dead_letters import INTERNAL_USER
from tests.mqtt.conftest import MQTTBroker, PahoClient

Make = Callable[..., PahoClient]
BOTH = pytest.mark.parametrize("protocol", [paho.MQTTv311, paho.MQTTv5], ids=["3.1.1", "5.0"])


def publish_props(**values: object) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(props, name, value)
    return props


@BOTH
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_subscribe_each_qos(paho_client: Make, protocol: int, qos: int) -> None:
    sub = paho_client("sub", protocol=protocol)
    sub.connect()
    assert [
        int(rc.value) if hasattr(rc, "value") else rc for rc in sub.subscribe("a/+/c", qos)
    ] == [qos]
    pub = paho_client("pub", protocol=protocol)
    pub.connect()
    pub.publish("a/b/c", b"hello", qos)
    msg = sub.get()
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == ("a/b/c", b"hello", qos, False)


@BOTH
def test_qos_is_downgraded_to_the_subscription(paho_client: Make, protocol: int) -> None:
    sub = paho_client("sub", protocol=protocol)
    sub.connect()
    sub.subscribe("t", 1)
    pub = paho_client("pub", protocol=protocol)
    pub.connect()
    pub.publish("t", b"x", 2)
    assert sub.get().qos == 1


def test_wildcards_and_dollar_topics(paho_client: Make) -> None:
    sub = paho_client("sub")
    sub.connect()
    sub.subscribe("#", 0)
    sub.subscribe("sport/+", 0)
    pub = paho_client("pub")
    pub.connect()
    pub.publish("$SYS/x", b"hidden", 1)  # [MQTT-4.7.2-1]: # does not match $ topics
    pub.publish("sport", b"parent", 1)
    pub.publish("a.b/c", b"dots", 1)
    first, second = sub.get(), sub.get()
    assert (first.topic, first.payload) == ("sport", b"parent")
    assert (second.topic, second.payload) == ("a.b/c", b"dots")  # `.` survives the mapping


def test_overlapping_subscriptions_deliver_once_at_max_qos(paho_client: Make) -> None:
    sub = paho_client("sub", protocol=paho.MQTTv5)
    sub.connect()
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = 7
    sub.client.subscribe("a/#", 1, properties=props)
    sub.subacks.get(timeout=3)
    props2 = Properties(PacketTypes.SUBSCRIBE)
    props2.SubscriptionIdentifier = 9
    sub.client.subscribe("a/b", 0, properties=props2)
    sub.subacks.get(timeout=3)
    pub = paho_client("pub", protocol=paho.MQTTv5)
    pub.connect()
    pub.publish("a/b", b"x", 2)
    msg = sub.get()
    assert msg.qos == 1
    assert sorted(msg.properties.SubscriptionIdentifier) == [7, 9]
    sub.sync()
    assert sub.nothing_more()


@BOTH
def test_retained_messages(paho_client: Make, protocol: int) -> None:
    pub = paho_client("pub", protocol=protocol)
    pub.connect()
    pub.publish("home/kitchen/temp", b"21", 1, retain=True)
    pub.publish("home/hall/temp", b"19", 0, retain=True)
    sub = paho_client("sub", protocol=protocol)
    sub.connect()
    sub.subscribe("home/+/temp", 1)
    got = {(m.topic, m.payload, m.retain) for m in (sub.get(), sub.get())}
    assert got == {("home/kitchen/temp", b"21", True), ("home/hall/temp", b"19", True)}
    # live messages are not flagged retained, and an empty payload clears the retained one
    pub.publish("home/kitchen/temp", b"", 1, retain=True)
    cleared = sub.get()
    assert (cleared.payload, cleared.retain) == (b"", False)
    late = paho_client("late", protocol=protocol)
    late.connect()
    late.subscribe("home/#", 1)
    msg = late.get()
    assert (msg.topic, msg.payload) == ("home/hall/temp", b"19")
    late.sync()
    assert late.nothing_more()


def test_retain_handling_and_retain_as_published(paho_client: Make) -> None:
    pub = paho_client("pub", protocol=paho.MQTTv5)
    pub.connect()
    pub.publish("r/t", b"kept", 1, retain=True)
    sub = paho_client("sub", protocol=paho.MQTTv5)
    sub.connect()
    sub.subscribe("r/t", options=SubscribeOptions(qos=1, retainHandling=2))
    sub.sync()
    assert sub.nothing_more()
    sub.subscribe("r/#", options=SubscribeOptions(qos=1, retainHandling=1))
    assert sub.get().payload == b"kept"
    sub.subscribe("r/#", options=SubscribeOptions(qos=1, retainHandling=1, retainAsPublished=True))
    sub.sync()
    assert sub.nothing_more()  # existing subscription: handling 1 sends nothing
    pub.publish("r/t", b"live", 1, retain=True)
    msg = sub.get()
    assert (msg.payload, msg.retain) == (b"live", True)


def test_no_local(paho_client: Make) -> None:
    c = paho_client("self", protocol=paho.MQTTv5)
    c.connect()
    c.subscribe("loop", options=SubscribeOptions(qos=1, noLocal=True))
    c.publish("loop", b"mine", 1)
    other = paho_client("other", protocol=paho.MQTTv5)
    other.connect()
    other.publish("loop", b"theirs", 1)
    assert c.get().payload == b"theirs"


def test_properties_round_trip(paho_client: Make) -> None:
    sub = paho_client("sub", protocol=paho.MQTTv5)
    sub.connect()
    sub.subscribe("req", 1)
    pub = paho_client("pub", protocol=paho.MQTTv5)
    pub.connect()
    props = publish_props(
        ContentType="application/json",
        ResponseTopic="reply/here",
        CorrelationData=b"\x00\xffcorr",
        UserProperty=[("k", "v"), ("n", "1")],
        MessageExpiryInterval=60,
        PayloadFormatIndicator=1,
    )
    pub.publish("req", b"{}", 1, properties=props)
    msg = sub.get()
    p = msg.properties
    assert p.ContentType == "application/json"
    assert p.ResponseTopic == "reply/here"
    assert p.CorrelationData == b"\x00\xffcorr"
    assert ("k", "v") in p.UserProperty
    assert ("n", "1") in p.UserProperty
    assert 0 < p.MessageExpiryInterval <= 60
    assert p.PayloadFormatIndicator == 1


def test_expired_message_is_not_delivered(paho_client: Make, mqtt_broker: MQTTBroker) -> None:
    sub = paho_client("sub", protocol=paho.MQTTv5, clean=False)
    sub.connect(properties=_session_expiry(300))
    sub.subscribe("exp", 1)
    sub.disconnect()
    pub = paho_client("pub", protocol=paho.MQTTv5)
    pub.connect()
    pub.publish("exp", b"short", 1, properties=publish_props(MessageExpiryInterval=1))
    pub.publish("exp", b"long", 1, properties=publish_props(MessageExpiryInterval=100))
    from moorage.protocols.mqtt.registry import registry_for

    reg = mqtt_broker.call(registry_for, mqtt_broker.broker)
    real_clock = reg.clock
    reg.clock = lambda: real_clock() + 10  # ten seconds pass, without sleeping
    try:
        again = paho_client("sub", protocol=paho.MQTTv5, clean=False)
        again.connect(properties=_session_expiry(300))
        msg = again.get()
        assert msg.payload == b"long"
        assert msg.properties.MessageExpiryInterval <= 90
        again.sync()
        assert again.nothing_more()
    finally:
        reg.clock = real_clock


def _session_expiry(seconds: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = seconds
    return props


def test_topic_alias_from_client(paho_client: Make) -> None:
    sub = paho_client("sub", protocol=paho.MQTTv5)
    sub.connect()
    sub.subscribe("long/topic/name", 1)
    pub = paho_client("pub", protocol=paho.MQTTv5)
    _flags, _rc, props = pub.connect()
    assert props.TopicAliasMaximum >= 1
    pub.publish("long/topic/name", b"1", 1, properties=publish_props(TopicAlias=1))
    pub.publish("", b"2", 1, properties=publish_props(TopicAlias=1))
    assert [sub.get().payload, sub.get().payload] == [b"1", b"2"]


def test_assigned_client_identifier(paho_client: Make) -> None:
    c = paho_client("", protocol=paho.MQTTv5)
    _flags, _rc, props = c.connect()
    assert props.AssignedClientIdentifier.startswith("moorage-")
    c311 = paho_client("", protocol=paho.MQTTv311)
    c311.connect()


@BOTH
def test_persistent_session_keeps_subscriptions_and_messages(
    paho_client: Make, protocol: int
) -> None:
    kwargs = {"properties": _session_expiry(300)} if protocol == paho.MQTTv5 else {}
    sub = paho_client("durable", protocol=protocol, clean=False)
    flags, _rc, _p = sub.connect(**kwargs)
    sub.subscribe("news/#", 1)
    sub.disconnect()
    pub = paho_client("pub", protocol=protocol)
    pub.connect()
    for i in range(3):
        pub.publish("news/today", f"n{i}".encode(), 1)
    again = paho_client("durable", protocol=protocol, clean=False)
    flags, _rc, _p = again.connect(**kwargs)
    assert flags.session_present if hasattr(flags, "session_present") else flags["session present"]
    assert [again.get().payload for _ in range(3)] == [b"n0", b"n1", b"n2"]


@BOTH
def test_clean_start_discards_the_session(paho_client: Make, protocol: int) -> None:
    kwargs = {"properties": _session_expiry(300)} if protocol == paho.MQTTv5 else {}
    sub = paho_client("c", protocol=protocol, clean=False)
    sub.connect(**kwargs)
    sub.subscribe("x", 1)
    sub.disconnect()
    fresh = paho_client("c", protocol=protocol, clean=True)
    flags, _rc, _p = fresh.connect()
    assert not (
        flags.session_present if hasattr(flags, "session_present") else flags["session present"]
    )
    pub = paho_client("pub", protocol=protocol)
    pub.connect()
    pub.publish("x", b"nobody", 1)
    fresh.sync()
    assert fresh.nothing_more()


def test_session_expiry_zero_ends_session_at_disconnect(paho_client: Make) -> None:
    sub = paho_client("short", protocol=paho.MQTTv5, clean=False)
    sub.connect()  # no session expiry property: 0
    sub.subscribe("x", 1)
    sub.disconnect()
    again = paho_client("short", protocol=paho.MQTTv5, clean=False)
    flags, _rc, _p = again.connect()
    assert not flags.session_present


@BOTH
def test_session_takeover(paho_client: Make, protocol: int) -> None:
    first = paho_client("same", protocol=protocol)
    first.connect()
    second = paho_client("same", protocol=protocol)
    second.connect()
    rc = first.disconnects.get(timeout=3)
    if protocol == paho.MQTTv5:
        assert rc == 0x8E  # session taken over
    second.subscribe("t", 0)


def test_qos1_unacked_is_redelivered_with_dup_after_reconnect(
    paho_client: Make, raw_client
) -> None:
    from moorage.protocols.mqtt.codec import PubAck, Publish, SubAck, Subscribe, Subscription

    raw = raw_client()
    assert raw.connect("redeliver", clean_start=False).reason_code == 0
    raw.send(Subscribe(1, [Subscription("q", 1)]))
    assert isinstance(raw.receive(), SubAck)
    pub = paho_client("pub")
    pub.connect()
    pub.publish("q", b"once", 1)
    first = raw.receive()
    assert isinstance(first, Publish)
    assert not first.dup
    raw.close()  # no PUBACK
    again = raw_client()
    ack = again.connect("redeliver", clean_start=False)
    assert ack.session_present
    second = again.receive()
    assert isinstance(second, Publish)
    assert (second.payload, second.dup) == (b"once", True)
    again.send(PubAck(second.packet_id))


def test_qos2_exactly_once_across_reconnect(raw_client, paho_client: Make) -> None:
    from moorage.protocols.mqtt.codec import (
        PubComp,
        Publish,
        PubRec,
        PubRel,
        SubAck,
        Subscribe,
        Subscription,
    )

    sub = paho_client("sub2")
    sub.connect()
    sub.subscribe("eo", 2)
    raw = raw_client()
    raw.connect("publisher2", clean_start=False)
    raw.send(Publish("eo", b"exactly", 2, packet_id=5))
    assert raw.receive() == PubRec(5)
    raw.close()  # the PUBREL never went out
    again = raw_client()
    assert again.connect("publisher2", clean_start=False).session_present
    again.send(Publish("eo", b"exactly", 2, dup=True, packet_id=5))  # the client retries
    assert again.receive() == PubRec(5)
    again.send(PubRel(5))
    assert again.receive() == PubComp(5)
    assert sub.get().payload == b"exactly"
    sub.sync()
    assert sub.nothing_more()
    # and outbound: the broker resends PUBREL after a reconnect between PUBREC and PUBCOMP
    out = raw_client()
    out.connect("receiver2", clean_start=False)
    out.send(Subscribe(1, [Subscription("eo2", 2)]))
    assert isinstance(out.receive(), SubAck)
    sub.publish("eo2", b"x", 2)
    delivered = out.receive()
    assert isinstance(delivered, Publish)
    out.send(PubRec(delivered.packet_id))
    assert out.receive() == PubRel(delivered.packet_id)
    out.close()
    back = raw_client()
    assert back.connect("receiver2", clean_start=False).session_present
    assert back.receive() == PubRel(delivered.packet_id)
    back.send(PubComp(delivered.packet_id))


@BOTH
def test_will_message_on_abrupt_disconnect(paho_client: Make, protocol: int) -> None:
    watcher = paho_client("watcher", protocol=protocol)
    watcher.connect()
    watcher.subscribe("status/+", 1)
    dying = paho_client("dying", protocol=protocol)
    dying.client.will_set("status/dying", b"offline", 1, False)
    dying.connect()
    dying.drop()
    msg = watcher.get()
    assert (msg.topic, msg.payload) == ("status/dying", b"offline")


def test_no_will_on_normal_disconnect_but_on_0x04(paho_client: Make) -> None:
    watcher = paho_client("watcher", protocol=paho.MQTTv5)
    watcher.connect()
    watcher.subscribe("status/+", 1)
    polite = paho_client("polite", protocol=paho.MQTTv5)
    polite.client.will_set("status/polite", b"gone", 1)
    polite.connect()
    polite.disconnect()
    asking = paho_client("asking", protocol=paho.MQTTv5)
    asking.client.will_set("status/asking", b"gone", 1)
    asking.connect()
    from paho.mqtt.reasoncodes import ReasonCode

    asking.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
    assert watcher.get().topic == "status/asking"


def test_will_delay_cancelled_by_reconnect_and_sent_at_session_end(
    paho_client: Make, raw_client
) -> None:
    from moorage.protocols.mqtt.codec import Properties as MqttProps
    from moorage.protocols.mqtt.codec import Will

    watcher = paho_client("watcher", protocol=paho.MQTTv5)
    watcher.connect()
    watcher.subscribe("w/#", 1)
    raw = raw_client(5)
    will = Will("w/delayed", b"late", 1, False, MqttProps(will_delay_interval=100))
    raw.connect(
        "delayed", will=will, clean_start=False, properties=MqttProps(session_expiry_interval=100)
    )
    raw.close()
    back = raw_client(5)
    ack = back.connect(
        "delayed", clean_start=False, properties=MqttProps(session_expiry_interval=100)
    )
    assert ack.session_present
    watcher.sync()
    assert watcher.nothing_more()  # [MQTT-3.1.3-9]
    back.close()
    # a will with a delay whose session ends at once (expiry 0) goes out immediately
    short = raw_client(5)
    short.connect(
        "short", will=Will("w/short", b"now", 1, False, MqttProps(will_delay_interval=100))
    )
    short.close()
    assert watcher.get().topic == "w/short"


def test_shared_subscription_spreads_load(paho_client: Make) -> None:
    a = paho_client("a", protocol=paho.MQTTv5)
    a.connect()
    a.subscribe("$share/workers/jobs/#", 1)
    b = paho_client("b", protocol=paho.MQTTv311)
    b.connect()
    b.subscribe("$share/workers/jobs/#", 1)
    pub = paho_client("pub")
    pub.connect()
    for i in range(10):
        pub.publish("jobs/x", str(i).encode(), 1)
    received: list[bytes] = []
    per_client: dict[str, list[bytes]] = {"a": [], "b": []}
    deadline = time.monotonic() + 3
    while len(received) < 10 and time.monotonic() < deadline:
        for name, c in (("a", a), ("b", b)):
            with contextlib.suppress(queue.Empty):
                payload = c.messages.get(timeout=0.05).payload
                per_client[name].append(payload)
                received.append(payload)
    assert per_client["a"]
    assert per_client["b"]
    assert sorted(received, key=int) == [str(i).encode() for i in range(10)]
    a.sync()
    b.sync()
    assert a.nothing_more(0.05)
    assert b.nothing_more(0.05)


def test_unsubscribe(paho_client: Make) -> None:
    c = paho_client("u", protocol=paho.MQTTv5)
    c.connect()
    c.subscribe("a", 1)
    rcs = c.unsubscribe("a")
    assert [int(r.value) for r in rcs] == [0]
    rcs = c.unsubscribe("never")
    assert [int(r.value) for r in rcs] == [0x11]
    c.publish("a", b"x", 1)
    c.sync()
    assert c.nothing_more()


def test_bad_credentials(paho_client: Make) -> None:
    c5 = paho_client("x", protocol=paho.MQTTv5)
    c5.client.username_pw_set("alice", "wrong")
    _f, rc, _p = c5.connect(expect_success=False)
    assert rc == 0x86
    c3 = paho_client("y", protocol=paho.MQTTv311)
    c3.client.username_pw_set("nobody", "x")
    _f, rc, _p = c3.connect(expect_success=False)
    assert rc == 0x86  # paho maps 3.1.1 return code 4 to 0x86
    ok = paho_client("z")
    ok.client.username_pw_set("alice", "secret")
    ok.connect()


def client_users(mqtt_broker: MQTTBroker) -> list[str]:
    """The users of the broker's client connections (not its internal one)."""
    connections = mqtt_broker.call(lambda: list(mqtt_broker.broker.connections))
    return sorted(c.user.name for c in connections if c.user.name != INTERNAL_USER)


# (3.1.1 forbids a password without a user name [MQTT-3.1.2-22]: only 5.0 sends one)
@pytest.mark.parametrize(
    ("protocol", "password"),
    [(paho.MQTTv311, None), (paho.MQTTv5, None), (paho.MQTTv5, "guest")],
    ids=["3.1.1", "5.0", "5.0-password-only"],
)
def test_anonymous_refused_by_default(
    paho_client: Make, mqtt_broker: MQTTBroker, protocol: int, password: str | None
) -> None:
    c = paho_client("anon", protocol=protocol)
    c.client.username_pw_set(None, password)
    _f, rc, _p = c.connect(expect_success=False)
    assert rc == 0x87  # Not authorized; paho maps 3.1.1 return code 5 to 0x87, as Mosquitto
    assert client_users(mqtt_broker) == []


@pytest.mark.parametrize("protocol", [paho.MQTTv311, paho.MQTTv5], ids=["3.1.1", "5.0"])
def test_anonymous_acts_as_the_configured_user(
    paho_client: Make, mqtt_broker: MQTTBroker, protocol: int
) -> None:
    users = mqtt_broker.broker.users
    mqtt_broker.call(lambda: setattr(users, "anonymous", users.users["noread"]))
    c = paho_client("anon", protocol=protocol)
    c.client.username_pw_set(None, None)
    c.connect()
    assert client_users(mqtt_broker) == ["noread"]
    expected = 0x87 if protocol == paho.MQTTv5 else 0x80  # noread may not read amq.topic
    assert [int(r.value) for r in c.subscribe("a", 1)] == [expected]


@pytest.mark.parametrize("protocol", [paho.MQTTv311, paho.MQTTv5], ids=["3.1.1", "5.0"])
def test_user_name_without_password_is_never_anonymous(
    paho_client: Make, mqtt_broker: MQTTBroker, protocol: int
) -> None:
    """Issue 13's open MQTT case, decided: a user name without a password is a failed
    login for that user, also with anonymous access on (Mosquitto would let it in as
    anonymous). docs/mqtt-differences.md; transcripts `connect_*_user_without_password`."""
    users = mqtt_broker.broker.users
    mqtt_broker.call(lambda: setattr(users, "anonymous", users.users["noread"]))
    c = paho_client("named", protocol=protocol)
    c.client.username_pw_set("alice", None)
    _f, rc, _p = c.connect(expect_success=False)
    assert rc == 0x86  # bad user name or password (3.1.1 return code 4, mapped by paho)
    assert client_users(mqtt_broker) == []


def test_subscribe_not_authorized(paho_client: Make) -> None:
    c = paho_client("r", protocol=paho.MQTTv5)
    c.client.username_pw_set("reader", "secret")  # may write only to mqtt-* queues
    c.connect()
    assert [int(r.value) for r in c.subscribe("a", 1)] == [1]
    c3 = paho_client("r3")
    c3.client.username_pw_set("reader", "secret")
    c3.connect()
    c3.publish("a", b"x", 0)  # reader has no write on amq.topic: 3.1.1 closes
    c3.disconnects.get(timeout=3)
    denied = paho_client("d", protocol=paho.MQTTv5)
    denied.client.username_pw_set("noread", "secret")  # no read on amq.topic
    denied.connect()
    assert [int(r.value) for r in denied.subscribe("a", 1)] == [0x87]
    denied3 = paho_client("d3")
    denied3.client.username_pw_set("noread", "secret")
    denied3.connect()
    assert [int(r.value) for r in denied3.subscribe("a", 1)] == [0x80]
    # a refused QoS 1 publish in 5.0 is answered with PUBACK 0x87, the connection stays
    c5 = paho_client("r5", protocol=paho.MQTTv5)
    c5.client.username_pw_set("reader", "secret")
    c5.connect()
    info = c5.publish("a", b"x", 1)
    assert info.is_published()
    c5.sync()
