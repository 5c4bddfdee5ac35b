"""MQTT over WebSocket: paho and aiomqtt clients, interop with AMQP, refused upgrades, limits."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import aiomqtt
import paho.mqtt.client as paho
import pika
import pytest

from moorage.broker.daemon import SHUTDOWN_GRACE
from moorage.protocols.mqtt.codec import ConnAck, Connect, Connection, Role
from tests.helpers import RunningBroker, free_port, make_config, pump_until
from tests.websocket.conftest import TIMEOUT, PahoWS


@pytest.mark.parametrize("protocol", [paho.MQTTv311, paho.MQTTv5], ids=["3.1.1", "5.0"])
def test_paho_publish_subscribe(paho_ws, protocol):
    sub = paho_ws("ws-sub", protocol)
    sub.connect()
    granted = sub.subscribe("sensors/+/temp", qos=1)
    assert [int(getattr(g, "value", g)) for g in granted] == [1]
    pub = paho_ws("ws-pub", protocol)
    pub.connect()
    pub.publish("sensors/kitchen/temp", b"21.5", qos=1)
    pub.publish("sensors/hall/temp", b"\x00\xff binary", qos=0)
    first, second = sub.get(), sub.get()
    assert (first.topic, first.payload, first.qos) == ("sensors/kitchen/temp", b"21.5", 1)
    assert (second.topic, second.payload) == ("sensors/hall/temp", b"\x00\xff binary")
    pub.disconnect()
    sub.disconnect()


def test_paho_large_payload_spans_batches(paho_ws):
    sub = paho_ws("ws-big-sub")
    sub.connect()
    sub.subscribe("big/#", qos=1)
    pub = paho_ws("ws-big-pub")
    pub.connect()
    payloads = [bytes([i]) * (200_000 + i) for i in range(5)]
    for i, payload in enumerate(payloads):
        pub.publish(f"big/{i}", payload, qos=1)
    got = [sub.get() for _ in payloads]
    assert [m.payload for m in got] == payloads


def test_publish_over_websocket_consume_over_amqp(ws_broker, paho_ws):
    connection = pika.BlockingConnection(pika.URLParameters(ws_broker.amqp_url))
    try:
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, "amq.topic", routing_key="rooms.*.light")
        received: list[tuple[str, bytes]] = []
        channel.basic_consume(
            queue,
            lambda _ch, method, _props, body: received.append((method.routing_key, body)),
            auto_ack=True,
        )
        pub = paho_ws("ws-interop", paho.MQTTv5)
        pub.connect()
        pub.publish("rooms/den/light", b"on", qos=1)
        assert pump_until(connection, lambda: len(received) == 1, TIMEOUT)
        assert received == [("rooms.den.light", b"on")]

        sub = paho_ws("ws-interop-sub")
        sub.connect()
        sub.subscribe("from/amqp")
        channel.basic_publish("amq.topic", "from.amqp", b"hello websocket")
        message = sub.get()
        assert (message.topic, message.payload) == ("from/amqp", b"hello websocket")
    finally:
        connection.close()


async def test_aiomqtt_over_websockets(ws_broker):
    async with aiomqtt.Client(
        "127.0.0.1",
        ws_broker.mqtt_port,
        identifier="aiomqtt-ws",
        username="guest",
        password="guest",
        transport="websockets",
        websocket_path="/ws",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:
        await client.subscribe("aio/#", qos=1)
        await client.publish("aio/x", b"payload", qos=1)
        async with asyncio.timeout(TIMEOUT):
            async for message in client.messages:
                assert str(message.topic) == "aio/x"
                assert message.payload == b"payload"
                break


async def _raw_connect(port: int, protocols: list[str]) -> tuple[bytes, str | None]:
    """CONNECT over a raw WebSocket; returns the first binary message and the subprotocol."""
    codec = Connection(Role.CLIENT, version=4)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://127.0.0.1:{port}/ws", protocols=protocols) as ws,
    ):
        # one packet split over two messages: boundaries need not align [MQTT-6.0.0-2]
        wire = codec.send(
            Connect(client_id="raw-ws", protocol_version=4, username="guest", password=b"guest")
        )
        await ws.send_bytes(wire[:3])
        await ws.send_bytes(wire[3:])
        msg = await ws.receive(timeout=TIMEOUT)
        assert msg.type is aiohttp.WSMsgType.BINARY
        return msg.data, ws.protocol


async def test_subprotocol_echoed_and_packets_reassembled(ws_broker):
    data, protocol = await _raw_connect(ws_broker.mqtt_port, ["foo", "mqttv3.1", "mqtt"])
    assert protocol == "mqttv3.1"  # the client's first mqtt* token, as RabbitMQ picks
    codec = Connection(Role.CLIENT, version=4)
    codec.receive_data(data)
    connack = codec.next_event()
    assert isinstance(connack, ConnAck)
    assert connack.reason_code == 0


@pytest.mark.parametrize("protocols", [[], ["v12.stomp"], ["foo", "bar"]])
async def test_upgrade_without_mqtt_subprotocol_is_refused(ws_broker, protocols):
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(
                f"http://127.0.0.1:{ws_broker.mqtt_port}/ws", protocols=protocols
            )
    assert refused.value.status == 400
    assert ws_broker.connection_count("mqtt_ws") == 0


async def test_other_paths_and_plain_http_are_refused(ws_broker):
    base = f"http://127.0.0.1:{ws_broker.mqtt_port}"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{base}/mqtt", protocols=["mqtt"])
        assert refused.value.status == 404
        async with session.get(f"{base}/ws") as response:
            assert response.status == 400
            assert response.headers.get("Connection", "").lower() == "close"


@pytest.mark.parametrize("ws_broker", [{"max_message_size": 1024}], indirect=True)
async def test_message_over_the_limit_closes_with_1009(ws_broker):
    limit = 1024 + 65536  # the adapter's Maximum Packet Size
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://127.0.0.1:{ws_broker.mqtt_port}/ws", protocols=["mqtt"]) as ws,
    ):
        await ws.send_bytes(b"\x30" + b"\x00" * limit)
        msg = await ws.receive(timeout=TIMEOUT)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    assert ws_broker.wait_connections("mqtt_ws", 0)


async def test_adapter_close_sends_close_frame(ws_broker):
    """A malformed packet: the adapter closes, the client gets a 1000 close frame."""
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://127.0.0.1:{ws_broker.mqtt_port}/ws", protocols=["mqtt"]) as ws,
    ):
        await ws.send_bytes(b"\xf0\x00")  # reserved packet type as the first packet
        msg = await ws.receive(timeout=TIMEOUT)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == aiohttp.WSCloseCode.OK


async def test_shutdown_disconnects_with_going_away(ws_broker):
    codec = Connection(Role.CLIENT, version=5)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://127.0.0.1:{ws_broker.mqtt_port}/ws", protocols=["mqtt"]) as ws,
    ):
        await ws.send_bytes(
            codec.send(
                Connect(client_id="going", protocol_version=5, username="guest", password=b"guest")
            )
        )
        await ws.receive(timeout=TIMEOUT)  # CONNACK
        ws_broker.call(lambda: ws_broker.listeners["mqtt_ws"].shutdown_connections("test"))
        msg = await ws.receive(timeout=TIMEOUT)
        assert msg.type is aiohttp.WSMsgType.BINARY  # DISCONNECT 0x8B
        codec.receive_data(msg.data)
        assert codec.next_event().reason_code == 0x8B
        msg = await ws.receive(timeout=TIMEOUT)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == aiohttp.WSCloseCode.GOING_AWAY


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_daemon_starts_websocket_listeners(tmp_path, loop_name):
    """The daemon finds both plug-ins by entry point, reports their ports, stops them cleanly."""
    config = make_config(tmp_path)
    config.ports["mqtt_ws"] = free_port()
    config.ports["stomp_ws"] = free_port()
    running = RunningBroker(config, loop_name).start()
    client = PahoWS(config.ports["mqtt_ws"], "daemon-ws")
    try:
        assert running.daemon.ports["mqtt_ws"] == config.ports["mqtt_ws"]
        assert running.daemon.ports["stomp_ws"] == config.ports["stomp_ws"]
        client.connect()
        listener = running.daemon.listeners["mqtt_ws"]
        assert running.wait_until(lambda: listener.connection_count() == 1)
        started = time.monotonic()
        running.stop()  # DISCONNECT-less 3.1.1 close: the client sees the WebSocket close
        assert time.monotonic() - started < SHUTDOWN_GRACE
        assert client.disconnects.get(timeout=TIMEOUT) is not None
    finally:
        running.stop()
        client.stop()
    assert not running.errors, running.errors
