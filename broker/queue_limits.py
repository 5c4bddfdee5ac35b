"""Queue limits and delivery delay: what a queue does with a message before it is queued.

Part of `broker.queue.Queue` (a mixin: the queue's own state, no wrapper, no
extra call per message); used only on the featured publish path
(`Queue._publish_featured`), so a queue without these arguments never runs it.

- `x-max-length` / `x-max-length-bytes` with `x-overflow`: `_full` says a new
  message would go past a limit (`reject-publish(-dlx)` refuses it), and
  `_enforce_limits` drops the oldest entries (`drop-head`, dead-lettered with
  reason `maxlen`) after one was queued.
- `x-delivery-delay`: `_delay` hands the message to the queue's
  `DelayScheduler` (`broker.delayed`), made on first use, which publishes it
  again (`delayed=True`) when it is due.

Ordering rules: drop-head drops from the head of `ready` only after the new
entry is queued, so the count never goes under the limit; a delayed message
is queued in the order it is released, not the order it was published.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moorage.broker.arguments import QueueOptions
from moorage.broker.delayed import DELAY_STORE_PREFIX, DelayScheduler
from moorage.broker.entry import QueueEntry
from moorage.broker.message import Message
from moorage.broker.ready import ReadyEntries
from moorage.broker.services import VhostServices

# What `Queue.publish` says of a delayed message (the others are in `broker.queue`).
DELAYED_STORED = 4  # held by `x-delivery-delay` and written to the store
DELAYED = 5  # held by `x-delivery-delay` in memory


class QueueLimits:
    """The length limits and the delivery delay of a queue."""

    # the queue's state this part reads and writes (set by `Queue.__init__`)
    vhost: VhostServices
    name: str
    options: QueueOptions
    stored: bool
    deleted: bool
    ready: ReadyEntries
    ready_bytes: int
    delays: DelayScheduler | None

    if TYPE_CHECKING:  # the queue's other parts (`broker.queue.Queue`)

        @property
        def message_count(self) -> int: ...
        def publish(self, message: Message, *, delayed: bool = False) -> int: ...
        def _drop(self, entry: QueueEntry, reason: str) -> None: ...

    def publish_later(self, message: Message, delay_ms: int) -> int:
        """Queue `message` in `delay_ms` ms (SQS's per-message `DelaySeconds`).

        Held by the same scheduler as `x-delivery-delay` (on disk for a
        persistent message on a stored queue, recovered after a restart).
        Returns DELAYED_STORED or DELAYED, or what `publish` returns for 0.
        """
        if delay_ms <= 0:
            return self.publish(message)
        return self._delay(message, delay_ms)

    def _delay(self, message: Message, delay_ms: int) -> int:
        return DELAYED_STORED if self._delay_scheduler().schedule(message, delay_ms) else DELAYED

    def _delay_scheduler(self) -> DelayScheduler:
        """The scheduler holding this queue's `x-delivery-delay` messages (made on first use)."""
        if self.delays is None:

            def release(message: Message) -> None:
                if not self.deleted:
                    self.publish(message, delayed=True)

            self.delays = DelayScheduler(
                self.vhost.broker,
                self.vhost.name,
                DELAY_STORE_PREFIX + "q." + self.name,
                release,
                stored=self.stored,
            )
        return self.delays

    def _full(self, size: int) -> bool:
        """Would one more message of `size` bytes go past a length limit?"""
        options = self.options
        if options.max_length is not None and self.message_count >= options.max_length:
            return True
        return (
            options.max_length_bytes is not None
            and self.ready_bytes + size > options.max_length_bytes
        )

    def _enforce_limits(self) -> None:
        """drop-head: drop (dead-letter `maxlen`) the oldest entries while over a limit."""
        options = self.options
        max_length, max_bytes = options.max_length, options.max_length_bytes
        while self.ready and (
            (max_length is not None and self.message_count > max_length)
            or (max_bytes is not None and self.ready_bytes > max_bytes)
        ):
            head = self.ready.peek()
            if head is None:
                break
            self._drop(head, "maxlen")
