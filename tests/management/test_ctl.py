"""The `moorage` management commands, run as a user would (a subprocess), against a
running broker."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

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
