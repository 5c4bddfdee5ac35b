"""Two `moorage serve --shared-storage` processes on one data directory, for failover tests.

Each node has its own free loopback ports (AMQP, and MQTT and STOMP when
asked), its own configuration file and log; both point at the same data
directory. A node is spawned without waiting; `wait_serving` waits for its
ports, `wait_logged` for a line of its log.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.durability.broker_process import free_port

LEASE = 4.0
"""The pair's lease (seconds): short, so the stuck-holder test is quick; renewed every second."""
POLL = 0.1
"""How often a waiting node tries the lock."""


class SharedNode:
    """One broker of a shared-storage pair."""

    def __init__(self, data_dir: Path, name: str, *, lease: float = LEASE) -> None:
        self.name = name
        self.data_dir = data_dir
        self.amqp_port = free_port()
        self.mqtt_port = free_port()
        self.stomp_port = free_port()
        self.http_port = free_port()
        self.config = data_dir.parent / f"{name}.toml"
        self.config.write_text(
            f'[storage]\nmode = "shared"\nlease = {lease}\nlock_poll = {POLL}\n'
            'durability = "fsync"\n'
        )
        self.log = data_dir.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def spawn(self) -> SharedNode:
        cmd = [
            sys.executable, "-m", "moorage.broker.cli", "serve",
            "--config", str(self.config), "--data-dir", str(self.data_dir),
            "--amqp-port", str(self.amqp_port), "--mqtt-port", str(self.mqtt_port),
            "--stomp-port", str(self.stomp_port), "--http-port", str(self.http_port),
            "--mqtt-ws-port", "0", "--stomp-ws-port", "0", "--sqs-port", "0",
        ]  # fmt: skip
        self.runs = len(self.text())  # `wait_logged` reads this run's lines only
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=os.environ.copy())
        return self

    @property
    def ports(self) -> tuple[int, int, int]:
        return (self.amqp_port, self.mqtt_port, self.stomp_port)

    def accepts(self, port: int | None = None) -> bool:
        """Does the node's port (default AMQP) accept a TCP connection right now?"""
        try:
            with socket.create_connection(("127.0.0.1", port or self.amqp_port), timeout=0.5):
                return True
        except OSError:
            return False

    def wait_serving(self, timeout: float = 30.0) -> float:
        """Wait until every port accepts; the monotonic time it first did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(f"{self.name} exited with {code}: {self.text()}")
            if all(self.accepts(port) for port in self.ports):
                return time.monotonic()
            time.sleep(0.02)
        raise AssertionError(f"{self.name} did not start serving: {self.text()}")

    def overview(self) -> dict[str, Any]:
        """The node's `GET /api/overview` (guest from loopback)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/api/overview")
        request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
        with urllib.request.urlopen(request, timeout=10) as answer:
            return dict(json.load(answer))

    def wait_logged(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        start = self.runs
        while text not in self.text()[start:]:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} never logged {text!r}: {self.text()}")
            time.sleep(0.02)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, and reap it (a zombie would still hold its pid)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def holds(self) -> bool:
        """Does the lease record name this node's running process?"""
        try:
            record = json.loads((self.data_dir / "moorage.lease").read_bytes())
        except (OSError, ValueError):
            return False
        running = self.proc is not None and self.proc.poll() is None
        return running and self.proc is not None and record.get("pid") == self.proc.pid

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)


class SharedPair:
    """Two nodes on one data directory: one holds the lock and serves, the other waits.

    Shared by the tests of this folder (starting processes is their slowest
    part): `ready()` respawns whichever node a test killed or stopped, as
    systemd would, and returns (holder, waiter).
    """

    def __init__(self, root: Path) -> None:
        self.data_dir = root / "data"
        self.nodes = (SharedNode(self.data_dir, "a"), SharedNode(self.data_dir, "b"))

    def ready(self, timeout: float = 60.0) -> tuple[SharedNode, SharedNode]:
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                node.spawn()  # both at once at first: whichever takes the lock holds
        deadline = time.monotonic() + timeout
        while not any(node.holds() for node in self.nodes):
            assert time.monotonic() < deadline, [node.text() for node in self.nodes]
            time.sleep(0.02)
        holder = next(node for node in self.nodes if node.holds())
        waiter = next(node for node in self.nodes if node is not holder)
        holder.wait_serving(timeout)
        waiter.wait_logged("waiting for the shared-storage lock", timeout)
        return holder, waiter

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
