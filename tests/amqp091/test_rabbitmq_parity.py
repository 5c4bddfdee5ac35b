"""Answers that must be RabbitMQ 3.10's, checked with the clients migrating users bring.

Each case is a row of issue 13's table: a client call where Moorage answered
differently from RabbitMQ 3.10.8 (mostly in clean-up code, so a program that
passes on RabbitMQ failed on Moorage). The asyncio rows use aiormq and
aio-pika, the frame-size row amqpstorm, which sends body frames of exactly
`frame_max` payload octets. The recorded transcripts in `tests/parity/`
cover the same ground method by method with raw frames.
"""

from __future__ import annotations

import asyncio

import aio_pika
import aiormq
import amqpstorm
import pytest
from aiormq import exceptions as aiormq_errors

from tests.helpers import RunningBroker


async def test_deleting_a_missing_queue_is_delete_ok(broker: RunningBroker) -> None:
    connection = await aiormq.connect(broker.url)
    try:
        channel = await connection.channel()
        reply = await channel.queue_delete("parity-never-declared")
        assert reply.message_count == 0
        assert not channel.is_closed  # and the channel is still usable
        await channel.queue_declare("parity-still-works", auto_delete=True)
    finally:
        await connection.close()


async def _ignore(_message: aio_pika.abc.AbstractIncomingMessage) -> None:
    await asyncio.sleep(0)


async def test_deleting_a_queue_auto_deleted_by_its_last_cancel_is_delete_ok(
    broker: RunningBroker,
) -> None:
    connection = await aio_pika.connect(broker.url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("parity-auto", auto_delete=True)
        tag = await queue.consume(_ignore)
        await queue.cancel(tag)  # the queue is auto-deleted with its last consumer
        await queue.delete()  # the usual clean-up: must not fail
        assert not channel.is_closed


async def test_deleting_a_missing_exchange_is_delete_ok(broker: RunningBroker) -> None:
    connection = await aiormq.connect(broker.url)
    try:
        channel = await connection.channel()
        await channel.exchange_delete("parity-no-such-exchange")
        assert not channel.is_closed
    finally:
        await connection.close()


async def test_unbinding_a_missing_queue_is_unbind_ok(broker: RunningBroker) -> None:
    connection = await aiormq.connect(broker.url)
    try:
        channel = await connection.channel()
        await channel.queue_unbind("parity-no-such-queue", "amq.direct", "k")
        await channel.queue_unbind("parity-no-such-queue", "parity-no-such-exchange", "k")
        assert not channel.is_closed
    finally:
        await connection.close()


async def test_passive_declare_of_the_default_exchange_is_403(broker: RunningBroker) -> None:
    connection = await aiormq.connect(broker.url)
    try:
        channel = await connection.channel()
        with pytest.raises(aiormq_errors.ChannelAccessRefused) as caught:
            await channel.exchange_declare("", passive=True)
        # aiormq raises the reply text in the class its reply code maps to
        assert caught.value.args[0] == (
            "ACCESS_REFUSED - operation not permitted on the default exchange"
        )
        assert not connection.is_closed  # a channel error, not a connection one
    finally:
        await connection.close()


async def test_binding_when_queue_and_exchange_are_missing_names_the_exchange(
    broker: RunningBroker,
) -> None:
    connection = await aiormq.connect(broker.url)
    try:
        channel = await connection.channel()
        with pytest.raises(aiormq_errors.ChannelNotFoundEntity) as caught:
            await channel.queue_bind("parity-no-queue", "parity-no-exchange", "k")
        assert caught.value.args[0] == ("NOT_FOUND - no exchange 'parity-no-exchange' in vhost '/'")
    finally:
        await connection.close()


async def test_redeclaring_own_exclusive_queue_without_exclusive_is_405(
    broker: RunningBroker,
) -> None:
    connection = await aiormq.connect(broker.url)
    try:
        first = await connection.channel()
        await first.queue_declare("parity-mine", exclusive=True)
        second = await connection.channel()
        with pytest.raises(aiormq_errors.ChannelLockedResource) as caught:
            await second.queue_declare("parity-mine")
        assert caught.value.args[0].startswith("RESOURCE_LOCKED - cannot obtain exclusive")
        assert not connection.is_closed
        again = await first.queue_declare("parity-mine", exclusive=True)  # the owner's channel
        assert again.queue == "parity-mine"
    finally:
        await connection.close()


def test_body_frames_of_exactly_frame_max_payload_are_accepted(broker: RunningBroker) -> None:
    connection = amqpstorm.Connection("127.0.0.1", "guest", "guest", port=broker.port)
    try:
        frame_max = connection.max_frame_size
        channel = connection.channel()
        channel.queue.declare("parity-big", auto_delete=True)
        channel.confirm_deliveries()
        body = bytes(range(256)) * (3 * frame_max // 256 + 1)  # several full body frames
        assert channel.basic.publish(body, "parity-big")
        message = channel.basic.get("parity-big", no_ack=True, to_dict=False)
        assert message is not None
        assert bytes(message.body) == body
        channel.close()
    finally:
        connection.close()
