"""`Session.publish` through the route cache is `Session.publish` routing every time,
and `Session.publish_to_queue` (kept for the STOMP adapter) is the same call (no network).

The same messages go to three brokers: one through `publish_to_queue`, one
through `publish`, one through `publish` with the route cache off, for queues
of every kind that acts on publish (limits, TTL, FIFO deduplication, delays,
priorities, durable with persistent messages) with and without a consumer,
and in a transaction: the results, the deliveries and the queues' contents
must be equal. A user who may not write to the default exchange is refused
by both calls, also once the route is cached.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moorage.broker.auth import Permission, User, UserDirectory
from moorage.broker.broker import Broker
from moorage.broker.config import default_guest
from moorage.broker.errors import AccessRefused
from moorage.broker.message import Message, Properties
from moorage.broker.session import PublishResult
from moorage.broker.vhost_routing import RouteCache
from moorage.storage import MemoryStore

QUEUES: dict[str, dict[str, Any]] = {
    "plain": {},
    "reject-publish": {"x-max-length": 2, "x-overflow": "reject-publish"},
    "drop-head": {"x-max-length": 2},
    "ttl": {"x-message-ttl": 60_000},
    "fifo": {"x-queue-type": "fifo", "x-content-based-deduplication": True},
    "delay": {"x-delivery-delay": 60_000},
    "priority": {"x-max-priority": 5},
}


class Sink:
    def __init__(self) -> None:
        self.deliveries: list[tuple[str, int, bool, bytes]] = []

    def deliver(
        self, consumer_tag: str, delivery_tag: int, redelivered: bool, message: Message
    ) -> None:
        self.deliveries.append((consumer_tag, delivery_tag, redelivered, message.body))

    def returned(self, message: Message, reply_code: int, reply_text: str) -> None:
        raise AssertionError("nothing is mandatory here")

    def cancelled(self, consumer_tag: str, error: Any) -> None:
        pass


async def run(
    kind: str,
    consumer: str | None,
    tx: bool,
    messages: list[tuple[bytes, int, int]],
    direct: bool,
    cached: bool = True,
) -> tuple[list[PublishResult], list[Any], list[bytes], bool]:
    broker = Broker(store=MemoryStore(), users=UserDirectory([default_guest()]))
    await broker.start()
    if not cached:
        broker.vhosts["/"].routes = RouteCache(limit=0)
    try:
        conn = broker.connect("/", broker.users.users["guest"], protocol="test", peer="test")
        sink = Sink()
        session = conn.open_session(sink)
        queue, _, _ = session.declare_queue("q", durable=True, arguments=QUEUES[kind])
        if consumer is not None:
            c = session.consume("q", "c", no_ack=consumer == "auto")
            c.prefetch = 2
            c.start()
        if tx:
            session.tx_select()
        results = []
        for body, mode, priority in messages:
            message = Message("", "q", Properties(delivery_mode=mode, priority=priority), body)
            if direct:
                results.append(session.publish_to_queue(queue, message))
            else:
                results.append(session.publish("", message))
        if tx:
            session.tx_commit()
        ready = [e.message.body for e in queue.ready.candidates()]
        return results, sink.deliveries, ready, conn.published
    finally:
        await broker.stop()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(QUEUES)),
    st.sampled_from([None, "auto", "manual"]),
    st.booleans(),
    st.lists(
        st.tuples(
            st.sampled_from([b"a", b"b", b"c", b"d"]), st.sampled_from([1, 2]), st.integers(0, 9)
        ),
        max_size=6,
    ),
)
async def test_publish_to_queue_equals_publish(
    kind: str, consumer: str | None, tx: bool, messages: list[tuple[bytes, int, int]]
) -> None:
    direct = await run(kind, consumer, tx, messages, direct=True)
    routed = await run(kind, consumer, tx, messages, direct=False)
    uncached = await run(kind, consumer, tx, messages, direct=False, cached=False)
    assert direct == routed == uncached


async def test_publish_to_queue_checks_write_permission() -> None:
    reader = User("reader", None, (), {"/": Permission(".*", "^$", ".*")})
    broker = Broker(store=MemoryStore(), users=UserDirectory([default_guest(), reader]))
    await broker.start()
    try:
        guest = broker.connect("/", broker.users.users["guest"], protocol="test", peer="test")
        queue, _, _ = guest.open_session(Sink()).declare_queue("q")
        guest.open_session(Sink()).publish("", Message("", "q", Properties(), b"cached"))
        assert broker.vhosts["/"].routes.get("", "q") is not None
        conn = broker.connect("/", reader, protocol="test", peer="test")
        session = conn.open_session(Sink())
        for publish in (
            lambda m: session.publish("", m),
            lambda m: session.publish_to_queue(queue, m),
        ):
            with pytest.raises(AccessRefused):
                publish(Message("", "q", Properties(), b"x"))
        assert queue.message_count == 1  # the guest's
    finally:
        await broker.stop()
