"""Delayed delivery: the x-delayed-message exchange and x-delivery-delay, over pika."""

from __future__ import annotations

import time
from pathlib import Path

import pika
import pytest
from pamqp import body as pamqp_body
from pamqp import commands, frame, header

from tests.helpers import Inbox, RawClient, make_config
from tests.queues.helpers import get_all, persistent, wait_get

pytestmark = pytest.mark.timeout(60)


def declare_delayed(ch, name="delayed", kind="direct", durable=True):
    ch.exchange_declare(
        name, "x-delayed-message", durable=durable, arguments={"x-delayed-type": kind}
    )


def test_delayed_exchange_holds_until_due(connect):
    conn = connect()
    ch = conn.channel()
    declare_delayed(ch)
    ch.queue_declare("later")
    ch.queue_bind("later", "delayed", "k")
    start = time.monotonic()
    ch.basic_publish("delayed", "k", b"d300", pika.BasicProperties(headers={"x-delay": 300}))
    ch.basic_publish("delayed", "k", b"d100", pika.BasicProperties(headers={"x-delay": 100}))
    ch.basic_publish("delayed", "k", b"now")  # no x-delay: routed at once
    inbox = Inbox(conn)
    ch.basic_consume("later", inbox, auto_ack=True)
    assert inbox.wait(1, timeout=0.09)
    assert inbox.bodies == [b"now"]
    assert inbox.wait(3)
    assert inbox.bodies == [b"now", b"d100", b"d300"]
    assert time.monotonic() - start >= 0.3


def test_delayed_exchange_needs_delayed_type(connect):
    ch = connect().channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.exchange_declare("bad-delayed", "x-delayed-message")
    assert info.value.reply_code == 406


def test_delayed_topic_routing(connect):
    ch = connect().channel()
    declare_delayed(ch, "dtopic", "topic")
    ch.queue_declare("t1")
    ch.queue_bind("t1", "dtopic", "a.*")
    ch.basic_publish("dtopic", "a.b", b"x", pika.BasicProperties(headers={"x-delay": 50}))
    ch.basic_publish("dtopic", "z.b", b"y", pika.BasicProperties(headers={"x-delay": 50}))
    assert wait_get(ch, "t1")[2] == b"x"
    time.sleep(0.1)
    assert get_all(ch, "t1") == []


def test_queue_delivery_delay(connect):
    ch = connect().channel()
    ch.queue_declare("sqs-delay", arguments={"x-delivery-delay": 200})
    ch.basic_publish("", "sqs-delay", b"x")
    assert ch.queue_declare("sqs-delay", passive=True).method.message_count == 0
    time.sleep(0.05)
    assert get_all(ch, "sqs-delay") == []
    assert wait_get(ch, "sqs-delay")[2] == b"x"


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


@pytest.mark.timeout(120)
def test_100k_delayed_messages_bounded_memory_on_time(broker_process):
    """100,000 persistent 1 KiB delayed messages on disk, due over a 10 s span.

    The broker runs in its own process (SQLite store), so its memory can be
    measured: holding all 100k messages in RAM would cost well over 100 MiB;
    the scheduler keeps a window of `WINDOW_MAX` and the rest on disk. They are
    published as fast as a pipelining client can (raw frames), the due times do
    not depend on the client's speed, and each must arrive within 1 s of its
    due time.
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
    base = t_publish + 12.0  # due times: base .. base + span
    publisher = raw_publisher(broker_process.port)
    chunk: list[bytes] = []
    for i in range(total):
        due = base + span * i / total
        delay = int((due - time.time()) * 1000)
        chunk.append(publish_frames("bulk", "k", b"%.3f" % due + padding, {"x-delay": delay}))
        if len(chunk) == 500:
            publisher.send(b"".join(chunk))
            chunk.clear()
    publisher.send(b"".join([*chunk, publish_frames("", "probe", b"end", {})]))
    # the probe is behind every delayed publish on the same channel
    assert wait_get(ch, "probe", timeout=20)[2] == b"end"
    publish_seconds = time.time() - t_publish
    rss_holding = rss_mib(pid)
    assert publish_seconds < 11.5, f"publishing took {publish_seconds:.1f}s"
    late: list[float] = []
    early: list[float] = []
    received = 0
    peak_rss = rss_holding

    def on_message(c, method, props, body):
        nonlocal received
        now = time.time()
        due = float(body[:14])
        if now - due > 1.0:
            late.append(now - due)
        if due - now > 0.05:
            early.append(due - now)
        received += 1

    ch.basic_consume("bulk-out", on_message, auto_ack=True)
    deadline = time.monotonic() + 40
    while received < total and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.2)
        peak_rss = max(peak_rss, rss_mib(pid))
    last_after_due = time.time() - (base + span)
    print(  # the numbers the issue asks for (pytest -s shows them)
        f"\n100k delayed: published in {publish_seconds:.1f}s; broker RSS {rss_before:.0f} MiB "
        f"before, {rss_holding:.0f} MiB holding all 100k, peak {peak_rss:.0f} MiB; "
        f"last delivered {last_after_due:.2f}s after the last due time; "
        f"max lateness {max(late, default=0):.2f}s"
    )
    assert received == total
    assert not early, f"{len(early)} messages came early"
    assert not late, f"{len(late)} messages late by up to {max(late):.2f}s"
    # 100k x 1 KiB in RAM would be > 100 MiB on top; the window costs a few MiB
    assert rss_holding - rss_before < 60, (rss_before, rss_holding)
    publisher.close()
    conn.close()


@pytest.mark.timeout(120)
def test_delay_window_stays_bounded(start_broker, tmp_path):
    """In-process: 20,000 stored delayed messages, at most WINDOW_MAX of them in memory."""
    from moorage.broker.delayed import WINDOW_MAX

    config = make_config(tmp_path)
    config.storage.backend = "sqlite"
    config.storage.durability = "nosync"
    running = start_broker(config)
    conn = pika.BlockingConnection(pika.URLParameters(running.url))
    publisher = raw_publisher(running.port)
    try:
        ch = conn.channel()
        declare_delayed(ch, "win")
        ch.queue_declare("win-out", durable=True)
        ch.queue_bind("win-out", "win", "k")
        total = 20_000
        frames = [
            publish_frames("win", "k", b"%d" % i, {"x-delay": 1500 + i // 10}) for i in range(total)
        ]
        publisher.send(b"".join(frames))
        schedulers = running.core.vhosts["/"].delay_schedulers
        assert running.wait_until(lambda: "win" in schedulers, 10)
        scheduler = running.call(lambda: running.core.vhosts["/"].delay_schedulers["win"])
        assert running.wait_until(lambda: scheduler.count == total, 20)
        assert running.call(lambda: len(scheduler.window)) <= WINDOW_MAX
        # 20,000 basic.get round trips through pika: ~7 s alone, far more on a loaded machine
        got = get_all(ch, "win-out", timeout=60, expect=total)
        assert [int(b) for _, _, b in got] == list(range(total))  # due order == publish order
        assert running.call(lambda: scheduler.peak_loaded) <= WINDOW_MAX + 1
    finally:
        publisher.close()
        conn.close()
