"""Expiry (x-message-ttl, expiration, x-expires) and dead-lettering with x-death, over pika.

Tests about *when* something expires run the broker on a manual clock
(`clocked`, `advance`): they state the instant and never sleep. The others
wait on conditions with generous bounds.
"""

from __future__ import annotations

import datetime
import time

import pika
import pytest

from tests.queues.helpers import advance, get_all, persistent, settled_count, wait_get

pytestmark = pytest.mark.timeout(120)


def declare_dlx(ch, dlq: str = "dlq", exchange: str = "dlx") -> None:
    ch.exchange_declare(exchange, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, exchange)


def test_queue_ttl_dead_letters_with_x_death(connect):
    ch = connect().channel()
    declare_dlx(ch)
    ch.queue_declare("work", arguments={"x-message-ttl": 100, "x-dead-letter-exchange": "dlx"})
    ch.basic_publish("", "work", b"m1", pika.BasicProperties(headers={"k": "v"}))
    _method, props, body = wait_get(ch, "dlq")
    assert body == b"m1"
    headers = props.headers
    assert headers["k"] == "v"
    (death,) = headers["x-death"]
    assert death["count"] == 1
    assert death["reason"] == "expired"
    assert death["queue"] == "work"
    assert death["exchange"] == ""
    assert death["routing-keys"] == ["work"]
    assert isinstance(death["time"], datetime.datetime)
    assert headers["x-first-death-reason"] == "expired"
    assert headers["x-first-death-queue"] == "work"
    assert headers["x-first-death-exchange"] == ""
    assert headers["x-last-death-reason"] == "expired"
    assert ch.queue_declare("work", passive=True).method.message_count == 0


def test_expired_message_is_never_delivered(clocked, clocked_channel):
    ch = clocked_channel
    ch.queue_declare("slow", arguments={"x-message-ttl": 50})
    ch.basic_publish("", "slow", b"old")
    ch.queue_declare("slow", passive=True)  # a round trip: "old" is queued
    advance(clocked, 0.049)
    assert settled_count(clocked, "slow") == 1
    advance(clocked, 0.003)
    ch.basic_publish("", "slow", b"new")
    assert [b for _, _, b in get_all(ch, "slow")] == [b"new"]


def test_per_message_expiration_and_original_expiration(connect):
    ch = connect().channel()
    declare_dlx(ch)
    ch.queue_declare("pm", arguments={"x-dead-letter-exchange": "dlx"})
    ch.basic_publish("", "pm", b"short", pika.BasicProperties(expiration="80"))
    ch.basic_publish("", "pm", b"forever")
    # "short" is at the head: it expires although nobody consumes
    _m, props, body = wait_get(ch, "dlq")
    assert body == b"short"
    assert props.expiration is None
    assert props.headers["x-death"][0]["original-expiration"] == "80"
    assert [b for _, _, b in get_all(ch, "pm")] == [b"forever"]


def test_lower_of_queue_and_message_ttl_wins(clocked, clocked_channel):
    ch = clocked_channel
    ch.queue_declare("both", arguments={"x-message-ttl": 60_000})
    ch.basic_publish("", "both", b"x", pika.BasicProperties(expiration="50"))
    ch.basic_publish("", "both", b"y", pika.BasicProperties(expiration="90000"))
    ch.queue_declare("both", passive=True)  # a round trip: both are queued
    advance(clocked, 0.049)
    assert settled_count(clocked, "both") == 2
    advance(clocked, 0.003)
    assert settled_count(clocked, "both") == 1
    advance(clocked, 59.947)
    assert settled_count(clocked, "both") == 1  # the queue's 60 s beat y's 90 s
    advance(clocked, 0.003)
    assert get_all(ch, "both") == []


def test_rejected_message_is_dead_lettered_with_routing_key(connect):
    conn = connect()
    ch = conn.channel()
    ch.exchange_declare("dlx-direct", "direct")
    ch.queue_declare("failed")
    ch.queue_bind("failed", "dlx-direct", "failures")
    ch.queue_declare(
        "jobs",
        arguments={"x-dead-letter-exchange": "dlx-direct", "x-dead-letter-routing-key": "failures"},
    )
    ch.basic_publish("", "jobs", b"job")
    method, _props, _body = wait_get_manual(ch, "jobs")
    ch.basic_nack(method.delivery_tag, requeue=False)
    _m, props, body = wait_get(ch, "failed")
    assert body == b"job"
    death = props.headers["x-death"][0]
    assert death["reason"] == "rejected"
    assert death["routing-keys"] == ["jobs"]
    assert _m.routing_key == "failures"
    assert _m.exchange == "dlx-direct"


def wait_get_manual(ch, queue):
    deadline = time.monotonic() + 30  # a generous bound, not a speed
    while time.monotonic() < deadline:
        method, props, body = ch.basic_get(queue)
        if method is not None:
            return method, props, body
        time.sleep(0.02)
    raise AssertionError("nothing to get")


def test_x_death_count_grows_and_entry_moves_to_front(connect):
    """A retry loop: work -(reject)-> wait (TTL) -(expire)-> work, twice."""
    ch = connect().channel()
    ch.queue_declare(
        "w", arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "r"}
    )
    ch.queue_declare(
        "r",
        arguments={
            "x-message-ttl": 30,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "w",
        },
    )
    ch.basic_publish("", "w", b"retry-me")
    for _round in range(2):
        method, _p, _b = wait_get_manual(ch, "w")
        ch.basic_reject(method.delivery_tag, requeue=False)
    method, props, _b = wait_get_manual(ch, "w")
    deaths = props.headers["x-death"]
    assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == [
        ("r", "expired", 2),
        ("w", "rejected", 2),
    ]
    assert props.headers["x-first-death-queue"] == "w"
    assert props.headers["x-first-death-reason"] == "rejected"
    assert props.headers["x-last-death-queue"] == "r"


def test_expiry_cycle_without_rejection_is_dropped(clocked, clocked_channel):
    ch = clocked_channel
    ch.queue_declare(
        "loop",
        arguments={
            "x-message-ttl": 20,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "loop",
        },
    )
    ch.basic_publish("", "loop", b"spin")
    ch.queue_declare("loop", passive=True)  # a round trip: "spin" is queued
    advance(clocked, 0.019)
    assert settled_count(clocked, "loop") == 1
    advance(clocked, 0.003)  # expired, dead-lettered to itself: a cycle, so dropped
    assert settled_count(clocked, "loop") == 0
    advance(clocked, 1.0)
    assert ch.queue_declare("loop", passive=True).method.message_count == 0


def test_missing_dead_letter_exchange_drops(clocked, clocked_channel):
    ch = clocked_channel
    ch.queue_declare("nodlx", arguments={"x-message-ttl": 10, "x-dead-letter-exchange": "absent"})
    ch.basic_publish("", "nodlx", b"gone")
    ch.queue_declare("nodlx", passive=True)  # a round trip: "gone" is queued
    advance(clocked, 0.012)
    assert settled_count(clocked, "nodlx") == 0
    assert get_all(ch, "nodlx") == []


def test_queue_expires_when_unused(clocked, clocked_channel):
    ch = clocked_channel
    ch.queue_declare("ephemeral", arguments={"x-expires": 150})
    advance(clocked, 0.149)
    assert clocked.queue_exists("ephemeral")
    advance(clocked, 0.002)
    assert not clocked.queue_exists("ephemeral")


def test_queue_with_consumer_does_not_expire(clocked, clocked_channel):
    ch = clocked_channel
    ch.queue_declare("kept", arguments={"x-expires": 100})
    ch.basic_consume("kept", lambda *a: None)
    ch.queue_declare("kept", passive=True)  # a round trip: the consumer is there
    advance(clocked, 10.0)  # less than pika's heartbeat: the connection stays quiet
    assert clocked.queue_exists("kept")


def test_ttl_and_dead_letter_survive_restart(broker_process):
    broker_process.start()
    conn = pika.BlockingConnection(broker_process.params)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("dlq-r", durable=True)
    ch.queue_declare(
        "ttl-r",
        durable=True,
        arguments={
            "x-message-ttl": 1500,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "dlq-r",
        },
    )
    ch.basic_publish("", "ttl-r", b"persisted", persistent())
    conn.close()
    assert broker_process.stop() == 0
    broker_process.start()
    conn = pika.BlockingConnection(broker_process.params)
    ch = conn.channel()
    # still there after the restart, then dead-lettered (a generous bound: restarts vary)
    _m, props, body = wait_get(ch, "dlq-r", timeout=60)
    assert body == b"persisted"
    assert props.headers["x-death"][0]["reason"] == "expired"
    assert ch.queue_declare("ttl-r", passive=True).method.message_count == 0
    conn.close()
