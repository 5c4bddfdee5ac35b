"""Topic permissions (RabbitMQ's topic authorisation) with real clients of each protocol.

User `t` may do anything on `/`, but on `amq.topic` it may publish only to
routing keys that start with its own name and read only its own and
`public.` keys; `{username}` and `{client_id}` are expanded. Each protocol
refuses with its own code: AMQP 403, MQTT 5 PUBACK/SUBACK 0x87, MQTT 3.1.1
SUBACK 0x80 and a dropped connection for PUBLISH, STOMP ERROR.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as paho
import pika
import pytest
import stomp
from pika.exceptions import ChannelClosedByBroker

from moorage.broker.auth import TopicPermission
from moorage.broker.embedded import free_port
from tests.helpers import RunningBroker, make_config, make_user
from tests.mqtt.conftest import PahoClient

pytestmark = pytest.mark.timeout(60)
TIMEOUT = 10.0
WRITE = "^{username}\\."
READ = "^({username}|public)\\."


@pytest.fixture
def broker(tmp_path: Any, start_broker: Callable[..., RunningBroker]) -> RunningBroker:
    config = make_config(tmp_path, make_user("t", "pw", {"/": (".*", ".*", ".*")}))
    config.ports["mqtt"] = free_port()
    config.ports["stomp"] = free_port()
    running = start_broker(config)
    users = running.daemon.broker.users  # type: ignore[union-attr]
    running.call(users.set_topic_permission, "t", "/", "amq.topic", TopicPermission(WRITE, READ))
    return running


@pytest.fixture
def paho_client(broker: RunningBroker) -> Iterator[Callable[..., PahoClient]]:
    made: list[PahoClient] = []

    def make(client_id: str, protocol: int) -> PahoClient:
        client = PahoClient(broker.daemon.ports["mqtt"], client_id, protocol=protocol)
        client.client.username_pw_set("t", "pw")
        made.append(client)
        return client

    yield make
    for client in made:
        client.stop()


def test_amqp_publish_and_bind(broker: RunningBroker) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker.url_for("t", "pw")))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("mine")
        channel.queue_bind("mine", "amq.topic", "t.#")
        channel.queue_bind("mine", "amq.topic", "public.*")
        channel.basic_publish("amq.topic", "t.a", b"ok")
        channel.basic_publish("amq.direct", "other.a", b"not a topic exchange: unchecked")
        with pytest.raises(ChannelClosedByBroker) as refused:
            channel.basic_publish("amq.topic", "other.a", b"no")
        assert refused.value.reply_code == 403
        assert "topic 'other.a'" in refused.value.reply_text
        channel = connection.channel()
        with pytest.raises(ChannelClosedByBroker) as refused:
            channel.queue_bind("mine", "amq.topic", "#")
        assert refused.value.reply_code == 403
        channel = connection.channel()
        method, _props, body = channel.basic_get("mine", auto_ack=True)
        assert method is not None
        assert body == b"ok"
    finally:
        connection.close()


def test_amqp_sees_a_new_topic_permission_on_an_open_channel(broker: RunningBroker) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker.url_for("t", "pw")))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("amq.topic", "t.a", b"ok")  # cached route, checked each time
        users = broker.daemon.broker.users  # type: ignore[union-attr]
        broker.call(
            users.set_topic_permission, "t", "/", "amq.topic", TopicPermission("^x\\.", READ)
        )
        with pytest.raises(ChannelClosedByBroker) as refused:
            channel.basic_publish("amq.topic", "t.a", b"now refused")
        assert refused.value.reply_code == 403
    finally:
        connection.close()


def test_mqtt5_puback_and_suback_0x87(paho_client: Callable[..., PahoClient]) -> None:
    client = paho_client("c1", paho.MQTTv5)
    acks: queue.Queue[int] = queue.Queue()
    client.client.on_publish = lambda _c, _u, _mid, rc, _p: acks.put(int(rc.value))
    client.connect()
    granted = client.subscribe("t/#", 1) + client.subscribe("public/+", 1)
    assert [int(r.value) for r in granted] == [1, 1]
    assert [int(r.value) for r in client.subscribe("other/#", 1)] == [0x87]
    client.publish("t/x", b"mine", 1)
    assert acks.get(timeout=TIMEOUT) == 0
    client.publish("other/x", b"not mine", 1)
    assert acks.get(timeout=TIMEOUT) == 0x87  # refused, and the connection stays
    assert client.get().payload == b"mine"
    client.publish("t/y", b"still connected", 1)
    assert acks.get(timeout=TIMEOUT) == 0


def test_mqtt311_suback_0x80_and_publish_drops_the_connection(
    paho_client: Callable[..., PahoClient],
) -> None:
    client = paho_client("c3", paho.MQTTv311)
    client.connect()
    assert [int(r.value) for r in client.subscribe("other/#", 1)] == [0x80]
    assert [int(r.value) for r in client.subscribe("t/#", 1)] == [1]
    client.publish("other/x", b"no", 0)
    client.disconnects.get(timeout=TIMEOUT)


def test_mqtt_client_id_variable(
    broker: RunningBroker, paho_client: Callable[..., PahoClient]
) -> None:
    users = broker.daemon.broker.users  # type: ignore[union-attr]
    permission = TopicPermission("^devices\\.{client_id}\\.", ".*")
    broker.call(users.set_topic_permission, "t", "/", "amq.topic", permission)
    client = paho_client("dev7", paho.MQTTv5)
    acks: queue.Queue[int] = queue.Queue()
    client.client.on_publish = lambda _c, _u, _mid, rc, _p: acks.put(int(rc.value))
    client.connect()
    client.publish("devices/dev7/temp", b"21", 1)
    assert acks.get(timeout=TIMEOUT) == 0x10  # allowed; no subscriber (0x10, as Mosquitto)
    client.publish("devices/dev8/temp", b"21", 1)
    assert acks.get(timeout=TIMEOUT) == 0x87


class _Errors(stomp.ConnectionListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.errors: queue.Queue[str] = queue.Queue()
        self.messages: queue.Queue[str] = queue.Queue()
        self.disconnected = threading.Event()

    def on_error(self, frame: Any) -> None:
        self.errors.put(frame.headers.get("message", ""))

    def on_message(self, frame: Any) -> None:
        self.messages.put(frame.body)

    def on_disconnected(self) -> None:
        self.disconnected.set()


@pytest.mark.parametrize(
    ("verb", "destination"),
    [("send", "/topic/other.a"), ("subscribe", "/topic/other.#")],
)
def test_stomp_send_and_subscribe(broker: RunningBroker, verb: str, destination: str) -> None:
    connection = stomp.Connection([("127.0.0.1", broker.daemon.ports["stomp"])])
    listener = _Errors()
    connection.set_listener("", listener)
    connection.connect("t", "pw", wait=True)
    try:
        connection.subscribe("/topic/t.*", id="1", ack="auto")
        connection.send("/topic/t.a", "allowed", receipt="r1")
        assert listener.messages.get(timeout=TIMEOUT) == "allowed"
        if verb == "send":
            connection.send(destination, "no")
        else:
            connection.subscribe(destination, id="2", ack="auto")
        assert "ACCESS_REFUSED" in listener.errors.get(timeout=TIMEOUT)
        assert listener.disconnected.wait(TIMEOUT)
    finally:
        if connection.is_connected():
            connection.disconnect()
