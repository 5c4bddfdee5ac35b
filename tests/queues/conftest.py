"""Fixtures for the queue feature tests: a broker on a manual clock, a broker process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from moorage.broker.clock import ManualClock
from tests.durability.broker_process import BrokerProcess
from tests.helpers import RunningBroker, make_config


@pytest.fixture
def broker_process(tmp_path: Path) -> Iterator[BrokerProcess]:
    """`moorage serve` in a subprocess (SQLite store): stop and start it to test restarts."""
    process = BrokerProcess(tmp_path / "data", durability="nosync")
    yield process
    process.kill()


@pytest.fixture
def clocked(start_broker, tmp_path: Path) -> RunningBroker:
    """A broker (SQLite store) whose timers run on a `ManualClock` (`clocked.clock`).

    Move its time with `tests.queues.helpers.advance`; nothing time-dependent
    happens in between, however slow the machine.
    """
    config = make_config(tmp_path)
    config.storage.backend = "sqlite"
    config.storage.durability = "nosync"
    return start_broker(config, clock=ManualClock())


@pytest.fixture
def clocked_channel(clocked: RunningBroker) -> Iterator[Any]:
    """A pika channel to the `clocked` broker."""
    conn = pika.BlockingConnection(pika.URLParameters(clocked.url))
    yield conn.channel()
    if conn.is_open:
        conn.close()
