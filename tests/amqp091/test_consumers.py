"""Consumers: round-robin, prefetch, acks, nacks, rejects, recover and requeue on close.

"Exactly N delivered" is checked without sleeping: after the client saw N
deliveries it makes a synchronous round trip on the same channel (the broker
writes every delivery it can make before it answers), and the broker's own
count of ready messages must agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pika
import pytest
from pamqp import commands
from pika.exceptions import ChannelClosedByBroker

from tests.helpers import Inbox, RawClient, RunningBroker, pump_until

Connect = Callable[..., pika.BlockingConnection]


def publish(channel: Any, queue: str, count: int, prefix: str = "m") -> None:
    """Publish `count` messages to `queue` through the default exchange, confirmed."""
    for i in range(count):
        channel.basic_publish("", queue, f"{prefix}{i}".encode())


@pytest.fixture
def conn(connect: Connect) -> pika.BlockingConnection:
    return connect()


@pytest.fixture
def publisher(connect: Connect) -> Any:
    channel = connect().channel()
    channel.confirm_delivery()
    return channel


def unacked_count(broker: RunningBroker) -> int:
    return broker.call(
        lambda: sum(len(s.unacked) for c in broker.core.connections for s in c.sessions)
    )


def test_round_robin_across_two_consumers(conn: pika.BlockingConnection, publisher: Any) -> None:
    publisher.queue_declare("rr")
    ch1, ch2 = conn.channel(), conn.channel()
    inbox1, inbox2 = Inbox(conn), Inbox(conn)
    ch1.basic_consume("rr", inbox1, auto_ack=True)
    ch2.basic_consume("rr", inbox2, auto_ack=True)
    publish(publisher, "rr", 6)
    assert pump_until(conn, lambda: len(inbox1.messages) + len(inbox2.messages) == 6)
    assert sorted([inbox1.bodies, inbox2.bodies]) == [
        [b"m0", b"m2", b"m4"],
        [b"m1", b"m3", b"m5"],
    ]


def test_per_consumer_prefetch(
    conn: pika.BlockingConnection, publisher: Any, broker: RunningBroker
) -> None:
    publisher.queue_declare("pf")
    publish(publisher, "pf", 5)
    channel = conn.channel()
    channel.basic_qos(prefetch_count=2)
    inbox = Inbox(conn)
    channel.basic_consume("pf", inbox)
    assert inbox.wait(2)
    inbox.sync(channel)
    assert inbox.bodies == [b"m0", b"m1"]
    assert broker.ready_count("pf") == 3

    channel.basic_ack(inbox.messages[0][0].delivery_tag)
    assert inbox.wait(3)
    inbox.sync(channel)
    assert inbox.bodies == [b"m0", b"m1", b"m2"]
    assert broker.ready_count("pf") == 2

    # a multiple ack frees both remaining credits
    channel.basic_ack(inbox.messages[2][0].delivery_tag, multiple=True)
    assert inbox.wait(5)
    inbox.sync(channel)
    assert broker.ready_count("pf") == 0


def test_per_consumer_prefetch_applies_to_each_consumer(
    conn: pika.BlockingConnection, publisher: Any, broker: RunningBroker
) -> None:
    publisher.queue_declare("pf2")
    publish(publisher, "pf2", 10)
    channel = conn.channel()
    channel.basic_qos(prefetch_count=2)
    inbox1, inbox2 = Inbox(conn), Inbox(conn)
    channel.basic_consume("pf2", inbox1)
    channel.basic_consume("pf2", inbox2)
    assert pump_until(conn, lambda: len(inbox1.messages) + len(inbox2.messages) >= 4)
    inbox1.sync(channel)
    assert len(inbox1.messages) == 2
    assert len(inbox2.messages) == 2
    assert broker.ready_count("pf2") == 6


def test_global_prefetch_is_shared_by_the_channel(
    conn: pika.BlockingConnection, publisher: Any, broker: RunningBroker
) -> None:
    for name in ("g1", "g2"):
        publisher.queue_declare(name)
        publish(publisher, name, 4, prefix=name)
    channel = conn.channel()
    channel.basic_qos(prefetch_count=3, global_qos=True)
    inbox = Inbox(conn)
    channel.basic_consume("g1", inbox)
    channel.basic_consume("g2", inbox)
    assert inbox.wait(3)
    inbox.sync(channel)
    assert len(inbox.messages) == 3
    assert broker.ready_count("g1") + broker.ready_count("g2") == 5

    channel.basic_ack(inbox.messages[0][0].delivery_tag)
    assert inbox.wait(4)
    inbox.sync(channel)
    assert len(inbox.messages) == 4
    assert broker.ready_count("g1") + broker.ready_count("g2") == 4


def test_ack_on_one_queue_frees_global_credit_for_another(
    conn: pika.BlockingConnection, publisher: Any, broker: RunningBroker
) -> None:
    publisher.queue_declare("one")
    publisher.queue_declare("many")
    publish(publisher, "one", 1, prefix="one")
    publish(publisher, "many", 4, prefix="many")
    channel = conn.channel()
    channel.basic_qos(prefetch_count=2, global_qos=True)
    inbox = Inbox(conn)
    channel.basic_consume("one", inbox)
    channel.basic_consume("many", inbox)
    assert inbox.wait(2)
    inbox.sync(channel)
    assert len(inbox.messages) == 2
    first = next(m for m in inbox.messages if m[0].routing_key == "one")
    channel.basic_ack(first[0].delivery_tag)  # "one" is empty now: only "many" can use it
    assert inbox.wait(3)
    inbox.sync(channel)
    assert len(inbox.messages) == 3
    assert broker.ready_count("many") == 2


def test_raising_prefetch_delivers_more(
    conn: pika.BlockingConnection, publisher: Any, broker: RunningBroker
) -> None:
    publisher.queue_declare("raise")
    publish(publisher, "raise", 5)
    channel = conn.channel()
    channel.basic_qos(prefetch_count=1, global_qos=True)
    inbox = Inbox(conn)
    channel.basic_consume("raise", inbox)
    assert inbox.wait(1)
    inbox.sync(channel)
    assert len(inbox.messages) == 1
    channel.basic_qos(prefetch_count=3, global_qos=True)
    assert inbox.wait(3)
    inbox.sync(channel)
    assert len(inbox.messages) == 3
    assert broker.ready_count("raise") == 2


def test_no_ack_consumer_ignores_prefetch(
    conn: pika.BlockingConnection, publisher: Any, broker: RunningBroker
) -> None:
    publisher.queue_declare("noack")
    publish(publisher, "noack", 5)
    channel = conn.channel()
    channel.basic_qos(prefetch_count=1)
    inbox = Inbox(conn)
    channel.basic_consume("noack", inbox, auto_ack=True)
    assert inbox.wait(5)
    assert broker.ready_count("noack") == 0
    assert unacked_count(broker) == 0


@pytest.mark.parametrize("how", ["nack", "reject"])
def test_requeued_message_comes_back_redelivered(
    conn: pika.BlockingConnection, publisher: Any, how: str
) -> None:
    publisher.queue_declare("requeue")
    publish(publisher, "requeue", 1)
    channel = conn.channel()
    inbox = Inbox(conn)
    channel.basic_consume("requeue", inbox)
    assert inbox.wait(1)
    first = inbox.messages[0][0]
    assert first.redelivered is False
    if how == "nack":
        channel.basic_nack(first.delivery_tag, requeue=True)
    else:
        channel.basic_reject(first.delivery_tag, requeue=True)
    assert inbox.wait(2)
    second = inbox.messages[1][0]
    assert inbox.bodies == [b"m0", b"m0"]
    assert second.redelivered is True
    assert second.delivery_tag != first.delivery_tag


@pytest.mark.parametrize("how", ["nack", "reject"])
def test_rejected_without_requeue_is_gone(
    conn: pika.BlockingConnection, publisher: Any, broker: RunningBroker, how: str
) -> None:
    publisher.queue_declare("drop")
    publish(publisher, "drop", 2)
    channel = conn.channel()
    method, _props, body = channel.basic_get("drop")
    assert body == b"m0"
    if how == "nack":
        channel.basic_nack(method.delivery_tag, requeue=False)
    else:
        channel.basic_reject(method.delivery_tag, requeue=False)
    method, _props, body = channel.basic_get("drop", auto_ack=True)
    assert body == b"m1"
    assert channel.basic_get("drop") == (None, None, None)
    assert broker.ready_count("drop") == 0
    assert unacked_count(broker) == 0


def test_nack_multiple_requeues_in_order(conn: pika.BlockingConnection, publisher: Any) -> None:
    publisher.queue_declare("nm")
    publish(publisher, "nm", 3)
    channel = conn.channel()
    inbox = Inbox(conn)
    channel.basic_qos(prefetch_count=3)
    channel.basic_consume("nm", inbox)
    assert inbox.wait(3)
    channel.basic_nack(inbox.messages[2][0].delivery_tag, multiple=True, requeue=True)
    assert inbox.wait(6)
    assert inbox.bodies[3:] == [b"m0", b"m1", b"m2"]
    assert all(m.redelivered for m, _, _ in inbox.messages[3:])


def test_basic_get(conn: pika.BlockingConnection, publisher: Any) -> None:
    publisher.queue_declare("get")
    channel = conn.channel()
    assert channel.basic_get("get") == (None, None, None)
    publish(publisher, "get", 2)
    method, _props, body = channel.basic_get("get")
    assert body == b"m0"
    assert method.message_count == 1
    assert method.redelivered is False
    channel.basic_reject(method.delivery_tag, requeue=True)
    method, _props, body = channel.basic_get("get", auto_ack=True)
    assert body == b"m0"
    assert method.redelivered is True


def test_basic_get_empty_repeatedly(conn: pika.BlockingConnection, publisher: Any) -> None:
    """basic.get-empty leaves the channel usable for the next get."""
    publisher.queue_declare("get2")
    channel = conn.channel()
    for _ in range(3):
        assert channel.basic_get("get2") == (None, None, None)
    publish(publisher, "get2", 1)
    assert channel.basic_get("get2", auto_ack=True)[2] == b"m0"


def test_basic_recover_requeues_unacked(
    conn: pika.BlockingConnection, publisher: Any, broker: RunningBroker
) -> None:
    publisher.queue_declare("recover")
    publish(publisher, "recover", 2)
    channel = conn.channel()
    inbox = Inbox(conn)
    channel.basic_consume("recover", inbox)
    assert inbox.wait(2)
    channel.basic_recover(requeue=True)
    assert inbox.wait(4)
    assert inbox.bodies == [b"m0", b"m1", b"m0", b"m1"]
    assert [m.redelivered for m, _, _ in inbox.messages] == [False, False, True, True]
    channel.basic_ack(0, multiple=True)
    inbox.sync(channel)
    assert unacked_count(broker) == 0


@pytest.mark.parametrize("close", ["channel", "connection"])
def test_unacked_requeued_to_other_consumer_on_close(
    connect: Connect, publisher: Any, broker: RunningBroker, close: str
) -> None:
    publisher.queue_declare("handover")
    first = connect()
    first_channel = first.channel()
    first_inbox = Inbox(first)
    first_channel.basic_consume("handover", first_inbox)
    publish(publisher, "handover", 3)
    assert first_inbox.wait(3)
    first_channel.basic_ack(first_inbox.messages[0][0].delivery_tag)

    second = connect()
    second_channel = second.channel()
    second_inbox = Inbox(second)
    second_channel.basic_consume("handover", second_inbox)
    second_inbox.sync(second_channel)
    assert second_inbox.messages == []  # everything is with the first consumer

    if close == "channel":
        first_channel.close()
    else:
        first.close()
    assert second_inbox.wait(2)
    assert second_inbox.bodies == [b"m1", b"m2"]
    assert all(m.redelivered for m, _, _ in second_inbox.messages)


def test_cancel_stops_deliveries(
    conn: pika.BlockingConnection, publisher: Any, broker: RunningBroker
) -> None:
    publisher.queue_declare("cancel")
    channel = conn.channel()
    inbox = Inbox(conn)
    tag = channel.basic_consume("cancel", inbox, auto_ack=True)
    publish(publisher, "cancel", 1)
    assert inbox.wait(1)
    channel.basic_cancel(tag)
    publish(publisher, "cancel", 2, prefix="after")
    inbox.sync(channel)
    assert inbox.bodies == [b"m0"]
    assert broker.ready_count("cancel") == 2


def test_unknown_delivery_tag_is_406(conn: pika.BlockingConnection, publisher: Any) -> None:
    publisher.queue_declare("tags")
    channel = conn.channel()
    channel.basic_ack(99)
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.queue_declare("tags", passive=True)
    assert info.value.reply_code == 406
    assert "unknown delivery tag 99" in info.value.reply_text
    other = conn.channel()
    assert other.queue_declare("tags", passive=True).method.message_count == 0


def test_double_ack_is_406(conn: pika.BlockingConnection, publisher: Any) -> None:
    publisher.queue_declare("twice")
    publish(publisher, "twice", 1)
    channel = conn.channel()
    method, _props, _body = channel.basic_get("twice")
    channel.basic_ack(method.delivery_tag)
    channel.basic_ack(method.delivery_tag)
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.queue_declare("twice", passive=True)
    assert info.value.reply_code == 406


def test_exclusive_consumer_refuses_others(conn: pika.BlockingConnection, publisher: Any) -> None:
    publisher.queue_declare("excl")
    channel = conn.channel()
    channel.basic_consume("excl", lambda *a: None, exclusive=True)
    with pytest.raises(ChannelClosedByBroker) as info:
        conn.channel().basic_consume("excl", lambda *a: None)
    assert info.value.reply_code == 403
    assert "ACCESS_REFUSED" in info.value.reply_text
    assert channel.is_open


def test_consume_from_missing_queue_is_404(conn: pika.BlockingConnection) -> None:
    with pytest.raises(ChannelClosedByBroker) as info:
        conn.channel().basic_consume("absent", lambda *a: None)
    assert info.value.reply_code == 404
    assert conn.channel().is_open


def test_ack_after_requeue_order_is_kept(conn: pika.BlockingConnection, publisher: Any) -> None:
    """A requeued message goes back to its place: before later messages."""
    publisher.queue_declare("order")
    publish(publisher, "order", 3)
    channel = conn.channel()
    method, _props, body = channel.basic_get("order")
    assert body == b"m0"
    channel.basic_nack(method.delivery_tag, requeue=True)
    bodies = [channel.basic_get("order", auto_ack=True)[2] for _ in range(3)]
    assert bodies == [b"m0", b"m1", b"m2"]


def test_channel_flow_pauses_deliveries(
    conn: pika.BlockingConnection, publisher: Any, broker: RunningBroker
) -> None:
    publisher.queue_declare("flow")
    channel = conn.channel()
    inbox = Inbox(conn)
    channel.flow(False)
    channel.basic_consume("flow", inbox, auto_ack=True)
    publish(publisher, "flow", 2)
    inbox.sync(channel)
    assert inbox.messages == []
    assert broker.ready_count("flow") == 2
    channel.flow(True)
    assert inbox.wait(2)
    assert inbox.bodies == [b"m0", b"m1"]


def test_per_consumer_and_global_prefetch_together(
    conn: pika.BlockingConnection, publisher: Any, broker: RunningBroker
) -> None:
    for name in ("both1", "both2"):
        publisher.queue_declare(name)
        publish(publisher, name, 5)
    channel = conn.channel()
    channel.basic_qos(prefetch_count=2)  # each consumer
    channel.basic_qos(prefetch_count=3, global_qos=True)  # the channel
    inbox1, inbox2 = Inbox(conn), Inbox(conn)
    channel.basic_consume("both1", inbox1)
    channel.basic_consume("both2", inbox2)
    assert pump_until(conn, lambda: len(inbox1.messages) + len(inbox2.messages) >= 3)
    inbox1.sync(channel)
    assert len(inbox1.messages) + len(inbox2.messages) == 3
    assert len(inbox1.messages) <= 2
    assert len(inbox2.messages) <= 2
    assert broker.ready_count("both1") + broker.ready_count("both2") == 7


def test_ack_after_queue_deleted_is_harmless(
    conn: pika.BlockingConnection, publisher: Any, broker: RunningBroker
) -> None:
    publisher.queue_declare("short-lived")
    publish(publisher, "short-lived", 1)
    channel = conn.channel()
    method, _props, _body = channel.basic_get("short-lived")
    assert channel.queue_delete("short-lived").method.message_count == 0  # it is unacked
    channel.basic_ack(method.delivery_tag)
    inbox = Inbox(conn)
    inbox.sync(channel)
    assert channel.is_open
    assert unacked_count(broker) == 0


def test_ack_after_cancel(
    conn: pika.BlockingConnection, publisher: Any, broker: RunningBroker
) -> None:
    publisher.queue_declare("ack-late")
    publish(publisher, "ack-late", 1)
    channel = conn.channel()
    inbox = Inbox(conn)
    tag = channel.basic_consume("ack-late", inbox)
    assert inbox.wait(1)
    channel.basic_cancel(tag)
    assert unacked_count(broker) == 1  # cancelling does not requeue
    channel.basic_ack(inbox.messages[0][0].delivery_tag)
    inbox.sync(channel)
    assert unacked_count(broker) == 0
    assert broker.ready_count("ack-late") == 0


def test_nack_all_with_tag_zero(
    conn: pika.BlockingConnection, publisher: Any, broker: RunningBroker
) -> None:
    publisher.queue_declare("nack-all")
    publish(publisher, "nack-all", 3)
    channel = conn.channel()
    inbox = Inbox(conn)
    tag = channel.basic_consume("nack-all", inbox)
    assert inbox.wait(3)
    channel.basic_cancel(tag)
    channel.basic_nack(0, multiple=True, requeue=False)
    inbox.sync(channel)
    assert unacked_count(broker) == 0
    assert broker.ready_count("nack-all") == 0


def test_recover_returns_basic_get_messages_to_the_queue(
    conn: pika.BlockingConnection, publisher: Any, broker: RunningBroker
) -> None:
    publisher.queue_declare("recover-get")
    publish(publisher, "recover-get", 1)
    channel = conn.channel()
    assert channel.basic_get("recover-get")[2] == b"m0"
    assert broker.ready_count("recover-get") == 0
    channel.basic_recover(requeue=True)
    assert broker.ready_count("recover-get") == 1
    method, _props, body = channel.basic_get("recover-get", auto_ack=True)
    assert body == b"m0"
    assert method.redelivered is True


def test_abrupt_disconnect_requeues_unacked(publisher: Any, broker: RunningBroker) -> None:
    """A client that vanishes without connection.close: its deliveries go back."""
    publisher.queue_declare("vanish")
    publish(publisher, "vanish", 3)
    client = RawClient(broker.port)
    client.handshake()
    client.open_channel(1)
    client.send_frame(1, commands.Basic.Consume(queue="vanish", consumer_tag="raw"))
    client.expect(commands.Basic.ConsumeOk)
    client.expect(commands.Basic.Deliver)
    assert broker.ready_count("vanish") == 0
    client.close()
    assert broker.wait_until(lambda: len(broker.core.vhosts["/"].queues["vanish"].ready) == 3)
    method, _props, body = publisher.basic_get("vanish", auto_ack=True)
    assert body == b"m0"
    assert method.redelivered is True


def test_reused_consumer_tag_is_530(publisher: Any, broker: RunningBroker) -> None:
    publisher.queue_declare("tagged")
    with RawClient(broker.port) as client:
        client.handshake()
        client.open_channel(1)
        client.send_frame(1, commands.Basic.Consume(queue="tagged", consumer_tag="t"))
        client.expect(commands.Basic.ConsumeOk)
        client.send_frame(1, commands.Basic.Consume(queue="tagged", consumer_tag="t"))
        close = client.expect(commands.Connection.Close)
        assert close.reply_code == 530
        assert "consumer tag" in close.reply_text
