"""Queue argument validation and the compatibility arguments RabbitMQ clients send (pika)."""

from __future__ import annotations

import pika
import pytest


@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        ({"x-message-ttl": -1}, "invalid arg 'x-message-ttl' for queue 'q' in vhost '/'"),
        ({"x-message-ttl": "10"}, "{unacceptable_type,longstr}"),
        ({"x-expires": 0}, "x-expires"),
        ({"x-max-length": -5}, "{value_negative,-5}"),
        ({"x-overflow": "drop-tail"}, "x-overflow"),
        ({"x-max-priority": 0}, "x-max-priority"),
        ({"x-single-active-consumer": 1}, "x-single-active-consumer"),
        ({"x-queue-type": "stream"}, "x-queue-type"),
        ({"x-delivery-limit": -1}, "x-delivery-limit"),
    ],
)
def test_bad_values_are_406(connect, arguments, needle):
    ch = connect().channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare("q", arguments=arguments)
    assert info.value.reply_code == 406
    assert needle in info.value.reply_text


def test_quorum_must_be_durable(connect):
    ch = connect().channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare("qq", arguments={"x-queue-type": "quorum"})
    assert info.value.reply_code == 406
    assert "non-durable" in info.value.reply_text


def test_compatibility_arguments_are_accepted(connect):
    ch = connect().channel()
    ch.queue_declare("classic", durable=True, arguments={"x-queue-type": "classic"})
    ch.queue_declare("lazy", durable=True, arguments={"x-queue-mode": "lazy"})
    ch.queue_declare("quorum", durable=True, arguments={"x-queue-type": "quorum"})
    ch.queue_declare("unknown", arguments={"x-some-future-thing": 1, "x-queue-version": 2})
    ch.basic_publish("", "lazy", b"x")
    assert ch.basic_get("lazy", auto_ack=True)[2] == b"x"


def test_redeclare_with_different_feature_argument_is_406(connect):
    ch = connect().channel()
    ch.queue_declare("eq", arguments={"x-message-ttl": 100})
    ch.queue_declare("eq", arguments={"x-message-ttl": 100})
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare("eq", arguments={"x-message-ttl": 200})
    assert info.value.reply_code == 406
    assert "inequivalent arg 'x-message-ttl'" in info.value.reply_text


def test_bad_consumer_priority_is_406(connect):
    ch = connect().channel()
    ch.queue_declare("cprio")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.basic_consume("cprio", lambda *a: None, arguments={"x-priority": "high"})
    assert info.value.reply_code == 406
