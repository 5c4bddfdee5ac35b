"""Per-vhost `max-connections`/`max-queues` and per-user `max-connections`/`max-channels`.

RabbitMQ's limits and texts (`broker.limits`), refused with each protocol's
own answer: AMQP `connection.close` 530 (a queue: `channel.close` 406), MQTT
CONNACK 0x97 quota exceeded (3.1.1: 3), STOMP an ERROR frame. Real clients
(pika, stomp.py) where they show the answer, raw bytes for MQTT's CONNACK codes.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pika
import pika.exceptions
import pytest
import stomp
import stomp.exception

from moorage.broker.config import Config, ConfigError
from moorage.broker.embedded import embedded_config
from moorage.broker.limits import UserLimits, VhostLimits
from tests.helpers import RunningBroker

Start = Callable[..., RunningBroker]


def _config(
    vhost: VhostLimits | None = None,
    user: UserLimits | None = None,
    protocols: tuple[str, ...] = ("amqp", "mqtt", "stomp"),
) -> Config:
    config = embedded_config(protocols=protocols)
    if vhost is not None:
        config.vhost_limits = {"/": vhost}
    if user is not None:
        config.user_limits = {"guest": user}
    return config


def _mqtt_connect(port: int, version: int, client_id: str = "limits") -> bytes:
    """CONNECT as guest/guest (clean session); returns the CONNACK's bytes."""

    def text(s: str) -> bytes:
        return struct.pack("!H", len(s)) + s.encode()

    variable = text("MQTT") + bytes([version, 0xC2]) + struct.pack("!H", 30)
    if version == 5:
        variable += b"\x00"  # no properties
    body = variable + text(client_id) + text("guest") + text("guest")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(bytes([0x10, len(body)]) + body)
        return sock.recv(64)


def _connack_code(connack: bytes, version: int) -> int:
    assert connack[0] == 0x20, connack
    return connack[3]


def test_config_file_uses_rabbitmq_names(tmp_path: Path) -> None:
    path = tmp_path / "l.toml"
    path.write_text(
        '[vhost_limits."/"]\nmax-connections = 10\nmax-queues = 5\n'
        "[user_limits.guest]\nmax-connections = 2\nmax-channels = -1\n"
    )
    config = Config.load(path)
    assert config.vhost_limits == {"/": VhostLimits(max_connections=10, max_queues=5)}
    assert config.user_limits == {"guest": UserLimits(max_connections=2, max_channels=-1)}
    path.write_text('[vhost_limits."/"]\nmax_connections = 10\n')
    with pytest.raises(ConfigError, match="max-connections"):
        Config.load(path)
    path.write_text('[user_limits.guest]\nmax-channels = "many"\n')
    with pytest.raises(ConfigError, match="integer"):
        Config.load(path)


def test_vhost_max_connections_on_every_protocol(start_broker: Start) -> None:
    running = start_broker(_config(vhost=VhostLimits(max_connections=1)))
    first = pika.BlockingConnection(pika.URLParameters(running.url))
    with pytest.raises(pika.exceptions.AMQPConnectionError) as refused:
        pika.BlockingConnection(pika.URLParameters(running.url))
    assert '(530) "NOT_ALLOWED - access to vhost' in str(refused.value)
    assert "connection limit (1) is reached" in str(refused.value)

    mqtt = running.daemon.ports["mqtt"]
    assert _connack_code(_mqtt_connect(mqtt, 5), 5) == 0x97  # quota exceeded
    assert _connack_code(_mqtt_connect(mqtt, 4), 4) == 3  # server unavailable

    errors: list[str] = []

    class Listener(stomp.ConnectionListener):  # type: ignore[misc]
        def on_error(self, frame: stomp.utils.Frame) -> None:
            errors.append(frame.headers.get("message", ""))

    client = stomp.Connection12([("127.0.0.1", running.daemon.ports["stomp"])])
    client.set_listener("l", Listener())
    with pytest.raises(stomp.exception.ConnectFailedException):
        client.connect("guest", "guest", wait=True)
    assert any("connection limit (1) is reached" in e for e in errors), errors

    first.close()  # the slot is free again
    assert running.wait_until(
        lambda: running.call(lambda: sum(c.client for c in running.core.connections)) == 0
    )
    assert _connack_code(_mqtt_connect(mqtt, 5), 5) == 0


def test_user_max_connections_counts_every_protocol(start_broker: Start) -> None:
    running = start_broker(_config(user=UserLimits(max_connections=1)))
    first = pika.BlockingConnection(pika.URLParameters(running.url))
    assert _connack_code(_mqtt_connect(running.daemon.ports["mqtt"], 5), 5) == 0x97
    with pytest.raises(pika.exceptions.AMQPConnectionError) as refused:
        pika.BlockingConnection(pika.URLParameters(running.url))
    assert "User connection limit (1) is reached" in str(refused.value)
    assert first.is_open
    first.close()


def test_user_max_channels_closes_the_connection_with_530(start_broker: Start) -> None:
    running = start_broker(_config(user=UserLimits(max_channels=2)))
    connection = pika.BlockingConnection(pika.URLParameters(running.url))
    other = pika.BlockingConnection(pika.URLParameters(running.url))
    connection.channel()
    other.channel()  # the limit is the user's, over all its connections
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        connection.channel()
    assert closed.value.reply_code == 530
    assert closed.value.reply_text == (
        "NOT_ALLOWED - number of channels opened for user 'guest' has reached "
        "the maximum allowed user limit of (2)"
    )
    assert other.is_open
    other.channel()  # the closed connection's channel was given back
    other.close()


def test_vhost_max_queues(start_broker: Start) -> None:
    # (without MQTT: its dead-letter counter is a queue of the vhost, and counts)
    running = start_broker(_config(vhost=VhostLimits(max_queues=2), protocols=("amqp", "stomp")))
    connection = pika.BlockingConnection(pika.URLParameters(running.url))
    channel = connection.channel()
    channel.queue_declare("q1")
    channel.queue_declare("q2")
    channel.queue_declare("q2")  # an existing queue is no new queue
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
        channel.queue_declare("q3")
    assert closed.value.reply_code == 406
    assert closed.value.reply_text == (
        "PRECONDITION_FAILED - cannot declare queue 'q3': queue limit in vhost '/' (2) is reached"
    )
    assert connection.is_open

    # STOMP: a SUBSCRIBE that would create a queue gets an ERROR frame
    errors: list[str] = []

    class Listener(stomp.ConnectionListener):  # type: ignore[misc]
        def on_error(self, frame: stomp.utils.Frame) -> None:
            errors.append(frame.headers.get("message", "") + frame.body)

    client = stomp.Connection12([("127.0.0.1", running.daemon.ports["stomp"])])
    client.set_listener("l", Listener())
    client.connect("guest", "guest", wait=True)
    client.subscribe("/queue/q4", id="1")
    assert running.wait_until(lambda: bool(errors), timeout=10)
    assert "queue limit in vhost '/' (2) is reached" in errors[0]
    assert not running.queue_exists("q4")

    channel = connection.channel()
    channel.queue_delete("q1")
    channel.queue_declare("q3")  # room again
    connection.close()
