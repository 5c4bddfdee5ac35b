"""Publisher flow control: stop reading from publishers while the store lags behind.

The store's gathering batch is unbounded by design; the broker bounds it.
Every persistent write adds its size to `backlog`. Past `limit` bytes the
flow is *blocked*: each protocol shell that sees `blocked` after handling its
input pauses reading its socket and asks to be resumed. When the store
reports everything written so far durable, the backlog restarts from zero and
every paused reader is resumed. This is RabbitMQ's credit flow in its
simplest form: a fast publisher can never queue more than about one socket
buffer past the limit.

The memory alarm (`broker.memory`) is the second reason to stop reading:
while it is set, connections that have published are paused (consumers
must go on acking, or nothing would ever drain) until it clears, and
`alarm_listeners` are told (AMQP's `connection.blocked`/`unblocked`).
"""

from __future__ import annotations

from collections.abc import Callable

from moorage.storage import Store


class WriteFlow:
    """Tracks unwritten persistent bytes and the readers paused because of them."""

    def __init__(self, store: Store, limit: int) -> None:
        self.store = store
        self.limit = limit
        self.backlog = 0
        self.blocked = False
        self._paused: list[Callable[[], None]] = []
        self.memory_alarm = False
        self.alarm_listeners: set[Callable[[bool], None]] = set()
        self._paused_for_memory: list[Callable[[], None]] = []

    def wrote(self, size: int) -> None:
        """Account for `size` bytes handed to the store."""
        self.backlog += size
        if self.backlog > self.limit and not self.blocked:
            self.blocked = True
            # Pending acks hold no memory worth pausing publishers for.
            self.store.when_durable(self._caught_up, removals=False)

    def on_resume(self, resume: Callable[[], None]) -> None:
        """Call `resume` once the store has caught up (at once if it already has)."""
        if self.blocked:
            self._paused.append(resume)
        else:
            resume()

    def on_memory_clear(self, resume: Callable[[], None]) -> None:
        """Call `resume` once the memory alarm clears (at once if it is not set)."""
        if self.memory_alarm:
            self._paused_for_memory.append(resume)
        else:
            resume()

    def set_memory_alarm(self, on: bool) -> None:
        """Set or clear the memory alarm; clearing resumes every reader it paused."""
        if on == self.memory_alarm:
            return
        self.memory_alarm = on
        for listener in list(self.alarm_listeners):
            listener(on)
        if not on:
            paused, self._paused_for_memory = self._paused_for_memory, []
            for resume in paused:
                resume()

    def _caught_up(self, _error: BaseException | None) -> None:
        # Even on a write error we resume: publishers then get the error
        # through their confirms instead of hanging.
        self.backlog = 0
        self.blocked = False
        paused, self._paused = self._paused, []
        for resume in paused:
            resume()
