"""A Moorage broker started as a subprocess for one run, and a run measured against it.

`spawned_broker` starts ``moorage serve`` with only the listener under test on a
free loopback port and a temp data dir (removed afterwards), waits until it
listens, and stops it with SIGTERM afterwards. `run_spawned_with` runs any
protocol's measurement against it and adds the broker's CPU share, its store
counters (read from its log after SIGUSR1) and its warnings to the result.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from moorage.bench.errors import BenchError
from moorage.bench.loopback import free_port
from moorage.bench.results import Result

__all__ = ["SpawnedBroker", "run_spawned_with", "spawned_broker"]

SPAWN_READY_TIMEOUT: Final = 30.0  # seconds a spawned broker gets to start listening
REPO_ROOT: Final = Path(__file__).resolve().parent.parent
# Every listener of `moorage serve` (broker.config.DEFAULT_PORTS); a spawned broker
# opens only the one under test, so runs never collide with a broker on default ports.
LISTENERS: Final = ("amqp", "mqtt", "stomp", "http", "mqtt_ws", "stomp_ws", "sqs")


@dataclass(slots=True)
class SpawnedBroker:
    """A Moorage subprocess started for one run."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def cpu_seconds(self) -> float | None:
        """User+system CPU of the broker so far (Linux /proc), or None."""
        try:
            fields_ = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields_[11]) + int(fields_[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the broker wrote (warnings and errors only: log level warning)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        kept = [line for line in text.splitlines() if "statistics: " not in line]
        return "\n".join(kept[-lines:])

    def statistics(self, timeout: float = 3.0) -> dict[str, int]:
        """Ask the broker for its counters (SIGUSR1) and read them from its log."""
        try:
            before = self.log_path.read_text(errors="replace").count("statistics: ")
        except OSError:
            return {}
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = [
                line
                for line in self.log_path.read_text(errors="replace").splitlines()
                if "statistics: " in line
            ]
            if len(lines) > before:
                pairs = lines[-1].split("statistics: ", 1)[1].split()
                return {k: int(v) for k, v in (p.split("=", 1) for p in pairs)}
            time.sleep(0.02)
        return {}


@contextlib.contextmanager
def spawned_broker(store: str, protocol: str = "amqp") -> Iterator[SpawnedBroker]:
    """Start ``moorage serve`` with only ``protocol`` listening on a free loopback port.

    It gets a temp data dir (removed afterwards) and is stopped with SIGTERM after.
    """
    tmp = Path(tempfile.mkdtemp(prefix="moorage-bench-"))
    try:
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "moorage.broker.cli",
            "serve",
            "--bind",
            "127.0.0.1",
            "--data-dir",
            str(tmp / "data"),
            "--log-level",
            "warning",
        ]
        cmd += [
            f"--{name.replace('_', '-')}-port={port if name == protocol else 0}"
            for name in LISTENERS
        ]
        if store == "memory":
            config = tmp / "moorage.toml"
            config.write_text('[storage]\nbackend = "memory"\n')
            cmd += ["--config", str(config)]
        log_path = tmp / "broker.log"
        with log_path.open("wb") as log:
            # Fixed argv of our own interpreter, no shell: nothing user-controlled is run.
            process = subprocess.Popen(  # noqa: S603
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, stdin=subprocess.DEVNULL
            )
        broker = SpawnedBroker(port, process, log_path)
        try:
            _wait_listening(broker)
            yield broker
        finally:
            _stop(process)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_listening(broker: SpawnedBroker) -> None:
    deadline = time.monotonic() + SPAWN_READY_TIMEOUT
    while time.monotonic() < deadline:
        if broker.process.poll() is not None:
            raise BenchError(
                f"spawned broker exited with code {broker.process.returncode}:\n{broker.log_tail()}"
            )
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", broker.port), timeout=0.5),
        ):
            return
        time.sleep(0.05)
    raise BenchError(f"spawned broker not listening after {SPAWN_READY_TIMEOUT:g}s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def run_spawned_with(
    opts: Any, loop: str, store: str, protocol: str, run_fn: Callable[[Any, str], Result]
) -> Result:
    """``run_fn(opts, loop)`` against a Moorage spawned for it; adds its CPU and log."""
    with spawned_broker(store, protocol) as broker:
        opts.host, opts.port = "127.0.0.1", broker.port
        stats0 = broker.statistics()
        cpu0 = broker.cpu_seconds()
        wall0 = time.perf_counter()
        try:
            result = run_fn(opts, loop)
        except BenchError as e:
            tail = broker.log_tail()
            raise BenchError(
                f"{e}\nbroker log (warnings and errors):\n{tail}" if tail else e
            ) from e
        cpu1 = broker.cpu_seconds()
        wall = time.perf_counter() - wall0
        if cpu0 is not None and cpu1 is not None:
            result.broker_cpu_pct = round(100 * (cpu1 - cpu0) / wall, 1)
        stats1 = broker.statistics()
        if "store_fsyncs" in stats0 and "store_fsyncs" in stats1:
            fsyncs = stats1["store_fsyncs"] - stats0["store_fsyncs"]
            batches = stats1["store_batches"] - stats0["store_batches"]
            result.notes.append(
                f"store: {fsyncs / wall:,.0f} fsyncs/s, {batches / wall:,.0f} batches/s "
                f"({fsyncs} fsyncs over the run)"
            )
        if protocol != "amqp":  # only AMQP names its product in the handshake
            result.broker = "Moorage"
        result.broker += f" (spawned, {store} store)"
        if broker.process.poll() is not None:
            result.complete = False
            result.notes.append(f"broker exited with code {broker.process.returncode} during run")
        tail = broker.log_tail()
        if tail:
            result.notes.append("broker log (warnings and errors):\n" + tail)
    return result
