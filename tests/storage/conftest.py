"""Fixtures shared by the storage tests: one `store` per implementation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from moorage.storage.memory import MemoryStore
from moorage.storage.sqlite import SQLiteStore
from moorage.storage.store import Store

Settle = Callable[[Store], Awaitable[None]]


async def _settle(store: Store) -> None:
    """Wait until every change queued so far is durable; raise the store's error if any."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def callback(error: BaseException | None) -> None:
        if done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    store.when_durable(callback)
    await asyncio.wait_for(done, 10)


@pytest.fixture
def settle() -> Settle:
    """`await settle(store)`: wait for `when_durable`."""
    return _settle


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An open store of each implementation, closed after the test."""
    impl: Store
    if request.param == "memory":
        impl = MemoryStore()
    else:
        impl = SQLiteStore(tmp_path / "data" / "store.db")
    await impl.open()
    try:
        yield impl
    finally:
        await impl.close()
