"""`log_format = "json"`: a broker subprocess's standard error is one JSON object a line,
connection events carry the connection's id and peer, and the memory alarm's raising and
clearing are events too (`broker.logs`)."""

from __future__ import annotations

import base64
import json
import socket
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pika
import pytest

from tests.durability.broker_process import BrokerProcess

TIMEOUT = 15


def events(log: Path) -> list[dict[str, Any]]:
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line is JSON, or this fails


def wait_for_event(log: Path, name: str, **fields: Any) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for record in events(log):
            if record.get("event") == name and all(record.get(k) == v for k, v in fields.items()):
                return record
        time.sleep(0.05)
    raise AssertionError(f"no {name} {fields} in {log.read_text()}")


def test_json_log_lines_with_connection_id_and_peer(tmp_path: Path) -> None:
    broker = BrokerProcess(
        tmp_path / "data",
        http=True,
        extra_config='[broker]\nlog_format = "json"\n[limits]\nmemory_high_watermark = 100000\n'
        'memory_calculation_strategy = "queued"\n',
    ).start()
    try:
        store = wait_for_event(broker.log, "store.opened")
        assert store["queues"] == 0
        assert store["level"] == "info"
        assert store["logger"] == "moorage.events"

        connection = pika.BlockingConnection(broker.params)
        local_port = connection._impl._transport._sock.getsockname()[1]
        peer = f"127.0.0.1:{local_port}"
        opened = wait_for_event(broker.log, "connection.opened", peer=peer)
        assert (opened["protocol"], opened["user"], opened["vhost"]) == ("amqp091", "guest", "/")
        connection_id = opened["connection"]
        assert isinstance(connection_id, int)
        connection.close()
        closed = wait_for_event(broker.log, "connection.closed", connection=connection_id)
        assert closed["peer"] == peer

        bad = pika.ConnectionParameters(
            "127.0.0.1",
            broker.port,
            credentials=pika.PlainCredentials("guest", "wrong"),
            connection_attempts=1,
        )
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            pika.BlockingConnection(bad)
        refused = wait_for_event(broker.log, "connection.refused", user="guest")
        assert refused["level"] == "warning"
        assert "peer" in refused

        # a frame larger than frame_max: the error sent to the client is an event too
        with socket.create_connection(("127.0.0.1", broker.port), timeout=TIMEOUT) as raw:
            raw.sendall(b"AMQP\x00\x00\x09\x01")
            raw.recv(4096)  # connection.start
            raw.sendall(b"\x01\x00\x00\xff\xff\xff\xf0")
            while raw.recv(4096):
                pass
        error = wait_for_event(broker.log, "connection.error", protocol="amqp091")
        assert error["peer"].startswith("127.0.0.1:")

        # closed by an operator through the API: the reason is logged
        victim = pika.BlockingConnection(broker.params)
        auth = "Basic " + base64.b64encode(b"guest:guest").decode()
        base = f"http://127.0.0.1:{broker.http_port}/api/connections"
        with urllib.request.urlopen(
            urllib.request.Request(base, headers={"Authorization": auth}), timeout=TIMEOUT
        ) as r:
            (listed,) = json.loads(r.read())
        request = urllib.request.Request(
            f"{base}/{urllib.parse.quote(listed['name'], safe='')}",
            method="DELETE",
            headers={"Authorization": auth},
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT) as r:
            assert r.status == 204
        forced = wait_for_event(
            broker.log,
            "connection.closed",
            reason="closed by an operator: Closed via management plugin",
        )
        assert forced["protocol"] == "amqp091"
        with pytest.raises(pika.exceptions.AMQPError):
            victim.process_data_events(time_limit=5)

        # the memory alarm (watermark 100 kB here): raised past it, cleared below it
        publisher = pika.BlockingConnection(broker.params)
        channel = publisher.channel()
        channel.queue_declare("fill")
        for _ in range(200):
            channel.basic_publish("", "fill", b"x" * 1000)
        raised = wait_for_event(broker.log, "alarm.raised", alarm="memory")
        assert raised["level"] == "warning"
        assert raised["used"] > raised["watermark"] == 100_000
        drainer = pika.BlockingConnection(broker.params)  # consumes only: not blocked
        drainer.channel().queue_purge("fill")
        wait_for_event(broker.log, "alarm.cleared", alarm="memory")
        drainer.close()
        publisher.close()
    finally:
        assert broker.stop() == 0
    assert all(isinstance(record, dict) for record in events(broker.log))
