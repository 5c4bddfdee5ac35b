"""The route cache (`broker.vhost_routing`): same results as routing every time, and never stale.

Twin brokers, one with the cache and one without (`limit=0`), go through the
same random mix of publishes and topology changes (bindings to queues and
between exchanges, alternate exchanges, queues and exchanges declared and
deleted), publishing to every (exchange, key) pair after each step: every
publish result and every queue's content must be equal.
Then one test per kind of change shows the cached route is dropped, and a
pika client sees a binding change at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pika
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from moorage.broker.auth import UserDirectory
from moorage.broker.broker import Broker
from moorage.broker.config import default_guest
from moorage.broker.errors import BrokerError
from moorage.broker.message import Message, Properties
from moorage.broker.session import Session
from moorage.broker.vhost_routing import RouteCache
from moorage.storage import MemoryStore

pytestmark = pytest.mark.timeout(60)


class Sink:
    def __init__(self) -> None:
        self.unroutable: list[bytes] = []

    def deliver(self, consumer_tag: str, delivery_tag: int, redelivered: bool, message: Message):
        pass

    def returned(self, message: Message, reply_code: int, reply_text: str) -> None:
        self.unroutable.append(message.body)

    def cancelled(self, consumer_tag: str, error: Any) -> None:
        pass


async def open_session(cached: bool = True) -> tuple[Broker, Session, Sink]:
    broker = Broker(store=MemoryStore(), users=UserDirectory([default_guest()]))
    await broker.start()
    if not cached:
        broker.vhosts["/"].routes = RouteCache(limit=0)
    conn = broker.connect("/", broker.users.users["guest"], protocol="test", peer="test")
    sink = Sink()
    return broker, conn.open_session(sink), sink


def publish(session: Session, exchange: str, key: str, body: bytes = b"m", **headers: Any):
    message = Message(exchange, key, Properties(headers=headers or None), body)
    return session.publish(exchange, message, mandatory=True)


def contents(broker: Broker) -> dict[str, list[bytes]]:
    return {
        name: [e.message.body for e in queue.ready.candidates()]
        for name, queue in sorted(broker.vhosts["/"].queues.items())
    }


# -- twins ----------------------------------------------------------------------------

QUEUES = ["q1", "q2"]
EXCHANGES = {"d": "direct", "t": "topic", "f": "fanout", "h": "headers", "ae": "fanout"}
KEYS = ["a", "q1"]  # few, so that the random changes hit the routes in use
ALTERNATE = {"d": "ae"}  # "ae" is not there at the start: declaring it changes "d"'s routes

queue_name = st.sampled_from(QUEUES)
exchange_name = st.sampled_from(sorted(EXCHANGES))
key = st.sampled_from(KEYS)
binding = st.tuples(st.sampled_from(["bind", "unbind"]), queue_name, exchange_name, key)
operation = st.one_of(
    binding,
    binding,
    binding,
    st.tuples(st.just("publish-headers"), st.sampled_from(["h", "d"]), st.sampled_from([1, 2])),
    st.tuples(
        st.sampled_from(["bind-exchange", "unbind-exchange"]), exchange_name, exchange_name, key
    ),
    st.tuples(st.sampled_from(["declare-queue", "delete-queue"]), queue_name),
    st.tuples(st.sampled_from(["declare-exchange", "delete-exchange"]), exchange_name),
)


def declare_exchange(session: Session, name: str) -> None:
    alternate = ALTERNATE.get(name)
    arguments = {"alternate-exchange": alternate} if alternate else {}
    session.declare_exchange(name, EXCHANGES[name], arguments=arguments)


def apply(session: Session, op: tuple[Any, ...], n: int) -> Any:
    """Run one operation; its outcome (a publish result, or the error's class)."""
    kind, *args = op
    try:
        if kind == "publish":
            return publish(session, args[0], args[1], b"%d" % n)
        if kind == "publish-headers":
            return publish(session, args[0], "a", b"%d" % n, x=args[1])
        if kind == "bind":
            session.bind_queue(args[0], args[1], args[2], {"x": 1} if args[1] == "h" else {})
        elif kind == "unbind":
            session.unbind_queue(args[0], args[1], args[2], {"x": 1} if args[1] == "h" else {})
        elif kind == "bind-exchange":
            session.bind_exchange(args[0], args[1], args[2], {})
        elif kind == "unbind-exchange":
            session.unbind_exchange(args[0], args[1], args[2], {})
        elif kind == "declare-queue":
            session.declare_queue(args[0])
        elif kind == "delete-queue":
            session.delete_queue(args[0])
        elif kind == "declare-exchange":
            declare_exchange(session, args[0])
        elif kind == "delete-exchange":
            session.delete_exchange(args[0])
    except BrokerError as e:
        return type(e).__name__
    return None


async def run(operations: list[tuple[Any, ...]], cached: bool) -> list[Any]:
    broker, session, sink = await open_session(cached)
    try:
        for name in QUEUES[:2]:
            session.declare_queue(name)
        for name in EXCHANGES:
            if name != "ae":
                declare_exchange(session, name)
        trace: list[Any] = []
        for n, op in enumerate(operations):
            trace.append(apply(session, op, n))
            # every route is used (and cached) before the next change
            for exchange in ("", *sorted(EXCHANGES)):
                for routing_key in KEYS:
                    trace.append(apply(session, ("publish", exchange, routing_key), n))
            trace.append(contents(broker))
        trace.append(sink.unroutable)
        return trace
    finally:
        await broker.stop()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, max_size=20))
@example([("bind", "q1", "d", "a"), ("unbind", "q1", "d", "a")])
@example(
    [("bind", "q1", "f", "a"), ("bind-exchange", "f", "t", "a"), ("unbind-exchange", "f", "t", "a")]
)
@example([("bind", "q1", "h", "a"), ("publish-headers", "h", 1), ("publish-headers", "h", 2)])
async def test_cached_routing_equals_routing_every_time(operations):
    assert await run(operations, cached=True) == await run(operations, cached=False)


# -- invalidation, one change at a time ----------------------------------------------


@pytest.fixture
async def core() -> AsyncIterator[tuple[Broker, Session, Sink]]:
    broker, session, sink = await open_session()
    yield broker, session, sink
    await broker.stop()


def routed_to(broker: Broker, session: Session, exchange: str, key: str) -> list[str]:
    """Publish once and say which queues got it (and that the route is cached now)."""
    before = contents(broker)
    publish(session, exchange, key)
    after = contents(broker)
    assert broker.vhosts["/"].routes.get(exchange, key) is not None
    return [name for name in after if len(after[name]) > len(before.get(name, []))]


async def test_bind_and_unbind_drop_the_route(core):
    broker, session, _ = core
    session.declare_exchange("x", "direct")
    session.declare_queue("q")
    assert routed_to(broker, session, "x", "k") == []
    session.bind_queue("q", "x", "k", {})
    assert routed_to(broker, session, "x", "k") == ["q"]
    session.unbind_queue("q", "x", "k", {})
    assert routed_to(broker, session, "x", "k") == []


async def test_queue_declare_and_delete_drop_the_default_exchange_route(core):
    broker, session, sink = core
    assert routed_to(broker, session, "", "q") == []
    session.declare_queue("q")
    assert routed_to(broker, session, "", "q") == ["q"]
    session.delete_queue("q")
    assert routed_to(broker, session, "", "q") == []
    assert sink.unroutable == [b"m", b"m"]


async def test_exchange_delete_drops_the_route(core):
    broker, session, _ = core
    session.declare_exchange("x", "fanout")
    session.declare_queue("q")
    session.bind_queue("q", "x", "", {})
    assert routed_to(broker, session, "x", "k") == ["q"]
    session.delete_exchange("x")
    assert broker.vhosts["/"].routes.get("x", "k") is None
    with pytest.raises(BrokerError):
        publish(session, "x", "k")
    session.declare_exchange("x", "direct")  # the same name, another table
    assert routed_to(broker, session, "x", "k") == []


async def test_exchange_to_exchange_bindings_drop_the_route(core):
    broker, session, _ = core
    session.declare_exchange("front", "topic")
    session.declare_exchange("back", "fanout")
    session.declare_queue("q")
    session.bind_queue("q", "back", "", {})
    assert routed_to(broker, session, "front", "a.b") == []
    session.bind_exchange("back", "front", "a.*", {})
    assert routed_to(broker, session, "front", "a.b") == ["q"]
    session.unbind_exchange("back", "front", "a.*", {})
    assert routed_to(broker, session, "front", "a.b") == []


async def test_a_late_alternate_exchange_drops_the_route(core):
    broker, session, _ = core
    session.declare_exchange("x", "direct", arguments={"alternate-exchange": "ae"})
    session.declare_queue("q")
    assert routed_to(broker, session, "x", "k") == []
    session.declare_exchange("ae", "fanout")
    session.bind_queue("q", "ae", "", {})
    assert routed_to(broker, session, "x", "k") == ["q"]


async def test_routes_by_headers_internal_and_delayed_exchanges_are_not_cached(core):
    broker, session, _ = core
    routes = broker.vhosts["/"].routes
    session.declare_queue("q")
    session.declare_exchange("h", "headers")
    session.bind_queue("q", "h", "", {"x-match": "any", "a": 1})
    session.declare_exchange("via-h", "fanout")
    session.bind_exchange("h", "via-h", "", {})
    session.declare_exchange("internal", "fanout", internal=True)
    session.declare_exchange("late", "x-delayed-message", arguments={"x-delayed-type": "direct"})
    for exchange in ("h", "via-h", "late"):
        publish(session, exchange, "k", a=1)
        assert routes.get(exchange, "k") is None
    session.bind_exchange("internal", "via-h", "", {})
    broker.vhosts["/"].route_from("internal", Message("internal", "k", Properties(), b""))
    assert routes.get("internal", "k") is None
    assert len(routes) == 0


def test_the_cache_is_bounded():
    cache: RouteCache[int] = RouteCache(limit=3)
    for n in range(3):
        cache.put("x", str(n), n)
    assert len(cache) == 3
    assert cache.get("x", "0") == 0
    cache.put("x", "3", 3)  # full: starts over
    assert len(cache) == 1
    assert cache.get("x", "0") is None
    assert cache.get("x", "3") == 3
    off: RouteCache[int] = RouteCache(limit=0)
    off.put("x", "k", 1)
    assert len(off) == 0


# -- with a real client ----------------------------------------------------------------

Connect = Callable[..., pika.BlockingConnection]


def test_a_pika_publisher_sees_binding_changes_at_once(connect: Connect) -> None:
    channel = connect().channel()
    channel.confirm_delivery()
    channel.exchange_declare("rc.x", "direct")
    channel.queue_declare("rc.q")
    returned: list[bytes] = []
    channel.add_on_return_callback(lambda _ch, _method, _props, body: returned.append(body))

    def send(body: bytes) -> None:
        try:
            channel.basic_publish("rc.x", "k", body, mandatory=True)
        except pika.exceptions.UnroutableError:
            returned.append(body)

    send(b"1")  # unroutable, and that route is cached
    channel.queue_bind("rc.q", "rc.x", "k")
    send(b"2")
    send(b"3")
    channel.queue_unbind("rc.q", "rc.x", "k")
    send(b"4")
    channel.queue_bind("rc.q", "rc.x", "k")
    channel.queue_delete("rc.q")
    send(b"5")
    assert returned == [b"1", b"4", b"5"]
    channel.queue_declare("rc.q")
    channel.basic_publish("", "rc.q", b"6")
    assert channel.basic_get("rc.q", auto_ack=True)[2] == b"6"
