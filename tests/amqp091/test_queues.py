"""Queue declaration, deletion, purge and their errors, through pika.

After each channel error the test checks that the connection still works on
a new channel: a soft error must close only the channel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pika
import pytest
from pamqp import body as pamqp_body
from pamqp import commands, frame
from pamqp import header as pamqp_header
from pika.exceptions import ChannelClosedByBroker

from tests.helpers import Inbox, RawClient, RunningBroker, pump_until

Connect = Callable[..., pika.BlockingConnection]


def assert_usable(connection: pika.BlockingConnection) -> None:
    """A new channel on `connection` can still declare, publish and get."""
    channel = connection.channel()
    channel.confirm_delivery()
    name = channel.queue_declare("", exclusive=True).method.queue
    channel.basic_publish("", name, b"still works")
    method, _props, body = channel.basic_get(name, auto_ack=True)
    assert method is not None
    assert body == b"still works"
    channel.close()


def test_declare_ok_reports_counts(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare("counted")
    for i in range(3):
        channel.basic_publish("", "counted", str(i).encode())
    ok = channel.queue_declare("counted", passive=True)
    assert ok.method.queue == "counted"
    assert ok.method.message_count == 3
    assert ok.method.consumer_count == 0
    channel.basic_consume("counted", Inbox(connection), auto_ack=False)
    assert channel.queue_declare("counted", passive=True).method.consumer_count == 1


def test_durable_flag_is_kept(connect: Connect, broker: RunningBroker) -> None:
    channel = connect().channel()
    channel.queue_declare("durable-q", durable=True)
    channel.queue_declare("transient-q", durable=False)
    assert broker.call(lambda: broker.core.vhosts["/"].queues["durable-q"].durable) is True
    assert broker.call(lambda: broker.core.vhosts["/"].queues["transient-q"].durable) is False
    # redeclaring with the same flag is fine
    channel.queue_declare("durable-q", durable=True)


def test_server_named_queue(connect: Connect, broker: RunningBroker) -> None:
    channel = connect().channel()
    first = channel.queue_declare("").method.queue
    second = channel.queue_declare("").method.queue
    assert first.startswith("amq.gen-")
    assert second.startswith("amq.gen-")
    assert first != second
    assert broker.queue_exists(first)


def test_reserved_amq_prefix_is_refused(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.queue_declare("amq.mine")
    assert info.value.reply_code == 403
    assert_usable(connection)


def test_exclusive_queue_locked_for_other_connections(connect: Connect) -> None:
    owner = connect()
    owner_channel = owner.channel()
    owner_channel.queue_declare("mine", exclusive=True)
    other = connect()
    for attempt in (
        lambda ch: ch.queue_declare("mine", exclusive=True),
        lambda ch: ch.queue_declare("mine", passive=True),
        lambda ch: ch.basic_consume("mine", lambda *a: None),
        lambda ch: ch.basic_get("mine"),
        lambda ch: ch.queue_purge("mine"),
        lambda ch: ch.queue_delete("mine"),
        lambda ch: ch.queue_bind("mine", "amq.fanout"),
    ):
        with pytest.raises(ChannelClosedByBroker) as info:
            attempt(other.channel())
        assert info.value.reply_code == 405
        assert "RESOURCE_LOCKED" in info.value.reply_text
    assert_usable(other)
    # the owner is unaffected
    owner_channel.queue_declare("mine", exclusive=True)
    assert_usable(owner)


def test_exclusive_queue_deleted_with_its_connection(
    connect: Connect, broker: RunningBroker
) -> None:
    owner = connect()
    owner.channel().queue_declare("ex-gone", exclusive=True)
    assert broker.queue_exists("ex-gone")
    owner.close()
    assert broker.wait_until(lambda: "ex-gone" not in broker.core.vhosts["/"].queues)
    # now anyone may declare it
    connect().channel().queue_declare("ex-gone", exclusive=True)


def test_auto_delete_queue_goes_with_last_consumer(connect: Connect, broker: RunningBroker) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("ad", auto_delete=True)
    assert broker.queue_exists("ad")  # not deleted before it ever had a consumer
    tag1 = channel.basic_consume("ad", lambda *a: None)
    tag2 = channel.basic_consume("ad", lambda *a: None)
    channel.basic_cancel(tag1)
    assert broker.queue_exists("ad")
    channel.basic_cancel(tag2)
    assert not broker.queue_exists("ad")


def test_auto_delete_queue_goes_when_consumer_channel_closes(
    connect: Connect, broker: RunningBroker
) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("ad2", auto_delete=True)
    channel.basic_consume("ad2", lambda *a: None)
    channel.close()
    assert broker.wait_until(lambda: "ad2" not in broker.core.vhosts["/"].queues)


def test_passive_declare_of_missing_queue_is_404(connect: Connect) -> None:
    connection = connect()
    with pytest.raises(ChannelClosedByBroker) as info:
        connection.channel().queue_declare("missing", passive=True)
    assert info.value.reply_code == 404
    assert "NOT_FOUND" in info.value.reply_text
    assert_usable(connection)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"durable": True}, {"durable": False}),
        ({"durable": False}, {"durable": True}),
        ({"auto_delete": False}, {"auto_delete": True}),
        ({"arguments": {"x-message-ttl": 1000}}, {"arguments": {"x-message-ttl": 2000}}),
        ({"arguments": {"x-message-ttl": 1000}}, {}),
        ({}, {"arguments": {"x-max-length": 10}}),
    ],
    ids=["durable-to-transient", "transient-to-durable", "auto-delete", "ttl", "ttl-gone", "max"],
)
def test_inequivalent_redeclare_is_406(
    connect: Connect, first: dict[str, Any], second: dict[str, Any]
) -> None:
    connection = connect()
    connection.channel().queue_declare("eq", **first)
    with pytest.raises(ChannelClosedByBroker) as info:
        connection.channel().queue_declare("eq", **second)
    assert info.value.reply_code == 406
    assert "PRECONDITION_FAILED" in info.value.reply_text
    assert_usable(connection)
    # the original declaration still holds
    connection.channel().queue_declare("eq", **first)


def test_redeclare_with_other_unchecked_argument_is_fine(connect: Connect) -> None:
    channel = connect().channel()
    channel.queue_declare("lax", arguments={"x-custom": 1})
    channel.queue_declare("lax", arguments={"x-custom": 2})


def test_purge_returns_count(connect: Connect, broker: RunningBroker) -> None:
    channel = connect().channel()
    channel.confirm_delivery()
    channel.queue_declare("purged")
    for i in range(5):
        channel.basic_publish("", "purged", str(i).encode())
    assert channel.queue_purge("purged").method.message_count == 5
    assert broker.ready_count("purged") == 0
    assert channel.queue_purge("purged").method.message_count == 0


def test_purge_missing_queue_is_404(connect: Connect) -> None:
    connection = connect()
    with pytest.raises(ChannelClosedByBroker) as info:
        connection.channel().queue_purge("nope")
    assert info.value.reply_code == 404
    assert_usable(connection)


def test_delete_returns_message_count(connect: Connect, broker: RunningBroker) -> None:
    channel = connect().channel()
    channel.confirm_delivery()
    channel.queue_declare("del")
    for i in range(4):
        channel.basic_publish("", "del", str(i).encode())
    assert channel.queue_delete("del").method.message_count == 4
    assert not broker.queue_exists("del")


def test_delete_if_unused_refused_while_consumed(connect: Connect, broker: RunningBroker) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("used")
    channel.basic_consume("used", lambda *a: None)
    with pytest.raises(ChannelClosedByBroker) as info:
        connection.channel().queue_delete("used", if_unused=True)
    assert info.value.reply_code == 406
    assert broker.queue_exists("used")
    assert_usable(connection)
    # unused now: the consumer's channel goes away
    channel.close()
    connection.channel().queue_delete("used", if_unused=True)
    assert not broker.queue_exists("used")


def test_delete_if_empty_refused_with_messages(connect: Connect, broker: RunningBroker) -> None:
    connection = connect()
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare("full")
    channel.basic_publish("", "full", b"m")
    with pytest.raises(ChannelClosedByBroker) as info:
        connection.channel().queue_delete("full", if_empty=True)
    assert info.value.reply_code == 406
    assert broker.queue_exists("full")
    assert_usable(connection)
    channel = connection.channel()
    channel.queue_purge("full")
    assert channel.queue_delete("full", if_empty=True).method.message_count == 0
    assert not broker.queue_exists("full")


def test_consumer_of_deleted_queue_gets_basic_cancel(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("doomed")
    cancelled: list[Any] = []
    channel.add_on_cancel_callback(cancelled.append)
    tag = channel.basic_consume("doomed", lambda *a: None)
    connect().channel().queue_delete("doomed")
    assert pump_until(connection, lambda: bool(cancelled))
    assert len(cancelled) == 1
    assert cancelled[0].method.consumer_tag == tag
    assert channel.consumer_tags == []
    # the channel stays open and usable
    channel.queue_declare("doomed")
    assert channel.is_open


def test_delete_missing_queue_is_delete_ok(connect: Connect) -> None:
    """RabbitMQ 3.x: deleting a queue that does not exist is a delete-ok with 0 messages."""
    connection = connect()
    channel = connection.channel()
    assert channel.queue_delete("never-was").method.message_count == 0
    assert channel.is_open
    assert_usable(connection)


def test_bind_to_missing_exchange_is_404(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("lonely")
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.queue_bind("lonely", "no-such-exchange", "k")
    assert info.value.reply_code == 404
    assert_usable(connection)


def test_redeclare_exchange_with_other_type_is_406(connect: Connect) -> None:
    connection = connect()
    connection.channel().exchange_declare("typed", "direct")
    with pytest.raises(ChannelClosedByBroker) as info:
        connection.channel().exchange_declare("typed", "fanout")
    assert info.value.reply_code == 406
    assert_usable(connection)


def test_passive_declare_of_missing_exchange_is_404(connect: Connect) -> None:
    connection = connect()
    with pytest.raises(ChannelClosedByBroker) as info:
        connection.channel().exchange_declare("nx", passive=True)
    assert info.value.reply_code == 404
    assert_usable(connection)


def test_delete_exchange_if_unused(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.exchange_declare("busy", "fanout")
    channel.queue_declare("bq")
    channel.queue_bind("bq", "busy")
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.exchange_delete("busy", if_unused=True)
    assert info.value.reply_code == 406
    channel = connection.channel()
    channel.queue_unbind("bq", "busy")
    channel.exchange_delete("busy", if_unused=True)
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.exchange_declare("busy", passive=True)
    assert info.value.reply_code == 404


def test_empty_queue_name_means_last_declared_queue(broker: RunningBroker) -> None:
    """Spec 0-9-1 (and RabbitMQ): bind/consume/get/purge/delete with queue "" use it."""
    with RawClient(broker.port) as client:
        client.handshake()
        client.open_channel(1)
        client.send_frame(1, commands.Queue.Declare(queue="", exclusive=True))
        name = client.expect(commands.Queue.DeclareOk).queue
        # queue "" and routing key "": the routing key is the queue's name too
        client.send_frame(1, commands.Queue.Bind(queue="", exchange="amq.direct"))
        client.expect(commands.Queue.BindOk)
        client.send_frame(1, commands.Confirm.Select())
        client.expect(commands.Confirm.SelectOk)
        client.send(
            frame.marshal(commands.Basic.Publish(exchange="amq.direct", routing_key=name), 1)
            + frame.marshal(pamqp_header.ContentHeader(0, 1, commands.Basic.Properties()), 1)
            + frame.marshal(pamqp_body.ContentBody(b"x"), 1)
        )
        client.expect(commands.Basic.Ack)
        client.send_frame(1, commands.Basic.Get(queue=""))
        get_ok = client.expect(commands.Basic.GetOk)
        assert get_ok.routing_key == name
        assert client.read_content() == b"x"
        client.send_frame(1, commands.Queue.Purge(queue=""))
        assert client.expect(commands.Queue.PurgeOk).message_count == 0
        client.send_frame(1, commands.Queue.Delete(queue=""))
        client.expect(commands.Queue.DeleteOk)
    assert not broker.queue_exists(name)


def test_empty_queue_name_without_declared_queue_is_404(broker: RunningBroker) -> None:
    with RawClient(broker.port) as client:
        client.handshake()
        client.open_channel(1)
        client.send_frame(1, commands.Basic.Get(queue=""))
        close = client.expect(commands.Channel.Close)
        assert close.reply_code == 404


def test_exclusive_queue_survives_its_channel(connect: Connect, broker: RunningBroker) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("per-connection", exclusive=True)
    channel.close()
    assert broker.queue_exists("per-connection")
    connection.channel().queue_declare("per-connection", passive=True)


def test_auto_delete_exchange_goes_with_last_binding(connect: Connect) -> None:
    channel = connect().channel()
    channel.exchange_declare("ad-x", "fanout", auto_delete=True)
    channel.queue_declare("ad-xq")
    channel.queue_bind("ad-xq", "ad-x")
    channel.exchange_declare("ad-x", passive=True)
    channel.queue_unbind("ad-xq", "ad-x")
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.exchange_declare("ad-x", passive=True)
    assert info.value.reply_code == 404


def test_unbind_of_missing_binding_succeeds(connect: Connect) -> None:
    channel = connect().channel()
    channel.queue_declare("never-bound")
    channel.queue_unbind("never-bound", "amq.direct", "nothing")
    assert channel.is_open


def test_default_exchange_cannot_be_bound(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("q-default")
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.queue_bind("q-default", "", "k")
    assert info.value.reply_code == 403
    assert_usable(connection)


def test_exchange_is_in_use_while_it_is_a_binding_source(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.exchange_declare("e-src", "fanout")
    channel.exchange_declare("e-dst", "fanout")
    channel.exchange_bind("e-dst", "e-src")
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.exchange_delete("e-src", if_unused=True)
    assert info.value.reply_code == 406
    # being only a destination does not count as use
    connection.channel().exchange_delete("e-dst", if_unused=True)
