"""Persistent sessions, retained messages and QoS 2 across a broker restart (SIGTERM and kill -9).

The broker runs in a subprocess with a SQLite store (`BrokerProcess`); paho
(3.1.1 and 5.0) and the raw codec client talk to it over real sockets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pika
import pika.exceptions
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from moorage.protocols.mqtt.codec import ConnAck, PubComp, Publish, PubRec, PubRel
from tests.durability.broker_process import BrokerProcess
from tests.mqtt.conftest import PahoClient, RawClient

pytestmark = pytest.mark.timeout(60)

BOTH = pytest.mark.parametrize("protocol", [paho.MQTTv311, paho.MQTTv5], ids=["3.1.1", "5.0"])
RESTART = pytest.mark.parametrize("how", ["sigterm", "kill-9"])


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path / "data", mqtt=True)
    process.start()
    yield process
    process.kill()


@pytest.fixture
def client(broker: BrokerProcess) -> Iterator[Callable[..., PahoClient]]:
    made: list[PahoClient] = []

    def make(client_id: str, **kwargs: Any) -> PahoClient:
        c = PahoClient(broker.mqtt_port, client_id, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def restart(broker: BrokerProcess, how: str) -> None:
    if how == "sigterm":
        assert broker.stop() == 0
    else:
        broker.kill()
    broker.start()


def session_kwargs(protocol: int, expiry: int = 3600) -> dict[str, Any]:
    if protocol != paho.MQTTv5:
        return {}
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = expiry
    return {"properties": props}


def session_present(flags: Any) -> bool:
    return bool(
        flags.session_present if hasattr(flags, "session_present") else flags["session present"]
    )


@BOTH
@RESTART
def test_persistent_session_survives_restart(
    broker: BrokerProcess, client: Callable[..., PahoClient], protocol: int, how: str
) -> None:
    sub = client("durable", protocol=protocol, clean=False)
    sub.connect(**session_kwargs(protocol))
    extra: dict[str, Any] = {}
    if protocol == paho.MQTTv5:
        props = Properties(PacketTypes.SUBSCRIBE)
        props.SubscriptionIdentifier = 7
        extra["properties"] = props
    sub.subscribe("news/#", 1, **extra)
    sub.subscribe("other/+", 2)
    sub.disconnect()
    pub = client("pub", protocol=protocol)
    pub.connect()
    for i in range(3):
        pub.publish("news/today", f"n{i}".encode(), 1)  # PUBACK: on disk
    pub.stop()

    restart(broker, how)
    again = client("durable", protocol=protocol, clean=False)
    flags, _rc, _p = again.connect(**session_kwargs(protocol))
    assert session_present(flags)
    got = [again.get() for _ in range(3)]
    assert [m.payload for m in got] == [b"n0", b"n1", b"n2"]
    if protocol == paho.MQTTv5:
        assert got[0].properties.SubscriptionIdentifier == [7]
    # the subscriptions themselves survived: new messages are routed, with their QoS
    pub = client("pub2", protocol=protocol)
    pub.connect()
    pub.publish("other/x", b"live", 2)
    msg = again.get()
    assert (msg.topic, msg.payload, msg.qos) == ("other/x", b"live", 2)


@RESTART
def test_unacked_delivery_is_redelivered_after_restart(broker: BrokerProcess, how: str) -> None:
    raw = RawClient(broker.mqtt_port)
    try:
        raw.connect("slow", clean_start=False)
        from moorage.protocols.mqtt.codec import SubAck, Subscribe, Subscription

        raw.send(Subscribe(1, [Subscription("work", 1)]))
        assert isinstance(raw.receive(), SubAck)
        pub = RawClient(broker.mqtt_port)
        pub.connect("pub")
        pub.send(Publish("work", b"job", 1, packet_id=1))
        assert pub.receive().packet_id == 1  # PUBACK
        delivered = raw.receive()
        assert isinstance(delivered, Publish)
        assert delivered.payload == b"job"  # never PUBACKed
        pub.close()
    finally:
        raw.close()
    restart(broker, how)
    back = RawClient(broker.mqtt_port)
    try:
        connack = back.connect("slow", clean_start=False)
        assert isinstance(connack, ConnAck)
        assert connack.session_present
        again = back.receive()
        assert isinstance(again, Publish)
        assert (again.payload, again.dup) == (b"job", True)
    finally:
        back.close()


def test_expired_session_is_removed_at_start(
    broker: BrokerProcess, client: Callable[..., PahoClient]
) -> None:
    short = client("short", protocol=paho.MQTTv5, clean=False)
    short.connect(**session_kwargs(paho.MQTTv5, expiry=1))
    short.subscribe("t", 1)
    long = client("long", protocol=paho.MQTTv5, clean=False)
    long.connect(**session_kwargs(paho.MQTTv5, expiry=3600))
    long.subscribe("t", 1)
    short.disconnect()
    long.disconnect()
    assert broker.stop() == 0
    time.sleep(1.2)  # the expiry is wall-clock time; nothing to wait on
    broker.start()
    again = client("short", protocol=paho.MQTTv5, clean=False)
    flags, _rc, _p = again.connect(**session_kwargs(paho.MQTTv5))
    assert not session_present(flags)
    kept = client("long", protocol=paho.MQTTv5, clean=False)
    flags, _rc, _p = kept.connect(**session_kwargs(paho.MQTTv5))
    assert session_present(flags)
    connection = pika.BlockingConnection(broker.params)
    try:
        ch = connection.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_declare("mqtt-subscription-shortqos1", passive=True)
        assert e.value.reply_code == 404
        ch = connection.channel()
        ch.queue_declare("mqtt-subscription-longqos1", passive=True)
    finally:
        connection.close()


@BOTH
@RESTART
def test_retained_message_survives_restart(
    broker: BrokerProcess, client: Callable[..., PahoClient], protocol: int, how: str
) -> None:
    pub = client("pub", protocol=protocol)
    pub.connect()
    pub.publish("state/a", b"on", 1, retain=True)  # PUBACK after the store has it
    pub.publish("state/b", b"old", 1, retain=True)
    pub.publish("state/b", b"", 1, retain=True)  # cleared
    pub.publish("state/c", b"v1", 1, retain=True)
    pub.publish("state/c", b"v2", 1, retain=True)  # replaced
    pub.stop()
    restart(broker, how)
    sub = client("sub", protocol=protocol)
    sub.connect()
    sub.subscribe("state/#", 1)
    got = sorted((m.topic, m.payload, m.retain) for m in (sub.get(), sub.get()))
    assert got == [("state/a", b"on", True), ("state/c", b"v2", True)]
    sub.sync()
    assert sub.nothing_more()


@RESTART
def test_qos2_exactly_once_across_restart(
    broker: BrokerProcess, client: Callable[..., PahoClient], how: str
) -> None:
    sub = client("sub", clean=False)
    sub.connect()
    sub.subscribe("eo", 2)
    sub.disconnect()
    raw = RawClient(broker.mqtt_port)
    raw.connect("publisher", clean_start=False)
    raw.send(Publish("eo", b"exactly", 2, packet_id=5))
    assert raw.receive() == PubRec(5)  # sent => the broker must remember packet id 5
    raw.close()

    restart(broker, how)
    again = RawClient(broker.mqtt_port)
    try:
        connack = again.connect("publisher", clean_start=False)
        assert isinstance(connack, ConnAck)
        assert connack.session_present
        # a client that lost the PUBREC retries the PUBLISH: not routed twice
        again.send(Publish("eo", b"exactly", 2, dup=True, packet_id=5))
        assert again.receive() == PubRec(5)
        again.send(PubRel(5))
        assert again.receive() == PubComp(5)
    finally:
        again.close()
    back = client("sub", clean=False)
    flags, _rc, _p = back.connect()
    assert session_present(flags)
    msg = back.get()
    assert (msg.payload, msg.qos) == (b"exactly", 2)
    back.sync()
    assert back.nothing_more()
    # gone before the restart: paho would reconnect it as "sub" and take the
    # session over from `final` below
    back.disconnect()
    # after PUBCOMP the id is free again, even across another restart
    restart(broker, "kill-9")
    last = RawClient(broker.mqtt_port)
    try:
        last.connect("publisher", clean_start=False)
        last.send(Publish("eo", b"second", 2, packet_id=5))
        assert last.receive() == PubRec(5)
        last.send(PubRel(5))
        assert last.receive() == PubComp(5)
    finally:
        last.close()
    final = client("sub", clean=False)
    final.connect()
    assert final.get().payload == b"second"
