"""The core's message path alone: publish, deliver and ack through one `Session`, timed in
process CPU seconds (not a test; python -m moorage.bench.core_path).

No socket, no codec, no store write (transient messages on a plain queue): what
is left is the core's own work per message, where a counter on the hot path
(`broker/stats.py`) would show. Comparing two trees: run this file from each
tree's root, alternating, in one session, e.g.

    for i in 1 2 3; do
        (cd /tmp/main && PYTHONPATH=. python /path/to/bench/core_path.py --label main)
        (cd . && PYTHONPATH=. python bench/core_path.py --label ops)
    done

It prints messages per CPU second, best of `--repeat` runs (the least disturbed
by other processes on the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from moorage.broker.auth import UserDirectory
from moorage.broker.broker import Broker
from moorage.broker.config import default_guest
from moorage.broker.message import Message, Properties


class _Sink:
    """Takes deliveries; remembers the last tag so the loop can ack in batches."""

    def __init__(self) -> None:
        self.last_tag = 0

    def deliver(
        self, consumer_tag: str, delivery_tag: int, redelivered: bool, message: Any
    ) -> None:
        self.last_tag = delivery_tag

    def returned(self, message: Any, reply_code: int, reply_text: str) -> None:
        pass

    def cancelled(self, consumer_tag: str, error: Any) -> None:
        pass


async def _run(count: int, ack_every: int) -> float:
    broker = Broker(users=UserDirectory([default_guest()]))
    await broker.start()
    try:
        connection = broker.connect(
            "/", broker.users.users["guest"], protocol="bench", peer="bench"
        )
        sink = _Sink()
        session = connection.open_session(sink)
        session.declare_queue("bench")
        session.consume("bench", "c").start()
        body = b"x" * 128
        properties = Properties()
        started = time.process_time()
        for i in range(1, count + 1):
            session.publish("", Message("", "bench", properties, body))
            if i % ack_every == 0:
                session.ack(sink.last_tag, multiple=True)
        if count % ack_every:
            session.ack(sink.last_tag, multiple=True)
        return count / (time.process_time() - started)
    finally:
        await broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--ack-every", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--label", default="this tree")
    args = parser.parse_args(argv)
    rates = [asyncio.run(_run(args.count, args.ack_every)) for _ in range(args.repeat)]
    print(
        f"{args.label}: publish+deliver+ack {max(rates):,.0f} msg per CPU second "
        f"(best of {args.repeat}; all: {', '.join(f'{r:,.0f}' for r in rates)})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
