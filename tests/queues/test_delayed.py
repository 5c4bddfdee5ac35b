"""Delayed delivery: the x-delayed-message exchange and x-delivery-delay, over pika.

The broker runs on a `ManualClock` wherever the test is about *when*
something is released: the test states the instant and checks it, so a slow
or loaded machine changes how long a test takes, never its outcome. The
restart and the 100k-messages tests run on the real clock in a broker
process and assert behaviour (all delivered, none early, bounded memory).
"""

from __future__ import annotations

import time
from pathlib import Path

import pika
import pytest
from pamqp import body as pamqp_body
from pamqp import commands, frame, header

from moorage.broker.clock import ManualClock
from tests.helpers import Inbox, RawClient, RunningBroker
from tests.queues.helpers import get_all, persistent, settled_count, wait_get

pytestmark = pytest.mark.timeout(120)


def advance_to(running: RunningBroker, clock: ManualClock, instant: float) -> None:
    """Move the broker's manual clock (on its loop thread) to `instant` (monotonic)."""
    running.call(clock.advance_to, instant)


def declare_delayed(ch, name="delayed", kind="direct", durable=True):
    ch.exchange_declare(
        name, "x-delayed-message", durable=durable, arguments={"x-delayed-type": kind}
    )


def test_delayed_exchange_holds_until_due(clocked):
    running, clock = clocked, clocked.clock
    conn = pika.BlockingConnection(pika.URLParameters(running.url))
    ch = conn.channel()
    declare_delayed(ch)
    ch.queue_declare("later")
    ch.queue_bind("later", "delayed", "k")
    start = running.call(clock.monotonic)
    ch.basic_publish("delayed", "k", b"d300", pika.BasicProperties(headers={"x-delay": 300}))
    ch.basic_publish("delayed", "k", b"d100", pika.BasicProperties(headers={"x-delay": 100}))
    ch.basic_publish("delayed", "k", b"now")  # no x-delay: routed at once
    inbox = Inbox(conn)
    ch.basic_consume("later", inbox, auto_ack=True)
    assert inbox.wait(1, timeout=30)
    seen = []
    for at, expect in ((0.095, 1), (0.105, 2), (0.295, 2), (0.305, 3)):
        advance_to(running, clock, start + at)
        assert inbox.wait(expect, timeout=30)
        inbox.sync(ch)  # anything released too early would be here by now
        seen.append(list(inbox.bodies))
    assert seen == [
        [b"now"],
        [b"now", b"d100"],
        [b"now", b"d100"],
        [b"now", b"d100", b"d300"],
    ]
    conn.close()


def test_delayed_exchange_needs_delayed_type(connect):
    ch = connect().channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.exchange_declare("bad-delayed", "x-delayed-message")
    assert info.value.reply_code == 406


def test_delayed_topic_routing(clocked):
    running, clock = clocked, clocked.clock
    conn = pika.BlockingConnection(pika.URLParameters(running.url))
    ch = conn.channel()
    declare_delayed(ch, "dtopic", "topic")
    ch.queue_declare("t1")
    ch.queue_bind("t1", "dtopic", "a.*")
    ch.basic_publish("dtopic", "a.b", b"x", pika.BasicProperties(headers={"x-delay": 50}))
    ch.basic_publish("dtopic", "z.b", b"y", pika.BasicProperties(headers={"x-delay": 50}))
    ch.queue_declare("t1", passive=True)  # a round trip: both publishes are scheduled
    advance_to(running, clock, running.call(clock.monotonic) + 0.1)
    assert wait_get(ch, "t1", timeout=30)[2] == b"x"
    assert settled_count(running, "t1") == 0  # y matched no binding: dropped, not queued
    assert get_all(ch, "t1") == []
    conn.close()


def test_queue_delivery_delay(clocked):
    running, clock = clocked, clocked.clock
    conn = pika.BlockingConnection(pika.URLParameters(running.url))
    ch = conn.channel()
    ch.queue_declare("sqs-delay", arguments={"x-delivery-delay": 200})
    start = running.call(clock.monotonic)
    ch.basic_publish("", "sqs-delay", b"x")
    assert ch.queue_declare("sqs-delay", passive=True).method.message_count == 0
    advance_to(running, clock, start + 0.195)
    assert settled_count(running, "sqs-delay") == 0
    assert get_all(ch, "sqs-delay") == []
    advance_to(running, clock, start + 0.205)
    assert wait_get(ch, "sqs-delay", timeout=30)[2] == b"x"
    conn.close()


def test_delayed_messages_survive_restart(broker_process):
    broker_process.start()
    conn = pika.BlockingConnection(broker_process.params)
    ch = conn.channel()
    ch.confirm_delivery()
    declare_delayed(ch)
    ch.queue_declare("after-restart", durable=True)
    ch.queue_bind("after-restart", "delayed", "k")
    ch.queue_declare("qdelay", durable=True, arguments={"x-delivery-delay": 1500})
    ch.basic_publish("delayed", "k", b"x", persistent(headers={"x-delay": 1500}))
    ch.basic_publish("", "qdelay", b"q", persistent())
    conn.close()
    broker_process.stop()
    broker_process.start()
    conn = pika.BlockingConnection(broker_process.params)
    ch = conn.channel()
    assert wait_get(ch, "after-restart", timeout=5)[2] == b"x"
    assert wait_get(ch, "qdelay", timeout=5)[2] == b"q"
    conn.close()


def raw_publisher(port: int) -> RawClient:
    client = RawClient(port)
    client.handshake()
    client.open_channel(1)
    return client


def publish_frames(exchange: str, routing_key: str, body: bytes, headers: dict) -> bytes:
    props = commands.Basic.Properties(delivery_mode=2, headers=headers)
    return (
        frame.marshal(commands.Basic.Publish(exchange=exchange, routing_key=routing_key), 1)
        + frame.marshal(header.ContentHeader(0, len(body), props), 1)
        + frame.marshal(pamqp_body.ContentBody(body), 1)
    )


def rss_mib(pid: int) -> float:
    """Resident memory of a process (Linux /proc), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(900)
def test_100k_delayed_messages_bounded_memory_none_early(broker_process):
    """100,000 persistent 1 KiB delayed messages on disk, due over a 10 s span, real clock.

    The broker runs in its own process (SQLite store), so its memory can be
    measured: holding all 100k messages in RAM would cost well over 100 MiB;
    the scheduler keeps a window of `WINDOW_MAX` and the rest on disk. They are
    published as fast as a pipelining client can (raw frames); each body
    carries the instant the publisher asked for. Every message must arrive,
    none before its due time; how late they come under load depends on the
    machine and is printed, not asserted (the order and the exact release
    instants are checked on a manual clock in `test_delay_window_stays_bounded`).
    """
    broker_process.start()
    pid = broker_process.proc.pid
    conn = pika.BlockingConnection(broker_process.params)
    ch = conn.channel()
    declare_delayed(ch, "bulk")
    ch.queue_declare("bulk-out", durable=True)
    ch.queue_bind("bulk-out", "bulk", "k")
    ch.queue_declare("probe", durable=True)
    rss_before = rss_mib(pid)
    total, span = 100_000, 10.0
    padding = b" " * 1000
    t_publish = time.time()
    base = t_publish + 12.0  # due times: base .. base + span (or at once, if publishing is slower)
    publisher = raw_publisher(broker_process.port)
    try:
        chunk: list[bytes] = []
        for i in range(total):
            due = base + span * i / total
            # the delay is counted from when the broker reads the frame, later than now
            delay = max(int((due - time.time()) * 1000), 0)
            chunk.append(publish_frames("bulk", "k", b"%.3f" % due + padding, {"x-delay": delay}))
            if len(chunk) == 500:
                publisher.send(b"".join(chunk))
                chunk.clear()
        publisher.send(b"".join([*chunk, publish_frames("", "probe", b"end", {})]))
        # the probe is behind every delayed publish on the same channel
        assert wait_get(ch, "probe", timeout=600)[2] == b"end"
        publish_seconds = time.time() - t_publish
        rss_holding = rss_mib(pid)
        lateness: list[float] = []
        early: list[float] = []
        received = 0
        peak_rss = rss_holding

        def on_message(c, method, props, body):
            nonlocal received
            now = time.time()
            due = float(body[:14])
            if due - now > 0.002:  # the broker counts in whole milliseconds
                early.append(due - now)
            lateness.append(now - due)
            received += 1

        ch.basic_consume("bulk-out", on_message, auto_ack=True)
        deadline = time.monotonic() + 600  # a generous bound, not a speed
        while received < total and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.2)
            peak_rss = max(peak_rss, rss_mib(pid))
        print(  # the numbers the issue asks for (pytest -s shows them)
            f"\n100k delayed: published in {publish_seconds:.1f}s; broker RSS {rss_before:.0f} MiB "
            f"before, {rss_holding:.0f} MiB holding them, peak {peak_rss:.0f} MiB; "
            f"max lateness {max(lateness, default=0):.2f}s"
        )
        assert received == total
        assert not early, f"{len(early)} messages came early, by up to {max(early):.3f}s"
        # 100k x 1 KiB in RAM would be > 100 MiB on top; the window costs a few MiB
        assert rss_holding - rss_before < 60, (rss_before, rss_holding)
    finally:
        publisher.close()
        conn.close()


@pytest.mark.timeout(900)
def test_delay_window_stays_bounded(clocked):
    """20,000 stored delayed messages, at most WINDOW_MAX in memory, released in due order.

    The broker's clock stands still while they are published, so every delay
    counts from the same instant however long publishing takes: message i is
    due at start + 1.5 s + 10 ms * (i // 100). At 5 ms before and after each
    checkpoint the destination queue must hold exactly the messages due by
    then, read back from the store in batches as the window runs low.
    """
    from moorage.broker.delayed import WINDOW_MAX

    running, clock = clocked, clocked.clock
    conn = pika.BlockingConnection(pika.URLParameters(running.url))
    publisher = raw_publisher(running.port)
    try:
        ch = conn.channel()
        declare_delayed(ch, "win")
        ch.queue_declare("win-out", durable=True)
        ch.queue_bind("win-out", "win", "k")
        total = 20_000
        start = running.call(clock.monotonic)
        frames = [
            publish_frames("win", "k", b"%d" % i, {"x-delay": 1500 + 10 * (i // 100)})
            for i in range(total)
        ]
        publisher.send(b"".join(frames))
        schedulers = running.core.vhosts["/"].delay_schedulers
        assert running.wait_until(lambda: "win" in schedulers, 60)
        scheduler = running.call(lambda: running.core.vhosts["/"].delay_schedulers["win"])
        assert running.wait_until(lambda: scheduler.count == total, 300)
        assert running.call(lambda: len(scheduler.window)) <= WINDOW_MAX
        assert settled_count(running, "win-out") == 0
        # checkpoints 5 ms either side of some due times (several need refills from disk)
        out = running.call(lambda: running.core.vhosts["/"].queues["win-out"])
        for step in (0, 1, 40, 41, 99, 120, 199):
            due = start + 1.5 + 0.01 * step
            checks = ((due - 0.005, 100 * step), (due + 0.005, 100 * (step + 1)))
            for instant, due_by_then in checks:
                advance_to(running, clock, instant)
                # what is due arrives (refills read the store: wait, with a generous bound)
                assert running.wait_until(lambda n=due_by_then: out.message_count >= n, 300)
                # and nothing more: no later message is released before its time
                assert settled_count(running, "win-out") == due_by_then
        assert running.call(lambda: scheduler.count) == 0
        assert running.call(lambda: scheduler.peak_loaded) <= WINDOW_MAX + 1
        inbox = Inbox(conn)
        ch.basic_qos(prefetch_count=1000)
        ch.basic_consume("win-out", inbox, auto_ack=True)
        assert inbox.wait(total, timeout=300)
        assert [int(b) for b in inbox.bodies] == list(range(total))  # due order == publish order
    finally:
        publisher.close()
        conn.close()
