"""Publisher flow control: stop reading from publishers while the store lags behind.

The store's gathering batch is unbounded by design; the broker bounds it.
Every persistent write adds its size to `backlog`. Past `limit` bytes the
flow is *blocked*: each protocol shell that sees `blocked` after handling its
input pauses reading its socket and asks to be resumed. When the store
reports everything written so far durable, the backlog restarts from zero and
every paused reader is resumed. This is RabbitMQ's credit flow in its
simplest form: a fast publisher can never queue more than about one socket
buffer past the limit.

Resource alarms are the second reason to stop reading: the memory alarm
(`broker.memory`) and the disk alarm (`broker.disk`). While any is set,
connections that have published are paused (consumers must go on acking,
or nothing would ever drain) until every alarm has cleared, and
`alarm_listeners` are told when the first one sets and when the last one
clears (AMQP's `connection.blocked`, with `block_reason`, and `unblocked`),
as RabbitMQ does.
"""

from __future__ import annotations

from collections.abc import Callable

from moorage.storage import Store

ALARM_REASONS = {"memory": "low on memory", "disk": "low on disk"}
"""RabbitMQ's `connection.blocked` reasons, by alarm."""


class WriteFlow:
    """Tracks unwritten persistent bytes and the readers paused because of them."""

    def __init__(self, store: Store, limit: int) -> None:
        self.store = store
        self.limit = limit
        self.backlog = 0
        self.blocked = False
        self._paused: list[Callable[[], None]] = []
        self.alarms: list[str] = []
        """Resource alarms in effect ("memory", "disk"), in the order they were set."""
        self.alarm_listeners: set[Callable[[bool], None]] = set()
        self._paused_for_alarms: list[Callable[[], None]] = []

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

    @property
    def memory_alarm(self) -> bool:
        return "memory" in self.alarms

    @property
    def disk_alarm(self) -> bool:
        return "disk" in self.alarms

    @property
    def publishers_blocked(self) -> bool:
        """Is any resource alarm in effect? (Connections that publish are not read.)"""
        return bool(self.alarms)

    @property
    def block_reason(self) -> str:
        """The first alarm's reason for AMQP's `connection.blocked` ("" when none)."""
        return ALARM_REASONS.get(self.alarms[0], self.alarms[0]) if self.alarms else ""

    def on_alarms_clear(self, resume: Callable[[], None]) -> None:
        """Call `resume` once every resource alarm has cleared (at once if none is set)."""
        if self.alarms:
            self._paused_for_alarms.append(resume)
        else:
            resume()

    def set_alarm(self, resource: str, on: bool) -> None:
        """Set or clear one resource alarm; clearing the last resumes every reader paused."""
        if on == (resource in self.alarms):
            return
        was_blocked = bool(self.alarms)
        if on:
            self.alarms.append(resource)
        else:
            self.alarms.remove(resource)
        if was_blocked == bool(self.alarms):
            return
        for listener in list(self.alarm_listeners):
            listener(on)
        if not on:
            paused, self._paused_for_alarms = self._paused_for_alarms, []
            for resume in paused:
                resume()

    def set_memory_alarm(self, on: bool) -> None:
        """Set or clear the memory alarm (`set_alarm("memory", on)`)."""
        self.set_alarm("memory", on)

    def _caught_up(self, _error: BaseException | None) -> None:
        # Even on a write error we resume: publishers then get the error
        # through their confirms instead of hanging.
        self.backlog = 0
        self.blocked = False
        paused, self._paused = self._paused, []
        for resume in paused:
            resume()
