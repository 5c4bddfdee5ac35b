"""The STOMP benchmark's options: the command line and the checks of its combinations.

Kept apart from the client so that ``moorage bench stomp --help`` (and a bad
flag) is answered without importing asyncio or the codec.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Final

from moorage.bench.errors import UsageError
from moorage.bench.results import STAMP_SIZE

__all__ = ["Options", "build_parser", "options_from"]

DEFAULT_PORT: Final = 61613
ACK_MODES: Final = ("auto", "client-individual", "client")
VERSIONS: Final = ("1.2", "1.1", "1.0")
ALIGN_LIMIT: Final = 4096  # --align-frames: a frame is padded to a power of two up to this


@dataclass(slots=True)
class Options:
    """Validated command-line options (see :func:`build_parser`)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    user: str = "guest"
    password: str = "guest"  # noqa: S105 - the well-known loopback default
    vhost: str = "/"
    version: str = "1.2"
    align: bool = False
    ack: str = "client-individual"
    producers: int = 1
    consumers: int = 1
    size: int = 128
    count: int | None = 100_000
    duration: float | None = None
    persistent: bool = False
    window: int = 1000
    prefetch: int = 1000
    rate: float = 0.0
    batch: int = 200
    timeout: float = 120.0
    idle_timeout: float = 5.0
    json: bool = False
    progress: bool = True

    @property
    def confirm(self) -> int:
        """Receipts are the producer's confirms (``confirm`` latency in the table)."""
        return self.window

    def scenario(self) -> str:
        """E.g. ``stomp 1->1 128B ack=client-individual prefetch=1000 count=100000``."""
        parts = [
            "stomp" if self.version == "1.2" else f"stomp{self.version}",
            f"{self.producers}->{self.consumers}",
            f"{self.size}B",
            "persistent" if self.persistent else "transient",
            f"ack={self.ack}",
            f"window={self.window}",
            f"prefetch={self.prefetch}",
        ]
        if self.rate:
            parts.append(f"rate={self.rate:g}/s")
        if self.align:
            parts.append("aligned")
        parts.append(f"count={self.count}" if self.count is not None else f"{self.duration:g}s")
        return " ".join(parts)

    def expected_deliveries(self) -> int | None:
        """Consumers compete on one queue: every message is delivered once."""
        return self.count


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``moorage bench stomp``."""
    p = argparse.ArgumentParser(
        prog="moorage bench stomp",
        description="STOMP 1.2 throughput and latency benchmark (talks to loopback only).",
    )
    target = p.add_argument_group("broker")
    target.add_argument("--host", default="127.0.0.1", help="loopback host (default 127.0.0.1)")
    target.add_argument("--port", type=int, default=DEFAULT_PORT, help="(default 61613)")
    target.add_argument("--user", default="guest", help="login (default guest)")
    target.add_argument("--password", default="guest", help="passcode (default guest)")
    target.add_argument("--vhost", default="/", help="CONNECT host header (default /)")
    target.add_argument(
        "--stomp-version",
        choices=VERSIONS,
        default="1.2",
        help="the only version offered in CONNECT (default 1.2; CoilMQ: 1.1)",
    )
    target.add_argument("--spawn", action="store_true", help="run a Moorage broker for this run")
    target.add_argument("--spawn-store", choices=["sqlite", "memory"], default="sqlite")
    load = p.add_argument_group("scenario")
    load.add_argument("--ack", choices=ACK_MODES, default="client-individual")
    load.add_argument("--producers", type=int, default=1, metavar="P")
    load.add_argument("--consumers", type=int, default=1, metavar="C", help="competing")
    load.add_argument("--size", type=int, default=128, metavar="BYTES")
    amount = load.add_mutually_exclusive_group()
    amount.add_argument("--count", type=int, metavar="N", help="messages in total (100000)")
    amount.add_argument("--duration", type=float, metavar="S", help="publish for S seconds")
    load.add_argument("--persistent", action="store_true", help="SEND with persistent:true")
    load.add_argument("--window", type=int, default=1000, metavar="N", help="max unreceipted SENDs")
    load.add_argument("--prefetch", type=int, default=1000, metavar="N")
    load.add_argument("--rate", type=float, default=0.0, metavar="R", help="total msg/s limit")
    load.add_argument("--batch", type=int, default=200, metavar="N", help="SENDs per write")
    load.add_argument("--timeout", type=float, metavar="S", help="hard limit (default 120)")
    load.add_argument(
        "--align-frames",
        action="store_true",
        help="pad SEND and ACK frames to a power of two in bytes (for CoilMQ, see README)",
    )
    load.add_argument("--idle-timeout", type=float, default=5.0, metavar="S")
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
        vhost=args.vhost,
        version=args.stomp_version,
        align=args.align_frames,
        ack=args.ack,
        producers=args.producers,
        consumers=args.consumers,
        size=args.size,
        count=count,
        duration=args.duration,
        persistent=args.persistent,
        window=args.window,
        prefetch=args.prefetch,
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
        (o.window >= 2 and o.prefetch >= 2, "--window and --prefetch must be >= 2"),
        (o.rate >= 0 and o.batch >= 1 and o.timeout > 0, "bad --rate, --batch or --timeout"),
        (
            not o.align or o.size <= ALIGN_LIMIT // 2,
            f"--align-frames needs --size of at most {ALIGN_LIMIT // 2}",
        ),
    ]
    for ok, why in checks:
        if not ok:
            raise UsageError(why)
    return o
