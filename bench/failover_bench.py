"""The replicated pair against a single node, and failover times (not a test).

Two measurements in one run, on loopback, with SQLite stores in temporary
directories (`storage.durability = "fsync"` unless `--nosync`):

1. Persistent confirmed throughput: the raw AMQP load generator
   (`amqp_bench`, `--persistent --confirm N`, one producer, one consumer)
   against a single node, then against the primary of a replicated pair
   (primary + standby, each fsyncing), with the same options; prints both
   rows and the ratio pair / single (goal: >= 0.8). `--ack-window 0` (the
   default here) writes and replicates every message; `--ack-window 0.1`
   (the broker's default) lets consumed-and-acked messages skip the disk.
2. Failover time: a witness and a pair; `--cycles` times, SIGKILL the
   primary and measure until the standby serves a client (a pika channel
   opens), restart the killed node (it rejoins as standby), wait until it is
   in sync; prints the median and the maximum.

    python -m moorage.bench.failover_bench [--count N] [--confirm N] [--cycles K]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from moorage.bench.amqp_bench import run
from moorage.bench.amqp_options import Options
from moorage.bench.results import Result, format_table
from moorage.storage.replication.link import request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _status(port: int) -> dict[str, Any]:
    try:
        return asyncio.run(request(f"127.0.0.1:{port}", {"op": "status"}, 5.0))
    except Exception:  # noqa: BLE001 - not answering yet
        return {}


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"failover_bench: timed out waiting for {what}")
        time.sleep(0.05)


class Node:
    """`moorage serve` (AMQP only) in a subprocess, optionally a replicated node."""

    def __init__(self, root: Path, name: str, config: str) -> None:
        self.name = name
        self.data_dir = root / name
        self.amqp = free_port()
        self.replication = free_port()
        self.config = root / f"{name}.toml"
        self.config.write_text(config)
        self.log = root / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.args: list[str] = []

    def start(self, *args: str) -> Node:
        self.args = list(args) or self.args
        cmd = [
            sys.executable, "-m", "moorage.broker.cli", "serve",
            "--config", str(self.config), "--data-dir", str(self.data_dir),
            "--amqp-port", str(self.amqp), "--mqtt-port", "0", "--stomp-port", "0",
            "--http-port", "0", "--mqtt-ws-port", "0", "--stomp-ws-port", "0", "--sqs-port", "0",
            *self.args,
        ]  # fmt: skip
        with self.log.open("ab") as log:
            # Fixed argv of our own interpreter, no shell: nothing user-controlled is run.
            self.process = subprocess.Popen(cmd, stdout=log, stderr=log)  # noqa: S603
        _wait(lambda: _listening(self.amqp), 60, f"{self.name} to listen")
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def status(self) -> dict[str, Any]:
        return _status(self.replication)


def replicated(node: Node, role: str, peer: Node | None, witness: int | None) -> list[str]:
    args = ["--role", role, "--replication-port", str(node.replication)]
    if peer is not None:
        args += ["--primary", f"127.0.0.1:{peer.replication}"]
    if witness is not None:
        args += ["--witness", f"127.0.0.1:{witness}"]
    return args


def measure(port: int, opts: argparse.Namespace) -> Result:
    options = Options(
        port=port,
        persistent=True,
        confirm=opts.confirm,
        count=opts.count,
        size=opts.size,
        progress=False,
        timeout=600.0,
    )
    return run(options, "auto")


def throughput(root: Path, config: str, opts: argparse.Namespace) -> tuple[Result, Result]:
    single = Node(root, "single", config).start()
    try:
        alone = measure(single.amqp, opts)
    finally:
        single.kill()
    a, b = Node(root, "primary", config), Node(root, "standby", config)
    try:
        a.start(*replicated(a, "primary", None, None))
        b.start(*replicated(b, "standby", a, None))
        _wait(lambda: a.status().get("confirms") == "sync", 60, "the standby in sync")
        pair = measure(a.amqp, opts)
        status = a.status()
        assert status.get("confirms") == "sync", status  # measured with the standby in sync
    finally:
        a.kill()
        b.kill()
    return alone, pair


def _served(port: int) -> bool:
    import pika  # the client users run; only this part needs it

    try:
        connection = pika.BlockingConnection(
            pika.ConnectionParameters("127.0.0.1", port, connection_attempts=1)
        )
    except Exception:  # noqa: BLE001 - not serving yet
        return False
    connection.channel()
    connection.close()
    return True


def failover_times(root: Path, config: str, cycles: int) -> list[float]:
    witness_port = free_port()
    with (root / "witness.log").open("ab") as log:
        witness = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed argv
            [sys.executable, "-m", "moorage.broker.cli", "witness", "--port", str(witness_port),
             "--lease", "1"],
            stdout=log, stderr=log,
        )  # fmt: skip
    a, b = Node(root, "fa", config), Node(root, "fb", config)
    times: list[float] = []
    try:
        _wait(lambda: _listening(witness_port), 30, "the witness")
        a.start(*replicated(a, "primary", None, witness_port))
        b.start(*replicated(b, "standby", a, witness_port))
        primary, standby = a, b
        for _ in range(cycles):
            _wait(lambda p=primary: p.status().get("confirms") == "sync", 60, "sync")
            _wait(lambda: _status(witness_port).get("alone") is False, 30, "the witness")
            primary.kill()
            killed = time.monotonic()
            _wait(lambda s=standby: _served(s.amqp), 60, "the standby to serve")
            times.append(time.monotonic() - killed)
            primary.start()  # its original flags: it rejoins as standby
            primary, standby = standby, primary
    finally:
        a.kill()
        b.kill()
        witness.kill()
        witness.wait(10)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="failover_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=100_000, help="messages per run (100000)")
    p.add_argument("--confirm", type=int, default=1000, help="unconfirmed publishes (1000)")
    p.add_argument("--size", type=int, default=128, help="body bytes (128)")
    p.add_argument("--ack-window", type=float, default=0.0, help="storage.ack_window (0)")
    p.add_argument("--nosync", action="store_true", help='storage.durability = "nosync"')
    p.add_argument("--cycles", type=int, default=5, help="failovers to time (5; 0: none)")
    args = p.parse_args(argv)
    durability = "nosync" if args.nosync else "fsync"
    config = (
        f'[storage]\ndurability = "{durability}"\nack_window = {args.ack_window}\n'
        "[replication]\nheartbeat = 0.1\npeer_timeout = 1.0\nstandby_timeout = 2.0\n"
    )
    with tempfile.TemporaryDirectory(prefix="moorage-failover-bench-") as tmp:
        root = Path(tmp)
        alone, pair = throughput(root, config, args)
        alone.broker, pair.broker = "single node", "replicated pair (primary)"
        print(format_table(alone))
        print(format_table(pair))
        ratio = pair.delivered_per_s / alone.delivered_per_s if alone.delivered_per_s else 0.0
        print(
            f"ratio pair / single, delivered msg/s: {ratio:.2f}x "
            f"(durability {durability}, ack_window {args.ack_window}, {os.cpu_count()} CPUs)"
        )
        if args.cycles:
            times = failover_times(root, config, args.cycles)
            print(
                f"failover, kill -> first client served over {len(times)} cycles: "
                f"median {statistics.median(times):.2f} s, max {max(times):.2f} s "
                f"({', '.join(f'{t:.2f}' for t in times)})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
