from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.durability.broker_process import BrokerProcess


@pytest.fixture
def broker_process(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path / "data")
    yield process
    process.kill()
