"""A clean restart keeps durable topology and persistent messages, and drops the rest."""

from __future__ import annotations

import pika
import pika.exceptions
import pytest

from tests.durability.broker_process import BrokerProcess


def test_durable_state_survives_clean_restart(broker_process: BrokerProcess):
    broker_process.start()
    connection = pika.BlockingConnection(broker_process.params)
    ch = connection.channel()
    ch.confirm_delivery()
    ch.exchange_declare("dx", "topic", durable=True)
    ch.exchange_declare("tx", "fanout", durable=False)
    ch.queue_declare("dq", durable=True, arguments={"x-custom": "kept"})
    ch.queue_declare("tq", durable=False)
    ch.queue_bind("dq", "dx", "a.*")
    for i in range(10):
        ch.basic_publish("dx", "a.b", b"p%d" % i, pika.BasicProperties(delivery_mode=2))
    for i in range(10):
        ch.basic_publish("dx", "a.b", b"t%d" % i, pika.BasicProperties(delivery_mode=1))
    # deliver three without acking: they must come back flagged redelivered
    ch.basic_qos(prefetch_count=3)
    got = []
    for _method, _p, body in ch.consume("dq", inactivity_timeout=3):
        got.append(body)
        if len(got) == 3:
            break
    assert got == [b"p0", b"p1", b"p2"]
    connection.close()
    assert broker_process.stop() == 0

    broker_process.start()
    connection = pika.BlockingConnection(broker_process.params)
    ch = connection.channel()
    assert ch.queue_declare("dq", durable=True, passive=True).method.message_count == 10
    ch.exchange_declare("dx", "topic", durable=True, passive=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare("tq", passive=True)
    assert e.value.reply_code == 404
    ch = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.exchange_declare("tx", passive=True)
    assert e.value.reply_code == 404
    ch = connection.channel()
    bodies = []
    for method, _p, body in ch.consume("dq", inactivity_timeout=3):
        if method is None:
            break
        bodies.append((body, method.redelivered))
        ch.basic_ack(method.delivery_tag)
        if len(bodies) == 10:
            break
    assert [b for b, _ in bodies] == [b"p%d" % i for i in range(10)]
    assert [r for _, r in bodies] == [True] * 3 + [False] * 7
    ch.cancel()
    # the binding survived too: a new publish is routed
    ch.basic_publish("dx", "a.z", b"after", pika.BasicProperties(delivery_mode=2))
    method, _p, body = ch.basic_get("dq", auto_ack=True)
    assert body == b"after"
    connection.close()
    assert broker_process.stop() == 0
