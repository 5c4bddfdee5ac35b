"""AMQP 0-9-1 throughput and latency benchmark: messages per second and latency percentiles.

Run ``python -m moorage.bench.amqp_bench --help``; ``bench/README.md`` explains the scenarios.

This module is the AMQP run itself (`RawRun`: topology, connections, the
measurement, the cleanup), the client's ``--self-test`` and the entry point.
The options are `amqp_options.py`, the raw client `amqp_client.py`, the pika
comparison `amqp_pika.py`; what every protocol shares is in `results.py`,
`loopback.py`, `spawn.py` and `errors.py`.

Why it is built this way
------------------------
* **A raw, pipelined client.**  General-purpose clients (pika, aio-pika) spend more CPU
  per message than a Python broker does, so they would measure themselves.  The raw
  client speaks the protocol directly on an ``asyncio.Protocol`` (uvloop when
  available), decodes with the broker's own sans-IO codec
  (:mod:`protocols.amqp091.codec`) and never waits for a reply while publishing.
  ``--self-test`` measures how fast it can go without a broker, so a result close to
  that ceiling means the *client* was the limit, not the broker.
* **Publishes are built once and stamped.**  Every publish of a run has the same
  method frame, content header and body size; only the first 8 body octets (the send
  timestamp) change.  The frames come from :func:`~protocols.amqp091.codec.encode_content`
  once per producer; each batch patches in one timestamp and joins the copies into a
  single ``transport.write``.  Encoding each message with pamqp instead costs several
  times more (``--self-test`` shows both).
* **End-to-end latency without clock sync.**  Producers and consumers live in the same
  process, so the consumer subtracts the ``time.perf_counter_ns()`` stamp in the body
  from its own clock when the bytes arrive.
* **Flow control is honoured, never bypassed.**  A producer stops when the transport
  calls ``pause_writing`` (socket buffer full), when the broker sends
  ``connection.blocked`` or ``channel.flow``, and, with ``--confirm N``, while N
  publishes are unconfirmed.  Without confirms nothing bounds how far publishers run
  ahead of consumers except TCP, so latency at full speed is mostly queueing time; use
  ``--rate`` to measure latency at a fixed load.
* **Bounded and local.**  Every run ends by itself (``--count``/``--duration`` plus a
  hard ``--timeout``), cleans up the queues and exchange it declared, and refuses any
  host that is not a loopback address: a load generator must not flood a network by
  accident.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict
from typing import Any

from pamqp import commands
from pamqp.base import Frame

from moorage.bench.amqp_client import (
    CHANNEL,
    CLOSE_TIMEOUT,
    Consumer,
    Producer,
    RawConnection,
    drain_events,
    publish_template,
)
from moorage.bench.amqp_options import Options, build_parser, options_from
from moorage.bench.amqp_pika import PikaRun
from moorage.bench.errors import BenchError, ServerClosed, UsageError
from moorage.bench.loopback import new_loop, require_loopback
from moorage.bench.results import (
    STAMP,
    STAMP_SIZE,
    Progress,
    Result,
    Stats,
    format_self_test,
    format_table,
    make_result,
)
from moorage.bench.spawn import run_spawned_with
from moorage.protocols.amqp091.codec import FrameDecoder, encode_content, encode_method

__all__ = ["Options", "build_parser", "main", "options_from", "run", "run_spawned", "self_test"]


# -- a raw run -----------------------------------------------------------------------------


class RawRun:
    """Topology, connections, the measurement and the cleanup of one raw-client run."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.stats = Stats()
        self.admin: RawConnection | None = None
        self.producers: list[Producer] = []
        self.consumers: list[tuple[RawConnection, Consumer]] = []
        self.connections: list[RawConnection] = []  # producers' and consumers'
        self.created_queues: list[str] = []
        self.exchange = ""
        self.failure: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.delivered_all = asyncio.Event()
        self.finishing = False

    def fail(self, error: BaseException) -> None:
        """Any connection's failure ends the measurement (not during teardown)."""
        if not self.finishing and not self.failure.done():
            self.failure.set_exception(error)

    async def execute(self) -> Result:
        """Set up, measure, tear down; the result notes what went wrong if anything did."""
        cpu0, wall0 = time.process_time(), time.perf_counter()
        notes: list[str] = []
        complete = False
        try:
            await self._setup()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            complete = await self._measure(notes)
        finally:
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            await self._teardown()
            if self.failure.done() and not self.failure.cancelled():
                self.failure.exception()  # mark retrieved
        broker = self.admin.broker_name() if self.admin else "?"
        result = make_result(self.opts, self.stats, broker, complete, cpu, wall)
        result.notes += notes
        return result

    async def _setup(self) -> None:
        opts = self.opts
        self.admin = admin = await RawConnection.open(opts, "admin", self.fail)
        queues = await self._declare(admin)
        labels = [f"consumer-{i}" for i in range(opts.consumer_count)]
        labels += [f"producer-{i}" for i in range(opts.producers)]
        opened = await asyncio.gather(
            *(RawConnection.open(opts, lb, self.fail) for lb in labels), return_exceptions=True
        )
        conns = [c for c in opened if isinstance(c, RawConnection)]
        self.connections += conns  # closed by the teardown even if another one failed
        for error in opened:
            if isinstance(error, BaseException):
                raise error
        for i, conn in enumerate(conns[: opts.consumer_count]):
            consumer = Consumer(conn.queue, opts, self.stats, self._check_done)
            conn.on_deliver = consumer.on_deliver
            if not opts.auto_ack:
                await conn.call(
                    CHANNEL,
                    commands.Basic.Qos(prefetch_count=opts.prefetch),
                    commands.Basic.QosOk,
                )
            await conn.call(
                CHANNEL,
                commands.Basic.Consume(queue=queues[i % len(queues)], no_ack=opts.auto_ack),
                commands.Basic.ConsumeOk,
            )
            self.consumers.append((conn, consumer))
        route = (self.exchange, "") if opts.fanout else ("", queues[0])
        total = opts.count
        rate = opts.rate / opts.producers
        for i, conn in enumerate(conns[opts.consumer_count :]):
            quota = (
                None if total is None else total // opts.producers + (i < total % opts.producers)
            )
            producer = Producer(conn, opts, self.stats, route, quota, rate)
            await producer.setup()
            self.producers.append(producer)
        if opts.count is not None:
            self.stats.expected = opts.count * opts.queues

    async def _declare(self, admin: RawConnection) -> list[str]:
        """A fresh auto-delete queue (or K of them behind a fanout exchange), or ``--queue``."""
        opts = self.opts
        if opts.queue:
            declare = commands.Queue.Declare(queue=opts.queue, durable=True)
            await admin.call(CHANNEL, declare, commands.Queue.DeclareOk)
            purge = commands.Queue.Purge(queue=opts.queue)
            await admin.call(CHANNEL, purge, commands.Queue.PurgeOk)
            return [opts.queue]
        queues = []
        for _ in range(opts.queues):
            declare = commands.Queue.Declare(durable=opts.persistent, auto_delete=True)
            ok = await admin.call(CHANNEL, declare, commands.Queue.DeclareOk)
            queues.append(ok.queue)
            self.created_queues.append(ok.queue)
        if opts.fanout:
            self.exchange = f"moorage-bench-fanout-{os.getpid()}-{time.monotonic_ns()}"
            declare_x = commands.Exchange.Declare(
                exchange=self.exchange, exchange_type="fanout", durable=opts.persistent
            )
            await admin.call(CHANNEL, declare_x, commands.Exchange.DeclareOk)
            for q in queues:
                bind = commands.Queue.Bind(queue=q, exchange=self.exchange)
                await admin.call(CHANNEL, bind, commands.Queue.BindOk)
        return queues

    def _check_done(self) -> None:
        if self.stats.delivered >= self.stats.expected:
            self.delivered_all.set()

    def _outstanding(self) -> int:
        return sum(p.outstanding for p in self.producers)

    async def _race(self, awaitable: Any) -> None:
        """Await ``awaitable`` unless a connection fails first (then raise its error)."""
        task = asyncio.ensure_future(awaitable)
        try:
            done, _ = await asyncio.wait({task, self.failure}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()  # a timeout or a failure: nobody waits for it any more
        if task in done:
            task.result()
        else:
            self.failure.result()

    async def _measure(self, notes: list[str]) -> bool:
        """Run producers; wait for every delivery and confirm. True if the run completed."""
        opts, stats = self.opts, self.stats
        progress = Progress(stats, bool(opts.confirm), opts.progress)
        stats.start_ns = stats.last_publish_ns = stats.last_delivery_ns = time.perf_counter_ns()
        deadline = None if opts.duration is None else stats.start_ns + int(opts.duration * 1e9)
        tasks = [asyncio.create_task(p.run(deadline)) for p in self.producers]
        ticker = asyncio.create_task(self._tick(progress))
        try:
            async with asyncio.timeout(opts.timeout):
                await self._race(asyncio.wait(tasks))
                for task in tasks:
                    task.result()  # a producer's bug surfaces here, not silently
                if opts.duration is not None:
                    stats.expected = stats.sent * opts.queues
                    self._check_done()
                await self._race(self.delivered_all.wait())
                while self._outstanding():
                    await self._race(asyncio.sleep(0.005))
            return True
        except TimeoutError:
            undelivered = stats.sent * opts.queues - stats.delivered
            notes.append(
                f"stopped by --timeout {opts.timeout:g}s: {undelivered} deliveries missing, "
                f"{self._outstanding()} publishes unconfirmed"
            )
        except BenchError as e:
            notes.append(f"run aborted: {e}")
        finally:
            for task in tasks:
                task.cancel()
            for p in self.producers:
                p.wake()
            ticker.cancel()
            await asyncio.gather(*tasks, ticker, return_exceptions=True)
            progress.tick(final=True)
        return False

    async def _tick(self, progress: Progress) -> None:
        while True:
            await asyncio.sleep(1.0)
            progress.tick()

    async def _teardown(self) -> None:
        """Final acks, close clients, delete what we declared; bounded, never raises."""
        self.finishing = True
        for conn, consumer in self.consumers:
            if conn.error is None:
                consumer.ack()
                conn.flush()
        await asyncio.gather(*(c.close() for c in self.connections))
        admin = self.admin
        if admin is None:
            return
        with contextlib.suppress(BenchError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT * 2):
                # Auto-delete queues are usually gone already once the consumers left; a
                # broker that answers 404 closes the channel, which is reopened.
                if self.exchange:
                    await self._delete(admin, commands.Exchange.Delete(exchange=self.exchange))
                for q in self.created_queues:
                    await self._delete(admin, commands.Queue.Delete(queue=q))
        await admin.close()

    @staticmethod
    async def _delete(admin: RawConnection, method: Frame) -> None:
        reply = (
            commands.Exchange.DeleteOk
            if isinstance(method, commands.Exchange.Delete)
            else commands.Queue.DeleteOk
        )
        try:
            await admin.call(CHANNEL, method, reply)
        except ServerClosed:
            if admin.error is not None:
                raise
            await admin.call(CHANNEL, commands.Channel.Open(), commands.Channel.OpenOk)


# -- self-test --------------------------------------------------------------------------------


def self_test(count: int, opts: Options) -> dict[str, Any]:
    """The raw client's own ceiling: encode publishes and decode deliveries, no broker.

    Runs the producer's batch encoding and the consumer's receive path
    (:func:`drain_events` + :class:`Consumer`, fed in 64 KiB reads like a socket)
    over ``count`` messages of ``opts.size`` bytes.
    """
    frame_max = 131072
    before, after = publish_template("", "amq.gen-0123456789abcdef", opts.size, False, frame_max)
    pack, batch = STAMP.pack, opts.batch
    t = time.perf_counter()
    sink = 0
    for done in range(0, count, batch):
        n = min(batch, count - done)
        sink += len(b"".join([before, pack(time.perf_counter_ns()), after] * n))
    encode_s = time.perf_counter() - t

    naive = min(count, 50_000)
    props = commands.Basic.Properties()
    body = bytes(opts.size)
    t = time.perf_counter()
    for _ in range(naive):
        encode_content(CHANNEL, commands.Basic.Publish(routing_key="q"), props, body, frame_max)
    naive_s = time.perf_counter() - t

    block = 1000
    stream = b"".join(
        encode_content(
            CHANNEL,
            commands.Basic.Deliver("ctag-1", i + 1, False, "", "amq.gen-0123456789abcdef"),
            props,
            STAMP.pack(time.perf_counter_ns()) + bytes(opts.size - STAMP_SIZE),
            frame_max,
        )
        for i in range(block)
    )
    stats = Stats()
    acks: list[int] = []
    consumer = Consumer(
        lambda _ch, m: acks.append(len(encode_method(CHANNEL, m))), opts, stats, lambda: None
    )
    decoder = FrameDecoder(expect_protocol_header=False)
    reads = [stream[i : i + 65536] for i in range(0, len(stream), 65536)]

    def ignore(_channel: int, _method: Frame, _now: int) -> None:
        pass

    t = time.perf_counter()
    for _ in range(math.ceil(count / block)):
        for chunk in reads:
            decoder.receive_data(chunk)
            drain_events(decoder, time.perf_counter_ns(), consumer.on_deliver, ignore)
    decode_s = time.perf_counter() - t
    encode_rate = count / encode_s
    decode_rate = stats.delivered / decode_s
    return {
        "scenario": f"self-test {opts.size}B batch={batch} ack-every={opts.ack_every}",
        "messages": count,
        "producer_encode_per_s": round(encode_rate),
        "producer_encode_mb_per_s": round(sink / encode_s / 1e6, 1),
        "codec_encode_content_per_s": round(naive / naive_s),
        "consumer_decode_per_s": round(decode_rate),
        "one_core_1to1_ceiling_per_s": round(1 / (1 / encode_rate + 1 / decode_rate)),
        "note": "a run near one_core_1to1_ceiling is limited by this client, not the broker",
    }


# -- main --------------------------------------------------------------------------------


async def _run_raw(opts: Options) -> Result:
    return await RawRun(opts).execute()  # RawRun needs the running loop


def run(opts: Options, loop: str) -> Result:
    """One measurement with the chosen client against ``opts.host:opts.port``."""
    require_loopback(opts.host)
    if opts.client == "pika":
        return PikaRun(opts).execute()
    with asyncio.Runner(loop_factory=new_loop(loop)) as runner:
        return runner.run(_run_raw(opts))


def run_spawned(opts: Options, loop: str, store: str) -> Result:
    """One measurement against a Moorage spawned for it (``--spawn``)."""
    return run_spawned_with(opts, loop, store, "amqp", run)


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit status 0 when the run completed, 1 otherwise, 2 for bad flags."""
    args = build_parser().parse_args(argv)
    try:
        opts = options_from(args)
        if args.self_test:
            report = self_test(opts.count or 100_000, opts)
            print(json.dumps(report) if opts.json else format_self_test(report))
            return 0
        if args.spawn:
            result = run_spawned(opts, args.loop, args.spawn_store)
        else:
            result = run(opts, args.loop)
    except BenchError as e:
        print(f"amqp_bench: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(asdict(result)) if opts.json else format_table(result))
    return 0 if result.complete else 1


if __name__ == "__main__":
    sys.exit(main())
