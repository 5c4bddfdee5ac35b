"""Two broker processes and a witness on loopback, for failover tests.

`Node` is `moorage serve --role ...` with its own data directory and free
ports (AMQP, MQTT, STOMP, replication); `Witness` is `moorage witness`.
`status(port)` asks a node's replication port for its failover status.
Every wait is on a condition with a generous bound.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika

from moorage.broker.embedded import free_port
from moorage.storage.replication.link import request

# Keep-alives and timeouts of the test pairs: short, so that a failover
# takes a second or two, and the same in every test.
TEST_REPLICATION = """
[replication]
heartbeat = 0.1
peer_timeout = 1.0
standby_timeout = {standby_timeout}
promote_without_witness = {promote_without_witness}
"""


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy; its value. AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def status(port: int, timeout: float = 5.0) -> dict[str, Any] | None:
    """A node's failover status, or None when it does not answer."""
    try:
        return asyncio.run(request(f"127.0.0.1:{port}", {"op": "status"}, timeout))
    except Exception:
        return None


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Process:
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def spawn(self, args: list[str]) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moorage.broker.cli", *args],
                stdout=log,
                stderr=log,
                env=os.environ.copy(),
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no chance to flush or close anything."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM and wait."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise
        return self.proc.returncode

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"exited with {self.proc.returncode}: {self.log.read_text()}")


class Witness(Process):
    def __init__(self, tmp: Path, lease: float = 1.0) -> None:
        self.port = free_port()
        self.lease = lease
        self.log = tmp / "witness.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def status(self) -> dict[str, Any]:
        return status(self.port) or {}

    def start(self) -> Witness:
        self.spawn(["witness", "--port", str(self.port), "--lease", str(self.lease)])
        wait_for(lambda: self.check_alive() or listening(self.port), what="the witness")
        return self


class Node(Process):
    """One node of a pair; `role`/`peer`/`witness` are given at each start."""

    def __init__(
        self,
        tmp: Path,
        name: str,
        *,
        standby_timeout: float = 2.0,
        promote_without_witness: bool = False,
    ) -> None:
        self.name = name
        self.data_dir = tmp / name
        self.amqp = free_port()
        self.mqtt = free_port()
        self.stomp = free_port()
        self.http = free_port()
        self.replication = free_port()
        self.log = tmp / f"{name}.log"
        self.config = tmp / f"{name}.toml"
        self.config.write_text(
            TEST_REPLICATION.format(
                standby_timeout=standby_timeout,
                promote_without_witness=str(promote_without_witness).lower(),
            )
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.replication}"

    @property
    def params(self) -> pika.ConnectionParameters:
        return pika.ConnectionParameters(
            "127.0.0.1", self.amqp, connection_attempts=1, blocked_connection_timeout=10
        )

    def start(self, role: str, peer: Node | None = None, witness: Witness | None = None) -> Node:
        args = [
            "serve", "--config", str(self.config), "--data-dir", str(self.data_dir),
            "--amqp-port", str(self.amqp), "--mqtt-port", str(self.mqtt),
            "--stomp-port", str(self.stomp), "--http-port", str(self.http),
            "--mqtt-ws-port", "0", "--stomp-ws-port", "0", "--sqs-port", "0",
            "--role", role, "--replication-port", str(self.replication),
        ]  # fmt: skip
        if peer is not None:
            args += ["--primary", peer.address]
        if witness is not None:
            args += ["--witness", witness.address]
        self.spawn(args)
        wait_for(
            lambda: self.check_alive() or (listening(self.amqp) and self.status()),
            what=f"node {self.name}",
        )
        return self

    def status(self) -> dict[str, Any] | None:
        return status(self.replication)

    def wait_role(self, role: str, timeout: float = 30.0) -> dict[str, Any]:
        def has_role() -> dict[str, Any] | None:
            self.check_alive()
            found = self.status()
            return found if found and found.get("role") == role else None

        result: dict[str, Any] = wait_for(has_role, timeout, f"{self.name} to be {role}")
        return result

    def wait_in_sync(self, timeout: float = 30.0) -> dict[str, Any]:
        """As primary: until its standby is in sync and confirms wait for it."""

        def in_sync() -> dict[str, Any] | None:
            self.check_alive()
            found = self.status()
            return found if found and found.get("confirms") == "sync" else None

        result: dict[str, Any] = wait_for(in_sync, timeout, f"{self.name}'s standby in sync")
        return result

    def promote(self, *, force: bool = False) -> subprocess.CompletedProcess[str]:
        args = ["promote", "--replication-port", str(self.replication)]
        if force:
            args.append("--force")
        return subprocess.run(
            [sys.executable, "-m", "moorage.broker.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
