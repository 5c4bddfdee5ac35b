"""The pika comparison of the AMQP benchmark (``--client pika``): what a typical app sees.

pika is imported lazily, when a run is made: only this mode needs it.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from moorage.bench.amqp_client import CLOSE_TIMEOUT, CONNECT_TIMEOUT, MIN_SLEEP, text_of
from moorage.bench.amqp_options import Options
from moorage.bench.errors import BenchError
from moorage.bench.results import STAMP, STAMP_SIZE, Progress, Result, Stats, make_result

__all__ = ["PikaRun"]


class PikaRun:
    """One pika BlockingConnection producer and one consumer, each in its own thread.

    This is what a typical Python application sees.  pika's blocking confirms wait for
    each publish, so the confirm window is effectively 1.  pika is imported lazily:
    only this mode needs it.
    """

    def __init__(self, opts: Options) -> None:
        import pika

        self.pika = pika
        self.opts = opts
        self.params = pika.ConnectionParameters(
            host=opts.host,
            port=opts.port,
            virtual_host=opts.vhost,
            credentials=pika.PlainCredentials(opts.user, opts.password),
            heartbeat=0,
            blocked_connection_timeout=opts.timeout,
        )
        self.stats = Stats()
        if opts.count is not None:
            self.stats.expected = opts.count
        self.queue = ""
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.errors: list[BaseException] = []
        self.notes: list[str] = []
        if opts.confirm > 1:
            self.notes.append("pika BlockingConnection waits for each confirm: window is 1")

    def execute(self) -> Result:
        """Declare, run both threads under the timeout, clean up."""
        from pika.exceptions import AMQPError

        opts = self.opts
        try:
            admin = self.pika.BlockingConnection(self.params)
        except (AMQPError, OSError) as e:
            raise BenchError(f"pika cannot connect to {opts.host}:{opts.port}: {e!r}") from e
        server = admin._impl.server_properties  # pika has no public accessor
        broker = " ".join(text_of(server.get(k, "")) for k in ("product", "version")).strip()
        try:
            channel = admin.channel()
            if opts.queue:
                self.queue = opts.queue
                channel.queue_declare(opts.queue, durable=True)
                channel.queue_purge(opts.queue)
            else:
                declared = channel.queue_declare("", durable=opts.persistent, auto_delete=True)
                self.queue = declared.method.queue
        except AMQPError as e:
            with contextlib.suppress(AMQPError, OSError):
                admin.close()
            raise BenchError(f"pika cannot declare the queue: {e!r}") from e
        cpu0, wall0 = time.process_time(), time.perf_counter()
        complete = self._measure()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        self.notes += [f"run aborted: {type(e).__name__}: {e}" for e in self.errors]
        with contextlib.suppress(AMQPError, OSError):
            if not opts.queue:
                channel.queue_delete(self.queue)
            admin.close()
        result = make_result(opts, self.stats, broker, complete, cpu, wall)
        result.notes += self.notes
        return result

    def _measure(self) -> bool:
        opts, stats = self.opts, self.stats
        consumer = threading.Thread(target=self._guarded(self._consume), daemon=True)
        producer = threading.Thread(target=self._guarded(self._produce), daemon=True)
        consumer.start()
        self.ready.wait(CONNECT_TIMEOUT)
        progress = Progress(stats, bool(opts.confirm), opts.progress)
        stats.start_ns = stats.last_publish_ns = stats.last_delivery_ns = time.perf_counter_ns()
        producer.start()
        deadline = time.monotonic() + opts.timeout
        complete = False
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                self.notes.append(f"stopped by --timeout {opts.timeout:g}s")
                break
            consumer.join(min(1.0, left))
            progress.tick()
            if not producer.is_alive() and opts.duration is not None:
                stats.expected = stats.sent
            if not consumer.is_alive():
                complete = not self.errors
                break
        self.stop.set()
        producer.join(CLOSE_TIMEOUT)
        consumer.join(CLOSE_TIMEOUT)
        return complete

    def _guarded(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Run ``fn``; a failure is recorded for the main thread and stops the run."""
        from pika.exceptions import AMQPError

        def runner() -> None:
            try:
                fn()
            except (AMQPError, OSError, ValueError) as e:
                self.errors.append(e)
                self.stop.set()
            finally:
                self.ready.set()

        return runner

    def _consume(self) -> None:
        opts, stats = self.opts, self.stats
        conn = self.pika.BlockingConnection(self.params)
        ch = conn.channel()
        if not opts.auto_ack:
            ch.basic_qos(prefetch_count=opts.prefetch)
        unacked = 0
        unpack = STAMP.unpack_from

        def on_message(ch: Any, method: Any, _props: Any, body: bytes) -> None:
            nonlocal unacked
            now = time.perf_counter_ns()
            stats.latencies.append(now - unpack(body)[0])
            stats.delivered += 1
            stats.last_delivery_ns = now
            if not opts.auto_ack:
                unacked += 1
                if unacked >= opts.ack_every or stats.delivered >= stats.expected:
                    ch.basic_ack(method.delivery_tag, multiple=True)
                    unacked = 0

        ch.basic_consume(self.queue, on_message, auto_ack=opts.auto_ack)
        self.ready.set()
        while not self.stop.is_set() and stats.delivered < stats.expected:
            conn.process_data_events(time_limit=0.05)
        conn.close()

    def _produce(self) -> None:
        opts, stats = self.opts, self.stats
        conn = self.pika.BlockingConnection(self.params)
        ch = conn.channel()
        if opts.confirm:
            ch.confirm_delivery()
        props = self.pika.BasicProperties(delivery_mode=2 if opts.persistent else None)
        pad = bytes(opts.size - STAMP_SIZE)
        start = time.perf_counter_ns()
        deadline = math.inf if opts.duration is None else start + opts.duration * 1e9
        quota = math.inf if opts.count is None else opts.count
        while not self.stop.is_set():
            now = time.perf_counter_ns()
            if stats.sent >= quota or now >= deadline:
                break
            if opts.rate and stats.sent >= (now - start) * opts.rate / 1e9 + 1:
                time.sleep(max(MIN_SLEEP, (start + stats.sent * 1e9 / opts.rate - now) / 1e9))
                continue
            ch.basic_publish("", self.queue, STAMP.pack(now) + pad, props)
            if opts.confirm:
                stats.confirm_latencies.append(time.perf_counter_ns() - now)
                stats.confirmed += 1
            stats.sent += 1
            stats.last_publish_ns = now
        conn.close()
