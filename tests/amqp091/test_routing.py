"""Routing through every exchange type, exchange-to-exchange bindings and alternate exchanges.

Publishes go through a channel in confirm mode, so a publish has been routed
by the time `basic_publish` returns; queues are then drained with basic.get.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pika
import pytest

from tests.helpers import RunningBroker


@pytest.fixture
def channel(connect: Callable[..., pika.BlockingConnection]) -> Any:
    """A channel in confirm mode on a fresh connection."""
    ch = connect().channel()
    ch.confirm_delivery()
    return ch


def drain(channel: Any, queue: str) -> list[bytes]:
    """Every message ready in `queue`, in order (auto-acked)."""
    bodies = []
    while True:
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


def declare_queues(channel: Any, *names: str) -> None:
    for name in names:
        channel.queue_declare(name)


def test_default_exchange_routes_by_queue_name(channel: Any, broker: RunningBroker) -> None:
    declare_queues(channel, "d1", "d2")
    channel.basic_publish("", "d1", b"one")
    channel.basic_publish("", "d2", b"two")
    channel.basic_publish("", "nowhere", b"lost")
    assert drain(channel, "d1") == [b"one"]
    assert drain(channel, "d2") == [b"two"]
    assert not broker.queue_exists("nowhere")


def test_direct_exchange(channel: Any) -> None:
    channel.exchange_declare("dx", "direct")
    declare_queues(channel, "qa", "qb", "qab")
    channel.queue_bind("qa", "dx", "a")
    channel.queue_bind("qb", "dx", "b")
    channel.queue_bind("qab", "dx", "a")
    channel.queue_bind("qab", "dx", "b")
    for key in ("a", "b", "c", "a"):
        channel.basic_publish("dx", key, key.encode())
    assert drain(channel, "qa") == [b"a", b"a"]
    assert drain(channel, "qb") == [b"b"]
    assert drain(channel, "qab") == [b"a", b"b", b"a"]


def test_message_reaches_a_queue_once_through_several_bindings(channel: Any) -> None:
    channel.exchange_declare("tx1", "topic")
    channel.queue_declare("once")
    channel.queue_bind("once", "tx1", "a.*")
    channel.queue_bind("once", "tx1", "#")
    channel.queue_bind("once", "tx1", "a.b")
    channel.basic_publish("tx1", "a.b", b"m")
    assert drain(channel, "once") == [b"m"]


def test_fanout_exchange_ignores_routing_key(channel: Any) -> None:
    channel.exchange_declare("fx", "fanout")
    declare_queues(channel, "f1", "f2", "f3")
    channel.queue_bind("f1", "fx", "")
    channel.queue_bind("f2", "fx", "whatever")
    channel.basic_publish("fx", "any.key", b"m1")
    channel.basic_publish("fx", "", b"m2")
    assert drain(channel, "f1") == [b"m1", b"m2"]
    assert drain(channel, "f2") == [b"m1", b"m2"]
    assert drain(channel, "f3") == []


TOPIC_CASES = [
    # pattern, routing key, matches
    ("a.b.c", "a.b.c", True),
    ("a.b.c", "a.b", False),
    ("a.*.c", "a.x.c", True),
    ("a.*.c", "a.c", False),
    ("a.*.c", "a.x.y.c", False),
    ("a.#", "a", True),
    ("a.#", "a.b.c.d", True),
    ("a.#", "b.a", False),
    ("#", "", True),
    ("#", "anything.at.all", True),
    ("a.#.c", "a.c", True),
    ("a.#.c", "a.b.b.c", True),
    ("a.#.c", "a.b.b.d", False),
    ("*", "", False),
    ("*", "one", True),
    ("*", "one.two", False),
    ("*.*", "one.two", True),
    ("#.z", "z", True),
    ("#.z", "y.z", True),
    ("#.z", "z.y", False),
    ("*.#", "a", True),
    ("*.#", "", False),
]


@pytest.mark.parametrize(("pattern", "key", "matches"), TOPIC_CASES)
def test_topic_exchange_wildcards(channel: Any, pattern: str, key: str, matches: bool) -> None:
    channel.exchange_declare("topics", "topic")
    channel.queue_declare("t")
    channel.queue_bind("t", "topics", pattern)
    channel.basic_publish("topics", key, b"m")
    assert drain(channel, "t") == ([b"m"] if matches else [])


def test_amq_topic_routes_to_many_patterns(channel: Any) -> None:
    declare_queues(channel, "stocks", "nyse", "all")
    channel.queue_bind("stocks", "amq.topic", "stock.*.*")
    channel.queue_bind("nyse", "amq.topic", "*.nyse.#")
    channel.queue_bind("all", "amq.topic", "#")
    channel.basic_publish("amq.topic", "stock.nyse.ibm", b"ibm")
    channel.basic_publish("amq.topic", "bond.nyse", b"bond")
    channel.basic_publish("amq.topic", "stock.lse", b"lse")
    assert drain(channel, "stocks") == [b"ibm"]
    assert drain(channel, "nyse") == [b"ibm", b"bond"]
    assert drain(channel, "all") == [b"ibm", b"bond", b"lse"]


HEADER_CASES = [
    # x-match, published headers, matches
    ("all", {"h1": "v1", "h2": 2}, True),
    ("all", {"h1": "v1", "h2": 2, "extra": "x"}, True),
    ("all", {"h1": "v1"}, False),
    ("all", {"h1": "v1", "h2": 3}, False),
    ("all", None, False),
    ("any", {"h1": "v1"}, True),
    ("any", {"h2": 2}, True),
    ("any", {"h1": "nope", "h2": 3}, False),
    ("any", {}, False),
]


@pytest.mark.parametrize(("x_match", "headers", "matches"), HEADER_CASES)
def test_headers_exchange(
    channel: Any, x_match: str, headers: dict[str, Any] | None, matches: bool
) -> None:
    channel.exchange_declare("hx", "headers")
    channel.queue_declare("h")
    channel.queue_bind("h", "hx", "", arguments={"x-match": x_match, "h1": "v1", "h2": 2})
    channel.basic_publish("hx", "ignored", b"m", pika.BasicProperties(headers=headers))
    assert drain(channel, "h") == ([b"m"] if matches else [])


def test_headers_exchange_default_is_all(channel: Any) -> None:
    channel.queue_declare("hdef")
    channel.queue_bind("hdef", "amq.headers", "", arguments={"a": 1, "b": 2})
    channel.basic_publish("amq.headers", "", b"one", pika.BasicProperties(headers={"a": 1}))
    channel.basic_publish(
        "amq.headers", "", b"both", pika.BasicProperties(headers={"a": 1, "b": 2})
    )
    assert drain(channel, "hdef") == [b"both"]


def test_exchange_to_exchange_binding(channel: Any) -> None:
    channel.exchange_declare("src", "topic")
    channel.exchange_declare("mid", "direct")
    channel.exchange_declare("dst", "fanout")
    channel.exchange_bind("mid", "src", "orders.*")  # destination, source, key
    channel.exchange_bind("dst", "mid", "orders.new")
    declare_queues(channel, "via_dst", "via_mid")
    channel.queue_bind("via_dst", "dst", "")
    channel.queue_bind("via_mid", "mid", "orders.old")
    channel.basic_publish("src", "orders.new", b"new")
    channel.basic_publish("src", "orders.old", b"old")
    channel.basic_publish("src", "other", b"other")
    assert drain(channel, "via_dst") == [b"new"]
    assert drain(channel, "via_mid") == [b"old"]

    channel.exchange_unbind("dst", "mid", "orders.new")
    channel.basic_publish("src", "orders.new", b"new2")
    assert drain(channel, "via_dst") == []


def test_exchange_binding_cycle_delivers_once(channel: Any) -> None:
    channel.exchange_declare("c1", "fanout")
    channel.exchange_declare("c2", "fanout")
    channel.exchange_bind("c2", "c1")
    channel.exchange_bind("c1", "c2")
    channel.queue_declare("cq")
    channel.queue_bind("cq", "c2")
    channel.basic_publish("c1", "", b"m")
    assert drain(channel, "cq") == [b"m"]


def test_alternate_exchange_gets_unroutable_messages(channel: Any) -> None:
    channel.exchange_declare("ae", "fanout")
    channel.exchange_declare("main", "direct", arguments={"alternate-exchange": "ae"})
    declare_queues(channel, "routed", "unrouted")
    channel.queue_bind("routed", "main", "known")
    channel.queue_bind("unrouted", "ae", "")
    channel.basic_publish("main", "known", b"k")
    channel.basic_publish("main", "unknown", b"u")
    assert drain(channel, "routed") == [b"k"]
    assert drain(channel, "unrouted") == [b"u"]


def test_alternate_exchange_counts_as_routed_for_mandatory(channel: Any) -> None:
    channel.exchange_declare("ae2", "fanout")
    channel.exchange_declare("main2", "direct", arguments={"alternate-exchange": "ae2"})
    channel.queue_declare("catch")
    channel.queue_bind("catch", "ae2")
    # Raises UnroutableError if the broker returned it.
    channel.basic_publish("main2", "nothing-bound", b"m", mandatory=True)
    assert drain(channel, "catch") == [b"m"]


def test_unbind_stops_delivery(channel: Any) -> None:
    channel.exchange_declare("ux", "direct")
    channel.queue_declare("uq")
    channel.queue_bind("uq", "ux", "k")
    channel.basic_publish("ux", "k", b"before")
    channel.queue_unbind("uq", "ux", "k")
    channel.basic_publish("ux", "k", b"after")
    assert drain(channel, "uq") == [b"before"]


def test_unbind_headers_binding_with_arguments(channel: Any) -> None:
    args = {"x-match": "any", "h": "v"}
    channel.exchange_declare("uhx", "headers")
    channel.queue_declare("uhq")
    channel.queue_bind("uhq", "uhx", "", arguments=args)
    channel.basic_publish("uhx", "", b"before", pika.BasicProperties(headers={"h": "v"}))
    channel.queue_unbind("uhq", "uhx", "", arguments=args)
    channel.basic_publish("uhx", "", b"after", pika.BasicProperties(headers={"h": "v"}))
    assert drain(channel, "uhq") == [b"before"]


def test_deleted_exchange_no_longer_routes(channel: Any) -> None:
    channel.exchange_declare("gone", "fanout")
    channel.queue_declare("gq")
    channel.queue_bind("gq", "gone")
    channel.exchange_delete("gone")
    channel.exchange_declare("gone", "fanout")  # recreated: the old binding must not survive
    channel.basic_publish("gone", "", b"m")
    assert drain(channel, "gq") == []
