"""Queue paging: keeping a stored queue's ready bodies under its memory limit.

Part of `broker.queue.Queue` (a mixin: the queue's own state, no wrapper, no
extra call per message). It owns `tail`, the part of the queue that is not in
`ready`, and moving entries between the two.

A stored queue keeps at most `memory_limit` bytes of ready bodies in RAM.
Past that, new persistent entries are written to the store only and
represented in `tail` by a `DiskRange` (a run of seqs, a few bytes whatever
its length); transient entries keep their place in `tail` as themselves, so
order is kept. When `ready` falls under half the limit, `_refill` reads the
next batch back from the store, ahead of the consumers. Recovery after a
restart is the same mechanism: each stored queue starts as one DiskRange.

Ordering rules:
- Once `tail` is not empty every new entry goes behind it (`_page_out`), even
  one that would fit in memory: seq order is delivery order.
- One read at a time (`_refill_task`); `_generation` (bumped by purge and
  delete) makes a read that finished too late drop what it read.
- Entries read back keep their delivery count and expiry time, and are
  classified (FIFO group, priority) before they become ready.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from moorage.broker.arguments import QueueOptions
from moorage.broker.clock import Clock
from moorage.broker.delayed import DELAY_STORE_PREFIX, DelayScheduler
from moorage.broker.entry import DiskRange, QueueEntry
from moorage.broker.fifo import Deduplicator, group_of
from moorage.broker.ready import ReadyEntries
from moorage.broker.serialization import decode_message
from moorage.broker.services import VhostServices

log = logging.getLogger("moorage.queue")

REFILL_BATCH = 1000  # most entries read back from the store at a time
MIN_REFILL_BATCH = 16  # fewest, however large the bodies


class QueuePaging:
    """The paging part of a queue: `tail`, `_page_out`, `_refill`, recovery."""

    # the queue's state this part reads and writes (set by `Queue.__init__`)
    vhost: VhostServices
    clock: Clock
    name: str
    options: QueueOptions
    stored: bool
    ready: ReadyEntries
    ready_bytes: int
    tail: deque[QueueEntry | DiskRange]
    tail_count: int
    tail_bytes: int
    tail_entries: int
    paged_body_size: int
    memory_limit: int
    dedup: Deduplicator | None
    _next_seq: Callable[[], int]
    _refill_task: asyncio.Task[None] | None
    _generation: int
    _may_expire: bool
    _plain_publish: bool
    _plain_dispatch: bool

    if TYPE_CHECKING:  # the queue's other parts (`broker.queue.Queue`)

        def dispatch(self) -> None: ...
        def _update_dispatch_mode(self) -> None: ...
        def _schedule_expiry(self) -> None: ...
        def _delay_scheduler(self) -> DelayScheduler: ...

    def _page_out(self, entry: QueueEntry) -> None:
        """Keep an entry out of memory (persistent) or behind the paged ones (transient)."""
        self.tail_count += 1
        tail = self.tail
        if not entry.persisted:
            tail.append(entry)
            self.tail_bytes += len(entry.message.body)
            self.tail_entries += 1
            return
        self.paged_body_size = len(entry.message.body)
        last = tail[-1] if tail else None
        if isinstance(last, DiskRange):
            last.last = entry.seq
            last.count += 1
        else:
            tail.append(DiskRange(entry.seq, entry.seq, 1))

    def _classify(self, entry: QueueEntry) -> None:
        """Set the FIFO group or priority level of an entry read back from the store."""
        options = self.options
        if options.fifo:
            entry.group = group_of(entry.message)
        elif options.max_priority is not None:
            entry.priority = min(entry.message.properties.priority or 0, options.max_priority)

    def set_next_seq(self, seq: int) -> None:
        """Continue numbering after `seq` (used by recovery)."""
        self._next_seq = itertools.count(seq + 1).__next__

    def recover(self, count: int, max_seq: int) -> None:
        """After a restart: `count` stored entries up to `max_seq` wait in the store."""
        self.set_next_seq(max_seq)
        if count:
            self.tail.append(DiskRange(1, max_seq, count))
            self.tail_count += count

    async def preload(self) -> None:
        """Read the first batch of a recovered queue before clients connect."""
        if self.dedup is not None and self.stored:
            await self.dedup.recover()
        if self.stored and (self.options.delivery_delay or await self._delays_stored()):
            await self._delay_scheduler().recover()
        self._refill()
        if self._refill_task is not None:
            await self._refill_task

    async def _delays_stored(self) -> bool:
        """Does the store hold messages delayed by `publish_later` for this queue?"""
        store_name = DELAY_STORE_PREFIX + "q." + self.name
        count, _size, _seq = await self.vhost.broker.store.queue_stats(self.vhost.name, store_name)
        return count > 0

    def _refill(self) -> None:
        """Bring tail entries into memory while under half the memory limit."""
        tail = self.tail
        while tail and self.ready_bytes < self.memory_limit // 2 and self._refill_task is None:
            head = tail[0]
            if isinstance(head, QueueEntry):
                tail.popleft()
                self.tail_count -= 1
                size = len(head.message.body)
                self.tail_bytes -= size
                self.tail_entries -= 1
                self.ready.append(head)
                self.ready_bytes += size
            else:
                self._refill_task = asyncio.get_running_loop().create_task(self._read_range(head))

    async def _read_range(self, head: DiskRange) -> None:
        generation = self._generation
        store = self.vhost.broker.store
        try:
            if self._may_expire and self.options.dead_letter_exchange is None:
                # Due entries would only be read to be dropped: delete them on disk.
                expired = await store.expire(self.vhost.name, self.name, self.clock.wall())
                if expired:
                    head.count -= expired
                    self.tail_count = max(0, self.tail_count - expired)
            stored = await store.read_queue(
                self.vhost.name, self.name, head.first - 1, self._refill_batch()
            )
        except Exception:
            log.exception("cannot read queue %s back from the store", self.name)
            self._refill_task = None
            return
        self._refill_task = None
        if generation != self._generation or not self.tail or self.tail[0] is not head:
            return
        loaded = loaded_bytes = 0
        featured = not (self._plain_publish and self._plain_dispatch)
        expiring = False
        for item in stored:
            if item.seq > head.last:
                break
            message = decode_message(item.data)
            message.store_id = item.message_id
            entry = QueueEntry(
                item.seq, message, True, item.delivery_count, getattr(item, "expires_at", 0.0)
            )
            if featured:
                self._classify(entry)
            expiring |= entry.expires_at > 0
            self.ready.append(entry)
            self.ready_bytes += len(message.body)
            loaded_bytes += len(message.body)
            head.first = item.seq + 1
            loaded += 1
        if loaded:
            self.paged_body_size = loaded_bytes // loaded
        head.count -= loaded
        self.tail_count -= loaded
        if loaded == 0 or head.count <= 0 or head.first > head.last:
            # exhausted (entries may have expired on disk: trust the store, not the count)
            self.tail.popleft()
            self.tail_count -= max(head.count, 0)
        if expiring and not self._may_expire:
            self._may_expire = True
            self._update_dispatch_mode()
        self.dispatch()
        if self._may_expire:
            self._schedule_expiry()
        self._refill()

    def _refill_batch(self) -> int:
        """Entries to read back at once: about half the memory limit's worth of bodies.

        A fixed count of 1000 read 64 MiB at a time for 64 KiB messages (and
        held it twice while decoding): the flood-and-drain memory test saw
        the broker's RSS peak there.
        """
        size = self.paged_body_size
        if size <= 0:
            return REFILL_BATCH
        return max(MIN_REFILL_BATCH, min(REFILL_BATCH, (self.memory_limit // 2) // size))

    def reading_back(self) -> asyncio.Task[None] | None:
        """The read of paged-out entries (started if need be), or None if none is paged out.

        A basic.get that found nothing in memory waits for it and tries
        again, rather than call a queue empty that is not.
        """
        if not self.tail:
            return None
        self._refill()
        return self._refill_task
