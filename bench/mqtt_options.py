"""The MQTT benchmark's options: the command line and the checks of its combinations.

Kept apart from the client so that ``moorage bench mqtt --help`` (and a bad
flag) is answered without importing asyncio or the codec.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Final

from moorage.bench.errors import UsageError
from moorage.bench.results import STAMP_SIZE

__all__ = ["Options", "build_parser", "options_from"]

DEFAULT_PORT: Final = 1883


@dataclass(slots=True)
class Options:
    """Validated command-line options (see :func:`build_parser`)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    user: str | None = "guest"  # Moorage refuses anonymous clients by default
    password: str | None = "guest"  # noqa: S105 - the default user, loopback only
    qos: int = 0
    producers: int = 1
    consumers: int = 1
    wildcard: bool = False
    size: int = 128
    count: int | None = 100_000
    duration: float | None = None
    inflight: int = 1000
    rate: float = 0.0
    batch: int = 200
    timeout: float = 120.0
    idle_timeout: float = 5.0
    json: bool = False
    progress: bool = True

    @property
    def confirm(self) -> int:
        """The publisher window (QoS 1/2), shown as ``confirm`` latency in the table."""
        return self.inflight if self.qos else 0

    def scenario(self) -> str:
        """E.g. ``mqtt qos1 10->1 wildcard 128B inflight=1000 count=100000``."""
        parts = [f"mqtt qos{self.qos}", f"{self.producers}->{self.consumers}"]
        if self.uses_wildcard:
            parts.append("wildcard")
        parts.append(f"{self.size}B")
        if self.qos:
            parts.append(f"inflight={self.inflight}")
        if self.rate:
            parts.append(f"rate={self.rate:g}/s")
        parts.append(f"count={self.count}" if self.count is not None else f"{self.duration:g}s")
        return " ".join(parts)

    @property
    def uses_wildcard(self) -> bool:
        return self.wildcard or self.producers > 1

    def expected_deliveries(self) -> int | None:
        """Every subscriber gets every message (None with ``--duration``)."""
        return None if self.count is None else self.count * self.consumers


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``moorage bench mqtt``."""
    p = argparse.ArgumentParser(
        prog="moorage bench mqtt",
        description="MQTT 3.1.1 throughput and latency benchmark (talks to loopback only).",
    )
    target = p.add_argument_group("broker")
    target.add_argument("--host", default="127.0.0.1", help="loopback host (default 127.0.0.1)")
    target.add_argument("--port", type=int, default=DEFAULT_PORT, help="MQTT port (default 1883)")
    target.add_argument("--user", default="guest", help="username (default guest)")
    target.add_argument("--password", default="guest", help="password (default guest)")
    target.add_argument("--spawn", action="store_true", help="run a Moorage broker for this run")
    target.add_argument("--spawn-store", choices=["sqlite", "memory"], default="sqlite")
    load = p.add_argument_group("scenario")
    load.add_argument("--qos", type=int, choices=[0, 1, 2], default=0, help="(default 0)")
    load.add_argument("--producers", type=int, default=1, metavar="P", help="(default 1)")
    load.add_argument(
        "--consumers", type=int, default=1, metavar="C", help="subscribers, each gets all"
    )
    load.add_argument(
        "--wildcard", action="store_true", help="subscribe with '+' even for one producer"
    )
    load.add_argument("--size", type=int, default=128, metavar="BYTES", help="payload size")
    amount = load.add_mutually_exclusive_group()
    amount.add_argument("--count", type=int, metavar="N", help="messages in total (100000)")
    amount.add_argument("--duration", type=float, metavar="S", help="publish for S seconds")
    load.add_argument(
        "--inflight", type=int, default=1000, metavar="N", help="QoS 1/2 publisher window"
    )
    load.add_argument("--rate", type=float, default=0.0, metavar="R", help="total msg/s limit")
    load.add_argument("--batch", type=int, default=200, metavar="N", help="publishes per write")
    load.add_argument("--timeout", type=float, metavar="S", help="hard limit (default 120)")
    load.add_argument(
        "--idle-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="stop when nothing moved for S seconds (QoS 0 may be dropped)",
    )
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="one JSON object")
    out.add_argument("--quiet", action="store_true", help="no progress lines")
    out.add_argument("--self-test", action="store_true", help="the client's own ceiling")
    out.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto")
    return p


def options_from(args: argparse.Namespace) -> Options:
    """Check the flags; raises UsageError."""
    count = args.count
    if count is None and args.duration is None:
        count = 100_000
    o = Options(
        host=args.host,
        port=args.port,
        user=args.user,
        password=args.password,
        qos=args.qos,
        producers=args.producers,
        consumers=args.consumers,
        wildcard=args.wildcard,
        size=args.size,
        count=count,
        duration=args.duration,
        inflight=args.inflight,
        rate=args.rate,
        batch=args.batch,
        timeout=args.timeout or (args.duration + 30.0 if args.duration else 120.0),
        idle_timeout=args.idle_timeout,
        json=args.json,
        progress=not args.quiet,
    )
    checks = [
        (o.size >= STAMP_SIZE, f"--size must be at least {STAMP_SIZE}"),
        (o.producers >= 1 and o.consumers >= 1, "--producers and --consumers must be >= 1"),
        (o.count is None or o.count >= 1, "--count must be >= 1"),
        (1 <= o.inflight < 65535, "--inflight must be between 1 and 65534"),
        (o.rate >= 0 and o.batch >= 1 and o.timeout > 0, "bad --rate, --batch or --timeout"),
    ]
    for ok, why in checks:
        if not ok:
            raise UsageError(why)
    return o
