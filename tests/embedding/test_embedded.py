"""The embedding API (`moorage.broker.embedded`) with real clients over real sockets.

Both ways to run: `async with` on the test's own loop (aio-pika beside it)
and `with` on a background thread (pika, paho-mqtt, stomp.py from the test
thread). Every wait is on a condition with a generous bound.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import paho.mqtt.client as paho
import pika
import pytest
import stomp
from pika.exceptions import ConnectionClosedByBroker

from moorage.broker.daemon import StartupError
from moorage.broker.embedded import (
    EmbeddedBroker,
    EmbeddedBrokerError,
    embedded_config,
    free_port,
    free_ports,
    make_user,
)
from tests.helpers import pump_until

TIMEOUT = 10.0
ROOT = Path(__file__).resolve().parents[2]


async def test_async_with_runs_on_the_callers_loop():
    async with EmbeddedBroker() as broker:
        assert broker.loop is asyncio.get_running_loop()
        connection = await aio_pika.connect(broker.amqp_url, timeout=TIMEOUT)
        async with connection:
            channel = await connection.channel()
            queue_ = await channel.declare_queue("embedded-async")
            await channel.default_exchange.publish(aio_pika.Message(b"hi"), "embedded-async")
            message = await queue_.get(timeout=TIMEOUT)
            await message.ack()
            assert message.body == b"hi"
        assert broker.call(lambda: "embedded-async" in broker.core.vhosts["/"].queues)
    assert broker.errors == []


async def test_async_stop_closes_clients_with_the_protocols_close():
    broker = await EmbeddedBroker().astart()
    connection = await aio_pika.connect(broker.amqp_url, timeout=TIMEOUT)
    closed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    connection.close_callbacks.add(lambda _conn, exc: closed.done() or closed.set_result(exc))
    await broker.astop()
    exc = await asyncio.wait_for(closed, TIMEOUT)
    assert "320" in repr(exc)  # CONNECTION_FORCED, as `moorage serve` answers SIGTERM
    await connection.close()


async def test_an_error_on_the_loop_fails_the_async_with_block():
    def boom() -> None:
        raise RuntimeError("boom in a broker callback")

    broker = EmbeddedBroker()
    with pytest.raises(EmbeddedBrokerError, match="boom in a broker callback"):  # noqa: PT012
        async with broker:
            asyncio.get_running_loop().call_soon(boom)
            await asyncio.sleep(0)
    assert broker.loop is not None
    assert broker.loop.get_exception_handler() is None  # the test loop's own handler is back


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_with_runs_on_a_thread_for_blocking_clients(loop):
    with EmbeddedBroker(loop=loop) as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        channel = connection.channel()
        channel.queue_declare("embedded-thread")
        channel.basic_publish("", "embedded-thread", b"hello")
        assert pump_until(
            connection,
            lambda: (
                channel.queue_declare("embedded-thread", passive=True).method.message_count == 1
            ),
        )
        method, _properties, body = channel.basic_get("embedded-thread", auto_ack=True)
        assert method is not None
        assert body == b"hello"
        assert broker.call(lambda: type(broker.loop).__module__.startswith(loop))
        # the stop sends connection.close 320, which the client sees on its next read
        broker.stop()
        with pytest.raises(ConnectionClosedByBroker) as closed:
            pump_until(connection, lambda: False, timeout=TIMEOUT)
        assert closed.value.reply_code == 320
    assert broker.errors == []


def test_an_error_on_the_thread_loop_fails_the_with_block():
    def boom() -> None:
        raise RuntimeError("boom on the broker thread")

    broker = EmbeddedBroker()
    with pytest.raises(EmbeddedBrokerError, match="boom on the broker thread"), broker:  # noqa: PT012
        assert broker.loop is not None
        broker.call(broker.loop.call_soon, boom)
        broker.call(lambda: None)  # the callback ran before this


def test_urls_reach_each_protocol():
    """One message published over MQTT and one over STOMP, both consumed over AMQP."""
    with EmbeddedBroker(protocols=("amqp", "mqtt", "stomp")) as broker:
        assert set(broker.urls) == {"amqp", "mqtt", "stomp"}
        host, port = broker.host, broker.ports["amqp"]
        assert broker.amqp_url == f"amqp://guest:guest@{host}:{port}/%2F"
        assert broker.mqtt_url == f"mqtt://guest:guest@{host}:{broker.ports['mqtt']}"
        assert broker.stomp_url == f"stomp://guest:guest@{host}:{broker.ports['stomp']}"

        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        channel = connection.channel()
        channel.queue_declare("from-mqtt")
        channel.queue_bind("from-mqtt", "amq.topic", "embed.mqtt")

        mqtt_url = urlsplit(broker.mqtt_url)
        connacks: queue.Queue[object] = queue.Queue()
        mqtt = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="embedded")
        mqtt.username_pw_set(mqtt_url.username, mqtt_url.password)
        mqtt.on_connect = lambda _c, _u, _flags, rc, _props: connacks.put(rc)
        mqtt.connect(mqtt_url.hostname or "", mqtt_url.port or 0)
        mqtt.loop_start()
        try:
            assert not connacks.get(timeout=TIMEOUT).is_failure  # type: ignore[attr-defined]
            mqtt.publish("embed/mqtt", b"over mqtt", qos=1).wait_for_publish(TIMEOUT)
        finally:
            mqtt.disconnect()
            mqtt.loop_stop()

        stomp_url = urlsplit(broker.stomp_url)
        client = stomp.Connection([(stomp_url.hostname, stomp_url.port)])
        client.connect(stomp_url.username, stomp_url.password, wait=True)
        client.send("/queue/from-stomp", "over stomp", receipt="sent")
        client.disconnect(receipt="bye")

        bodies = []
        for name in ("from-mqtt", "from-stomp"):
            method = None
            for _ in range(int(TIMEOUT / 0.05)):
                method, _properties, body = channel.basic_get(name, auto_ack=True)
                if method is not None:
                    bodies.append(body)
                    break
                connection.sleep(0.05)
        assert bodies == [b"over mqtt", b"over stomp"]
        connection.close()


def test_a_sqlite_store_gets_a_temporary_directory_removed_at_stop():
    with EmbeddedBroker(storage="sqlite") as broker:
        data_dir = broker.config.data_dir
        assert (data_dir / "moorage.db").exists()
    assert not data_dir.exists()


def test_a_given_data_dir_keeps_confirmed_messages_across_brokers(tmp_path: Path):
    settings = {"storage": "sqlite", "data_dir": tmp_path / "data"}
    with EmbeddedBroker(**settings) as first:
        connection = pika.BlockingConnection(pika.URLParameters(first.amqp_url))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("kept", durable=True)
        channel.basic_publish("", "kept", b"durable", pika.BasicProperties(delivery_mode=2))
        connection.close()
    with EmbeddedBroker(**settings) as second:
        connection = pika.BlockingConnection(pika.URLParameters(second.amqp_url))
        method, _properties, body = connection.channel().basic_get("kept", auto_ack=True)
        assert method is not None
        assert body == b"durable"
        connection.close()
    assert (tmp_path / "data" / "moorage.db").exists()


def test_users_vhosts_and_limits():
    alice = make_user("alice", "secret", {"lab": (".*", ".*", ".*")})
    settings = {"users": [alice], "vhosts": ["/", "lab"], "limits": {"max_connections": 1}}
    with EmbeddedBroker(**settings) as broker:
        assert broker.config.limits.max_connections == 1
        url = broker.url(user="alice", password="secret", vhost="lab")
        assert url == f"amqp://alice:secret@{broker.host}:{broker.ports['amqp']}/lab"
        connection = pika.BlockingConnection(pika.URLParameters(url))
        connection.channel().queue_declare("in-lab")
        connection.close()


def test_a_port_taken_before_it_is_bound_is_chosen_again():
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        broker = EmbeddedBroker()
        broker.config.ports["amqp"] = taken  # as if another process got there first
        with broker:
            assert broker.ports["amqp"] != taken
            pika.BlockingConnection(pika.URLParameters(broker.amqp_url)).close()


def test_a_given_config_is_used_as_it_is(tmp_path: Path):
    config = embedded_config(protocols=())
    port = free_port()
    config.ports["stomp"] = port
    with EmbeddedBroker(config) as broker:
        assert broker.ports == {"stomp": port}
        with pytest.raises(KeyError, match="no amqp listener"):
            broker.url("amqp")


def test_misuse_is_refused():
    with pytest.raises(TypeError):
        EmbeddedBroker(embedded_config(), storage="sqlite")
    with pytest.raises(ValueError, match="storage"):
        EmbeddedBroker(storage="tape")
    with pytest.raises(ValueError, match="limit"):
        EmbeddedBroker(limits={"no_such_limit": 1})
    with pytest.raises(StartupError, match="'smtp'"):
        EmbeddedBroker(protocols=("amqp", "smtp")).start()
    with pytest.raises(StartupError, match=r"the amqps listener needs tls\.cert and tls\.key"):
        EmbeddedBroker(protocols=("amqp", "amqps")).start()  # never plain text on a TLS port
    broker = EmbeddedBroker()
    with broker, pytest.raises(RuntimeError, match="starts once"):
        broker.start()


def test_the_api_is_reachable_from_the_namespace_without_loading_the_core_early():
    code = (
        "import sys, moorage;"
        "assert 'moorage.broker' not in sys.modules;"
        "from moorage import EmbeddedBroker;"
        "from moorage.broker.embedded import EmbeddedBroker as same;"
        "assert EmbeddedBroker is same"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=TIMEOUT * 6)


def test_free_ports_are_never_handed_out_twice_in_a_row():
    """Listeners asked for one at a time once got the same port twice (the kernel may
    give a just-closed port again): the second listener then failed to bind."""
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    several = free_ports(6)
    assert len(set(several)) == 6
    assert not set(several) & set(ports)
    config = embedded_config(protocols=("amqp", "mqtt", "stomp", "mqtt-ws", "stomp-ws"))
    chosen = [port for port in config.ports.values() if port]
    assert len(set(chosen)) == len(chosen) == 5
