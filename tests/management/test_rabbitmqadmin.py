"""RabbitMQ's own `rabbitmqadmin` (v1, the single-file script Debian's rabbitmq-server
ships) against Moorage: list, declare, publish, get, delete, and the rest of what an
operator types.

The script is found through `$RABBITMQADMIN`, then `rabbitmqadmin` on the PATH, then
where Debian's package keeps it. `.ci/run` extracts it from the package without
installing RabbitMQ (no Erlang, no service started). Without it the test is skipped,
except under CI, where that is a failure.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
import pytest

from tests.helpers import RunningBroker, free_port, make_config
from tests.management.test_close_connection import closed_by_broker


def _script() -> str | None:
    candidates = [
        os.environ.get("RABBITMQADMIN"),
        shutil.which("rabbitmqadmin"),
        *sorted(
            glob.glob(
                "/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins/*/priv/www/cli/rabbitmqadmin"
            )
        ),
    ]
    return next((c for c in candidates if c and Path(c).is_file()), None)


SCRIPT = _script()
if SCRIPT is None and os.environ.get("CI"):
    pytest.fail("rabbitmqadmin is missing: .ci/run should have put it on the PATH")
pytestmark = pytest.mark.skipif(SCRIPT is None, reason="rabbitmqadmin not found")


@pytest.fixture
def admin(tmp_path: Path, start_broker: Callable[..., RunningBroker]) -> Any:
    config = make_config(tmp_path)
    config.ports["http"] = free_port()
    running = start_broker(config)
    port = str(running.daemon.ports["http"])

    def run(*args: str) -> str:
        assert SCRIPT is not None
        result = subprocess.run(
            [sys.executable, SCRIPT, "-H", "127.0.0.1", "-P", port, "-u", "guest", "-p", "guest",
             *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    run.broker = running  # type: ignore[attr-defined]
    return run


def rows(table: str) -> list[list[str]]:
    """The cells of rabbitmqadmin's ASCII table, header row first."""
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in table.splitlines()
        if line.startswith("|")
    ]


def test_rabbitmqadmin_round_trip(admin: Any) -> None:
    assert admin("list", "queues").strip() == "No items"
    assert admin("declare", "queue", "name=orders", "durable=true").strip() == "queue declared"
    assert admin("publish", "routing_key=orders", "payload=hello").strip() == "Message published"
    assert admin("publish", "routing_key=orders", "payload=again").strip() == "Message published"
    assert rows(admin("list", "queues", "name", "messages", "message_stats.publish")) == [
        ["name", "messages", "message_stats.publish"],
        ["orders", "2", "2"],
    ]
    got = rows(admin("get", "queue=orders", "ackmode=ack_requeue_false"))
    header, first = got[0], got[1]
    assert dict(zip(header, first, strict=True))["payload"] == "hello"
    listed = json.loads(admin("-f", "raw_json", "list", "queues"))
    assert [(q["name"], q["messages"]) for q in listed] == [("orders", 1)]
    assert admin("purge", "queue", "name=orders").strip() == "queue purged"
    assert admin("delete", "queue", "name=orders").strip() == "queue deleted"
    assert admin("list", "queues").strip() == "No items"


def test_rabbitmqadmin_exchanges_bindings_nodes_and_connections(admin: Any) -> None:
    assert admin("declare", "exchange", "name=events", "type=topic").strip() == (
        "exchange declared"
    )
    admin("declare", "queue", "name=audit")
    admin("declare", "binding", "source=events", "destination=audit", "routing_key=a.#")
    assert ["events", "audit", "a.#"] in rows(admin("list", "bindings"))
    admin(
        "delete", "binding", "source=events", "destination=audit", "destination_type=queue",
        "properties_key=a.%23",
    )  # fmt: skip
    assert ["events", "audit", "a.#"] not in rows(admin("list", "bindings"))
    assert ["events", "topic"] in rows(admin("list", "exchanges", "name", "type"))
    assert admin("delete", "exchange", "name=events").strip() == "exchange deleted"
    nodes = rows(admin("list", "nodes"))
    assert nodes[0] == ["name", "type", "mem_used"]
    assert nodes[1][:2] == ["moorage@localhost", "disc"]
    assert admin("list", "policies").strip() == "No items"
    overview = rows(admin("show", "overview"))
    assert overview[1][0] == "3.10.8"  # the API level Moorage follows
    connection = pika.BlockingConnection(pika.URLParameters(admin.broker.url))
    try:
        listed = rows(admin("list", "connections", "name", "user"))
        assert listed[1][1] == "guest"
        closed = admin("close", "connection", f"name={listed[1][0]}")
        assert closed.strip() == "connection closed"
        assert closed_by_broker(connection).reply_code == 320
    finally:
        if connection.is_open:
            connection.close()
    definitions = Path(admin.broker.config.data_dir) / "defs.json"
    assert "Exported definitions" in admin("export", str(definitions))
    assert "Uploaded definitions" in admin("import", str(definitions))
