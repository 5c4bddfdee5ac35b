"""STOMP 1.2 throughput and latency benchmark: SEND -> MESSAGE, ack auto / client(-individual).

Run ``moorage bench stomp --help``; ``bench/README.md`` explains the scenarios.

The client is raw and pipelined, like the AMQP one: frames are decoded with the
broker's own sans-IO codec (:mod:`protocols.stomp.codec`, client role) and every SEND
of a run is one template from :func:`protocols.stomp.codec.encode` (with a
``content-length``), in which only the send timestamp (the first 8 body octets) is
patched.  STOMP has no publisher flow control, so a producer asks for a ``receipt``
every ``--window``/2 messages and keeps at most ``--window`` messages unreceipted.
Consumers subscribe to ``/queue/<name>`` with ``--ack`` auto, client-individual (one
ACK per MESSAGE) or client (a cumulative ACK every ``--prefetch``/2), and ask for a
prefetch with both ``activemq.prefetchSize`` and ``prefetch-count``.

Two options exist for brokers with a weaker STOMP implementation (CoilMQ 1.1.0);
in a ``--compare`` run they apply to both brokers, so both get the same frames:

* ``--stomp-version 1.1`` (or 1.0) offers only that version in CONNECT: ACKs then
  name the message by ``subscription`` + ``message-id`` (CoilMQ reads a 1.2 ACK's
  ``id`` as a subscription id and wants a ``host`` equal to its own FQDN).
* ``--align-frames`` pads every SEND and ACK with a ``pad`` header to the next power
  of two in bytes (at most 4096). A broker that reads its socket in 4096-byte blocks
  and cannot parse a frame header cut by the end of a block (CoilMQ's
  ``FrameBuffer``) then never sees such a cut: the stream after the SUBSCRIBE
  (answered before anything else is sent) is whole frames of power-of-two sizes.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Final

from moorage.bench.errors import BenchError
from moorage.bench.loopback import new_loop, require_loopback
from moorage.bench.results import STAMP, Result, Stats
from moorage.bench.spawn import run_spawned_with
from moorage.bench.stomp_options import ALIGN_LIMIT, Options
from moorage.bench.stream import (
    MIN_SLEEP,
    StreamConnection,
    StreamRun,
    open_connection,
    split,
)
from moorage.protocols.stomp.codec import (
    NEED_DATA,
    ConnectionClosed,
    Frame,
    FrameCodec,
    ProtocolError,
)
from moorage.protocols.stomp.codec import Role as CodecRole
from moorage.protocols.stomp.codec import encode as encode_frame

_MARK: Final = "\x01ACK-ID\x01"


# -- the raw client ------------------------------------------------------------------------


def pad_frame(wire: bytes) -> bytes:
    """``wire`` (one encoded frame) with a ``pad`` header making it a power of two long.

    The header goes last, before the blank line ending the headers. See
    ``--align-frames``; raises BenchError above :data:`ALIGN_LIMIT` bytes.
    """
    end = wire.index(b"\n\n")
    size = len(wire) + len(b"\npad:")
    target = 1 << (size - 1).bit_length()
    if target > ALIGN_LIMIT:
        raise BenchError(f"--align-frames: a frame of {size} bytes exceeds {ALIGN_LIMIT}")
    return wire[:end] + b"\npad:" + b"x" * (target - size) + wire[end:]


class StompConnection(StreamConnection):
    """One STOMP connection; MESSAGE and RECEIPT frames go to the role's handlers."""

    def __init__(self, label: str, on_failure: Any) -> None:
        super().__init__(label, on_failure)
        self.codec = FrameCodec(CodecRole.CLIENT)
        self.waiter: tuple[str, asyncio.Future[Frame]] | None = None
        self.on_message: Any = None  # (Frame, now) -> None
        self.on_receipt: Any = None  # (receipt id, now) -> None
        self.server = ""

    @classmethod
    async def open(cls, opts: Options, label: str, on_failure: Any) -> StompConnection:
        """TCP connect, CONNECT (1.2, no heart-beats), wait for CONNECTED."""
        conn: StompConnection = await open_connection(
            lambda: cls(label, on_failure), opts.host, opts.port, label
        )
        connect = Frame(
            "CONNECT",
            (
                ("accept-version", opts.version),
                ("host", opts.vhost),
                ("login", opts.user),
                ("passcode", opts.password),
                ("heart-beat", "0,0"),
            ),
        )
        connected = await conn.call(conn.codec.send(connect), "CONNECTED")
        conn.codec.version = connected.get("version", "1.0") or "1.0"
        conn.server = connected.get("server", "") or ""
        return conn

    async def call(self, data: bytes, reply: str) -> Frame:
        """Write ``data`` and wait (bounded) for a frame with command ``reply``."""
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self.waiter = (reply, future)
        self.write(data)
        try:
            async with asyncio.timeout(10.0):
                return await future
        except TimeoutError as e:
            raise BenchError(f"{self.label}: no {reply} within 10s") from e
        finally:
            self.waiter = None

    def feed(self, data: bytes, now: int) -> None:
        codec = self.codec
        codec.receive_data(data)
        try:
            while (event := codec.next_event()) is not NEED_DATA:
                if type(event) is ConnectionClosed:
                    raise BenchError(f"{self.label}: broker closed the connection")
                command = event.command  # type: ignore[union-attr]
                if command == "MESSAGE":
                    self.on_message(event, now)
                elif command == "RECEIPT" and self.on_receipt is not None:
                    self.on_receipt(event.get("receipt-id"), now)  # type: ignore[union-attr]
                elif command == "ERROR":
                    raise BenchError(
                        f"{self.label}: broker ERROR {event.get('message')!r}"  # type: ignore[union-attr]
                    )
                elif (
                    self.waiter is not None
                    and command == self.waiter[0]
                    and not self.waiter[1].done()
                ):
                    self.waiter[1].set_result(event)  # type: ignore[arg-type]
        except ProtocolError as e:
            raise BenchError(f"{self.label}: broker sent a bad frame: {e.message}") from e

    async def close(self) -> None:
        """DISCONNECT and drop the socket; never raises."""
        if self.transport is not None and self.error is None:
            self.queue(self.codec.send(Frame("DISCONNECT")))
        await self.close_transport()


class Producer:
    """SENDs its share from one template; a RECEIPT every window/2 bounds what is unsent."""

    def __init__(self, run: StompRun, index: int, count: int | None) -> None:
        self.run_ = run
        self.opts = run.opts
        self.index = index
        self.count = count
        self.conn: StompConnection | None = None
        self.sent = 0
        self.receipted = 0
        self.pending: dict[str, tuple[int, int]] = {}  # receipt id -> (messages, stamp)
        self._wake = asyncio.Event()
        headers = [("destination", run.destination), ("content-length", str(self.opts.size))]
        if self.opts.persistent:
            headers.append(("persistent", "true"))
        wire = encode_frame(Frame("SEND", tuple(headers), bytes(self.opts.size)), "1.2")
        if self.opts.align:
            wire = pad_frame(wire)
        self.template = wire
        self.stamp_at = len(wire) - 1 - self.opts.size  # body, then NUL
        self.every = max(1, self.opts.window // 2)

    async def setup(self) -> None:
        self.conn = await StompConnection.open(self.opts, f"producer-{self.index}", self.run_.fail)
        self.conn.on_receipt = self.on_receipt
        self.run_.broker_name = self.conn.server

    def on_receipt(self, receipt_id: str | None, now: int) -> None:
        entry = self.pending.pop(receipt_id or "", None)
        if entry is None:
            return
        n, stamp = entry
        self.receipted = n
        stats = self.run_.stats
        stats.confirmed = sum(p.receipted for p in self.run_.producers)  # type: ignore[attr-defined]
        stats.confirm_latencies.append(now - stamp)
        self._wake.set()

    def outstanding(self) -> int:
        return self.sent - self.receipted

    def build(self, n: int, stamp: int, receipt: bool = False) -> bytes:
        """``n`` stamped SEND frames, then (``receipt``) one more that asks for a RECEIPT."""
        tpl, at = self.template, self.stamp_at
        buf = bytearray(tpl * n)
        pack = STAMP.pack_into
        size = len(tpl)
        for i in range(n):
            pack(buf, i * size + at, stamp)
        if not receipt:
            return bytes(buf)
        end = self.sent + n + 1
        receipt_id = f"r{self.index}-{end}"
        self.pending[receipt_id] = (end, stamp)
        return bytes(buf) + self._receipt_frame(receipt_id)

    def _receipt_frame(self, receipt: str) -> bytes:
        """A SEND like the others with a ``receipt`` header: its RECEIPT means the
        broker has processed every SEND before it on this connection."""
        headers = [
            ("destination", self.run_.destination),
            ("content-length", str(self.opts.size)),
            ("receipt", receipt),
        ]
        body = bytearray(self.opts.size)
        STAMP.pack_into(body, 0, time.perf_counter_ns())
        wire = encode_frame(Frame("SEND", tuple(headers), bytes(body)), "1.2")
        return pad_frame(wire) if self.opts.align else wire

    async def run(self, deadline_ns: int | None) -> None:
        conn, opts, stats = self.conn, self.opts, self.run_.stats
        assert conn is not None
        rate = opts.rate / opts.producers if opts.rate else 0.0
        started = time.perf_counter_ns()
        while self.count is None or self.sent < self.count:
            if conn.error is not None:
                raise conn.error
            now = time.perf_counter_ns()
            if deadline_ns is not None and now >= deadline_ns:
                self._final_receipt(now)
                break
            n = min(opts.batch, opts.window - self.outstanding())
            if self.count is not None:
                n = min(n, self.count - self.sent)
            n = min(n, self.every - self.sent % self.every)
            if rate:
                n = min(n, int((now - started) / 1e9 * rate) - self.sent)
                if n <= 0:
                    await asyncio.sleep(MIN_SLEEP)
                    continue
            if n <= 0:
                self._wake.clear()
                await self._wake.wait()
                continue
            if not conn.writable:
                await conn.wait_writable()
                continue
            # The receipt-carrying SEND is one of the n messages: build n - 1 plus it.
            boundary = self._boundary(n)
            data = self.build(n - 1 if boundary else n, now, receipt=boundary)
            conn.write(data)
            self.sent += n
            stats.sent += n
            stats.last_publish_ns = time.perf_counter_ns()
            await asyncio.sleep(0)

    def _final_receipt(self, now: int) -> None:
        """End of a ``--duration`` run: one more SEND asks for the last RECEIPT."""
        if self.outstanding() and self.conn is not None and self.conn.error is None:
            self.conn.write(self.build(0, now, receipt=True))
            self.sent += 1
            self.run_.stats.sent += 1
            self.run_.stats.last_publish_ns = time.perf_counter_ns()

    def _boundary(self, n: int) -> bool:
        end = self.sent + n
        return end % self.every == 0 or (self.count is not None and end == self.count)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


class Consumer:
    """One subscription on the run's queue; acks per ``--ack``."""

    def __init__(self, run: StompRun, index: int) -> None:
        self.run_ = run
        self.index = index
        self.conn: StompConnection | None = None
        self.unacked = 0
        self.ack_prefix = b""
        self.ack_suffix = b""

    async def setup(self) -> None:
        opts = self.run_.opts
        self.conn = await StompConnection.open(opts, f"consumer-{self.index}", self.run_.fail)
        self.conn.on_message = self.on_message
        self.ack_prefix, self.ack_suffix = ack_template(self.conn.codec, f"sub-{self.index}")
        headers = [
            ("id", f"sub-{self.index}"),
            ("destination", self.run_.destination),
            ("ack", opts.ack),
            ("activemq.prefetchSize", str(opts.prefetch)),
            ("prefetch-count", str(opts.prefetch)),
            ("receipt", f"sub-{self.index}"),
        ]
        await self.conn.call(self.conn.codec.send(Frame("SUBSCRIBE", tuple(headers))), "RECEIPT")

    def on_message(self, frame: Frame, now: int) -> None:
        handle_message(self, frame, now)
        self.run_.progressed()

    def ack_frame(self, frame: Frame) -> bytes:
        """The ACK for ``frame``: 1.2 ``id`` (its ``ack`` header); 1.1 ``subscription``
        and ``message-id``; 1.0 ``message-id``. Padded with ``--align-frames``."""
        assert self.conn is not None
        codec = self.conn.codec
        ack_id = (frame.get("ack") if codec.version == "1.2" else frame.get("message-id")) or ""
        if not any(c in ack_id for c in ":\\\r\n"):
            wire = self.ack_prefix + ack_id.encode() + self.ack_suffix
        else:
            wire = codec.send(Frame("ACK", _ack_headers(codec.version, frame, ack_id)))
        return pad_frame(wire) if self.run_.opts.align else wire

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


def _ack_headers(version: str, frame: Frame, ack_id: str) -> tuple[tuple[str, str], ...]:
    if version == "1.2":
        return (("id", ack_id),)
    if version == "1.1":
        return (("subscription", frame.get("subscription") or ""), ("message-id", ack_id))
    return (("message-id", ack_id),)


def ack_template(codec: FrameCodec, subscription: str) -> tuple[bytes, bytes]:
    """The codec's ACK frame split around the message's id (spliced in per MESSAGE).

    No escaping is needed when the id has no ':', '\\', CR or LF; other ids go
    through the codec (:meth:`Consumer.ack_frame`).
    """
    message = Frame("MESSAGE", (("subscription", subscription),))
    wire = codec.send(Frame("ACK", _ack_headers(codec.version, message, _MARK)))
    prefix, suffix = wire.split(_MARK.encode())
    return prefix, suffix


def handle_message(consumer: Consumer, frame: Frame, now: int) -> None:
    """The consumer's per-message work (shared with ``--self-test``)."""
    stats = consumer.run_.stats
    (stamp,) = STAMP.unpack_from(frame.body)
    stats.latencies.append(now - stamp)
    stats.delivered += 1
    stats.last_delivery_ns = now
    mode = consumer.run_.opts.ack
    if mode == "client-individual":
        consumer.conn.queue(consumer.ack_frame(frame))  # type: ignore[union-attr]
    elif mode == "client":
        consumer.unacked += 1
        if consumer.unacked >= consumer.run_.opts.prefetch // 2:
            consumer.conn.queue(consumer.ack_frame(frame))  # type: ignore[union-attr]
            consumer.unacked = 0


class StompRun(StreamRun):
    """Consumers first, then producers, all on one queue."""

    def __init__(self, opts: Options) -> None:
        super().__init__(opts)
        self.opts: Options = opts
        self.destination = f"/queue/bench-{os.getpid()}-{time.monotonic_ns() % 1_000_000}"
        self.broker_name = ""

    async def setup(self) -> None:
        opts = self.opts
        for i in range(opts.consumers):
            consumer = Consumer(self, i)
            self.consumers.append(consumer)
            await consumer.setup()
        shares: list[int | None] = (
            list(split(opts.count, opts.producers))
            if opts.count is not None
            else [None] * opts.producers
        )
        for i, share in enumerate(shares):
            producer = Producer(self, i, share)
            self.producers.append(producer)
            await producer.setup()
        self.broker = self.broker_name or f"{opts.host}:{opts.port}"


def run(opts: Options, loop: str) -> Result:
    """One measurement against ``opts.host:opts.port``."""
    require_loopback(opts.host)
    with asyncio.Runner(loop_factory=new_loop(loop)) as runner:
        return runner.run(_execute(opts))


async def _execute(opts: Options) -> Result:
    return await StompRun(opts).execute()


def run_spawned(opts: Options, loop: str, store: str) -> Result:
    """Run against a Moorage started for this run (its CPU is reported)."""
    return run_spawned_with(opts, loop, store, "stomp", run)


class _SinkConnection:
    def __init__(self) -> None:
        self.codec = FrameCodec(CodecRole.CLIENT)
        self.codec.version = "1.2"
        self.out: list[bytes] = []

    def queue(self, data: bytes) -> None:
        self.out.append(data)


def self_test(count: int, opts: Options) -> dict[str, Any]:
    """The client's ceiling without a broker: build ``count`` SENDs, decode as many MESSAGEs."""
    run_ = StompRun.__new__(StompRun)
    run_.opts, run_.stats, run_.destination = opts, Stats(), "/queue/self-test"
    run_.producers = []
    producer = Producer(run_, 0, None)
    t0 = time.perf_counter()
    done = 0
    while done < count:
        n = min(opts.batch, count - done)
        producer.build(n, time.perf_counter_ns())
        producer.sent += n
        done += n
    encode_rate = count / (time.perf_counter() - t0)
    # What a broker sends: a MESSAGE with the usual headers per SEND.
    message = encode_frame(
        Frame(
            "MESSAGE",
            (
                ("subscription", "sub-0"),
                ("destination", run_.destination),
                ("message-id", "T_123456"),
                ("ack", "T_123456"),
                ("content-length", str(opts.size)),
            ),
            STAMP.pack(time.perf_counter_ns()) + bytes(opts.size - STAMP.size),
        ),
        "1.2",
    )
    stream = message * count
    consumer = Consumer(run_, 0)
    sink = _SinkConnection()
    consumer.conn = sink  # type: ignore[assignment]
    sink.codec.version = opts.version
    consumer.ack_prefix, consumer.ack_suffix = ack_template(sink.codec, "sub-0")
    codec = FrameCodec(CodecRole.CLIENT)
    codec.version = "1.2"
    t0 = time.perf_counter()
    for i in range(0, len(stream), 65536):
        codec.receive_data(stream[i : i + 65536])
        now = time.perf_counter_ns()
        while (event := codec.next_event()) is not NEED_DATA:
            handle_message(consumer, event, now)  # type: ignore[arg-type]
        sink.out.clear()
    decode_rate = count / (time.perf_counter() - t0)
    assert run_.stats.delivered == count
    return {
        "scenario": f"stomp self-test {opts.size}B ack={opts.ack} batch={opts.batch}",
        "messages": count,
        "producer_encode_per_s": round(encode_rate),
        "consumer_decode_per_s": round(decode_rate),
        "one_core_1to1_ceiling_per_s": round(1 / (1 / encode_rate + 1 / decode_rate)),
        "note": "a run near one_core_1to1_ceiling is limited by this client, not the broker",
    }
