"""A task on the loop that runs an async callable every few seconds until stopped.

The broker's housekeeping (the retention sweeper, the memory monitor) shares
this lifecycle: started with the broker, cancelled and awaited when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from moorage.broker.clock import SYSTEM_CLOCK, Clock


class Periodic:
    """Calls `tick` every `interval` seconds (after each wait) while running."""

    def __init__(
        self, interval: float, tick: Callable[[], Awaitable[None]], clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.interval = interval
        self.clock = clock
        self._tick = tick
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        """Start ticking (once; a second call does nothing)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Cancel the task and wait for it to end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self.clock.sleep(self.interval)
            await self._tick()
