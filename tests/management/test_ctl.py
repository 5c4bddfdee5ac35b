"""The `moorage` management commands, run as a user would (a subprocess), against a
running broker."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pika
import pytest

from tests.durability.broker_process import BrokerProcess
from tests.helpers import RunningBroker, free_port, make_config

MOORAGE = [sys.executable, "-m", "moorage.broker.cli"]


def moorage(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MOORAGE, *args], capture_output=True, text=True, input=stdin, timeout=60, check=False
    )


@pytest.fixture
def port(tmp_path: Path, start_broker: Callable[..., RunningBroker]) -> str:
    config = make_config(tmp_path)
    config.ports["http"] = free_port()
    return str(start_broker(config).daemon.ports["http"])


def test_declare_publish_list_get(port: str) -> None:
    result = moorage("--port", port, "declare", "queue", "jobs", "--argument", "x-max-length=5")
    assert (result.returncode, result.stdout) == (0, "queue declared\n"), result.stderr
    assert moorage("--port", port, "publish", "--routing-key", "jobs", "hi").stdout == "routed\n"
    listed = moorage("--port", port, "list", "queues").stdout.splitlines()
    assert listed[0].split() == [
        "vhost",
        "name",
        "messages",
        "messages_ready",
        "consumers",
        "durable",
    ]
    assert ["/", "jobs", "1", "1", "0", "True"] in [line.split() for line in listed[1:]]
    got = json.loads(moorage("--port", port, "--json", "get", "jobs", "--ack").stdout)
    assert [m["payload"] for m in got] == ["hi"]
    status = moorage("--port", port, "status").stdout
    assert "messages: 0" in status
    assert "alarms: none" in status
    assert moorage("--port", port, "delete", "queue", "jobs").returncode == 0


def test_export_then_import(port: str, tmp_path: Path) -> None:
    assert (
        moorage("--port", port, "declare", "exchange", "events", "--type", "topic").returncode == 0
    )
    path = tmp_path / "definitions.json"
    assert moorage("--port", port, "export", str(path)).returncode == 0
    definitions = json.loads(path.read_text())
    assert [x["name"] for x in definitions["exchanges"]] == ["events"]
    assert moorage("--port", port, "delete", "exchange", "events").returncode == 0
    result = moorage("--port", port, "import", "-", stdin=path.read_text())
    assert result.stdout == "definitions imported\n", result.stderr
    assert "events" in moorage("--port", port, "list", "exchanges").stdout


def test_errors_are_one_line_and_exit_1(port: str) -> None:
    result = moorage("--port", port, "delete", "queue", "missing")
    assert result.returncode == 1
    assert result.stderr == "moorage: DELETE /queues/%2F/missing: 404 Not Found\n"
    result = moorage("--port", port, "--password", "wrong", "list", "queues")
    assert result.returncode == 1
    assert "401 Login failed" in result.stderr
    result = moorage("--port", str(free_port()), "status")
    assert result.returncode == 1
    assert "cannot reach" in result.stderr


def test_backup_of_a_running_store(tmp_path: Path) -> None:
    """`moorage backup` while a publisher keeps writing; a broker on the copy has every
    message confirmed before the backup, in order."""
    broker = BrokerProcess(tmp_path / "data", http=True).start()
    http = str(broker.http_port)
    try:
        connection = pika.BlockingConnection(broker.params)
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("kept", durable=True)
        for i in range(300):
            channel.basic_publish(
                "", "kept", str(i).encode(), pika.BasicProperties(delivery_mode=2)
            )
        stop = threading.Event()

        def keep_publishing() -> None:  # the store keeps writing while the copy is made
            other = pika.BlockingConnection(broker.params)
            ch = other.channel()
            ch.queue_declare("busy", durable=True)
            while not stop.is_set():
                ch.basic_publish("", "busy", b"x", pika.BasicProperties(delivery_mode=2))
            other.close()

        publisher = threading.Thread(target=keep_publishing)
        publisher.start()
        copy = tmp_path / "copy" / "moorage.db"
        copy.parent.mkdir()
        try:
            result = moorage("--port", http, "backup", str(copy))
        finally:
            stop.set()
            publisher.join(60)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"backed up {copy.stat().st_size} bytes to {copy}\n"
        again = moorage("--port", http, "backup", str(copy))
        assert again.returncode == 1
        assert "exists; not overwriting it" in again.stderr
        connection.close()
        leftovers = [p.name for p in (tmp_path / "data").iterdir() if p.name.startswith(".backup")]
        assert leftovers == []  # the temporary copy next to the store is gone
    finally:
        broker.kill()
    restored = BrokerProcess(tmp_path / "copy").start()
    try:
        connection = pika.BlockingConnection(restored.params)
        channel = connection.channel()
        bodies = []
        while True:
            method, _props, body = channel.basic_get("kept", auto_ack=True)
            if method is None:
                break
            bodies.append(body)
        assert bodies == [str(i).encode() for i in range(300)]
        connection.close()
    finally:
        restored.kill()


def test_backup_of_a_memory_store_is_refused(port: str, tmp_path: Path) -> None:
    result = moorage("--port", port, "backup", str(tmp_path / "nothing.db"))
    assert result.returncode == 1
    assert "memory store keeps nothing on disk" in result.stderr
    assert not (tmp_path / "nothing.db").exists()
