"""Publishing: mandatory returns, publisher confirms, publish errors and transactions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pika
import pytest
from pamqp import body as pamqp_body
from pamqp import commands, frame, header
from pika.exceptions import ChannelClosedByBroker, UnroutableError

from tests.helpers import RawClient, RunningBroker, pump_until

Connect = Callable[..., pika.BlockingConnection]


def assert_usable(connection: pika.BlockingConnection) -> None:
    channel = connection.channel()
    channel.confirm_delivery()
    name = channel.queue_declare("", exclusive=True).method.queue
    channel.basic_publish("", name, b"ok")
    assert channel.basic_get(name, auto_ack=True)[2] == b"ok"
    channel.close()


def unacked_count(broker: RunningBroker) -> int:
    return broker.call(
        lambda: sum(len(s.unacked) for c in broker.core.connections for s in c.sessions)
    )


# -- mandatory ---------------------------------------------------------------------------


def test_mandatory_unroutable_is_returned(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    returned: list[tuple[Any, Any, bytes]] = []
    channel.add_on_return_callback(
        lambda _ch, method, props, body: returned.append((method, props, body))
    )
    channel.basic_publish(
        "amq.direct",
        "no-binding",
        b"back to sender",
        pika.BasicProperties(message_id="r1"),
        mandatory=True,
    )
    assert pump_until(connection, lambda: bool(returned))
    method, props, body = returned[0]
    assert method.reply_code == 312
    assert method.reply_text == "NO_ROUTE"
    assert method.exchange == "amq.direct"
    assert method.routing_key == "no-binding"
    assert props.message_id == "r1"
    assert body == b"back to sender"


def test_non_mandatory_unroutable_is_dropped_silently(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.confirm_delivery()
    returned: list[Any] = []
    channel.add_on_return_callback(lambda *args: returned.append(args))
    channel.basic_publish("amq.direct", "no-binding", b"dropped")
    connection.process_data_events(time_limit=0)
    assert returned == []


def test_mandatory_unroutable_with_confirms_raises_unroutable(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare("routable")
    channel.basic_publish("", "routable", b"fine", mandatory=True)
    with pytest.raises(UnroutableError) as info:
        channel.basic_publish("", "not-a-queue", b"lost", mandatory=True)
    assert len(info.value.messages) == 1
    assert info.value.messages[0].body == b"lost"
    assert info.value.messages[0].method.reply_code == 312
    # the channel stays open
    channel.basic_publish("", "routable", b"fine again", mandatory=True)
    assert channel.queue_declare("routable", passive=True).method.message_count == 2


# -- confirms ----------------------------------------------------------------------------


def test_publisher_confirms_blocking(connect: Connect, broker: RunningBroker) -> None:
    channel = connect().channel()
    channel.confirm_delivery()
    channel.queue_declare("c", durable=True)
    for i in range(100):
        # raises NackError if nacked, and blocks until each is confirmed
        channel.basic_publish("", "c", str(i).encode(), pika.BasicProperties(delivery_mode=2))
    assert broker.ready_count("c") == 100


def test_pipelined_publishes_are_all_confirmed(broker: RunningBroker) -> None:
    """Many publishes written at once; the acks (possibly multiple) cover every one."""
    count = 300
    with RawClient(broker.port) as client:
        client.handshake()
        client.open_channel(1)
        client.send_frame(1, commands.Queue.Declare(queue="pipelined"))
        client.expect(commands.Queue.DeclareOk)
        client.send_frame(1, commands.Confirm.Select())
        client.expect(commands.Confirm.SelectOk)
        publish = b"".join(raw_publish(1, "", "pipelined", str(i).encode()) for i in range(count))
        client.send(publish)
        confirmed: set[int] = set()
        highest = 0
        while highest < count:
            ack = client.expect(commands.Basic.Ack)
            assert ack.delivery_tag > highest
            upto = range(highest + 1, ack.delivery_tag + 1) if ack.multiple else [ack.delivery_tag]
            confirmed.update(upto)
            highest = ack.delivery_tag
        assert confirmed == set(range(1, count + 1))
    assert broker.ready_count("pipelined") == count


def raw_publish(
    channel: int, exchange: str, routing_key: str, body: bytes, *, immediate: bool = False
) -> bytes:
    """basic.publish + content header + body frames, encoded with pamqp."""
    return (
        frame.marshal(
            commands.Basic.Publish(exchange=exchange, routing_key=routing_key, immediate=immediate),
            channel,
        )
        + frame.marshal(header.ContentHeader(0, len(body), commands.Basic.Properties()), channel)
        + frame.marshal(pamqp_body.ContentBody(body), channel)
    )


# -- publish errors ----------------------------------------------------------------------


def test_publish_to_missing_exchange_closes_channel_404(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.basic_publish("no-such-exchange", "k", b"m")
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.queue_declare("", exclusive=True)
    assert info.value.reply_code == 404
    assert "no exchange 'no-such-exchange'" in info.value.reply_text
    assert_usable(connection)


def test_publish_to_missing_exchange_in_confirm_mode(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.confirm_delivery()
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.basic_publish("no-such-exchange", "k", b"m")
    assert info.value.reply_code == 404
    assert_usable(connection)


def test_publish_to_internal_exchange_is_403(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.exchange_declare("inner", "fanout", internal=True)
    channel.exchange_declare("outer", "fanout")
    channel.exchange_bind("inner", "outer")
    channel.queue_declare("behind")
    channel.queue_bind("behind", "inner")
    channel.basic_publish("inner", "", b"direct")
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.queue_declare("behind", passive=True)
    assert info.value.reply_code == 403
    assert "ACCESS_REFUSED" in info.value.reply_text
    # through a binding the internal exchange still routes
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish("outer", "", b"via outer")
    assert channel.basic_get("behind", auto_ack=True)[2] == b"via outer"
    assert channel.basic_get("behind") == (None, None, None)


def test_user_id_must_match_login(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare("uid")
    channel.basic_publish("", "uid", b"mine", pika.BasicProperties(user_id="guest"))
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.basic_publish("", "uid", b"forged", pika.BasicProperties(user_id="admin"))
    assert info.value.reply_code == 406
    assert "user_id" in info.value.reply_text
    channel = connection.channel()
    _method, props, body = channel.basic_get("uid", auto_ack=True)
    assert body == b"mine"
    assert props.user_id == "guest"
    assert channel.basic_get("uid") == (None, None, None)


def test_reserved_exchange_name_is_403(connect: Connect) -> None:
    connection = connect()
    with pytest.raises(ChannelClosedByBroker) as info:
        connection.channel().exchange_declare("amq.custom", "direct")
    assert info.value.reply_code == 403
    with pytest.raises(ChannelClosedByBroker) as info:
        connection.channel().exchange_delete("amq.direct")
    assert info.value.reply_code == 403
    assert_usable(connection)


def test_unknown_exchange_type_closes_connection_503(connect: Connect) -> None:
    connection = connect()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        connection.channel().exchange_declare("weird", "no-such-type")
    assert info.value.reply_code == 503


# -- transactions ------------------------------------------------------------------------


def test_tx_commit_makes_publishes_visible(connect: Connect, broker: RunningBroker) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("txq")
    channel.tx_select()
    channel.basic_publish("", "txq", b"a")
    channel.basic_publish("", "txq", b"b")
    channel.queue_declare("txq", passive=True)  # round trip: both publishes were received
    assert broker.ready_count("txq") == 0
    channel.tx_commit()
    assert broker.ready_count("txq") == 2
    assert channel.basic_get("txq", auto_ack=True)[2] == b"a"


def test_tx_rollback_discards_publishes(connect: Connect, broker: RunningBroker) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("txr")
    channel.tx_select()
    channel.basic_publish("", "txr", b"discarded")
    channel.tx_rollback()
    channel.basic_publish("", "txr", b"kept")
    channel.tx_commit()
    assert broker.ready_count("txr") == 1
    assert channel.basic_get("txr", auto_ack=True)[2] == b"kept"


def test_tx_rollback_discards_acks(connect: Connect, broker: RunningBroker) -> None:
    connection = connect()
    setup = connection.channel()
    setup.confirm_delivery()
    setup.queue_declare("txa")
    setup.basic_publish("", "txa", b"m")
    channel = connection.channel()
    channel.tx_select()
    method, _props, _body = channel.basic_get("txa")
    channel.basic_ack(method.delivery_tag)
    channel.tx_rollback()
    assert unacked_count(broker) == 1  # still delivered, not acked
    assert broker.ready_count("txa") == 0
    channel.close()  # unacked goes back
    assert broker.ready_count("txa") == 1
    method, _props, body = setup.basic_get("txa", auto_ack=True)
    assert body == b"m"
    assert method.redelivered is True


def test_tx_commit_applies_acks(connect: Connect, broker: RunningBroker) -> None:
    connection = connect()
    setup = connection.channel()
    setup.confirm_delivery()
    setup.queue_declare("txc")
    setup.basic_publish("", "txc", b"m")
    channel = connection.channel()
    channel.tx_select()
    method, _props, _body = channel.basic_get("txc")
    channel.basic_ack(method.delivery_tag)
    channel.queue_declare("txc", passive=True)
    assert unacked_count(broker) == 1
    channel.tx_commit()
    assert unacked_count(broker) == 0
    channel.close()
    assert broker.ready_count("txc") == 0


def test_tx_commit_without_select_is_406(connect: Connect) -> None:
    connection = connect()
    with pytest.raises(ChannelClosedByBroker) as info:
        connection.channel().tx_commit()
    assert info.value.reply_code == 406
    assert_usable(connection)


def test_confirm_and_tx_do_not_mix(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.confirm_delivery()
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.tx_select()
    assert info.value.reply_code == 406
    channel = connection.channel()
    channel.tx_select()
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.confirm_delivery()
    assert info.value.reply_code == 406
    assert_usable(connection)


def test_mandatory_to_fanout_without_bindings_is_returned(connect: Connect) -> None:
    channel = connect().channel()
    channel.confirm_delivery()
    channel.exchange_declare("lonely-fanout", "fanout")
    with pytest.raises(UnroutableError):
        channel.basic_publish("lonely-fanout", "", b"m", mandatory=True)


def test_anyone_may_publish_to_an_exclusive_queue(connect: Connect, broker: RunningBroker) -> None:
    """RPC replies: the exclusive queue's owner consumes, others publish into it."""
    owner = connect()
    owner.channel().queue_declare("reply-to-me", exclusive=True)
    channel = connect().channel()
    channel.confirm_delivery()
    channel.basic_publish("", "reply-to-me", b"reply", mandatory=True)
    assert broker.ready_count("reply-to-me") == 1


def test_immediate_flag_is_not_implemented_540(broker: RunningBroker) -> None:
    """As RabbitMQ 3.x: immediate=true is refused, not silently treated as false."""
    with RawClient(broker.port) as client:
        client.handshake()
        client.open_channel(1)
        client.send_frame(1, commands.Queue.Declare(queue="imm"))
        client.expect(commands.Queue.DeclareOk)
        client.send(raw_publish(1, "", "imm", b"now", immediate=True))
        close = client.expect(commands.Connection.Close)
        assert close.reply_code == 540
        assert "immediate" in close.reply_text
    assert broker.ready_count("imm") == 0


def test_confirm_select_nowait(broker: RunningBroker) -> None:
    with RawClient(broker.port) as client:
        client.handshake()
        client.open_channel(1)
        client.send_frame(1, commands.Confirm.Select(nowait=True))
        client.send(raw_publish(1, "", "nowhere", b"a") + raw_publish(1, "", "nowhere", b"b"))
        ack = client.expect(commands.Basic.Ack)
        assert ack.delivery_tag == 2
        assert ack.multiple is True


def test_tx_double_ack_is_406(connect: Connect, broker: RunningBroker) -> None:
    connection = connect()
    setup = connection.channel()
    setup.confirm_delivery()
    setup.queue_declare("tx-twice")
    setup.basic_publish("", "tx-twice", b"m")
    channel = connection.channel()
    channel.tx_select()
    method, _props, _body = channel.basic_get("tx-twice")
    channel.basic_ack(method.delivery_tag)
    channel.basic_ack(method.delivery_tag)
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.tx_commit()
    assert info.value.reply_code == 406
    assert_usable(connection)
