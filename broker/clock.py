"""Time as an input: the one clock every broker timer reads and arms.

Theory of operation
-------------------
The broker never calls `time.time()`, `time.monotonic()` or the loop's
`call_later` for its timers; it asks its `Clock` (`Broker.clock`). A clock
gives two readings:

- `monotonic()`: seconds on a clock that never jumps. Intervals that live
  only while the process runs use it: consumer ack timeouts, `x-expires`
  (queue unused), keep-alives, heart-beats and handshake deadlines (the
  protocol shells pass it to the adapters as `now`).
- `wall()`: seconds since the epoch. Instants that are stored or compared
  with a client's idea of time use it: message expiry (`x-message-ttl`,
  `expiration`, `x-expires-at`), retention, delayed-delivery due times (the
  store orders delayed messages by due time), FIFO deduplication windows,
  MQTT session and will expiry.

and one way to run code later, `call_at(when, callback)` on the monotonic
scale (`call_later(delay, ...)` is the same with `when = monotonic() +
delay`), returning a handle with `cancel()`. A timer due at a wall-clock
instant is armed as `call_later(due - wall(), ...)`, read once when armed.
`sleep(delay)` is the awaitable form, for periodic housekeeping.

`SystemClock` reads the OS clocks and arms timers on the running asyncio
loop: its readings are the C functions themselves, so a read costs what
`time.time()` did. Hot paths read the clock once per batch or tick, as they
read the time before.

`ManualClock` is for tests: time stands still until `advance(seconds)`, which
fires every timer due in that span in due order (each at its own due time,
so a timer armed by a callback fires in the same advance if it falls inside
the span) and returns how many fired. Nothing depends on the machine's
speed: a test states the time at which behaviour must happen and checks it
exactly. Callbacks run synchronously inside `advance`; work they hand to the
loop (tasks, `call_soon`) runs when the test next yields to the loop. A timer
armed outside `advance` for an instant already reached (a store read that
finished after its messages fell due) runs on the loop's next iteration, as
on a real loop: what is due never waits for the test to move time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    """A pending call, as returned by `Clock.call_at`; `asyncio.TimerHandle` is one."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """What the broker reads the time from and arms its timers on."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (intervals, deadlines)."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch (instants that are stored or shared)."""
        ...

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer:
        """Run `callback` at `when` on the `monotonic()` scale (at once when past)."""
        ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        """Run `callback` `delay` seconds from now (at once when not positive)."""
        ...

    async def sleep(self, delay: float) -> None:
        """Return after `delay` seconds."""
        ...


class SystemClock:
    """The operating system's clocks and the running asyncio loop's timers."""

    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)

    def call_at(self, when: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        # The loop's own time may have another origin (uvloop): convert through a delay.
        return asyncio.get_running_loop().call_later(when - time.monotonic(), callback)

    def call_later(self, delay: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback)

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(delay)


SYSTEM_CLOCK = SystemClock()


_SPIN_LIMIT = 100_000
"""Timers fired at one instant before `advance` calls it a loop (a real loop would spin)."""


class ManualTimer:
    """A call pending on a `ManualClock`."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __repr__(self) -> str:
        state = " cancelled" if self.cancelled else ""
        return f"<ManualTimer at {self.when:.3f}{state} {self.callback!r}>"


class ManualClock:
    """A clock that moves only when told to, firing due timers deterministically.

    `wall()` and `monotonic()` advance together; `set_wall` steps the wall
    clock alone (an NTP correction), which must not move monotonic deadlines.
    An exception from a timer callback propagates out of `advance`.
    """

    def __init__(self, *, wall: float = 1_700_000_000.0, monotonic: float = 1_000.0) -> None:
        self._monotonic = monotonic
        self._wall_offset = wall - monotonic  # wall() is monotonic() + this, until set_wall
        self._timers: list[tuple[float, int, ManualTimer]] = []
        self._order = itertools.count()
        self._advancing = False

    def monotonic(self) -> float:
        return self._monotonic

    def wall(self) -> float:
        return self._monotonic + self._wall_offset

    def call_at(self, when: float, callback: Callable[[], object]) -> ManualTimer:
        timer = ManualTimer(when, callback)
        if when <= self._monotonic and not self._advancing:
            # Already due: a real loop runs it on its next iteration, and so do we.
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass  # no loop: the next `advance` (even by 0) runs it
            else:
                loop.call_soon(self._run, timer)
                return timer
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[[], object]) -> ManualTimer:
        return self.call_at(self._monotonic + max(delay, 0.0), callback)

    async def sleep(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        timer = self.call_later(delay, wake)
        try:
            await future
        finally:
            timer.cancel()

    # -- driving it ----------------------------------------------------------------

    def advance(self, seconds: float) -> int:
        """Move time forward by `seconds`, firing due timers in order; returns how many fired."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        target = self._monotonic + seconds
        fired = 0
        timers = self._timers
        same_instant = 0
        self._advancing = True
        try:
            while timers and timers[0][0] <= target:
                when, _order, timer = heapq.heappop(timers)
                if timer.cancelled:
                    continue
                same_instant = same_instant + 1 if when <= self._monotonic else 0
                if same_instant > _SPIN_LIMIT:
                    raise RuntimeError(f"a timer keeps re-arming itself in the past: {timer!r}")
                self._step_to(when)
                timer.callback()
                fired += 1
        finally:
            self._advancing = False
        self._step_to(target)
        return fired

    def advance_to(self, instant: float) -> int:
        """Advance until `monotonic()` is `instant` (no-op if already past)."""
        return self.advance(max(instant - self._monotonic, 0.0))

    def set_wall(self, instant: float) -> None:
        """Step the wall clock alone, as an NTP correction does."""
        self._wall_offset = instant - self._monotonic

    def next_due(self) -> float | None:
        """Seconds until the earliest pending timer (None when there is none)."""
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
        return max(timers[0][0] - self._monotonic, 0.0) if timers else None

    @property
    def pending(self) -> int:
        """Timers armed and not cancelled nor fired."""
        return sum(1 for _when, _order, timer in self._timers if not timer.cancelled)

    @staticmethod
    def _run(timer: ManualTimer) -> None:
        if not timer.cancelled:
            timer.cancelled = True  # fired: a later cancel() is a no-op, as for a TimerHandle
            timer.callback()

    def _step_to(self, when: float) -> None:
        self._monotonic = max(self._monotonic, when)
