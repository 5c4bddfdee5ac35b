"""Crashes the fuzz harness found, each kept as a test with a real client.

AMQP names outside pamqp's name pattern (`^[a-zA-Z0-9-_.:@#,/+ ]*$`): AMQP
allows any shortstr and RabbitMQ any UTF-8 up to 255 bytes, so Moorage
declares such queues and exchanges; building the `queue.declare-ok`,
`basic.return` and `basic.get-ok` that name them raised pamqp's ValueError
inside `data_received`, which killed the connection without a close. And
an error text naming such a name, cut to 255 characters instead of 255
UTF-8 octets, could not be encoded as `reply-text`: same end.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import pika
import pika.exceptions
import pytest

from tests.helpers import RunningBroker

ODD_QUEUE = "naïve queue ✓\t(fuzz)"
ODD_EXCHANGE = "exchange ✓ <fuzz>"


def test_amqp_names_outside_pamqp_pattern_are_answered(
    start_broker: Callable[..., RunningBroker],
) -> None:
    running = start_broker()
    connection = pika.BlockingConnection(pika.URLParameters(running.url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        declared = channel.queue_declare(ODD_QUEUE, auto_delete=True)
        assert declared.method.queue == ODD_QUEUE

        channel.exchange_declare(ODD_EXCHANGE, "direct", auto_delete=True)
        channel.queue_bind(ODD_QUEUE, ODD_EXCHANGE, "to-queue")
        returned: list[tuple[str, bytes]] = []
        channel.add_on_return_callback(
            lambda _ch, method, _props, body: returned.append((method.exchange, body))
        )
        # confirms on: pika raises UnroutableError once the return has come
        with contextlib.suppress(pika.exceptions.UnroutableError):
            channel.basic_publish(ODD_EXCHANGE, "nowhere", b"returned", mandatory=True)
        deadline = time.monotonic() + 10
        while not returned and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.1)
        assert returned == [(ODD_EXCHANGE, b"returned")]

        channel.basic_publish(ODD_EXCHANGE, "to-queue", b"routed")
        deadline = time.monotonic() + 10
        got = None
        while got is None and time.monotonic() < deadline:
            got, _props, body = channel.basic_get(ODD_QUEUE, auto_ack=True)
        assert got is not None
        assert (got.exchange, body) == (ODD_EXCHANGE, b"routed")
        assert connection.is_open
    finally:
        connection.close()


def test_amqp_error_text_over_255_octets_is_cut_not_fatal(
    start_broker: Callable[..., RunningBroker],
) -> None:
    running = start_broker()
    connection = pika.BlockingConnection(pika.URLParameters(running.url))
    try:
        channel = connection.channel()
        name = "é" * 120  # 240 octets: a valid name, but the error text is longer
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
            channel.queue_declare(name, passive=True)
        assert closed.value.reply_code == 404
        assert closed.value.reply_text.startswith("NOT_FOUND - no queue 'éé")
        assert len(closed.value.reply_text.encode()) <= 255
        assert connection.is_open
        assert connection.channel().queue_declare("", exclusive=True).method.queue
    finally:
        connection.close()
