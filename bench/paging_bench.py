"""The million-message check: a durable queue far larger than memory.

Publishes N persistent messages (default 1,000,000 of 1 KiB) with publisher
confirms into one durable queue of a spawned Moorage broker, then drains it
with one consumer, checking that every message arrives once and in order.
Prints publish and drain rates and the broker's peak resident memory (VmHWM
from /proc), which the storage design keeps bounded (target: under 300 MiB).

    .venv/bin/python -m bench.paging_bench [--count N] [--size BYTES]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import struct
import sys
import time
from pathlib import Path

from pamqp import commands

from moorage.bench.amqp_client import CHANNEL, RawConnection
from moorage.bench.amqp_options import Options
from moorage.bench.errors import BenchError
from moorage.bench.spawn import SpawnedBroker, spawned_broker
from moorage.protocols.amqp091.codec import ContentReceived, encode_content

QUEUE = "paging-bench"
SEQ = struct.Struct(">Q")


def peak_rss_mib(broker: SpawnedBroker) -> float:
    """The broker's peak resident set (VmHWM), MiB."""
    for line in Path(f"/proc/{broker.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def current_rss_mib(broker: SpawnedBroker) -> float:
    for line in Path(f"/proc/{broker.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def publish(opts: Options, count: int, size: int, window: int) -> float:
    """Publish `count` persistent messages with at most `window` unconfirmed; msg/s."""
    failed: list[BaseException] = []
    conn = await RawConnection.open(opts, "producer", failed.append)
    await conn.call(
        CHANNEL, commands.Queue.Declare(queue=QUEUE, durable=True), commands.Queue.DeclareOk
    )
    await conn.call(CHANNEL, commands.Confirm.Select(), commands.Confirm.SelectOk)
    confirmed = 0
    progress = asyncio.Event()

    def on_confirm(tag: int, multiple: bool, nack: bool, _now: int) -> None:
        nonlocal confirmed
        if nack:
            failed.append(BenchError(f"broker nacked publish {tag}"))
        confirmed = max(confirmed, tag)
        progress.set()

    conn.on_confirm = on_confirm
    properties = commands.Basic.Properties(delivery_mode=2)
    method = commands.Basic.Publish(exchange="", routing_key=QUEUE)
    padding = bytes(size - SEQ.size)
    started = time.perf_counter()
    sent = 0
    while confirmed < count:
        if failed:
            raise failed[0]
        batch = []
        while sent < count and sent - confirmed < window and len(batch) < 200:
            body = SEQ.pack(sent) + padding
            batch.append(encode_content(CHANNEL, method, properties, body, conn.frame_max))
            sent += 1
        if batch:
            conn.write(b"".join(batch))
        progress.clear()
        if sent - confirmed >= window or sent == count:
            await asyncio.wait_for(progress.wait(), 60)
        else:
            await asyncio.sleep(0)
    elapsed = time.perf_counter() - started
    await conn.close()
    return count / elapsed


async def drain(opts: Options, count: int, prefetch: int) -> float:
    """Consume `count` messages, checking order; msg/s."""
    failed: list[BaseException] = []
    conn = await RawConnection.open(opts, "consumer", failed.append)
    declare_ok = await conn.call(
        CHANNEL,
        commands.Queue.Declare(queue=QUEUE, durable=True, passive=True),
        commands.Queue.DeclareOk,
    )
    if declare_ok.message_count != count:
        raise BenchError(f"queue holds {declare_ok.message_count} messages, expected {count}")
    await conn.call(CHANNEL, commands.Basic.Qos(prefetch_count=prefetch), commands.Basic.QosOk)
    done = asyncio.get_running_loop().create_future()
    expected = 0
    since_ack = 0

    def on_deliver(event: ContentReceived, _now: int) -> None:
        nonlocal expected, since_ack
        (seq,) = SEQ.unpack_from(event.body)
        if seq != expected and not done.done():
            done.set_exception(BenchError(f"message {seq} arrived where {expected} was due"))
            return
        expected += 1
        since_ack += 1
        if since_ack >= prefetch // 2 or expected == count:
            conn.queue(
                CHANNEL, commands.Basic.Ack(delivery_tag=event.method.delivery_tag, multiple=True)
            )
            since_ack = 0
        if expected == count and not done.done():
            done.set_result(None)

    conn.on_deliver = on_deliver
    started = time.perf_counter()
    await conn.call(CHANNEL, commands.Basic.Consume(queue=QUEUE), commands.Basic.ConsumeOk)
    await asyncio.wait_for(done, 3600)
    elapsed = time.perf_counter() - started
    conn.flush()
    await conn.close()
    return count / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.paging_bench", description=__doc__)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--confirm", type=int, default=5000, help="confirm window")
    parser.add_argument("--prefetch", type=int, default=1000)
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(spawned_broker("sqlite"))
        opts = Options(port=broker.port)
        rate_in = asyncio.run(publish(opts, args.count, args.size, args.confirm))
        rss_after_publish = peak_rss_mib(broker)
        print(
            f"published {args.count:,} x {args.size} B persistent, confirmed: {rate_in:,.0f} msg/s"
        )
        print(f"broker peak RSS after publishing: {rss_after_publish:.0f} MiB")
        rate_out = asyncio.run(drain(opts, args.count, args.prefetch))
        print(
            f"drained in order: {rate_out:,.0f} msg/s ({rate_out / rate_in:.2f}x the publish rate)"
        )
        peak, now = peak_rss_mib(broker), current_rss_mib(broker)
        print(f"broker peak RSS overall: {peak:.0f} MiB, now {now:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
