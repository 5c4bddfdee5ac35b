"""The memory monitor's decisions on the broker's clock: what it measures and when it trims."""

from __future__ import annotations

from pathlib import Path

import pytest

from moorage.broker import allocator
from moorage.broker.clock import ManualClock
from moorage.broker.config import Config, ConfigError
from moorage.broker.embedded import embedded_config
from moorage.broker.flow import WriteFlow
from moorage.broker.memory import (
    RELEASE_EVERY,
    RELEASE_STEP,
    TRIM_EVERY,
    TRIM_STEP,
    MemoryMonitor,
    process_rss,
)
from moorage.storage import MemoryStore
from moorage.storage.sqlite import SQLiteStore

glibc = pytest.mark.skipif(allocator.free_heap_bytes() is None, reason="needs glibc 2.33+")


def monitor(watermark: int, queued: int = 0, strategy: str = "rss") -> MemoryMonitor:
    return MemoryMonitor(
        watermark, WriteFlow(MemoryStore(), 1 << 30), lambda: queued, ManualClock(), strategy
    )


def test_rss_strategy_measures_the_process() -> None:
    rss = process_rss()
    assert rss is not None
    assert rss > 10 * 1024 * 1024
    low = monitor(1024, queued=0)
    low.check()
    assert low.flow.memory_alarm
    assert low.used >= rss // 2
    high = monitor(1 << 50, queued=1 << 40)
    high.check()
    assert not high.flow.memory_alarm  # the queued estimate does not decide


def test_queued_strategy_measures_queued_messages() -> None:
    under = monitor(1000, queued=1000, strategy="queued")
    under.check()
    assert not under.flow.memory_alarm
    assert under.used == 1000
    over = monitor(1000, queued=1001, strategy="queued")
    over.check()
    assert over.flow.memory_alarm


def test_strategy_is_checked(tmp_path: Path) -> None:
    assert Config().limits.memory_calculation_strategy == "rss"
    assert embedded_config().limits.memory_calculation_strategy == "queued"
    path = tmp_path / "m.toml"
    path.write_text('[limits]\nmemory_calculation_strategy = "queued"\n')
    assert Config.load(path).limits.memory_calculation_strategy == "queued"
    path.write_text('[limits]\nmemory_calculation_strategy = "erlang"\n')
    with pytest.raises(ConfigError, match="memory_calculation_strategy"):
        Config.load(path)
    with pytest.raises(ValueError, match="strategy"):
        monitor(1, strategy="erlang")


@glibc
def test_trims_after_large_frees_at_most_every_interval() -> None:
    memory = monitor(1 << 50)
    clock = memory.clock
    assert isinstance(clock, ManualClock)
    # 64 KiB bodies, each followed by a small malloc'd object that stays: the
    # freed bodies are holes glibc keeps (not a top chunk it trims by itself).
    # The first look is taken while they are held: the allocator's free bytes
    # then are its low point, whatever earlier tests left free in the heap.
    held = [bytearray(64 * 1024 if i % 2 == 0 else 600) for i in range(8 * TRIM_STEP // 65536)]
    memory.check()
    assert memory.trims == 0  # nothing freed yet: a trim would only walk the heap
    del held[::2]
    memory.check()
    assert memory.trims == 0  # within TRIM_EVERY of the last look
    clock.advance(TRIM_EVERY)
    memory.check()
    assert memory.trims == 1
    clock.advance(TRIM_EVERY)
    memory.check()
    assert memory.trims == 1  # nothing more was freed


def test_trims_while_the_alarm_is_set() -> None:
    memory = monitor(1)
    clock = memory.clock
    assert isinstance(clock, ManualClock)
    memory.check()
    assert memory.flow.memory_alarm
    trims = memory.trims
    clock.advance(TRIM_EVERY)
    memory.check()
    assert memory.trims == trims + (allocator.free_heap_bytes() is not None)


async def test_store_caches_are_released_once_a_drain_settles(tmp_path: Path) -> None:
    """A queue that held `RELEASE_STEP` and drained releases the store's page cache
    once; traffic that never queues that much does not (the cache keeps serving)."""
    store = SQLiteStore(tmp_path / "m.db")
    await store.open()
    releases = 0

    async def release() -> None:
        nonlocal releases
        releases += 1
        await store.release_memory()

    queued = 0
    clock = ManualClock()
    memory = MemoryMonitor(
        1 << 50, WriteFlow(store, 1 << 30), lambda: queued, clock, "rss", release
    )

    async def look(now_queued: int) -> None:
        nonlocal queued
        queued = now_queued
        clock.advance(TRIM_EVERY)
        memory.check()
        await memory.stop()  # waits for a release under way

    try:
        for depth in (0, 2 * RELEASE_STEP, 0):  # fills, then drains
            await look(depth)
        assert releases == 0  # still falling at the last look
        await look(0)
        assert releases == 1  # settled
        await look(0)
        assert releases == 1  # once per drain
        for depth in (RELEASE_STEP // 2, 0, 0, RELEASE_STEP // 2, 0, 0):
            await look(depth)
        assert releases == 1  # shallow traffic keeps the cache
    finally:
        await store.close()


async def test_store_caches_are_released_again_when_the_process_regrew() -> None:
    """Traffic that flows through without queueing, after a release, regrows the RSS
    (the store's page cache, heap pages touched again): once the queues are quiet
    and the RSS is `TRIM_STEP` above its low point since the release, the caches
    go again, `RELEASE_EVERY` after the last release at the earliest."""
    releases = 0

    async def release() -> None:
        nonlocal releases
        releases += 1

    queued, rss = 0, 100 * TRIM_STEP
    clock = ManualClock()
    memory = MemoryMonitor(
        1 << 50, WriteFlow(MemoryStore(), 1 << 30), lambda: queued, clock, "rss", release,
        read_rss=lambda: rss,
    )  # fmt: skip

    async def look(now_queued: int, now_rss: int) -> None:
        nonlocal queued, rss
        queued, rss = now_queued, now_rss
        clock.advance(TRIM_EVERY)
        memory.check()
        await memory.stop()  # waits for a release under way

    low = 50 * TRIM_STEP
    for depth in (2 * RELEASE_STEP, 0, 0):  # a drain, released at the third look
        await look(depth, low)
    assert releases == 1
    await look(0, low)  # the RSS after the release: the low point
    await look(0, low + TRIM_STEP - 1)
    assert releases == 1  # grew, not by TRIM_STEP
    await look(RELEASE_STEP // 2, low + 2 * TRIM_STEP)
    await look(0, low + 2 * TRIM_STEP)
    assert releases == 1  # grew, but the queues were not quiet
    for _ in range(int(RELEASE_EVERY / TRIM_EVERY) - 5):
        await look(0, low + 2 * TRIM_STEP)
    assert releases == 1  # quiet and grown, but within RELEASE_EVERY of the release
    await look(0, low + 2 * TRIM_STEP)
    assert releases == 2  # RELEASE_EVERY after it
    for _ in range(2 * int(RELEASE_EVERY / TRIM_EVERY)):
        await look(0, low + 2 * TRIM_STEP)
    assert releases == 2  # the RSS did not fall: its low point is now this level


def test_regrown_rss_is_trimmed_without_store_caches() -> None:
    """Without a store cache to release (the in-memory store), regrowth is trimmed."""
    rss = 100 * TRIM_STEP
    clock = ManualClock()
    memory = MemoryMonitor(
        1 << 50, WriteFlow(MemoryStore(), 1 << 30), lambda: 0, clock, "rss", read_rss=lambda: rss
    )
    memory.check()
    rss += TRIM_STEP
    clock.advance(RELEASE_EVERY)
    memory.check()
    assert memory.trims == (allocator.free_heap_bytes() is not None)
