"""Priorities, consumer priorities, single active consumer and the consumer timeout, over pika."""

from __future__ import annotations

import pika
import pytest

from tests.helpers import Inbox, make_config, pump_until
from tests.queues.helpers import get_all, persistent


def test_max_priority_delivers_highest_first(connect):
    ch = connect().channel()
    ch.queue_declare("prio", arguments={"x-max-priority": 5})
    for body, priority in ((b"low", 1), (b"none", None), (b"high", 5), (b"over", 200), (b"mid", 3)):
        ch.basic_publish("", "prio", body, pika.BasicProperties(priority=priority))
    # priority above the maximum counts as the maximum; seq order within a level
    assert [b for _, _, b in get_all(ch, "prio")] == [b"high", b"over", b"mid", b"low", b"none"]


def test_priority_requeue_keeps_order(connect):
    conn = connect()
    ch = conn.channel()
    ch.queue_declare("prio2", arguments={"x-max-priority": 2})
    for i, p in enumerate((0, 2, 2, 1)):
        ch.basic_publish("", "prio2", b"%d" % i, pika.BasicProperties(priority=p))
    ch.basic_get("prio2")
    m2 = ch.basic_get("prio2")[0]
    ch.basic_nack(m2.delivery_tag, multiple=True, requeue=True)
    assert [b for _, _, b in get_all(ch, "prio2")] == [b"1", b"2", b"3", b"0"]


def test_invalid_max_priority_is_406(connect):
    ch = connect().channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare("bad", arguments={"x-max-priority": 256})
    assert info.value.reply_code == 406
    assert "x-max-priority" in info.value.reply_text


def test_priority_queue_survives_restart(broker_process):
    broker_process.start()
    conn = pika.BlockingConnection(broker_process.params)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("pq", durable=True, arguments={"x-max-priority": 9})
    for i, p in enumerate((1, 9, 4)):
        ch.basic_publish("", "pq", b"%d" % i, persistent(priority=p))
    conn.close()
    broker_process.stop()
    broker_process.start()
    conn = pika.BlockingConnection(broker_process.params)
    ch = conn.channel()
    assert [b for _, _, b in get_all(ch, "pq", expect=3)] == [b"1", b"2", b"0"]
    conn.close()


def test_consumer_priority_prefers_higher_while_it_has_credit(connect):
    conn = connect()
    ch = conn.channel()
    ch.queue_declare("cp")
    ch.basic_qos(prefetch_count=2)
    high, low = Inbox(conn), Inbox(conn)
    ch.basic_consume("cp", low, arguments={"x-priority": 1})
    ch.basic_consume("cp", high, arguments={"x-priority": 10})
    for i in range(5):
        ch.basic_publish("", "cp", b"%d" % i)
    assert pump_until(conn, lambda: len(high.messages) + len(low.messages) == 4)
    assert high.bodies == [b"0", b"1"]  # high first, up to its prefetch
    assert low.bodies == [b"2", b"3"]  # then the lower priority gets the overflow
    ch.basic_ack(high.messages[0][0].delivery_tag)
    assert pump_until(conn, lambda: len(high.messages) == 3)
    assert high.bodies[-1] == b"4"


def test_single_active_consumer_fails_over(connect):
    conn = connect()
    ch1 = conn.channel()
    ch1.queue_declare("sac", arguments={"x-single-active-consumer": True})
    ch2 = conn.channel()
    first, second = Inbox(conn), Inbox(conn)
    ch1.basic_consume("sac", first, auto_ack=True)
    ch2.basic_consume("sac", second, auto_ack=True)
    for i in range(4):
        ch1.basic_publish("", "sac", b"%d" % i)
    assert first.wait(4)
    assert second.messages == []
    ch1.close()  # the active consumer goes: the next one takes over
    ch2.basic_publish("", "sac", b"after")
    assert second.wait(1)
    assert second.bodies == [b"after"]


def test_single_active_consumer_unacked_go_to_next(connect):
    conn = connect()
    ch1, ch2 = conn.channel(), conn.channel()
    ch1.queue_declare("sac2", arguments={"x-single-active-consumer": True})
    first, second = Inbox(conn), Inbox(conn)
    ch1.basic_consume("sac2", first)
    ch2.basic_consume("sac2", second)
    for i in range(3):
        ch1.basic_publish("", "sac2", b"%d" % i)
    assert first.wait(3)
    ch1.close()
    assert second.wait(3)
    assert second.bodies == [b"0", b"1", b"2"]
    assert all(m.redelivered for m, _, _ in second.messages)


def test_consumer_timeout_requeues_for_another_consumer(connect):
    conn = connect()
    ch1, ch2 = conn.channel(), conn.channel()
    ch1.queue_declare("vis", arguments={"x-consumer-timeout": 200})
    slow, fast = Inbox(conn), Inbox(conn)
    ch1.basic_qos(prefetch_count=1)
    ch1.basic_consume("vis", slow)
    ch1.basic_publish("", "vis", b"job")
    assert slow.wait(1)
    ch2.basic_consume("vis", fast)
    # the slow consumer never acks: after 200 ms the job goes to the other consumer
    assert pump_until(conn, lambda: len(fast.messages) + len(slow.messages) >= 2, 3)
    redelivered = (fast.messages or slow.messages[1:])[0]
    assert redelivered[2] == b"job"
    assert redelivered[0].redelivered
    # a late ack of the timed-out tag is ignored: the channel stays open
    ch1.basic_ack(slow.messages[0][0].delivery_tag)
    conn.process_data_events(time_limit=0.1)
    assert ch1.is_open


def test_broker_wide_consumer_timeout_rabbitmq_mode_closes_channel(start_broker, tmp_path):
    running = start_broker(
        make_config(tmp_path, consumer_timeout=150, consumer_timeout_action="close")
    )
    conn = pika.BlockingConnection(pika.URLParameters(running.url))
    ch = conn.channel()
    ch.queue_declare("rmq")
    ch.basic_publish("", "rmq", b"x")
    inbox = Inbox(conn)
    ch.basic_consume("rmq", inbox)
    assert inbox.wait(1)
    assert pump_until(conn, lambda: not ch.is_open, 3)
    ch2 = conn.channel()
    assert ch2.queue_declare("rmq", passive=True).method.message_count == 1
    conn.close()
