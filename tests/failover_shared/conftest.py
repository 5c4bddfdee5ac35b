"""Fixtures of the shared-storage failover tests: one pair of broker processes for the folder.

Starting two brokers is the slowest part of these tests, so the folder
shares one pair (`shared_pair`); `pair` hands each test a holder and a
waiter, respawning first whatever the previous test killed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.failover_shared.pair import SharedNode, SharedPair


@pytest.fixture(scope="package")
def shared_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedPair]:
    running = SharedPair(tmp_path_factory.mktemp("shared"))
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def pair(shared_pair: SharedPair) -> tuple[SharedNode, SharedNode]:
    """(holder, waiter): the first serves, the second waits for the lock."""
    return shared_pair.ready()
