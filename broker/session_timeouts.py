"""Consumer timeouts: a delivery not settled in time goes back to its queue.

Part of `broker.session.Session` (a mixin: the session's own state, no
wrapper). Armed only when a queue has a timeout (`x-consumer-timeout`, or the
broker-wide `limits.consumer_timeout`): a delivery not settled in time is
taken out of `unacked` and returned to its queue for another consumer, as
SQS's visibility timeout does (it counts towards `x-delivery-limit`). A late
ack or nack of its tag is ignored instead of being an unknown-tag error
(`_timed_out`). With `limits.consumer_timeout_action = "close"` the session
is closed with 406 instead, as RabbitMQ does (through the sink's optional
`closed_by_broker`).

Ordering rules: one timer per session, armed for the earliest deadline of a
heap of (deadline, delivery tag); deadlines are read on the monotonic clock;
a closed session arms nothing.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from moorage.broker.clock import Clock, Timer
from moorage.broker.errors import PreconditionFailed
from moorage.broker.unacked import Unacked
from moorage.broker.vhost import VirtualHost


class SessionTimeouts:
    """The deadlines of a session's unacked deliveries."""

    # the session's state this part reads and writes (set by `Session.__init__`)
    vhost: VirtualHost
    clock: Clock
    sink: object
    closed: bool
    unacked: dict[int, Unacked]
    _deadlines: list[tuple[float, int]]  # (deadline, delivery tag), a heap
    _deadline_timer: Timer | None
    _timed_out: set[int]

    if TYPE_CHECKING:  # the session's other parts (`broker.session.Session`)

        def _settle(self, items: list[Unacked], *, requeue: bool | None) -> None: ...

    def _watch(self, tag: int, timeout: float) -> None:
        """Return delivery `tag` to its queue unless it is settled within `timeout` seconds."""
        deadline = self.clock.monotonic() + timeout
        heapq.heappush(self._deadlines, (deadline, tag))
        if self._deadline_timer is None or self._deadlines[0][1] == tag:
            self._arm_deadline()

    def _arm_deadline(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if not self._deadlines or self.closed:
            return
        due = self._deadlines[0][0] + 0.001
        self._deadline_timer = self.clock.call_at(due, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._deadline_timer = None
        now = self.clock.monotonic()
        deadlines = self._deadlines
        limits = self.vhost.broker.limits
        closer = getattr(self.sink, "closed_by_broker", None)
        rabbit_mode = getattr(limits, "consumer_timeout_action", "requeue") == "close"
        if (
            rabbit_mode
            and closer is not None
            and any(tag in self.unacked for d, tag in deadlines if d <= now)
        ):
            deadlines.clear()
            # RabbitMQ's behaviour: the channel closes, which requeues everything
            closer(PreconditionFailed("delivery acknowledgement timed out"))
            return
        expired: list[Unacked] = []
        while deadlines and deadlines[0][0] <= now:
            _deadline, tag = heapq.heappop(deadlines)
            item = self.unacked.pop(tag, None)
            if item is not None:
                self._timed_out.add(tag)
                expired.append(item)
        if expired:
            self._settle(expired, requeue=True)
        self._arm_deadline()
