"""Every protocol's connection timers run on the broker's clock: checked at exact instants.

Each adapter runs in `tests.harness.AdapterHarness` (a fake shell, as
`protocols.tcp.TCPShell` drives it) on a `ManualClock`: the test speaks the
protocol in plain bytes, moves time and reads what the adapter wrote. No
socket, no sleep: handshake timeouts, AMQP heartbeats, MQTT keep-alive and
STOMP heart-beats are checked a few milliseconds either side of their due time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pamqp import commands, frame

from moorage.broker.broker import Broker
from moorage.broker.clock import ManualClock
from moorage.protocols.amqp091.adapter import AMQPConnection
from moorage.protocols.mqtt.adapter import MQTTConnection
from moorage.protocols.mqtt.server import registry_for
from moorage.protocols.stomp.adapter import StompConnection
from tests.harness import AdapterHarness, clocked_core

pytestmark = pytest.mark.timeout(60)

AMQP_HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"


@pytest.fixture
async def core() -> AsyncIterator[tuple[Broker, ManualClock]]:
    async with clocked_core() as (broker, clock):
        registry = registry_for(broker)  # what the MQTT listener sets up when it starts
        registry.call_later = clock.call_later
        registry.clock = clock.wall
        yield broker, clock


@pytest.mark.parametrize("factory", [AMQPConnection, MQTTConnection, StompConnection])
async def test_a_client_that_never_completes_the_handshake_is_closed_on_time(core, factory):
    broker, clock = core
    harness = AdapterHarness(broker, clock, factory)
    limit = broker.limits.handshake_timeout
    harness.advance(limit - 0.005)
    assert not harness.closed
    harness.advance(0.01)
    assert harness.closed


def amqp(value: commands.Frame) -> bytes:
    return frame.marshal(value, 0)


async def test_amqp_heartbeats_are_sent_and_a_silent_client_is_dropped(core):
    broker, clock = core
    harness = AdapterHarness(broker, clock, AMQPConnection)
    harness.feed(b"AMQP\x00\x00\x09\x01")
    harness.feed(amqp(commands.Connection.StartOk(response="\0guest\0guest")))
    harness.feed(amqp(commands.Connection.TuneOk(channel_max=0, frame_max=131072, heartbeat=2)))
    harness.feed(amqp(commands.Connection.Open(virtual_host="/")))
    assert not harness.closed
    harness.take()
    harness.advance(1.01)  # the first tick: open-ok went out during it, no beat needed
    assert harness.take() == b""
    harness.advance(1.0)  # a whole tick (half the interval) in silence: we beat
    assert harness.take() == AMQP_HEARTBEAT
    harness.advance(1.98)  # just under two intervals without a byte from the client
    assert not harness.closed
    harness.feed(AMQP_HEARTBEAT)  # the client beats: two more intervals from now
    harness.advance(3.99)
    assert not harness.closed
    harness.advance(1.02)  # the first timer tick past two silent intervals closes it
    assert harness.closed


def mqtt_connect(keep_alive: int) -> bytes:
    """MQTT 3.1.1 CONNECT, clean session, client id "c", guest/guest."""
    body = (
        b"\x00\x04MQTT\x04\xc2"
        + keep_alive.to_bytes(2, "big")
        + b"\x00\x01c\x00\x05guest\x00\x05guest"
    )
    return b"\x10" + bytes([len(body)]) + body


async def test_mqtt_keep_alive_closes_after_one_and_a_half_periods_of_silence(core):
    broker, clock = core
    harness = AdapterHarness(broker, clock, MQTTConnection)
    harness.feed(mqtt_connect(keep_alive=10))
    assert harness.take() == b"\x20\x02\x00\x00"  # CONNACK, accepted
    harness.advance(14.0)
    harness.feed(b"\xc0\x00")  # PINGREQ: the 15 s start again
    assert harness.take() == b"\xd0\x00"  # PINGRESP
    harness.advance(14.995)
    assert not harness.closed
    harness.advance(0.01)  # [MQTT-3.1.2-24]
    assert harness.closed


async def test_stomp_heart_beats_both_ways(core):
    broker, clock = core
    harness = AdapterHarness(broker, clock, StompConnection)
    harness.feed(
        b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n"
        b"heart-beat:1000,1000\n\n\x00"
    )
    assert harness.take().startswith(b"CONNECTED\n")
    harness.advance(0.505)  # the first tick: CONNECTED went out during it
    assert harness.take() == b""
    harness.advance(0.5)  # a whole tick (half our 1 s send interval) in silence: a heart-beat
    assert harness.take() == b"\n"
    harness.advance(0.99)  # the client may be two intervals late
    assert not harness.closed
    harness.advance(0.01)
    assert harness.closed


def mqtt5_connect(client_id: bytes, session_expiry: int) -> bytes:
    """MQTT 5 CONNECT, clean start off, no keep-alive, guest/guest, a Session Expiry Interval."""
    properties = b"\x11" + session_expiry.to_bytes(4, "big")
    body = (
        b"\x00\x04MQTT\x05\xc0\x00\x00"
        + bytes([len(properties)])
        + properties
        + len(client_id).to_bytes(2, "big")
        + client_id
        + b"\x00\x05guest\x00\x05guest"
    )
    return b"\x10" + bytes([len(body)]) + body


async def test_mqtt5_session_expires_at_its_interval_after_the_connection_is_gone(core):
    broker, clock = core
    sessions = registry_for(broker).sessions
    harness = AdapterHarness(broker, clock, MQTTConnection)
    harness.feed(mqtt5_connect(b"sx", session_expiry=10))
    connack = harness.take()
    assert (connack[0], connack[2:4]) == (0x20, b"\x00\x00")  # CONNACK: new session, success
    assert ("/", "sx") in sessions
    harness.advance(100.0)  # connected: the interval counts only once it is gone
    harness.lose_connection()
    harness.advance(9.995)
    assert ("/", "sx") in sessions
    harness.advance(0.01)  # [MQTT-3.1.2-23]
    assert ("/", "sx") not in sessions
