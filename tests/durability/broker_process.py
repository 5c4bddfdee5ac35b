"""A broker in a subprocess on a free port, for restart and kill -9 tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pika

from moorage.broker.embedded import free_port


class BrokerProcess:
    """`moorage serve` with its own data directory; start, kill, stop, restart."""

    def __init__(
        self,
        data_dir: Path,
        *,
        durability: str = "fsync",
        stomp: bool = False,
        mqtt: bool = False,
        http: bool = False,
        sqs: bool = False,
        extra_config: str = "",
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        # stomp=True: a STOMP listener on its own free port too (`stomp_port`), waited for
        self.stomp_port = free_port() if stomp else 0
        # mqtt=True: an MQTT listener on its own free port too (`mqtt_port`), waited for
        self.mqtt_port = free_port() if mqtt else 0
        # http=True: the management listener on its own free port too (`http_port`)
        self.http_port = free_port() if http else 0
        # sqs=True: the AWS (SQS) listener on its own free port too (`sqs_port`)
        self.sqs_port = free_port() if sqs else 0
        self.config = data_dir.parent / f"{data_dir.name}.toml"
        # extra_config: more TOML appended to the config file (e.g. a [limits] table)
        self.config.write_text(f'[storage]\ndurability = "{durability}"\n{extra_config}')
        self.proc: subprocess.Popen[bytes] | None = None
        # run in the child before it starts (e.g. lowering its resource limits)
        self.preexec_fn: Callable[[], None] | None = None
        self.log = data_dir.parent / f"{data_dir.name}.log"

    @property
    def params(self) -> pika.ConnectionParameters:
        return pika.ConnectionParameters(
            "127.0.0.1", self.port, blocked_connection_timeout=10, connection_attempts=1
        )

    def start(self, timeout: float = 15.0) -> BrokerProcess:
        cmd = [
            sys.executable, "-m", "moorage.broker.cli", "serve",
            "--config", str(self.config), "--data-dir", str(self.data_dir),
            "--amqp-port", str(self.port),
            "--mqtt-port", str(self.mqtt_port), "--stomp-port", str(self.stomp_port),
            "--http-port", str(self.http_port),
            "--mqtt-ws-port", "0", "--stomp-ws-port", "0",
            "--sqs-port", str(self.sqs_port),
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=log, env=os.environ.copy(), preexec_fn=self.preexec_fn
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"broker exited with {self.proc.returncode}: {self.log.read_text()}"
                )
            try:
                ports = (self.port, self.stomp_port, self.mqtt_port, self.http_port, self.sqs_port)
                for port in ports:
                    if port:
                        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                            pass
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"broker did not start: {self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no chance to flush or close anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM and wait: the clean shutdown path. Returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise
        return self.proc.returncode
