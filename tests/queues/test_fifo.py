"""FIFO queues: per-group order, one message in flight per group, deduplication (pika)."""

from __future__ import annotations

import random
import threading
import time

import pika
import pytest

from tests.queues.helpers import get_all, persistent

pytestmark = pytest.mark.timeout(60)

FIFO = {"x-queue-type": "fifo"}


def group_props(group: str, **headers) -> pika.BasicProperties:
    return pika.BasicProperties(delivery_mode=2, headers={"x-message-group-id": group, **headers})


def test_fifo_requires_durable(connect):
    ch = connect().channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare("transient-fifo", arguments=FIFO)
    assert info.value.reply_code == 406


def test_several_consumers_several_groups_keep_group_order(broker):
    """4 consumers (threads, own connections) x 6 groups x 40 messages, random ack delays.

    Checks: each group's messages arrive in publish order; never two messages
    of one group in flight at once; more than one group in flight at a time.
    """
    params = pika.URLParameters(broker.url)
    setup = pika.BlockingConnection(params)
    ch = setup.channel()
    ch.queue_declare("orders.fifo", durable=True, arguments=FIFO)
    groups = [f"g{i}" for i in range(6)]
    per_group = 40
    for n in range(per_group):
        for g in groups:
            ch.basic_publish("", "orders.fifo", f"{g}:{n}".encode(), group_props(g))
    setup.close()

    lock = threading.Lock()
    in_flight: dict[str, int] = {}
    max_parallel = 0
    violations: list[str] = []
    received: dict[str, list[int]] = {g: [] for g in groups}
    total = len(groups) * per_group
    done = threading.Event()

    def consume(seed: int) -> None:
        nonlocal max_parallel
        rng = random.Random(seed)
        conn = pika.BlockingConnection(params)
        chan = conn.channel()
        chan.basic_qos(prefetch_count=3)

        def on_message(c, method, props, body):
            nonlocal max_parallel
            group, n = body.decode().split(":")
            with lock:
                if in_flight.get(group):
                    violations.append(f"{group} delivered while another is in flight")
                in_flight[group] = 1
                max_parallel = max(max_parallel, sum(in_flight.values()))
                received[group].append(int(n))
            conn.sleep(rng.random() * 0.004)
            with lock:
                in_flight[group] = 0
                if sum(len(v) for v in received.values()) >= total:
                    done.set()
            c.basic_ack(method.delivery_tag)

        chan.basic_consume("orders.fifo", on_message)
        deadline = time.monotonic() + 30
        while not done.is_set() and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
        conn.close()

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert not violations, violations[:3]
    for g in groups:
        assert received[g] == list(range(per_group)), g
    assert max_parallel > 1


def test_requeued_message_goes_out_again_before_the_rest_of_its_group(connect):
    conn = connect()
    ch = conn.channel()
    ch.queue_declare("rq.fifo", durable=True, arguments=FIFO)
    for n in range(3):
        ch.basic_publish("", "rq.fifo", b"a%d" % n, group_props("a"))
    ch.basic_publish("", "rq.fifo", b"b0", group_props("b"))
    m, _p, body = ch.basic_get("rq.fifo")
    assert body == b"a0"
    # group a is busy: the next get skips to group b
    m2, _p, body2 = ch.basic_get("rq.fifo")
    assert body2 == b"b0"
    assert ch.basic_get("rq.fifo")[0] is None  # a busy, b busy
    ch.basic_nack(m.delivery_tag, requeue=True)
    ch.basic_ack(m2.delivery_tag)
    assert [b for _, _, b in get_all(ch, "rq.fifo")] == [b"a0", b"a1", b"a2"]


def test_deduplication_id_and_content_based(connect):
    ch = connect().channel()
    ch.confirm_delivery()
    ch.queue_declare("dedup.fifo", durable=True, arguments=FIFO)
    for _ in range(3):
        ch.basic_publish("", "dedup.fifo", b"x", group_props("g", **{"x-deduplication-id": "id-1"}))
    ch.basic_publish("", "dedup.fifo", b"x", group_props("g", **{"x-deduplication-id": "id-2"}))
    assert len(get_all(ch, "dedup.fifo")) == 2
    # consumed ids are still remembered
    ch.basic_publish("", "dedup.fifo", b"x", group_props("g", **{"x-deduplication-id": "id-1"}))
    assert get_all(ch, "dedup.fifo") == []

    ch.queue_declare(
        "content.fifo",
        durable=True,
        arguments={**FIFO, "x-content-based-deduplication": True},
    )
    for body in (b"same", b"same", b"other"):
        ch.basic_publish("", "content.fifo", body, group_props("g"))
    assert [b for _, _, b in get_all(ch, "content.fifo")] == [b"same", b"other"]


def test_deduplication_survives_restart(broker_process):
    broker_process.start()
    conn = pika.BlockingConnection(broker_process.params)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("restart.fifo", durable=True, arguments=FIFO)
    ch.basic_publish("", "restart.fifo", b"1", group_props("g", **{"x-deduplication-id": "A"}))
    ch.basic_publish("", "restart.fifo", b"2", group_props("g", **{"x-deduplication-id": "B"}))
    assert ch.basic_get("restart.fifo", auto_ack=True)[2] == b"1"  # consumed before the restart
    conn.close()
    broker_process.stop()
    broker_process.start()
    conn = pika.BlockingConnection(broker_process.params)
    ch = conn.channel()
    ch.confirm_delivery()
    for body, dedup in ((b"1 again", "A"), (b"2 again", "B"), (b"3", "C")):
        ch.basic_publish(  # every one is confirmed (acked), duplicates included
            "", "restart.fifo", body, group_props("g", **{"x-deduplication-id": dedup})
        )
    assert [b for _, _, b in get_all(ch, "restart.fifo", expect=2)] == [b"2", b"3"]
    conn.close()


def test_fifo_group_order_survives_restart(broker_process):
    broker_process.start()
    conn = pika.BlockingConnection(broker_process.params)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("r2.fifo", durable=True, arguments=FIFO)
    for n in range(5):
        for g in "ab":
            ch.basic_publish(
                "", "r2.fifo", f"{g}{n}".encode(), persistent(headers={"x-message-group-id": g})
            )
    conn.close()
    broker_process.stop()
    broker_process.start()
    conn = pika.BlockingConnection(broker_process.params)
    ch = conn.channel()
    got = [b.decode() for _, _, b in get_all(ch, "r2.fifo", expect=10)]
    assert [x for x in got if x[0] == "a"] == [f"a{n}" for n in range(5)]
    assert [x for x in got if x[0] == "b"] == [f"b{n}" for n in range(5)]
    conn.close()
