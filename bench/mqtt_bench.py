"""MQTT 3.1.1 throughput and latency benchmark (QoS 0, 1 and 2).

Run ``moorage bench mqtt --help``; ``bench/README.md`` explains the scenarios.

The client is raw and pipelined, like the AMQP one: packets are decoded with the
broker's own sans-IO codec (:mod:`protocols.mqtt.codec`, client role), and every
PUBLISH of a run is one template from :func:`protocols.mqtt.codec.encode`, in which
only the send timestamp (first 8 payload octets) and, with QoS 1/2, the packet
identifier are patched.  QoS 1 and 2 publishers keep at most ``--inflight``
messages unacknowledged (PUBACK, or PUBCOMP for QoS 2); a QoS 0 publisher stops only
when the socket buffer is full.  Subscribers answer PUBACK / PUBREC / PUBCOMP for
every message, queued and written once per read.

``P -> 1`` with P > 1 publishes to ``bench/<run>/p<i>`` and subscribes with the
wildcard ``bench/<run>/+`` (``--wildcard`` forces the wildcard for 1 -> 1 too).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Final

from moorage.bench.errors import BenchError
from moorage.bench.loopback import new_loop, require_loopback
from moorage.bench.mqtt_options import Options
from moorage.bench.results import STAMP, Result, Stats
from moorage.bench.spawn import run_spawned_with
from moorage.bench.stream import (
    MIN_SLEEP,
    StreamConnection,
    StreamRun,
    open_connection,
    split,
)
from moorage.protocols.mqtt.codec import (
    MQTT_3_1_1,
    NEED_DATA,
    ConnAck,
    Connect,
    Connection,
    ConnectionClosed,
    Disconnect,
    ProtocolError,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Role,
    SubAck,
    Subscribe,
    Subscription,
    encode,
)

KEEP_ALIVE: Final = 600  # seconds; every run is shorter, so no PINGREQ is needed
_PID: Final = 2  # octets of a packet identifier


_PUBACK: Final = encode(PubAck(packet_id=1), MQTT_3_1_1)[:-_PID]
_PUBREC: Final = encode(PubRec(packet_id=1), MQTT_3_1_1)[:-_PID]
_PUBREL: Final = encode(PubRel(packet_id=1), MQTT_3_1_1)[:-_PID]
_PUBCOMP: Final = encode(PubComp(packet_id=1), MQTT_3_1_1)[:-_PID]


# -- the raw client ------------------------------------------------------------------------


class MqttConnection(StreamConnection):
    """One MQTT 3.1.1 client connection; packets go to the role's handlers."""

    def __init__(self, label: str, on_failure: Any) -> None:
        super().__init__(label, on_failure)
        self.codec = Connection(Role.CLIENT, version=MQTT_3_1_1)
        self.waiter: tuple[type, asyncio.Future[Any]] | None = None
        self.on_publish: Any = None  # (Publish, now) -> None
        self.on_ack: Any = None  # (packet, now) -> None: PubAck, PubRec, PubComp

    @classmethod
    async def open(
        cls, opts: Options, label: str, on_failure: Any, *, clean_start: bool = True
    ) -> MqttConnection:
        """TCP connect, CONNECT, wait for a successful CONNACK.

        ``clean_start=False`` asks for a persistent session (3.1.1 cleanSession=0).
        """
        conn: MqttConnection = await open_connection(
            lambda: cls(label, on_failure), opts.host, opts.port, label
        )
        connect = Connect(
            client_id=f"bench-{os.getpid()}-{label}",
            clean_start=clean_start,
            keep_alive=KEEP_ALIVE,
            username=opts.user,
            password=opts.password.encode() if opts.password is not None else None,
        )
        ack = await conn.call(conn.codec.send(connect), ConnAck)
        if ack.reason_code:
            raise BenchError(f"{label}: CONNACK refused with code {ack.reason_code}")
        return conn

    async def call(self, data: bytes, reply: type) -> Any:
        """Write ``data`` and wait (bounded) for the first packet of type ``reply``."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiter = (reply, future)
        self.write(data)
        try:
            async with asyncio.timeout(10.0):
                return await future
        except TimeoutError as e:
            raise BenchError(f"{self.label}: no {reply.__name__} within 10s") from e
        finally:
            self.waiter = None

    def feed(self, data: bytes, now: int) -> None:
        codec = self.codec
        codec.receive_data(data)
        try:
            while (event := codec.next_event()) is not NEED_DATA:
                kind = type(event)
                if kind is Publish:
                    self.on_publish(event, now)
                elif kind is PubAck or kind is PubRec or kind is PubComp:
                    self.on_ack(event, now)
                elif kind is PubRel:
                    self.queue(_PUBCOMP + event.packet_id.to_bytes(2, "big"))  # type: ignore[union-attr]
                elif kind is Disconnect or kind is ConnectionClosed:
                    raise BenchError(f"{self.label}: broker disconnected")
                elif (
                    self.waiter is not None and kind is self.waiter[0] and not self.waiter[1].done()
                ):
                    self.waiter[1].set_result(event)
        except ProtocolError as e:
            raise BenchError(f"{self.label}: broker sent a bad packet: {e}") from e

    async def close(self) -> None:
        """DISCONNECT and drop the socket; never raises."""
        if self.transport is not None and self.error is None:
            self.queue(self.codec.send(Disconnect()))
        await self.close_transport()


class Producer:
    """Publishes its share of the run from one template, QoS 1/2 within a window."""

    def __init__(self, run: MqttRun, index: int, count: int | None) -> None:
        self.run_ = run
        self.opts = run.opts
        self.index = index
        self.count = count
        self.topic = f"{run.base}/p{index}"
        self.conn: MqttConnection | None = None
        self.inflight: dict[int, int] = {}  # packet id -> send stamp
        self.next_id = 1
        self.sent = 0
        self._wake = asyncio.Event()
        qos = self.opts.qos
        wire = encode(
            Publish(
                topic=self.topic,
                payload=bytes(self.opts.size),
                qos=qos,
                packet_id=1 if qos else None,
            ),
            MQTT_3_1_1,
        )
        self.template = wire
        self.stamp_at = len(wire) - self.opts.size
        self.id_at = self.stamp_at - _PID

    async def setup(self) -> None:
        self.conn = await MqttConnection.open(self.opts, f"producer-{self.index}", self.run_.fail)
        self.conn.on_ack = self.on_ack

    def on_ack(self, packet: Any, now: int) -> None:
        """PUBACK (QoS 1) or PUBCOMP (QoS 2) ends a publish; PUBREC is answered."""
        pid = packet.packet_id
        if type(packet) is PubRec:
            assert self.conn is not None
            self.conn.queue(_PUBREL + pid.to_bytes(2, "big"))
            return
        stamp = self.inflight.pop(pid, None)
        if stamp is None:
            return
        stats = self.run_.stats
        stats.confirmed += 1
        stats.confirm_latencies.append(now - stamp)
        self._wake.set()

    def outstanding(self) -> int:
        return len(self.inflight)

    def _next_id(self) -> int:
        pid = self.next_id
        while pid in self.inflight:
            pid = pid % 65535 + 1
        self.next_id = pid % 65535 + 1
        return pid

    def build(self, n: int, stamp: int) -> bytearray:
        """``n`` PUBLISH packets with the send stamp (and fresh packet ids) patched in."""
        tpl, size = self.template, len(self.template)
        buf = bytearray(tpl * n)
        pack = STAMP.pack_into
        at = self.stamp_at
        if self.opts.qos:
            ids = self.inflight
            id_at = self.id_at
            for i in range(n):
                pid = self._next_id()
                ids[pid] = stamp
                off = i * size
                buf[off + id_at : off + at] = pid.to_bytes(2, "big")
                pack(buf, off + at, stamp)
        else:
            for i in range(n):
                pack(buf, i * size + at, stamp)
        return buf

    async def run(self, deadline_ns: int | None) -> None:
        conn, opts, stats = self.conn, self.opts, self.run_.stats
        assert conn is not None
        rate = opts.rate / opts.producers if opts.rate else 0.0
        started = time.perf_counter_ns()
        window = opts.inflight if opts.qos else 1 << 62
        while self.count is None or self.sent < self.count:
            if conn.error is not None:
                raise conn.error
            now = time.perf_counter_ns()
            if deadline_ns is not None and now >= deadline_ns:
                break
            n = opts.batch
            if self.count is not None:
                n = min(n, self.count - self.sent)
            n = min(n, window - len(self.inflight))
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
            conn.write(self.build(n, now))
            self.sent += n
            stats.sent += n
            stats.last_publish_ns = time.perf_counter_ns()
            await asyncio.sleep(0)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


class Subscriber:
    """Subscribes once and acknowledges every message at its QoS."""

    def __init__(self, run: MqttRun, index: int) -> None:
        self.run_ = run
        self.index = index
        self.conn: MqttConnection | None = None

    async def setup(self) -> None:
        opts = self.run_.opts
        self.conn = await MqttConnection.open(opts, f"subscriber-{self.index}", self.run_.fail)
        self.conn.on_publish = self.on_publish
        topic = f"{self.run_.base}/+" if opts.uses_wildcard else f"{self.run_.base}/p0"
        subscribe = Subscribe(packet_id=1, subscriptions=[Subscription(topic, qos=opts.qos)])
        ack = await self.conn.call(self.conn.codec.send(subscribe), SubAck)
        if any(code >= 0x80 for code in ack.reason_codes):
            raise BenchError(f"subscriber-{self.index}: SUBACK refused {topic!r}")

    def on_publish(self, packet: Publish, now: int) -> None:
        """Latency from the stamp; PUBACK or PUBREC queued (written after the read)."""
        handle_publish(self.run_.stats, self.conn, packet, now)
        self.run_.progressed()

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


def handle_publish(stats: Stats, conn: Any, packet: Publish, now: int) -> None:
    """The subscriber's per-message work (shared with ``--self-test``)."""
    (stamp,) = STAMP.unpack_from(packet.payload)
    stats.latencies.append(now - stamp)
    stats.delivered += 1
    stats.last_delivery_ns = now
    if packet.qos == 1:
        conn.queue(_PUBACK + packet.packet_id.to_bytes(2, "big"))  # type: ignore[union-attr]
    elif packet.qos == 2:
        conn.queue(_PUBREC + packet.packet_id.to_bytes(2, "big"))  # type: ignore[union-attr]


class MqttRun(StreamRun):
    """Subscribers first (so nothing is published before they listen), then publishers."""

    def __init__(self, opts: Options) -> None:
        super().__init__(opts)
        self.opts: Options = opts
        self.base = f"bench/{os.getpid()}-{time.monotonic_ns() % 1_000_000}"
        self.broker = f"{opts.host}:{opts.port}"

    async def setup(self) -> None:
        opts = self.opts
        for i in range(opts.consumers):
            sub = Subscriber(self, i)
            self.consumers.append(sub)
            await sub.setup()
        shares: list[int | None] = (
            list(split(opts.count, opts.producers))
            if opts.count is not None
            else [None] * opts.producers
        )
        for i, share in enumerate(shares):
            producer = Producer(self, i, share)
            self.producers.append(producer)
            await producer.setup()

    def expected_after_duration(self) -> int:
        return self.stats.sent * self.opts.consumers


def run(opts: Options, loop: str) -> Result:
    """One measurement against ``opts.host:opts.port``."""
    require_loopback(opts.host)
    with asyncio.Runner(loop_factory=new_loop(loop)) as runner:
        return runner.run(_execute(opts))


async def _execute(opts: Options) -> Result:
    return await MqttRun(opts).execute()


def run_spawned(opts: Options, loop: str, store: str) -> Result:
    """Run against a Moorage started for this run (its CPU is reported)."""
    return run_spawned_with(opts, loop, store, "mqtt", run)


class _Sink:
    """Collects what the subscriber would write (the self-test has no socket)."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def queue(self, data: bytes) -> None:
        self.out.append(data)


def self_test(count: int, opts: Options) -> dict[str, Any]:
    """The client's ceiling without a broker: build ``count`` publishes, decode as many."""
    run_ = MqttRun.__new__(MqttRun)
    run_.opts, run_.stats, run_.base = opts, Stats(), "bench/self-test"
    producer = Producer(run_, 0, count)
    t0 = time.perf_counter()
    chunks = []
    done = 0
    while done < count:
        n = min(opts.batch, count - done)
        chunks.append(bytes(producer.build(n, time.perf_counter_ns())))
        producer.inflight.clear()
        done += n
    encode_rate = count / (time.perf_counter() - t0)
    # What a broker sends: the same packets (a broker rewrites only the packet id).
    stream = b"".join(chunks)
    codec = Connection(Role.CLIENT, version=MQTT_3_1_1)
    stats, sink = Stats(), _Sink()
    t0 = time.perf_counter()
    for i in range(0, len(stream), 65536):
        codec.receive_data(stream[i : i + 65536])
        now = time.perf_counter_ns()
        while (event := codec.next_event()) is not NEED_DATA:
            handle_publish(stats, sink, event, now)  # type: ignore[arg-type]
        sink.out.clear()
    decode_rate = count / (time.perf_counter() - t0)
    assert stats.delivered == count
    return {
        "scenario": f"mqtt self-test qos{opts.qos} {opts.size}B batch={opts.batch}",
        "messages": count,
        "producer_encode_per_s": round(encode_rate),
        "consumer_decode_per_s": round(decode_rate),
        "one_core_1to1_ceiling_per_s": round(1 / (1 / encode_rate + 1 / decode_rate)),
        "note": "a run near one_core_1to1_ceiling is limited by this client, not the broker",
    }
