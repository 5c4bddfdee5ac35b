"""Queue expiry: message TTL, retention and the `x-expires` of an unused queue.

Part of `broker.queue.Queue` (a mixin: the queue's own state, no wrapper, no
extra call per message). It owns the two timers of a queue: the one that
drops expired heads, and the one that deletes a queue left unused.

Expiry follows RabbitMQ: an entry expires when it reaches the head of the
queue past its time (a timer drops heads even without consumers); an expired
entry behind a live one waits for it. Its time is the earliest of the queue's
`x-message-ttl`, the message's `expiration`, an `x-expires-at` annotation
and the broker's retention (`_expiry_of`, fixed at publish and kept in the
store). Dead-lettering (reason `expired`) is `broker.dead_letter`.

Ordering rules:
- One expiry timer per queue, armed for the head only (`_schedule_expiry`);
  an earlier head re-arms it, a later one leaves it.
- `x-expires` restarts on every use (`touch`) and runs only while the queue
  has no consumer; a deleted queue arms nothing (`deleted_now` cancels both).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from moorage.broker.arguments import QueueOptions, message_ttl_ms
from moorage.broker.clock import Clock, Timer
from moorage.broker.entry import QueueEntry
from moorage.broker.message import EXPIRES_AT_ANNOTATION, Message
from moorage.broker.ready import ReadyEntries
from moorage.broker.services import VhostServices

log = logging.getLogger("moorage.queue")


class ExpiringHost(VhostServices, Protocol):
    """What an unused queue needs of its vhost to delete itself (`broker.vhost.VirtualHost`)."""

    @property
    def queues(self) -> Mapping[str, object]: ...
    def delete_queue(self, name: str) -> int: ...


class QueueExpiry:
    """The expiry of a queue's entries and of the queue itself."""

    # the queue's state this part reads and writes (set by `Queue.__init__`)
    vhost: ExpiringHost
    clock: Clock
    name: str
    options: QueueOptions
    deleted: bool
    consumers: Sequence[object]
    ready: ReadyEntries
    ready_bytes: int
    tail: Sequence[object]
    memory_limit: int
    _expiry_timer: Timer | None
    _expiry_due: float
    _unused_timer: Timer | None

    if TYPE_CHECKING:  # the queue's other parts (`broker.queue.Queue`)

        def _drop(self, entry: QueueEntry, reason: str) -> None: ...
        def _refill(self) -> None: ...

    def _expiry_of(self, message: Message) -> float:
        """When an entry for `message` published now expires (0: never)."""
        ttl = self.options.message_ttl
        per_message = message_ttl_ms(message.properties.expiration)
        if per_message is not None and (ttl is None or per_message < ttl):
            ttl = per_message
        now = self.clock.wall()
        expires_at = now + ttl / 1000.0 if ttl is not None else 0.0
        absolute = message.annotations.get(EXPIRES_AT_ANNOTATION) if message.annotations else None
        if isinstance(absolute, int | float) and absolute > 0:
            expires_at = min(expires_at, float(absolute)) if expires_at else float(absolute)
        retention = self.vhost.broker.retention
        if retention:
            limit = now + retention
            expires_at = min(expires_at, limit) if expires_at else limit
        return expires_at

    def _schedule_expiry(self) -> None:
        """Arm the timer for the head entry's expiry, if it has one."""
        head = self.ready.peek()
        if head is None or not head.expires_at or self.deleted:
            return
        due = head.expires_at
        if self._expiry_timer is not None:
            if self._expiry_due <= due:
                return
            self._expiry_timer.cancel()
        clock = self.clock
        try:
            self._expiry_timer = clock.call_later(due - clock.wall() + 0.001, self._expire_heads)
        except RuntimeError:
            return  # no loop running (a queue built outside the broker's loop)
        self._expiry_due = due

    def _expire_heads(self) -> None:
        self._expiry_timer = None
        if self.deleted:
            return
        now = self.clock.wall()
        ready = self.ready
        head = ready.peek()
        while head is not None and head.expires_at and head.expires_at <= now:
            self._drop(head, "expired")
            head = ready.peek()
        if self.tail and self.ready_bytes < self.memory_limit // 2:
            self._refill()
        self._schedule_expiry()

    def touch(self) -> None:
        """The queue was used (declared, consumed from, read): restart its `x-expires` clock."""
        expires = self.options.expires
        if not expires or self.deleted:
            return
        if self._unused_timer is not None:
            self._unused_timer.cancel()
            self._unused_timer = None
        if self.consumers:
            return
        try:
            self._unused_timer = self.clock.call_later(expires / 1000.0, self._expire_queue)
        except RuntimeError:
            return  # no loop running (a queue built outside the broker's loop)

    def _expire_queue(self) -> None:
        self._unused_timer = None
        if not self.deleted and not self.consumers and self.name in self.vhost.queues:
            log.info("queue %s expired after %d ms unused", self.name, self.options.expires)
            self.vhost.delete_queue(self.name)
