"""Protocol errors over real sockets, keep-alive, aiomqtt, and MQTT <-> AMQP interop (pika)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import aiomqtt
import paho.mqtt.client as paho
import pika
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from moorage.protocols.mqtt.codec import (
    ConnAck,
    ConnectionClosed,
    Disconnect,
    PingReq,
    PingResp,
    ReasonCode,
    SubAck,
    Subscribe,
    Subscription,
)
from tests.mqtt.conftest import MQTTBroker, PahoClient, RawClient

Raw = Callable[..., RawClient]
Make = Callable[..., PahoClient]


def closed_with(raw: RawClient) -> object:
    """What the broker sent last before closing: a DISCONNECT/CONNACK, or ConnectionClosed."""
    last: object = None
    while True:
        event = raw.receive()
        if isinstance(event, ConnectionClosed):
            return last if last is not None else event
        last = event


# (name, bytes after a good 5.0 CONNECT, DISCONNECT reason, the same fault in 3.1.1 or None)
AFTER_CONNECT = [
    (
        "second CONNECT",
        b"\x10\x0c\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x00",
        ReasonCode.PROTOCOL_ERROR,
        b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00",
    ),
    ("reserved type 0", b"\x00\x00", ReasonCode.MALFORMED_PACKET, b"\x00\x00"),
    (
        "5-byte remaining length",
        b"\x30\xff\xff\xff\xff\x01",
        ReasonCode.MALFORMED_PACKET,
        b"\x30\xff\xff\xff\xff\x01",
    ),
    (
        "wildcard in publish topic",
        b"\x30\x07\x00\x03a/+\x00x",
        ReasonCode.TOPIC_NAME_INVALID,
        b"\x30\x06\x00\x03a/+x",
    ),
    ("empty topic", b"\x30\x04\x00\x00\x00x", ReasonCode.TOPIC_NAME_INVALID, b"\x30\x03\x00\x00x"),
    (
        "U+0000 in topic",
        b"\x30\x07\x00\x03a\x00b\x00x",
        ReasonCode.MALFORMED_PACKET,
        b"\x30\x06\x00\x03a\x00bx",
    ),
    (
        "bad UTF-8 topic",
        b"\x30\x06\x00\x02\xc3\x28\x00x",
        ReasonCode.MALFORMED_PACKET,
        b"\x30\x05\x00\x02\xc3\x28x",
    ),
    (
        "invalid filter a/#/b",
        b"\x82\x0b\x00\x01\x00\x00\x05a/#/b\x00",
        ReasonCode.TOPIC_FILTER_INVALID,
        b"\x82\x0a\x00\x01\x00\x05a/#/b\x00",
    ),
    (
        "invalid filter a+",
        b"\x82\x08\x00\x01\x00\x00\x02a+\x00",
        ReasonCode.TOPIC_FILTER_INVALID,
        b"\x82\x07\x00\x01\x00\x02a+\x00",
    ),
    (
        "unknown topic alias",
        b"\x30\x07\x00\x00\x03\x23\x00\x05x",
        ReasonCode.PROTOCOL_ERROR,
        None,
    ),
    (
        "topic alias too big",
        b"\x30\x08\x00\x01t\x03\x23\xff\xffx",
        ReasonCode.TOPIC_ALIAS_INVALID,
        None,
    ),
]


@pytest.mark.parametrize(
    ("data", "reason", "data311"),
    [c[1:] for c in AFTER_CONNECT],
    ids=[c[0] for c in AFTER_CONNECT],
)
def test_protocol_errors_close_with_reason_and_others_carry_on(
    raw_client: Raw, paho_client: Make, data: bytes, reason: ReasonCode, data311: bytes | None
) -> None:
    bystander = paho_client("bystander")
    bystander.connect()
    bystander.subscribe("still/here", 1)
    raw5 = raw_client(5)
    assert raw5.connect("bad5").reason_code == 0
    raw5.send_raw(data)
    assert closed_with(raw5) == Disconnect(reason)
    if data311 is not None:
        raw3 = raw_client(4)
        assert raw3.connect("bad3").reason_code == 0
        raw3.send_raw(data311)
        assert isinstance(raw3.receive(), ConnectionClosed)  # 3.1.1: just close the socket
    bystander.publish("still/here", b"fine", 1)
    assert bystander.get().payload == b"fine"


def test_packet_before_connect_closes(raw_client: Raw) -> None:
    raw = raw_client()
    raw.send(PingReq())
    assert isinstance(raw.receive(), ConnectionClosed)


def test_unsupported_protocol_level_gets_return_code_1(raw_client: Raw) -> None:
    raw = raw_client()
    raw.send_raw(b"\x10\x0c\x00\x04MQTT\x07\x02\x00\x3c\x00\x00")
    assert closed_with(raw) == ConnAck(reason_code=ReasonCode.UNSUPPORTED_PROTOCOL_VERSION)


def test_malformed_connect_5_gets_connack_reason(raw_client: Raw) -> None:
    raw = raw_client(5)
    raw.send_raw(b"\x10\x0e\x00\x04MQTT\x05\x03\x00\x3c\x00\x00\x01a")  # reserved flag
    assert closed_with(raw) == ConnAck(reason_code=ReasonCode.MALFORMED_PACKET)


def test_empty_client_id_without_clean_session_is_refused_in_311(raw_client: Raw) -> None:
    raw = raw_client()
    ack = raw.connect("", clean_start=False)
    assert ack == ConnAck(reason_code=ReasonCode.CLIENT_IDENTIFIER_NOT_VALID)


def test_pingreq_and_keep_alive_timeout(raw_client: Raw, mqtt_broker: MQTTBroker) -> None:
    raw = raw_client(5)
    assert raw.connect("idle", keep_alive=1).reason_code == 0
    raw.send(PingReq())
    assert raw.receive() == PingResp()
    # silence for 1.5 x keep-alive: DISCONNECT 0x8D [MQTT-3.1.2-24]
    assert closed_with(raw) == Disconnect(ReasonCode.KEEP_ALIVE_TIMEOUT)


def test_maximum_packet_size_of_client_drops_large_messages(
    raw_client: Raw, paho_client: Make
) -> None:
    from moorage.protocols.mqtt.codec import Properties as MqttProps

    raw = raw_client(5)
    raw.connect("small", properties=MqttProps(maximum_packet_size=64))
    raw.send(Subscribe(1, [Subscription("big", 0)]))
    assert isinstance(raw.receive(), SubAck)
    pub = paho_client("pub")
    pub.connect()
    pub.publish("big", b"x" * 200, 0)
    pub.publish("big", b"small", 0)
    delivered = raw.receive()
    assert delivered.payload == b"small"  # type: ignore[union-attr]


async def test_aiomqtt_publish_subscribe(mqtt_broker: MQTTBroker) -> None:
    async with (
        aiomqtt.Client(
            "127.0.0.1",
            mqtt_broker.mqtt_port,
            identifier="aio-sub",
            username="guest",
            password="guest",
        ) as sub,
        aiomqtt.Client(
            "127.0.0.1",
            mqtt_broker.mqtt_port,
            identifier="aio-pub",
            username="guest",
            password="guest",
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as pub,
    ):
        await sub.subscribe("aio/#", qos=2)
        await pub.publish("aio/x", b"one", qos=1)
        await pub.publish("aio/y", b"two", qos=2, retain=True)
        got = []
        async with asyncio.timeout(3):
            async for message in sub.messages:
                got.append((str(message.topic), message.payload))
                if len(got) == 2:
                    break
        assert got == [("aio/x", b"one"), ("aio/y", b"two")]


# -- interop with AMQP 0-9-1 ---------------------------------------------------------------


def test_mqtt_publish_reaches_amqp_consumer(mqtt_broker: MQTTBroker, paho_client: Make) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(mqtt_broker.amqp_url))
    try:
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, "amq.topic", "a.b")
        pub = paho_client("pub", protocol=paho.MQTTv5)
        pub.connect()
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "text/plain"
        props.UserProperty = [("colour", "blue")]
        pub.publish("a/b", b"from mqtt", 1, properties=props)
        method, properties, body = next(channel.consume(queue, inactivity_timeout=3))
        assert method is not None
        assert body == b"from mqtt"
        assert method.routing_key == "a.b"
        assert properties.content_type == "text/plain"
        assert properties.headers["colour"] == "blue"
        assert properties.delivery_mode == 2  # QoS 1 is persistent
        channel.cancel()
    finally:
        connection.close()


def test_amqp_publish_reaches_mqtt_subscriber(mqtt_broker: MQTTBroker, paho_client: Make) -> None:
    sub = paho_client("sub", protocol=paho.MQTTv5)
    sub.connect()
    sub.subscribe("sensors/+/temp", 1)
    connection = pika.BlockingConnection(pika.URLParameters(mqtt_broker.amqp_url))
    try:
        channel = connection.channel()
        channel.basic_publish(
            "amq.topic",
            "sensors.k1.temp",
            b"21.5",
            pika.BasicProperties(
                content_type="text/plain",
                headers={"unit": "C", "n": 3},
                delivery_mode=2,
                correlation_id="c-1",
                reply_to="replies/here",
            ),
        )
    finally:
        connection.close()
    msg = sub.get()
    assert (msg.topic, msg.payload, msg.qos) == ("sensors/k1/temp", b"21.5", 1)
    assert msg.properties.ContentType == "text/plain"
    assert ("unit", "C") in msg.properties.UserProperty
    assert ("n", "3") in msg.properties.UserProperty
    assert msg.properties.CorrelationData == b"c-1"
    assert msg.properties.ResponseTopic == "replies/here"


def test_amqp_transient_message_is_qos0(mqtt_broker: MQTTBroker, paho_client: Make) -> None:
    sub = paho_client("sub")
    sub.connect()
    sub.subscribe("t", 2)
    connection = pika.BlockingConnection(pika.URLParameters(mqtt_broker.amqp_url))
    with contextlib.closing(connection):
        connection.channel().basic_publish("amq.topic", "t", b"x")
    assert sub.get().qos == 0


def test_amqp_typed_headers_reach_mqtt_as_the_core_header_text(
    mqtt_broker: MQTTBroker, paho_client: Make
) -> None:
    """AMQP header types become user properties by `header_values.header_text`."""
    sub = paho_client("sub", protocol=paho.MQTTv5)
    sub.connect()
    sub.subscribe("typed", 1)
    connection = pika.BlockingConnection(pika.URLParameters(mqtt_broker.amqp_url))
    with contextlib.closing(connection):
        connection.channel().basic_publish(
            "amq.topic",
            "typed",
            b"x",
            pika.BasicProperties(
                headers={
                    "at": datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
                    "flag": True,
                    "off": False,
                    "raw": b"caf\xc3\xa9",
                    "price": Decimal("12.5"),
                },
                delivery_mode=2,
            ),
        )
    properties = dict(sub.get().properties.UserProperty)
    assert properties["at"] == "1700000000"  # an AMQP timestamp: epoch seconds
    assert (properties["flag"], properties["off"]) == ("true", "false")
    assert properties["raw"] == "café"
    assert properties["price"] == "12.5"
