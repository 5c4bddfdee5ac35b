"""Fixtures for the queue feature tests: pika helpers and a restartable broker process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.durability.broker_process import BrokerProcess


@pytest.fixture
def broker_process(tmp_path: Path) -> Iterator[BrokerProcess]:
    """`moorage serve` in a subprocess (SQLite store): stop and start it to test restarts."""
    process = BrokerProcess(tmp_path / "data", durability="nosync")
    yield process
    process.kill()
