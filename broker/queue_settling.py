"""What becomes of a queue's entries after delivery, or without one: requeue, settle,
reject, drop and purge.

Part of `broker.queue.Queue` (a mixin: the queue's own state, no wrapper, no
extra call per message). A delivered entry comes back here from the session
that held it: `requeue` puts it back in seq order (or dead-letters it past
`x-delivery-limit`), `settle` forgets it for good (acked, or rejected without
requeue; the store's entry is removed), `reject` dead-letters it first.
`_drop` removes a ready entry nobody got (expired, over a length limit) and
`purge` every ready entry, in memory or paged out.

Ordering rules:
- `requeue` dispatches after the entries are back, so they go out
  `redelivered` before anything published later.
- Dead-lettering (`broker.dead_letter`) happens before the entry is settled.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from moorage.broker.arguments import QueueOptions
from moorage.broker.dead_letter import DeadLetterRouter, dead_letter
from moorage.broker.entry import DiskRange, QueueEntry
from moorage.broker.ready import ReadyEntries, sorted_by_seq
from moorage.broker.services import VhostServices


class SettlingHost(VhostServices, DeadLetterRouter, Protocol):
    """What settling needs of the queue's vhost (`broker.vhost.VirtualHost`): the
    store, through the broker, and routing for dead letters."""


class QueueSettling:
    """Requeue, settle, reject, drop and purge of a queue's entries."""

    # the queue's state this part reads and writes (set by `Queue.__init__`)
    vhost: SettlingHost
    name: str
    options: QueueOptions
    deleted: bool
    ready: ReadyEntries
    ready_bytes: int
    tail: deque[QueueEntry | DiskRange]
    tail_count: int
    tail_bytes: int
    tail_entries: int
    _generation: int
    _may_expire: bool
    _plain_dispatch: bool

    if TYPE_CHECKING:  # the queue's other parts (`broker.queue.Queue`)

        @property
        def message_count(self) -> int: ...
        def dispatch(self) -> None: ...
        def _schedule_expiry(self) -> None: ...

    def requeue(self, entries: Iterable[QueueEntry]) -> None:
        """Put delivered entries back in seq order, to be delivered again.

        An entry delivered `x-delivery-limit` times goes to the dead-letter
        exchange (reason `delivery_limit`) instead.
        """
        back = sorted_by_seq(entries)
        if not back or self.deleted:
            return
        limit = self.options.delivery_limit
        if limit is not None:
            keep = []
            for entry in back:
                if entry.delivery_count >= limit:
                    self.ready.released(entry)
                    dead_letter(self, entry.message, "delivery_limit")
                    self.settle(entry)
                else:
                    keep.append(entry)
            back = keep
            if not back:
                self.dispatch()
                return
        self.ready.requeue(back)
        self.ready_bytes += sum(len(e.message.body) for e in back)
        self.dispatch()
        if self._may_expire:
            self._schedule_expiry()

    def settle(self, entry: QueueEntry) -> None:
        """Forget a delivered entry for good: acked, or rejected without requeue."""
        if not self._plain_dispatch:
            self.ready.released(entry)
        if entry.persisted and not self.deleted:
            self.vhost.broker.store.ack(self.vhost.name, self.name, entry.seq)

    def reject(self, entry: QueueEntry) -> None:
        """A delivered entry was rejected without requeue: dead-letter it, then forget it."""
        if self.options.dead_letter_exchange is not None and not self.deleted:
            dead_letter(self, entry.message, "rejected")
        self.settle(entry)

    def _drop(self, entry: QueueEntry, reason: str) -> None:
        """Remove a ready entry without delivering it (expired, maxlen): dead-letter it."""
        self.ready.remove_entry(entry, False)
        self.ready_bytes -= len(entry.message.body)
        if self.options.dead_letter_exchange is not None:
            dead_letter(self, entry.message, reason)
        if entry.persisted:
            self.vhost.broker.store.ack(self.vhost.name, self.name, entry.seq)

    def purge(self) -> int:
        """Drop every ready entry, in memory or paged out; returns how many."""
        count = self.message_count
        self._generation += 1
        store = self.vhost.broker.store
        for entry in self.ready:
            if entry.persisted:
                self.vhost.broker.store.ack(self.vhost.name, self.name, entry.seq)
        for item in self.tail:
            if isinstance(item, DiskRange):
                store.ack_range(self.vhost.name, self.name, item.first, item.last)
        self.ready.clear()
        self.tail.clear()
        self.ready_bytes = self.tail_count = self.tail_bytes = self.tail_entries = 0
        return count
