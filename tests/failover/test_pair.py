"""A replicated pair on loopback: confirms wait for both disks, the standby refuses
clients with each protocol's "go elsewhere", and a manual promotion after a
SIGKILL of the primary serves every confirmed message."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading
import urllib.request

import pika
import pika.exceptions
import pytest
from pamqp import commands, frame
from pamqp.common import FieldTable

from moorage.protocols.mqtt.codec import ConnAck
from tests.failover.cluster import Node, Witness, wait_for
from tests.mqtt.conftest import RawClient

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def run_cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "moorage.broker.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def publish_until_killed(primary: Node, queue: str, kill_after: float) -> list[int]:
    """Publish persistent messages with confirms until the primary is SIGKILLed;
    the indexes the broker confirmed."""
    confirmed: list[int] = []
    killer = threading.Timer(kill_after, primary.kill)
    connection = pika.BlockingConnection(primary.params)
    killer.start()
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(queue, durable=True)
        for i in range(1_000_000):
            channel.basic_publish("", queue, str(i).encode(), PERSISTENT)
            confirmed.append(i)  # basic_publish returns once the broker acked it
    except (pika.exceptions.AMQPError, OSError):
        pass
    finally:
        killer.join()
        primary.kill()
    return confirmed


def read_all(node: Node, queue: str) -> list[int]:
    connection = pika.BlockingConnection(node.params)
    try:
        channel = connection.channel()
        count = channel.queue_declare(queue, durable=True, passive=True).method.message_count
        seen: list[int] = []
        for method, _props, body in channel.consume(queue, inactivity_timeout=5):
            if method is None:
                break
            seen.append(int(body))
            if len(seen) == count:
                break
        return seen
    finally:
        connection.close()


@pytest.mark.timeout(90)
def test_every_confirmed_message_is_on_the_promoted_standby(cluster):
    a, b, _ = cluster()
    a.start("primary")
    b.start("standby", peer=a)
    a.wait_in_sync()
    confirmed = publish_until_killed(a, "jobs", kill_after=random.uniform(1.0, 2.5))
    assert confirmed, "nothing was confirmed before the kill"
    promoted = b.promote()
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    status = b.wait_role("primary")
    assert status["epoch"] == 2
    on_b = read_all(b, "jobs")
    assert set(confirmed) <= set(on_b), f"lost {sorted(set(confirmed) - set(on_b))[:10]}"
    assert on_b == sorted(on_b)  # in order, no duplicates
    assert len(on_b) <= len(confirmed) + 1  # at most the one in flight at the kill


def amqp_refusal(port: int) -> commands.Connection.Close:
    """The broker's answer to a complete AMQP login, read with pamqp."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        buffer = b""

        def next_method() -> object:
            nonlocal buffer
            while True:
                try:
                    consumed, _channel, value = frame.unmarshal(buffer)
                    buffer = buffer[consumed:]
                    return value
                except Exception:
                    data = sock.recv(65536)
                    assert data, "connection closed without a connection.close"
                    buffer += data

        assert isinstance(next_method(), commands.Connection.Start)
        start_ok = commands.Connection.StartOk(
            client_properties=FieldTable(), mechanism="PLAIN", response="\0guest\0guest"
        )
        sock.sendall(frame.marshal(start_ok, 0))
        close = next_method()
        assert isinstance(close, commands.Connection.Close)
        return close


def stomp_refusal(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0")
        data = b""
        while b"\0" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


@pytest.mark.timeout(60)
def test_the_standby_refuses_every_protocol_and_names_the_primary(cluster):
    a, b, _ = cluster(promote_without_witness=True)
    a.start("primary")
    b.start("standby", peer=a)
    a.wait_in_sync()

    close = amqp_refusal(b.amqp)
    assert close.reply_code == 320
    assert f"amqp 127.0.0.1:{a.amqp}" in close.reply_text

    v5 = RawClient(b.mqtt, version=5)
    connack = v5.connect("refused-5")
    v5.close()
    assert isinstance(connack, ConnAck)
    assert connack.reason_code == 0x9C  # use another server
    assert connack.properties.server_reference == f"127.0.0.1:{a.mqtt}"
    v3 = RawClient(b.mqtt, version=4)
    connack = v3.connect("refused-3")
    v3.close()
    assert isinstance(connack, ConnAck)
    assert connack.reason_code in (3, 0x88)  # 3.1.1 "server unavailable"

    error = stomp_refusal(b.stomp)
    assert error.startswith(b"ERROR\n")
    assert f"127.0.0.1:{a.stomp}".encode() in error

    # A client given both addresses moves on to the primary at once.
    connection = pika.BlockingConnection([b.params, a.params])
    assert connection.is_open
    connection.close()

    # Operators see both roles: `moorage status` (management API), `moorage
    # failover-status` (replication port, also on the standby) and /metrics.
    status = run_cli("--port", str(a.http), "status")
    assert "failover: primary, epoch 1; confirms sync, standby 127.0.0.1:" in status
    assert "lag 0 batches" in status
    standby_view = json.loads(run_cli("failover-status", "--replication-port", str(b.replication)))
    assert standby_view["role"] == "standby"
    assert standby_view["following"] is True
    assert standby_view["epoch"] == 1
    metrics = {port: fetch(f"http://127.0.0.1:{port}/metrics") for port in (a.http, b.http)}
    assert 'moorage_failover_role{role="primary"} 1.0' in metrics[a.http]
    assert 'moorage_replication_confirms{mode="sync"} 1.0' in metrics[a.http]
    assert "moorage_replication_lag_batches 0.0" in metrics[a.http]
    assert 'moorage_failover_role{role="standby"} 1.0' in metrics[b.http]
    assert "moorage_failover_epoch 1.0" in metrics[b.http]

    # Garbage on the replication port closes that connection only.
    for port in (a.replication, b.replication):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"\xff\xff\xff\xff\x06garbage")
            assert sock.recv(100) == b""
    assert (a.status() or {}).get("confirms") == "sync"

    # With no witness, `promote_without_witness` accepts the risk: the standby
    # promotes itself once the primary has been gone for peer_timeout.
    a.kill()
    assert b.wait_role("primary")["epoch"] == 2


@pytest.mark.timeout(60)
def test_a_primary_that_cannot_reach_its_witness_serves_only_once_vouched_for(cluster, tmp_path):
    """Nobody has said that no newer primary exists: clients wait for the witness."""
    a, _b, _ = cluster()
    witness = Witness(tmp_path)  # configured, not running yet
    try:
        a.start("primary", witness=witness)
        close = amqp_refusal(a.amqp)
        assert close.reply_code == 320
        assert "waits for its witness" in close.reply_text
        witness.start()

        def served() -> bool:
            try:
                pika.BlockingConnection(a.params).close()
            except pika.exceptions.AMQPConnectionError:
                return False
            return True

        wait_for(served, what="the primary to serve once the witness answers")
    finally:
        witness.kill()
