"""The broker's timers on a manual clock: behaviour at exact instants, without sleeping."""

from __future__ import annotations

import asyncio
import time

import pytest

from moorage.broker.clock import ManualClock, SystemClock
from moorage.broker.delayed import DELAY_HEADER
from tests.harness import CoreClient, clocked_core, message, settle

pytestmark = pytest.mark.timeout(60)


# -- the clock itself ------------------------------------------------------------------


def test_manual_clock_fires_due_timers_in_order_at_their_own_time():
    clock = ManualClock(wall=100.0, monotonic=5.0)
    seen: list[tuple[str, float, float]] = []

    def note(name: str) -> None:
        seen.append((name, clock.monotonic(), clock.wall()))

    clock.call_later(2.0, lambda: note("b"))
    clock.call_at(6.0, lambda: note("a"))
    late = clock.call_later(10.0, lambda: note("never"))
    # armed by a callback inside the span: fires in the same advance
    clock.call_later(1.5, lambda: clock.call_later(0.25, lambda: note("chained")))
    assert clock.advance(0.75) == 0
    assert clock.advance(3.0) == 4
    assert seen == [("a", 6.0, 101.0), ("chained", 6.75, 101.75), ("b", 7.0, 102.0)]
    assert (clock.monotonic(), clock.wall()) == (8.75, 103.75)
    late.cancel()
    assert clock.next_due() is None
    assert clock.advance(100.0) == 0
    assert clock.pending == 0


def test_manual_clock_wall_step_leaves_monotonic_timers_alone():
    clock = ManualClock(wall=1000.0, monotonic=0.0)
    fired: list[float] = []
    clock.call_later(5.0, lambda: fired.append(clock.monotonic()))
    clock.set_wall(0.0)  # an NTP step backwards
    clock.advance(4.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == [5.0]
    assert clock.wall() == pytest.approx(5.0)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1.0)


async def test_manual_clock_sleep_returns_when_advanced():
    clock = ManualClock()
    task = asyncio.get_running_loop().create_task(clock.sleep(30.0))
    await settle()
    clock.advance(29.999)
    await settle()
    assert not task.done()
    clock.advance(0.001)
    await settle()
    assert task.done()


async def test_system_clock_reads_the_os_clocks():
    clock = SystemClock()
    fired = asyncio.Event()
    clock.call_at(clock.monotonic() + 0.001, fired.set)
    await asyncio.wait_for(fired.wait(), 30)
    assert abs(clock.wall() - time.time()) < 60


# -- message TTL and queue expiry ---------------------------------------------------------


async def test_queue_ttl_expires_the_head_at_its_time_and_dead_letters_it():
    async with clocked_core() as (broker, clock):
        client = CoreClient(broker)
        session = client.session
        session.declare_queue("dlq")
        session.declare_queue(
            "ttl",
            arguments={
                "x-message-ttl": 1000,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": "dlq",
            },
        )
        start = clock.monotonic()
        session.publish("", message(b"a", "ttl"))  # due at 1.0 s
        clock.advance_to(start + 0.5)
        session.publish("", message(b"b", "ttl"))  # due at 1.5 s
        queues = broker.vhosts["/"].queues
        clock.advance_to(start + 0.999)
        assert (queues["ttl"].message_count, queues["dlq"].message_count) == (2, 0)
        clock.advance_to(start + 1.002)
        assert (queues["ttl"].message_count, queues["dlq"].message_count) == (1, 1)
        clock.advance_to(start + 1.499)
        assert queues["ttl"].message_count == 1
        clock.advance_to(start + 1.502)
        assert (queues["ttl"].message_count, queues["dlq"].message_count) == (0, 2)
        first = session.get("dlq", no_ack=True)
        second = session.get("dlq", no_ack=True)
        assert first is not None
        assert second is not None
        assert [first[2].body, second[2].body] == [b"a", b"b"]
        assert first[2].header("x-death")[0]["reason"] == "expired"
        client.close()


async def test_per_message_expiration_shorter_than_queue_ttl_wins():
    async with clocked_core() as (broker, clock):
        client = CoreClient(broker)
        session = client.session
        session.declare_queue("q", arguments={"x-message-ttl": 60_000})
        session.publish("", message(b"short", "q", expiration="200"))
        session.publish("", message(b"long", "q"))
        queue = broker.vhosts["/"].queues["q"]
        start = clock.monotonic()
        clock.advance_to(start + 0.199)
        assert queue.message_count == 2
        clock.advance_to(start + 0.202)
        assert queue.message_count == 1
        clock.advance_to(start + 59.999)
        assert queue.message_count == 1
        clock.advance_to(start + 60.002)
        assert queue.message_count == 0
        client.close()


async def test_get_does_not_return_an_entry_past_its_time_even_before_the_timer():
    async with clocked_core() as (broker, clock):
        client = CoreClient(broker)
        session = client.session
        session.declare_queue("q", arguments={"x-message-ttl": 100})
        session.publish("", message(b"x", "q"))
        clock.set_wall(clock.wall() + 0.1)  # wall time passed, no timer fired yet
        assert session.get("q", no_ack=True) is None
        client.close()


async def test_unused_queue_expires_after_x_expires_and_use_restarts_the_count():
    async with clocked_core() as (broker, clock):
        client = CoreClient(broker)
        session = client.session
        session.declare_queue("idle", arguments={"x-expires": 2000})
        queues = broker.vhosts["/"].queues
        clock.advance(1.5)
        assert session.get("idle") is None  # a use: the 2 s start again
        clock.advance(1.998)
        assert "idle" in queues
        session.consume("idle", "c").start()
        clock.advance(60.0)
        assert "idle" in queues  # never expires while it has a consumer
        session.cancel("c")
        clock.advance(1.998)
        assert "idle" in queues
        clock.advance(0.002)
        assert "idle" not in queues
        client.close()


# -- consumer ack timeout -----------------------------------------------------------------


async def test_unacked_delivery_returns_to_the_queue_at_the_consumer_timeout():
    async with clocked_core() as (broker, clock):
        holder = CoreClient(broker)
        holder.session.declare_queue("work", arguments={"x-consumer-timeout": 5000})
        holder.session.publish("", message(b"job", "work"))
        holder.session.consume("work", "slow").start()
        start = clock.monotonic()
        clock.set_wall(clock.wall() - 3600)  # a wall-clock step must not matter
        clock.advance_to(start + 4.999)
        assert [(body, redelivered) for _c, _t, redelivered, body in _plain(holder)] == [
            (b"job", False)
        ]
        clock.advance_to(start + 5.002)  # requeued, and given to the only consumer again
        assert [(body, redelivered) for _c, _t, redelivered, body in _plain(holder)] == [
            (b"job", False),
            (b"job", True),
        ]
        holder.close()


def _plain(client: CoreClient) -> list[tuple[str, int, bool, bytes]]:
    return [(c, t, r, m.body) for c, t, r, m in client.sink.deliveries]


# -- delayed delivery -------------------------------------------------------------------


async def test_delivery_delay_releases_exactly_at_due_time_in_due_order():
    async with clocked_core() as (broker, clock):
        client = CoreClient(broker)
        session = client.session
        session.declare_queue("later", arguments={"x-delivery-delay": 1000})
        start = clock.monotonic()
        session.publish("", message(b"1", "later"))  # due at 1.0 s
        clock.advance_to(start + 0.25)
        session.publish("", message(b"2", "later"))  # due at 1.25 s
        queue = broker.vhosts["/"].queues["later"]
        released: list[list[bytes]] = []
        for at in (0.998, 1.002, 1.248, 1.252):
            clock.advance_to(start + at)
            await settle()
            released.append([e.message.body for e in queue.ready])
        assert released == [[], [b"1"], [b"1"], [b"1", b"2"]]
        client.close()


async def test_delayed_exchange_orders_by_due_time_not_publish_time():
    async with clocked_core() as (broker, clock):
        client = CoreClient(broker)
        session = client.session
        session.declare_exchange("d", "x-delayed-message", arguments={"x-delayed-type": "direct"})
        session.declare_queue("out")
        session.bind_queue("out", "d", "k", {})
        for body, delay in ((b"300", 300), (b"100", 100), (b"0", 0), (b"200", 200)):
            session.publish("d", message(body, "k", headers={DELAY_HEADER: delay}))
        queue = broker.vhosts["/"].queues["out"]
        start = clock.monotonic()
        seen: list[list[bytes]] = []
        for at in (0.0, 0.098, 0.102, 0.198, 0.202, 0.298, 0.302):
            clock.advance_to(start + at)
            await settle()
            seen.append([e.message.body for e in queue.ready])
        assert seen == [
            [b"0"],
            [b"0"],
            [b"0", b"100"],
            [b"0", b"100"],
            [b"0", b"100", b"200"],
            [b"0", b"100", b"200"],
            [b"0", b"100", b"200", b"300"],
        ]
        client.close()


# -- retention ------------------------------------------------------------------------------


async def test_broker_retention_expires_entries_at_the_limit():
    async with clocked_core(retention=3600.0) as (broker, clock):
        client = CoreClient(broker)
        session = client.session
        session.declare_queue("kept")
        session.publish("", message(b"old", "kept"))
        queue = broker.vhosts["/"].queues["kept"]
        start = clock.monotonic()
        clock.advance_to(start + 3599.0)
        session.publish("", message(b"new", "kept"))
        clock.advance_to(start + 3599.998)
        assert queue.message_count == 2
        clock.advance_to(start + 3600.002)
        assert [e.message.body for e in queue.ready] == [b"new"]
        clock.advance_to(start + 7199.002)
        assert queue.message_count == 0
        client.close()
