"""Length limits (x-max-length, x-max-length-bytes, x-overflow) and delivery limits, over pika."""

from __future__ import annotations

import time

import pika
import pytest

from tests.queues.helpers import get_all, persistent, wait_get

pytestmark = pytest.mark.timeout(120)


def bodies(ch, queue):
    return [b for _, _, b in get_all(ch, queue)]


def test_max_length_drop_head_dead_letters_maxlen(connect):
    ch = connect().channel()
    ch.queue_declare("dropped")
    ch.queue_declare(
        "short",
        arguments={
            "x-max-length": 2,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "dropped",
        },
    )
    for i in range(5):
        ch.basic_publish("", "short", b"%d" % i)
    assert bodies(ch, "short") == [b"3", b"4"]
    got = get_all(ch, "dropped")
    assert [b for _, _, b in got] == [b"0", b"1", b"2"]
    assert {p.headers["x-death"][0]["reason"] for _, p, _ in got} == {"maxlen"}


def test_max_length_bytes(connect):
    ch = connect().channel()
    ch.queue_declare("bytes", arguments={"x-max-length-bytes": 10})
    for body in (b"aaaa", b"bbbb", b"cccc"):
        ch.basic_publish("", "bytes", body)
    assert bodies(ch, "bytes") == [b"bbbb", b"cccc"]


def test_reject_publish_nacks_the_publisher(connect):
    ch = connect().channel()
    ch.confirm_delivery()
    ch.queue_declare("full", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.basic_publish("", "full", b"first")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", "full", b"second")
    assert bodies(ch, "full") == [b"first"]
    ch.basic_publish("", "full", b"third")  # room again: acked
    assert bodies(ch, "full") == [b"third"]


def test_reject_publish_dlx_dead_letters_the_refused(connect):
    ch = connect().channel()
    ch.confirm_delivery()
    ch.queue_declare("overflowed")
    ch.queue_declare(
        "full2",
        arguments={
            "x-max-length": 1,
            "x-overflow": "reject-publish-dlx",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "overflowed",
        },
    )
    ch.basic_publish("", "full2", b"kept")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", "full2", b"refused")
    _m, props, body = wait_get(ch, "overflowed")
    assert body == b"refused"
    assert props.headers["x-death"][0]["reason"] == "maxlen"


def test_nacks_interleave_with_acks_in_order(connect):
    """Raw confirm stream: ack 1, nack 2, ack 3 for a queue of length 1 drained in between."""
    conn = connect()
    ch = conn.channel()
    ch.queue_declare("ordered", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    confirms = []
    ch.confirm_delivery()
    ch.basic_publish("", "ordered", b"1")
    try:
        ch.basic_publish("", "ordered", b"2")
    except pika.exceptions.NackError:
        confirms.append("nack")
    ch.basic_get("ordered", auto_ack=True)
    ch.basic_publish("", "ordered", b"3")
    assert confirms == ["nack"]
    assert bodies(ch, "ordered") == [b"3"]


def test_delivery_limit_dead_letters_after_n_deliveries(connect):
    conn = connect()
    ch = conn.channel()
    ch.queue_declare("poison-dlq")
    ch.queue_declare(
        "poison",
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": 3,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "poison-dlq",
        },
    )
    ch.basic_publish("", "poison", b"bad", persistent())
    deliveries = 0
    for _ in range(3):
        method, _p, _b = wait_get_manual(ch, "poison")
        deliveries += 1
        ch.basic_nack(method.delivery_tag, requeue=True)
    _m, props, body = wait_get(ch, "poison-dlq")
    assert deliveries == 3
    assert body == b"bad"
    assert props.headers["x-death"][0]["reason"] == "delivery_limit"
    assert get_all(ch, "poison") == []


def wait_get_manual(ch, queue):
    deadline = time.monotonic() + 30  # a generous bound, not a speed
    while time.monotonic() < deadline:
        method, props, body = ch.basic_get(queue)
        if method is not None:
            return method, props, body
        time.sleep(0.02)
    raise AssertionError("nothing to get")


def test_quorum_queue_defaults_to_delivery_limit_20(connect, broker):
    ch = connect().channel()
    ch.queue_declare("q4", durable=True, arguments={"x-queue-type": "quorum"})
    limit = broker.call(lambda: broker.core.vhosts["/"].queues["q4"].options.delivery_limit)
    assert limit == 20


def test_channel_close_counts_as_a_delivery(connect):
    ch = connect().channel()
    ch.queue_declare("closing-dlq")
    ch.queue_declare(
        "closing",
        arguments={
            "x-delivery-limit": 1,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "closing-dlq",
        },
    )
    ch.basic_publish("", "closing", b"x")
    other = connect().channel()
    wait_get_manual(other, "closing")
    other.close()  # returned unacked after 1 delivery: limit reached
    assert wait_get(ch, "closing-dlq")[2] == b"x"


def test_redrive_moves_dead_letters_back(connect, broker):
    ch = connect().channel()
    ch.queue_declare("src-dlq")
    ch.queue_declare(
        "src",
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "src-dlq"},
    )
    for i in range(3):
        ch.basic_publish("", "src", b"%d" % i)
    for _ in range(3):
        method, _p, _b = wait_get_manual(ch, "src")
        ch.basic_reject(method.delivery_tag, requeue=False)
    assert broker.wait_until(lambda: len(broker.core.vhosts["/"].queues["src-dlq"].ready) == 3)
    moved = broker.call(lambda: broker.core.vhosts["/"].redrive("src-dlq"))
    assert moved == 3
    got = get_all(ch, "src")
    assert [b for _, _, b in got] == [b"0", b"1", b"2"]
    assert got[0][1].headers["x-death"][0]["queue"] == "src"


def test_length_limit_survives_restart(broker_process):
    broker_process.start()
    conn = pika.BlockingConnection(broker_process.params)
    ch = conn.channel()
    ch.confirm_delivery()
    args = {"x-max-length": 2, "x-overflow": "reject-publish"}
    ch.queue_declare("lim", durable=True, arguments=args)
    ch.basic_publish("", "lim", b"a", persistent())
    ch.basic_publish("", "lim", b"b", persistent())
    conn.close()
    broker_process.stop()
    broker_process.start()
    conn = pika.BlockingConnection(broker_process.params)
    ch = conn.channel()
    ch.confirm_delivery()
    assert ch.queue_declare("lim", durable=True, arguments=args).method.message_count == 2
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", "lim", b"c", persistent())
    conn.close()
