"""The management API at scale: ``python -m moorage.bench.management_bench`` (not a test).

Spawns a Moorage (AMQP and the management listener, memory store unless
``--store sqlite``), declares ``--queues`` queues (10,000) and holds
``--connections`` idle AMQP connections (1,000) open, then, while the AMQP
benchmark's publisher and consumer run against a queue of their own
(``moorage bench amqp --duration``):

0. measures the broker's CPU time per call of each of those GETs with nothing
   else running (from /proc: independent of what else the machine does), and of
   a password check (the broker checks a poller's password again once its
   credential cache entry expires), and so what polling costs at one poll every
   ``--interval`` seconds;
1. times the calls a dashboard makes at that scale — ``GET /api/queues`` first
   page (``?page=1&page_size=100``) and the whole list, ``/api/overview``,
   ``/metrics`` and ``/metrics/per-object`` — each ``--samples`` times (min and
   median printed);
2. measures the publisher's throughput with nothing polling and with the web
   UI's overview page (``/api/overview`` + ``/api/health/checks/alarms``) and
   Prometheus (``/metrics``) polled every ``--interval`` seconds (5), in
   alternating runs (unpolled, polled, polled, unpolled, unpolled, polled, ...:
   each kind comes first in every other round), and prints the ratio of the
   means (and of each round's pair): issue 15 asks for the polled run within
   5 % of the unpolled one. Beside the rates, which other load on the
   machine moves far more than 5 %, it prints what that load moves less: the
   broker's CPU per message in each kind of run and the pollers' own CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika

from moorage.bench.amqp_handshake import PipelinedConnection, handshake_frames
from moorage.bench.conn_bench import raise_nofile
from moorage.bench.loopback import free_port
from moorage.bench.spawn import REPO_ROOT, SpawnedBroker
from moorage.broker.auth import CREDENTIAL_CACHE_TTL

AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()


@contextlib.contextmanager
def broker(store: str) -> Iterator[tuple[int, int, subprocess.Popen[bytes]]]:
    """A Moorage with AMQP and HTTP on free ports: (amqp port, http port, process)."""
    tmp = Path(tempfile.mkdtemp(prefix="moorage-mgmt-bench-"))
    amqp, http = free_port(), free_port()
    config = tmp / "moorage.toml"
    config.write_text(f'[storage]\nbackend = "{store}"\n')
    cmd = [
        sys.executable, "-m", "moorage.broker.cli", "serve", "--config", str(config),
        "--data-dir", str(tmp / "data"), "--log-level", "warning",
        f"--amqp-port={amqp}", f"--http-port={http}", "--mqtt-port=0", "--stomp-port=0",
        "--mqtt-ws-port=0", "--stomp-ws-port=0",
    ]  # fmt: skip
    log = (tmp / "broker.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed argv
        cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, stdin=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(http, "/api/overview")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    text = (tmp / "broker.log").read_text()
                    raise SystemExit(f"broker did not start: {text}") from None
                time.sleep(0.1)
        yield amqp, http, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _get(port: int, path: str, auth: str = AUTH) -> bytes:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    request.add_header("Authorization", auth)
    with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
        return bytes(response.read())


def _add_user(port: int, name: str, password: str) -> str:
    """A monitoring user made through the API; its Authorization header."""
    body = json.dumps({"password": password, "tags": "monitoring"}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/users/{name}", data=body, method="PUT"
    )
    request.add_header("Authorization", AUTH)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=120):  # noqa: S310
        pass
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


def timed_get(port: int, path: str) -> tuple[float, int]:
    """Seconds one GET took, and the size of its answer."""
    started = time.perf_counter()
    body = _get(port, path)
    return time.perf_counter() - started, len(body)


def declare_queues(port: int, count: int) -> None:
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    channel = connection.channel()
    for i in range(count):
        channel.queue_declare(f"q-{i:05d}")
    connection.close()


class IdleConnections:
    """`n` idle AMQP connections with a channel each, held by a loop on a thread."""

    def __init__(self, port: int, n: int) -> None:
        self.port, self.n = port, n
        self.loop = asyncio.new_event_loop()
        self.conns: list[Any] = []
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> IdleConnections:
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(self._open(), self.loop)
        future.result(timeout=600)
        return self

    async def _open(self) -> None:
        frames = handshake_frames("guest", "guest", "/")
        pending = iter(range(self.n))

        async def worker() -> None:
            for i in pending:
                conn = await PipelinedConnection.open("127.0.0.1", self.port, f"idle-{i}", frames)
                self.conns.append(conn)

        await asyncio.gather(*(worker() for _ in range(50)))

    def __exit__(self, *exc: object) -> None:
        async def close_all() -> None:
            await asyncio.gather(*(c.close() for c in self.conns))

        asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(timeout=120)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Poller(threading.Thread):
    """What the web UI's overview page and a Prometheus scrape ask, every `interval` s."""

    PATHS = ("/api/overview", "/api/health/checks/alarms", "/metrics")

    def __init__(self, port: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.stop = threading.Event()
        self.times: dict[str, list[float]] = {p: [] for p in self.PATHS}

        self.polls = 0
        self.cpu = 0.0  # this thread's own CPU seconds (the client side of the polls)

    def run(self) -> None:
        started = time.thread_time()
        while not self.stop.is_set():
            for path in self.PATHS:
                self.times[path].append(timed_get(self.port, path)[0])
            self.polls += 1
            self.cpu = time.thread_time() - started
            self.stop.wait(self.interval)


def publisher_run(amqp: int, duration: float) -> dict[str, Any]:
    """`moorage bench amqp` for `duration` seconds against the broker; its JSON result."""
    cmd = [
        sys.executable, "-m", "moorage.bench", "amqp", "--port", str(amqp),
        "--duration", str(duration), "--json", "--quiet",
    ]  # fmt: skip
    out = subprocess.run(  # noqa: S603 - our own interpreter, fixed argv
        cmd, capture_output=True, text=True, cwd=REPO_ROOT, check=False, timeout=duration + 120
    )
    # exit status 1: the run was incomplete (the consumer had not caught up when the
    # time was over); its JSON still says what the publisher sent
    if out.returncode not in (0, 1) or not out.stdout.strip():
        raise SystemExit(f"moorage bench amqp failed ({out.returncode}): {out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


BIG_GETS = (
    "/api/queues?page=1&page_size=100",
    "/api/queues",
    "/api/overview",
    "/metrics",
    "/metrics/per-object",
)


def cpu_per_get(http: int, broker: SpawnedBroker, samples: int, interval: float) -> None:
    """Prints the broker's CPU seconds per GET of each path (nothing else running), and
    what the pollers' set (`Poller.PATHS`) costs: the share of one core it takes."""
    if broker.cpu_seconds() is None:
        print("broker CPU per GET: not measurable here (no /proc)")
        return
    print(f"\nbroker CPU per GET, idle broker (mean of {samples} calls at least):")
    print(f"{'GET':40} {'CPU ms':>8}")
    per_path: dict[str, float] = {}
    for path in (*BIG_GETS, *Poller.PATHS):
        if path in per_path:
            continue
        # at least `samples` calls and a second: the clock ticks every 10 ms
        before = broker.cpu_seconds() or 0.0
        started, calls = time.perf_counter(), 0
        while calls < samples or time.perf_counter() - started < 1.0:
            _get(http, path)
            calls += 1
        per_path[path] = ((broker.cpu_seconds() or 0.0) - before) / calls
        print(f"{path:40} {per_path[path] * 1000:8.1f}")
    # The broker remembers a checked password for CREDENTIAL_CACHE_TTL seconds, so a
    # poller's password is checked again (scrypt) every that many seconds: the first
    # GET of a user not seen yet costs that check on top of the GET.
    cheap = "/api/health/checks/alarms"
    logins = [_add_user(http, f"bench-poller-{i}", f"secret-{i}") for i in range(samples)]
    before = broker.cpu_seconds() or 0.0
    for auth in logins:
        _get(http, cheap, auth)
    login = max(((broker.cpu_seconds() or 0.0) - before) / samples - per_path[cheap], 0.0)
    print(f"{'a password check (first GET of a user)':40} {login * 1000:8.1f}")
    cycle = sum(per_path[p] for p in Poller.PATHS)
    checks = interval / CREDENTIAL_CACHE_TTL  # per poll, the UI's password checked anew
    print(
        f"one poll ({' + '.join(Poller.PATHS)}): {cycle * 1000:.1f} ms of broker CPU, "
        f"{(cycle + checks * login) * 1000:.1f} ms with its share of the password "
        f"checks (one every {CREDENTIAL_CACHE_TTL:g} s): "
        f"{(cycle + checks * login) / interval * 100:.2f} % of one core at one poll "
        f"every {interval:g} s"
    )


def _rate(result: dict[str, Any]) -> float:
    """The publisher's throughput: messages sent per second (`Result.sent_per_s`)."""
    return float(result["sent_per_s"])


class _Run:
    """One publisher run: its rate, and the broker's CPU seconds meanwhile."""

    def __init__(self, amqp: int, process: subprocess.Popen[bytes], duration: float) -> None:
        broker = SpawnedBroker(amqp, process, Path(os.devnull))
        before = broker.cpu_seconds()
        result = publisher_run(amqp, duration)
        after = broker.cpu_seconds()
        self.rate = _rate(result)
        self.sent = int(result["sent"])
        self.broker_cpu = after - before if after is not None and before is not None else None

    def cpu_per_message(self) -> str:
        """The broker's CPU microseconds per message sent (the run's drain included)."""
        if self.broker_cpu is None or not self.sent:
            return "-"
        return f"{self.broker_cpu / self.sent * 1e6:.1f}"


def _throughput(
    amqp: int, http: int, process: subprocess.Popen[bytes], args: argparse.Namespace
) -> None:
    """Publisher runs alternating unpolled and polled; prints both and their ratio.

    The pollers run on a thread of this process; the publisher and its consumer
    are a process of their own (`publisher_run`), so the pollers share no
    interpreter with them: what they take from the publisher is CPU (printed: the
    pollers' own, and the broker's per message in each kind of run)."""
    plain: list[_Run] = []
    polled: list[_Run] = []
    poll_times: dict[str, list[float]] = {}
    polls = 0
    poller_cpu = 0.0
    for round_ in range(args.rounds):
        # unpolled first in even rounds, polled first in odd ones: whatever favours
        # the first or the second run of a round falls on both kinds alike
        if round_ % 2 == 0:
            plain.append(_Run(amqp, process, args.duration))
        poller = Poller(http, args.interval)
        poller.start()
        try:
            polled.append(_Run(amqp, process, args.duration))
        finally:
            poller.stop.set()
            poller.join(60)
        if round_ % 2 == 1:
            plain.append(_Run(amqp, process, args.duration))
        polls += poller.polls
        poller_cpu += poller.cpu
        for path, times in poller.times.items():
            poll_times.setdefault(path, []).extend(times)
    print(f"\npublisher throughput, {args.duration:g}s runs (sent/s):")
    print(f"  unpolled: {', '.join(f'{r.rate:,.0f}' for r in plain)}")
    print(
        f"  overview + alarms + /metrics every {args.interval:g}s: "
        f"{', '.join(f'{r.rate:,.0f}' for r in polled)}"
    )
    ratio = statistics.mean(r.rate for r in polled) / statistics.mean(r.rate for r in plain)
    pairs = [b.rate / a.rate for a, b in zip(plain, polled, strict=True) if a.rate]
    print(f"  ratio polled / unpolled: {ratio:.3f} ({(ratio - 1) * 100:+.1f} %)")
    if pairs:
        print(
            f"  ratio of each pair (a round's polled / its unpolled): "
            f"{', '.join(f'{r:.2f}' for r in pairs)}; median {statistics.median(pairs):.3f}"
        )
    print(
        "  broker CPU us per message sent, unpolled: "
        f"{', '.join(r.cpu_per_message() for r in plain)}; "
        f"polled: {', '.join(r.cpu_per_message() for r in polled)}"
    )
    if polls:
        per_poll = poller_cpu / polls * 1000
        print(f"  the pollers' own CPU: {per_poll:.1f} ms per poll ({polls} polls)")
    for path, times in poll_times.items():
        print(
            f"  {path}: {len(times)} polls, median {statistics.median(times):.3f}s, "
            f"max {max(times):.3f}s"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queues", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=1_000)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per publisher run")
    parser.add_argument(
        "--rounds", type=int, default=2, help="unpolled+polled pairs (0: only the timings)"
    )
    parser.add_argument("--interval", type=float, default=5.0, help="polling interval, s")
    parser.add_argument("--samples", type=int, default=3, help="timings of each big GET")
    parser.add_argument("--store", choices=["memory", "sqlite"], default="memory")
    args = parser.parse_args(argv)
    raise_nofile(args.connections + 200)
    with broker(args.store) as (amqp, http, process):
        started = time.perf_counter()
        declare_queues(amqp, args.queues)
        print(f"declared {args.queues:,} queues in {time.perf_counter() - started:.1f}s")
        started = time.perf_counter()
        with IdleConnections(amqp, args.connections):
            print(
                f"opened {args.connections:,} idle connections in "
                f"{time.perf_counter() - started:.1f}s; broker pid {process.pid}"
            )
            # 0. what each answer costs the broker, with nothing else running
            cpu_per_get(
                http, SpawnedBroker(amqp, process, Path(os.devnull)), args.samples, args.interval
            )
            # 1. the big answers, timed while the publisher runs
            timings: dict[str, list[tuple[float, int]]] = {}
            runner = threading.Thread(
                target=lambda: timings.setdefault("_run", []).append(
                    (_rate(publisher_run(amqp, args.duration)), 0)
                )
            )
            runner.start()
            time.sleep(min(3.0, args.duration / 4))
            for path in BIG_GETS:
                timings[path] = [timed_get(http, path) for _ in range(args.samples)]
            runner.join()
            print(f"\nwhile a publisher runs ({args.queues:,} queues, "
                  f"{args.connections:,} idle connections):")  # fmt: skip
            print(f"{'GET':40} {'min s':>8} {'median s':>9} {'bytes':>12}")
            for path, samples in timings.items():
                if path == "_run":
                    continue
                seconds = [s for s, _ in samples]
                print(
                    f"{path:40} {min(seconds):8.3f} {statistics.median(seconds):9.3f} "
                    f"{samples[0][1]:12,}"
                )
            # 2. throughput, unpolled and polled, alternating
            if args.rounds:
                _throughput(amqp, http, process, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
