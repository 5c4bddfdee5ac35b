"""AMQP liveness on a manual clock: heartbeats, the handshake and the close-ok timeouts.

The adapter runs in `AdapterHarness` (fake shell, `ManualClock`), so every
deadline is checked to the hundredth of a second without sleeping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pamqp import commands, frame

from moorage.broker.broker import Broker
from moorage.broker.clock import ManualClock
from moorage.protocols.amqp091.adapter import CLOSE_OK_TIMEOUT, AMQPConnection
from tests.harness import AdapterHarness, clocked_core

HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"


@pytest.fixture
async def core() -> AsyncIterator[tuple[Broker, ManualClock]]:
    async with clocked_core() as (broker, clock):
        yield broker, clock


def amqp(value: commands.Frame, channel: int = 0) -> bytes:
    return frame.marshal(value, channel)


def opened(broker: Broker, clock: ManualClock, heartbeat: int) -> AdapterHarness:
    """A connection through connection.open-ok with this heartbeat; its output taken."""
    harness = AdapterHarness(broker, clock, AMQPConnection)
    harness.feed(b"AMQP\x00\x00\x09\x01")
    harness.feed(amqp(commands.Connection.StartOk(response="\0guest\0guest")))
    harness.feed(
        amqp(commands.Connection.TuneOk(channel_max=0, frame_max=131072, heartbeat=heartbeat))
    )
    harness.feed(amqp(commands.Connection.Open(virtual_host="/")))
    assert harness.take().endswith(amqp(commands.Connection.OpenOk()))
    return harness


async def test_without_heartbeats_a_silent_client_stays_and_no_timer_is_armed(core):
    broker, clock = core
    harness = opened(broker, clock, heartbeat=0)
    assert harness.adapter.next_deadline() == float("inf")
    harness.advance(7200.0)
    assert not harness.closed
    assert harness.take() == b""


async def test_a_talking_client_is_kept_and_fed_no_heartbeats_while_we_talk(core):
    broker, clock = core
    harness = opened(broker, clock, heartbeat=2)
    harness.feed(amqp(commands.Channel.Open(), 1))
    for _ in range(10):  # 10 s: five heartbeat intervals, each with traffic both ways
        harness.advance(0.5)
        harness.feed(amqp(commands.Basic.Qos(prefetch_count=1), 1))
        harness.advance(0.5)
    assert not harness.closed
    assert HEARTBEAT not in harness.take()


async def test_a_silent_client_is_closed_after_two_heartbeat_intervals(core):
    broker, clock = core
    harness = opened(broker, clock, heartbeat=2)
    harness.advance(3.99)
    assert not harness.closed
    assert harness.take() == HEARTBEAT * 2  # at 2 s and 3 s; open-ok covered the first tick
    harness.advance(0.02)
    assert harness.closed


async def test_the_client_has_close_ok_timeout_to_answer_our_connection_close(core):
    broker, clock = core
    harness = opened(broker, clock, heartbeat=1)
    harness.feed(amqp(commands.Basic.Qos(prefetch_count=1)))  # a channel method on channel 0
    _, channel, close = frame.unmarshal(harness.take())
    assert channel == 0
    assert isinstance(close, commands.Connection.Close)
    assert close.reply_code == 504
    harness.advance(CLOSE_OK_TIMEOUT - 0.01)  # no heartbeats while closing, no other timeout
    assert not harness.closed
    assert harness.take() == b""
    harness.advance(0.02)
    assert harness.closed
