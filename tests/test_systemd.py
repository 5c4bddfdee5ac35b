"""`moorage serve` under a service manager: a real notify socket receives READY=1,
watchdog pings and STOPPING=1 from a real broker process; SIGHUP reloads users."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest
from pika.exceptions import ProbableAuthenticationError

from tests.durability.broker_process import free_port

TIMEOUT = 20.0
USERS = """
[[users]]
name = "{name}"
password = "pw"
[users.permissions."/"]
configure = ".*"
write = ".*"
read = ".*"
"""


class NotifySocket:
    """The service manager's end: a datagram socket that collects what the broker sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(TIMEOUT)
        self.received: list[str] = []

    def wait_for(self, field: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while field not in self.received:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                self.received += self.sock.recv(4096).decode().split("\n")
            except TimeoutError:
                pytest.fail(f"no {field} within {TIMEOUT} s; got {self.received}")

    def close(self) -> None:
        self.sock.close()


def test_notify_watchdog_reload_and_stop(tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify")
    config = tmp_path / "moorage.toml"
    config.write_text('[storage]\nbackend = "memory"\n' + USERS.format(name="alice"))
    port = free_port()
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"}
    cmd = [sys.executable, "-m", "moorage.broker.cli", "serve", "--config", str(config),
           "--data-dir", str(tmp_path / "data"), "--amqp-port", str(port)]  # fmt: skip
    cmd += [f"--{name}-port=0" for name in ("mqtt", "stomp", "http", "mqtt-ws", "stomp-ws", "sqs")]
    log = tmp_path / "broker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stderr=out)
    try:
        notify.wait_for("READY=1")
        assert any(f.startswith("STATUS=accepting connections: amqp") for f in notify.received)
        notify.received.clear()
        notify.wait_for("WATCHDOG=1")
        notify.received.clear()
        notify.wait_for("WATCHDOG=1")  # again: it keeps pinging from the loop

        def login(name: str) -> None:
            credentials = pika.PlainCredentials(name, "pw")
            params = pika.ConnectionParameters("127.0.0.1", port, credentials=credentials)
            pika.BlockingConnection(params).close()

        login("alice")
        with pytest.raises(ProbableAuthenticationError):
            login("bob")
        config.write_text('[storage]\nbackend = "memory"\n' + USERS.format(name="bob"))
        notify.received.clear()
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        notify.wait_for("READY=1")
        login("bob")
        with pytest.raises(ProbableAuthenticationError):
            login("alice")
        config.write_text("[storage]\nnot_a_key = 1\n")  # a broken file changes nothing
        notify.received.clear()
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("READY=1")
        login("bob")
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        assert proc.wait(TIMEOUT) == 0
        assert "configuration not reloaded" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
