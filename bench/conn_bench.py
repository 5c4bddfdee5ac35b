"""Idle-connection memory and connection rate: ``moorage bench conn``.

Opens N connections (MQTT: CONNECT/CONNACK; AMQP: the full handshake plus one open
channel) with at most ``--concurrency`` handshakes in flight, reports how long the
first 5,000 (``--rate-of``) took, waits ``--settle`` seconds, and reads the broker's
resident memory (``VmRSS`` in ``/proc/<pid>/status``) before and after:
``(after - before) / N`` is the memory each idle connection costs.  The broker is
``--spawn`` (Moorage) or any broker on loopback whose process id is given with
``--pid`` (``pgrep -f beam.smp``, ``pidof mosquitto``).  The soft open-files limit of
this process is raised to its hard limit; a broker started outside needs its own
``ulimit -n``.  Every connection is closed at the end; the run is bounded by
``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from moorage.bench.amqp_handshake import PipelinedConnection, handshake_frames
from moorage.bench.amqp_options import Options
from moorage.bench.errors import BenchError
from moorage.bench.loopback import new_loop, require_loopback
from moorage.bench.spawn import spawned_broker

DEFAULT_PORTS = {"mqtt": 1883, "amqp": 5672}


def rss_kib(pid: int) -> int:
    """Resident set of ``pid`` in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of process ``pid`` so far (``/proc/<pid>/stat``), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_nofile(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _opener(
    protocol: str, host: str, port: int, failures: list[Any], persistent: bool
) -> Callable[[int], Awaitable[Any]]:
    """How to open connection ``i``: MQTT CONNECT, or the pipelined AMQP handshake."""
    if protocol == "mqtt":
        from moorage.bench.mqtt_bench import MqttConnection
        from moorage.bench.mqtt_options import Options as MqttOptions

        # The command line's login (guest): the broker refuses anonymous clients.
        opts = MqttOptions(host=host, port=port, user="guest", password="guest")  # noqa: S106

        def open_mqtt(i: int) -> Awaitable[Any]:
            return MqttConnection.open(
                opts, f"idle-{i}", failures.append, clean_start=not persistent
            )

        return open_mqtt
    defaults = Options()
    pipelined = handshake_frames(defaults.user, defaults.password, defaults.vhost)

    def open_amqp(i: int) -> Awaitable[Any]:
        return PipelinedConnection.open(
            host, port, f"idle-{i}", pipelined, on_failure=failures.append
        )

    return open_amqp


async def measure(
    protocol: str,
    host: str,
    port: int,
    n: int,
    concurrency: int,
    rate_of: int,
    settle: float,
    pid: int | None,
    persistent: bool = False,
) -> dict[str, Any]:
    """Open ``n`` connections, measure, close them all."""
    failures: list[Any] = []
    conns: list[Any] = []
    errors: list[BaseException] = []
    before = rss_kib(pid) if pid else None
    first_done: list[float] = []
    broker_cpu0 = cpu_seconds(pid) if pid else None
    client_cpu0 = time.process_time()
    open_one = _opener(protocol, host, port, failures, persistent)
    indices = iter(range(n))
    started = time.perf_counter()

    async def worker() -> None:
        # `concurrency` of these share one iterator: that many handshakes in flight,
        # without a task and a semaphore wait per connection.
        for i in indices:
            try:
                conn = await open_one(i)
            except (BenchError, OSError) as e:
                errors.append(e)
                continue
            conns.append(conn)
            if len(conns) == rate_of:
                first_done.append(time.perf_counter() - started)

    try:
        await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu0
        broker_cpu1 = cpu_seconds(pid) if pid else None
        await asyncio.sleep(settle)
        after = rss_kib(pid) if pid else None
    finally:
        for chunk in range(0, len(conns), 500):
            await asyncio.gather(
                *(_quiet_close(c) for c in conns[chunk : chunk + 500]), return_exceptions=True
            )
    opened = len(conns)
    report: dict[str, Any] = {
        "protocol": protocol,
        "broker": f"{host}:{port}",
        "connections_opened": opened,
        "errors": len(errors),
        "open_s": round(elapsed, 3),
        "open_per_s": round(opened / elapsed) if elapsed else 0,
        f"first_{rate_of}_s": round(first_done[0], 3) if first_done else None,
        "concurrency": concurrency,
        "client_cpu_s": round(client_cpu, 3),
    }
    if broker_cpu0 is not None and broker_cpu1 is not None:
        report["broker_cpu_s"] = round(broker_cpu1 - broker_cpu0, 3)
    if protocol == "mqtt":
        report["sessions"] = "persistent" if persistent else "clean"
    if errors:
        report["first_error"] = str(errors[0])
    if before is not None and after is not None:
        report.update(
            rss_before_kib=before,
            rss_after_kib=after,
            kib_per_connection=round((after - before) / max(opened, 1), 2),
        )
    return report


async def _quiet_close(conn: Any) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5):
            await conn.close()


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``moorage bench conn``."""
    p = argparse.ArgumentParser(prog="moorage bench conn", description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", choices=["mqtt", "amqp"], default="mqtt")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, help="(default 1883 / 5672)")
    p.add_argument("--pid", type=int, help="broker process id, for its RSS")
    p.add_argument("--spawn", action="store_true", help="run a Moorage broker for this run")
    p.add_argument("--spawn-store", choices=["sqlite", "memory"], default="sqlite")
    p.add_argument(
        "--persistent",
        action="store_true",
        help="MQTT: persistent sessions (cleanSession=0; they stay in the broker)",
    )
    p.add_argument("--connections", type=int, default=10_000, metavar="N")
    p.add_argument("--concurrency", type=int, default=500, help="handshakes in flight")
    p.add_argument("--rate-of", type=int, default=5000, metavar="K", help="time the first K")
    p.add_argument("--settle", type=float, default=3.0, metavar="S", help="wait before RSS")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S", help="hard limit")
    p.add_argument("--json", action="store_true")
    p.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``moorage bench conn``; 0 when every connection opened."""
    args = build_parser().parse_args(argv)
    if not 1 <= args.connections <= 60_000:
        print("moorage bench conn: --connections must be 1..60000", file=sys.stderr)
        return 2
    limit = raise_nofile(args.connections + 100)
    if limit < args.connections + 100:
        print(f"moorage bench conn: open-files limit {limit} is too low", file=sys.stderr)
        return 2
    try:
        with contextlib.ExitStack() as stack:
            host, port, pid = args.host, args.port or DEFAULT_PORTS[args.protocol], args.pid
            if args.spawn:
                broker = stack.enter_context(spawned_broker(args.spawn_store, args.protocol))
                host, port, pid = "127.0.0.1", broker.port, broker.process.pid
            require_loopback(host)

            async def bounded() -> dict[str, Any]:
                async with asyncio.timeout(args.timeout):
                    return await measure(
                        args.protocol,
                        host,
                        port,
                        args.connections,
                        args.concurrency,
                        args.rate_of,
                        args.settle,
                        pid,
                        args.persistent,
                    )

            with asyncio.Runner(loop_factory=new_loop(args.loop)) as runner:
                report = runner.run(bounded())
            if args.spawn:
                report["broker"] = f"Moorage (spawned, {args.spawn_store} store)"
    except (BenchError, TimeoutError) as e:
        print(f"moorage bench conn: {e or 'timed out'}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:<24} {value:,}" if isinstance(value, int) else f"{key:<24} {value}")
    return 0 if report["connections_opened"] == args.connections else 1
