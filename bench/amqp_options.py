"""The AMQP benchmark's options: the command line and the checks of its combinations.

Kept apart from the client so that ``moorage bench amqp --help`` (and a bad
flag) is answered without importing asyncio, pamqp or the codec.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from moorage.bench.errors import UsageError
from moorage.bench.results import STAMP_SIZE

__all__ = ["Options", "build_parser", "options_from"]


@dataclass(slots=True)
class Options:
    """Validated command-line options (see :func:`build_parser` for their meaning)."""

    host: str = "127.0.0.1"
    port: int = 5672
    user: str = "guest"
    password: str = "guest"  # noqa: S105 - RabbitMQ's well-known loopback default
    vhost: str = "/"
    client: str = "raw"
    producers: int = 1
    consumers: int = 1
    fanout: int = 0
    size: int = 128
    count: int | None = 100_000
    duration: float | None = None
    persistent: bool = False
    confirm: int = 0
    prefetch: int = 1000
    ack_every: int = 500
    auto_ack: bool = False
    rate: float = 0.0
    batch: int = 200
    queue: str | None = None
    timeout: float = 120.0
    json: bool = False
    progress: bool = True

    @property
    def queues(self) -> int:
        """Number of queues: K with ``--fanout K``, else one shared queue."""
        return self.fanout or 1

    @property
    def consumer_count(self) -> int:
        """Consumers: one per queue with fan-out, else ``--consumers``."""
        return self.fanout or self.consumers

    def scenario(self) -> str:
        """A short human name of what is measured, e.g. ``raw 1->1 128B transient ...``."""
        parts = [self.client, f"{self.producers}->{self.consumer_count}"]
        if self.fanout:
            parts.append(f"fanout={self.fanout}")
        parts += [f"{self.size}B", "persistent" if self.persistent else "transient"]
        if self.confirm:
            parts.append(f"confirm={self.confirm}")
        if self.auto_ack:
            parts.append("auto-ack")
        else:
            parts.append(f"prefetch={self.prefetch} ack-every={self.ack_every}")
        if self.rate:
            parts.append(f"rate={self.rate:g}/s")
        parts.append(f"count={self.count}" if self.count is not None else f"{self.duration:g}s")
        return " ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    """The command line; every option's help says what it changes in the measurement."""
    p = argparse.ArgumentParser(
        prog="python -m bench.amqp_bench",
        description="AMQP 0-9-1 throughput and latency benchmark (talks to loopback only). "
        "Prints msg/s and end-to-end latency percentiles; see bench/README.md.",
    )
    target = p.add_argument_group("broker")
    target.add_argument("--host", default="127.0.0.1", help="loopback host (default 127.0.0.1)")
    target.add_argument("--port", type=int, default=5672, help="AMQP port (default 5672)")
    target.add_argument("--user", default="guest", help="PLAIN user (default guest)")
    target.add_argument("--password", default="guest", help="PLAIN password (default guest)")
    target.add_argument("--vhost", default="/", help="virtual host (default /)")
    target.add_argument(
        "--spawn",
        action="store_true",
        help="run a Moorage broker on a free port with a temp data dir for this run",
    )
    target.add_argument(
        "--spawn-store",
        choices=["sqlite", "memory"],
        default="sqlite",
        help="storage backend of the --spawn broker (default sqlite)",
    )

    load = p.add_argument_group("scenario")
    load.add_argument(
        "--client",
        choices=["raw", "pika"],
        default="raw",
        help="raw pipelined client (default) or one pika producer/consumer pair",
    )
    load.add_argument("--producers", type=int, default=1, metavar="P", help="(default 1)")
    load.add_argument(
        "--consumers", type=int, default=1, metavar="C", help="on one shared queue (default 1)"
    )
    load.add_argument(
        "--fanout",
        type=int,
        default=0,
        metavar="K",
        help="publish to a fanout exchange bound to K queues with one consumer each",
    )
    load.add_argument(
        "--size", type=int, default=128, metavar="BYTES", help="message body size (default 128)"
    )
    amount = load.add_mutually_exclusive_group()
    amount.add_argument(
        "--count", type=int, metavar="N", help="messages to publish in total (default 100000)"
    )
    amount.add_argument("--duration", type=float, metavar="S", help="publish for S seconds")
    load.add_argument(
        "--persistent", action="store_true", help="delivery_mode 2 and durable queues"
    )
    load.add_argument(
        "--confirm",
        type=int,
        default=0,
        metavar="N",
        help="publisher confirms with at most N unconfirmed publishes (default off)",
    )
    load.add_argument(
        "--prefetch", type=int, default=1000, metavar="N", help="basic.qos count (default 1000)"
    )
    load.add_argument(
        "--ack-every",
        type=int,
        metavar="K",
        help="ack with multiple=True every K deliveries (default prefetch/2)",
    )
    load.add_argument("--auto-ack", action="store_true", help="consume with no-ack")
    load.add_argument(
        "--rate", type=float, default=0.0, metavar="R", help="total publish rate limit, msg/s"
    )
    load.add_argument(
        "--queue", help="use this durable queue (purged first) instead of a fresh one"
    )
    load.add_argument(
        "--batch",
        type=int,
        default=200,
        metavar="N",
        help="publishes coalesced into one write (default 200)",
    )
    load.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="hard limit of the measurement (default 120, or duration + 30)",
    )

    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the result as one JSON object")
    out.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    out.add_argument(
        "--self-test",
        action="store_true",
        help="measure the raw client's own encode/decode ceiling, without a broker",
    )
    out.add_argument(
        "--loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="client event loop (default: uvloop when installed)",
    )
    return p


def options_from(args: argparse.Namespace) -> Options:
    """Check the combination of flags; raises BenchError with the reason."""
    count = args.count
    if count is None and args.duration is None:
        count = 100_000
    ack_every = args.ack_every
    if ack_every is None:
        ack_every = max(1, args.prefetch // 2) if args.prefetch else 100
    opts = Options(
        host=args.host,
        port=args.port,
        user=args.user,
        password=args.password,
        vhost=args.vhost,
        client=args.client,
        producers=args.producers,
        consumers=args.consumers,
        fanout=args.fanout,
        size=args.size,
        count=count,
        duration=args.duration,
        persistent=args.persistent,
        confirm=args.confirm,
        prefetch=args.prefetch,
        ack_every=ack_every,
        auto_ack=args.auto_ack,
        rate=args.rate,
        batch=args.batch,
        queue=args.queue,
        timeout=args.timeout or (args.duration + 30.0 if args.duration else 120.0),
        json=args.json,
        progress=not args.quiet,
    )
    _validate(opts)
    return opts


def _validate(o: Options) -> None:
    checks = [
        (o.size >= STAMP_SIZE, f"--size must be at least {STAMP_SIZE} (the send timestamp)"),
        (o.producers >= 1 and o.consumers >= 1, "--producers and --consumers must be >= 1"),
        (o.fanout >= 0 and o.confirm >= 0 and o.prefetch >= 0, "counts must not be negative"),
        (o.count is None or o.count >= 1, "--count must be >= 1"),
        (o.duration is None or o.duration > 0, "--duration must be > 0"),
        (o.rate >= 0 and o.batch >= 1 and o.timeout > 0, "bad --rate, --batch or --timeout"),
        (o.ack_every >= 1, "--ack-every must be >= 1"),
        # Acking every K with fewer than K deliveries allowed in flight never acks: a stall.
        (
            o.auto_ack or not o.prefetch or o.ack_every <= o.prefetch,
            "--ack-every larger than --prefetch would never ack: the consumer would stall",
        ),
        (not (o.queue and o.fanout), "--queue and --fanout do not combine"),
        (not (o.fanout and o.consumers != 1), "--fanout K uses K consumers, drop --consumers"),
    ]
    if o.client == "pika":
        checks.append(
            (
                o.producers == 1 and o.consumers == 1 and not o.fanout,
                "--client pika runs one producer and one consumer, without --fanout",
            )
        )
    for ok, why in checks:
        if not ok:
            raise UsageError(why)
