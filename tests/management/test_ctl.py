"""The `moorage` management commands, run as a user would (a subprocess), against a
running broker."""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pika
import pytest

from moorage.broker import ctl, ctl_ops
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
    restored_dir = tmp_path / "restored"
    result = moorage("restore", str(copy), "--data-dir", str(restored_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"restored {copy} into {restored_dir / 'moorage.db'}")
    assert "[" not in result.stdout  # no progress bar when stdout is not a terminal
    again = moorage("restore", str(copy), "--data-dir", str(restored_dir))
    assert again.returncode == 1
    assert "is not empty; restore only into an empty directory" in again.stderr
    restored = BrokerProcess(restored_dir).start()
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


def test_restore_refuses_what_is_not_a_sound_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each refusal is one line and leaves nothing in the data directory (run in-process:
    `ctl.main` is what the `moorage` command runs)."""
    target = tmp_path / "target"
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    other = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
    store = tmp_path / "store.db"  # a Moorage-shaped file, then a page of it overwritten
    with contextlib.closing(sqlite3.connect(store)) as conn:
        conn.execute("CREATE TABLE schema_version (id INTEGER PRIMARY KEY, version INTEGER)")
        conn.execute("INSERT INTO schema_version VALUES (1, 1)")
        conn.execute("CREATE TABLE filler (x TEXT)")
        conn.executemany("INSERT INTO filler VALUES (?)", [("x" * 500,)] * 200)
        conn.commit()
    data = bytearray(store.read_bytes())
    data[3 * 4096 : 4 * 4096] = b"\xff" * 4096
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(bytes(data))
    for source, reason in (
        (tmp_path / "missing.db", "cannot read"),
        (text, "is not a SQLite database"),
        (other, "not a Moorage store"),
        (damaged, "damaged"),
    ):
        assert ctl.main(["restore", str(source), "--data-dir", str(target)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("moorage: "), err
        assert err.count("\n") == 1, err
        assert reason in err, (source, err)
        assert not target.exists() or not list(target.iterdir())
    (target / "stray").mkdir(parents=True)
    assert ctl.main(["restore", str(store), "--data-dir", str(target)]) == 1
    assert "is not empty" in capsys.readouterr().err


def test_reload_finds_the_broker_by_its_pid_file(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """`moorage reload` sends SIGHUP: a user added to the file can log in, and a client
    connected before keeps its connection."""
    broker = BrokerProcess(tmp_path / "data").start()
    try:
        pid_file = tmp_path / "data" / "moorage.pid"
        deadline = time.monotonic() + 15
        while not pid_file.exists():
            assert time.monotonic() < deadline, "no pid file"
            time.sleep(0.02)
        assert broker.proc is not None
        assert int(pid_file.read_text()) == broker.proc.pid
        connected = pika.BlockingConnection(broker.params)
        newcomer = pika.ConnectionParameters(
            "127.0.0.1",
            broker.port,
            credentials=pika.PlainCredentials("late", "pw"),
            connection_attempts=1,
        )
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            pika.BlockingConnection(newcomer)
        broker.config.write_text(
            broker.config.read_text()
            + '[[users]]\nname = "guest"\npassword = "guest"\ntags = ["administrator"]\n'
            + '[users.permissions."/"]\nconfigure = ".*"\nwrite = ".*"\nread = ".*"\n'
            + '[[users]]\nname = "late"\npassword = "pw"\n'
            + '[users.permissions."/"]\nconfigure = ".*"\nwrite = ".*"\nread = ".*"\n'
        )
        assert ctl.main(["reload", "--data-dir", str(tmp_path / "data")]) == 0
        assert f"pid {broker.proc.pid}" in capfd.readouterr().out
        deadline = time.monotonic() + 15
        while "configuration reloaded" not in broker.log.read_text():
            assert time.monotonic() < deadline, broker.log.read_text()
            time.sleep(0.05)
        pika.BlockingConnection(newcomer).close()
        assert connected.is_open
        connected.channel().queue_declare("still-here")
        connected.close()
    finally:
        assert broker.stop() == 0
    assert not (tmp_path / "data" / "moorage.pid").exists()  # removed at a clean stop
    assert ctl.main(["reload", "--data-dir", str(tmp_path / "data")]) == 1
    assert "is a broker running" in capfd.readouterr().err


def test_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert ctl_ops.progress_bar(io.StringIO(), "copying") is None
    screen = Terminal()
    bar = ctl_ops.progress_bar(screen, "copying")
    assert bar is not None
    bar.update(512, 1024, 1 << 20)
    bar.update(1024, 1024, 1 << 20)
    bar.finish()
    lines = screen.getvalue().split("\r")
    assert lines[1] == "copying [" + "#" * 15 + "." * 15 + "]  50%  512.0/1024.0 MiB"
    assert lines[2] == "copying [" + "#" * 30 + "] 100%  1024.0/1024.0 MiB\n"
