"""Core API additions: publish results, consumer filters, annotations (no network)."""

from __future__ import annotations

import time

from moorage.broker.auth import UserDirectory
from moorage.broker.broker import Broker
from moorage.broker.config import default_guest
from moorage.broker.message import EXPIRES_AT_ANNOTATION, Message, Properties
from moorage.broker.serialization import decode_message, encode_message
from moorage.storage import MemoryStore


class Sink:
    def __init__(self) -> None:
        self.deliveries: list[tuple[str, int, bytes]] = []

    def deliver(self, consumer_tag, delivery_tag, redelivered, message):
        self.deliveries.append((consumer_tag, delivery_tag, message.body))

    def returned(self, message, reply_code, reply_text):
        pass

    def cancelled(self, consumer_tag, error):
        pass


async def open_session():
    broker = Broker(store=MemoryStore(), users=UserDirectory([default_guest()]))
    await broker.start()
    conn = broker.connect("/", broker.users.users["guest"], protocol="test", peer="test")
    sink = Sink()
    return broker, conn.open_session(sink), sink


def msg(body: bytes, key: str = "q", annotations=None, **props) -> Message:
    return Message("", key, Properties(**props), body, annotations=annotations or {})


async def test_publish_result_counts_routes_and_rejections():
    broker, session, _sink = await open_session()
    session.declare_queue("a")
    session.declare_queue("b", arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    session.bind_queue("a", "amq.fanout", "", {})
    session.bind_queue("b", "amq.fanout", "", {})
    result = session.publish("amq.fanout", msg(b"x"))
    assert (result.routed, result.rejected, result.stored) == (2, 1, False)
    assert not session.publish("", msg(b"x", key="nowhere")).routed
    durable = session.declare_queue("d", durable=True)[0]
    result = session.publish("", msg(b"x", key="d", delivery_mode=2))
    assert result.stored
    assert result
    assert durable.message_count == 1
    session.tx_select()
    assert session.publish("", msg(b"x", key="d")).deferred
    await broker.stop()


async def test_consumer_filter_leaves_unaccepted_messages_ready():
    broker, session, sink = await open_session()
    queue, _, _ = session.declare_queue("sel")
    red = session.consume("sel", "red", filter=lambda m: m.header("color") == "red")
    red.start()
    blue = session.consume("sel", "blue", filter=lambda m: m.header("color") == "blue")
    blue.start()
    for i, color in enumerate(("green", "red", "blue", "red")):
        session.publish("", msg(b"%d" % i, key="sel", headers={"color": color}))
    assert sorted((tag, body) for tag, _, body in sink.deliveries) == [
        ("blue", b"2"),
        ("red", b"1"),
        ("red", b"3"),
    ]
    assert [e.message.body for e in queue.ready] == [b"0"]  # nobody accepts green
    anyone = session.consume("sel", "any")
    anyone.start()
    queue.dispatch()
    assert sink.deliveries[-1] == ("any", 4, b"0")
    await broker.stop()


async def test_annotations_round_trip_the_store():
    message = msg(b"body", annotations={"mqtt.client-id": "c1", "mqtt.retain": True})
    again = decode_message(encode_message(message))
    assert again.annotations == {"mqtt.client-id": "c1", "mqtt.retain": True}
    assert decode_message(encode_message(msg(b"x"))).annotations == {}


async def test_absolute_expiry_annotation_is_honoured():
    broker, session, _sink = await open_session()
    _queue, _, _ = session.declare_queue("mq")
    past = msg(b"old", key="mq", annotations={EXPIRES_AT_ANNOTATION: time.time() - 1})
    session.publish("", past)
    session.publish("", msg(b"new", key="mq"))
    got = session.get("mq", no_ack=True)
    assert got is not None
    assert got[2].body == b"new"
    await broker.stop()
