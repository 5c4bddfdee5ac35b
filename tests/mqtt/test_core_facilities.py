"""The MQTT adapter on the core's shared facilities, without sockets (tests/harness.py).

Which connection holds a client id is the broker's `ClientIds` ("mqtt"), the
session registry lives on its broker, and Keep Alive is the core's
`KeepAlive` (a client the broker holds by flow control is not silent).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from moorage.broker.broker import Broker
from moorage.broker.clock import ManualClock
from moorage.protocols.mqtt.adapter import MQTTConnection
from moorage.protocols.mqtt.registry import client_key, registry_for
from moorage.storage import MemoryStore
from moorage.storage.store import DurabilityCallback
from tests.harness import AdapterHarness, clocked_core, settle

pytestmark = pytest.mark.timeout(60)

CONNACK_311_ACCEPTED = b"\x20\x02\x00\x00"
DISCONNECT_5_TAKEN_OVER = b"\xe0\x01\x8e"  # no properties: the length may stop there


def connect(client_id: bytes, *, keep_alive: int = 0, version: int = 4) -> bytes:
    """CONNECT, clean session, guest/guest (MQTT 5 with an empty property list)."""
    props = b"\x00" if version == 5 else b""
    body = (
        b"\x00\x04MQTT"
        + bytes([version, 0xC2])
        + keep_alive.to_bytes(2, "big")
        + props
        + len(client_id).to_bytes(2, "big")
        + client_id
        + b"\x00\x05guest\x00\x05guest"
    )
    return b"\x10" + bytes([len(body)]) + body


@pytest.fixture
async def core() -> AsyncIterator[tuple[Broker, ManualClock]]:
    async with clocked_core() as (broker, clock):
        registry = registry_for(broker)  # what the MQTT listener sets up when it starts
        registry.call_later = clock.call_later
        registry.clock = clock.wall
        yield broker, clock


async def test_the_client_id_is_held_in_the_brokers_client_ids_and_taken_over(core) -> None:
    broker, clock = core
    holders = broker.client_ids("mqtt")
    first = AdapterHarness(broker, clock, MQTTConnection)
    first.feed(connect(b"c", version=5))
    assert first.take().startswith(b"\x20")  # CONNACK
    assert holders.holder(client_key("/", "c")) is first.adapter
    second = AdapterHarness(broker, clock, MQTTConnection)
    second.feed(connect(b"c", version=5))
    assert first.take() == DISCONNECT_5_TAKEN_OVER  # [MQTT-3.1.4-3]
    assert first.closed
    assert holders.holder(client_key("/", "c")) is second.adapter
    first.lose_connection()  # the old socket going away frees nothing of its successor's
    assert holders.holder(client_key("/", "c")) is second.adapter
    second.lose_connection()
    assert len(holders) == 0


async def test_each_broker_has_its_own_session_registry(core) -> None:
    broker, _clock = core
    assert registry_for(broker) is registry_for(broker)
    async with clocked_core() as (other, _):
        assert registry_for(other) is not registry_for(broker)
        assert registry_for(other).connections is other.client_ids("mqtt")


async def test_a_client_held_by_flow_control_is_not_silent(core) -> None:
    broker, clock = core
    harness = AdapterHarness(broker, clock, MQTTConnection)
    harness.feed(connect(b"held", keep_alive=10))
    assert harness.take() == CONNACK_311_ACCEPTED
    harness.advance(14.0)
    harness.adapter.peer_held(clock.monotonic())  # the shell is not reading it
    assert harness.adapter.next_deadline() == pytest.approx(clock.monotonic() + 15.0)


class HeldStore(MemoryStore):
    """A memory store whose writes become durable only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[DurabilityCallback] = []

    def when_durable(self, callback: DurabilityCallback, *, removals: bool = True) -> None:
        self.waiting.append(callback)

    def make_durable(self) -> None:
        waiting, self.waiting = self.waiting, []
        for callback in waiting:
            callback(None)


async def test_a_puback_that_needs_nothing_waits_behind_one_that_waits_for_the_store() -> None:
    store = HeldStore()
    async with clocked_core(store=store) as (broker, clock):
        registry = registry_for(broker)
        registry.call_later = clock.call_later
        registry.clock = clock.wall
        harness = AdapterHarness(broker, clock, MQTTConnection)
        harness.feed(connect(b"pub"))
        assert harness.take() == CONNACK_311_ACCEPTED
        harness.feed(b"\x33\x06\x00\x01t\x00\x01x")  # QoS 1, RETAIN: the store must have it
        harness.feed(b"\x32\x06\x00\x01u\x00\x02x")  # QoS 1, routed nowhere: nothing to store
        assert harness.take() == b""  # the second PUBACK may not overtake the first
        store.make_durable()
        await settle()
        assert harness.take() == b"\x40\x02\x00\x01" + b"\x40\x02\x00\x02"
        harness.feed(b"\x32\x06\x00\x01u\x00\x03x")  # nothing waits any more: at once
        assert harness.take() == b"\x40\x02\x00\x03"
