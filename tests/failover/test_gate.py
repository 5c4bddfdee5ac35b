"""The durability gate: callbacks wait for the standby's ack, in order; ALONE and FENCED."""

from __future__ import annotations

import asyncio

import pytest

from moorage.storage.replication.gate import GateMode, ReplicationGate
from moorage.storage.store import StoreError


@pytest.fixture
def gate():
    loop = asyncio.new_event_loop()
    yield ReplicationGate(loop, GateMode.SYNC)
    loop.close()


def recorder(log: list, name: str):
    return lambda error: log.append((name, type(error).__name__ if error else None))


def test_callbacks_wait_for_the_ack_of_their_batch_in_order(gate):
    log: list = []
    gate.release([recorder(log, "1a"), recorder(log, "1b")], 1)
    gate.release([recorder(log, "2")], 2)
    gate.release([recorder(log, "settled")], None)  # behind every batch so far
    gate.release([recorder(log, "3")], 3)
    assert log == []
    assert (gate.waiting, gate.lag) == (5, 3)
    gate.acknowledge(1)
    assert [n for n, _ in log] == ["1a", "1b"]
    gate.acknowledge(3)
    assert [n for n, _ in log] == ["1a", "1b", "2", "settled", "3"]
    assert (gate.lag, gate.lag_seconds) == (0, 0.0)
    gate.release([recorder(log, "now")], None)  # nothing unacknowledged: at once
    assert log[-1] == ("now", None)


def test_alone_releases_everything_and_fenced_fails_everything(gate):
    log: list = []
    gate.release([recorder(log, "a")], 1)
    gate.set_mode(GateMode.ALONE)
    gate.release([recorder(log, "b")], 2)
    assert log == [("a", None), ("b", None)]
    gate.set_mode(GateMode.WAITING)
    gate.release([recorder(log, "c")], 3)
    gate.set_mode(GateMode.FENCED, "lost both")
    gate.release([recorder(log, "d")], 4)
    assert log[2:] == [("c", "StoreError"), ("d", "StoreError")]
    gate.acknowledge(4)  # a late ack confirms nothing once fenced
    assert len(log) == 4


def test_pending_while_a_batch_waits_for_the_standby_or_confirms_are_fenced(gate):
    assert not gate.pending
    gate.release([], 1)
    assert gate.pending
    gate.acknowledge(1)
    assert not gate.pending
    gate.set_mode(GateMode.FENCED, "lost both")
    assert gate.pending  # every reply that promises durability must fail
    gate.set_mode(GateMode.ALONE)
    gate.release([], 2)
    assert not gate.pending


def test_a_raising_callback_does_not_stop_the_others(gate):
    log: list = []
    errors: list = []
    gate.loop.set_exception_handler(lambda loop, context: errors.append(context))

    def boom(error: StoreError | None) -> None:
        raise RuntimeError("bug")

    gate.release([boom, recorder(log, "after")], 1)
    gate.acknowledge(1)
    assert log == [("after", None)]
    assert len(errors) == 1
