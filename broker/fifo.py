"""FIFO queues (`x-queue-type: fifo`, SQS FIFO semantics): message groups and deduplication.

Theory of operation
-------------------
Groups: every entry belongs to the group named by its `x-message-group-id`
header (entries without one share the group ""). `FifoReady` keeps one deque
per group, in seq order, and a heap of the groups that may send now -- those
with ready entries and nothing in flight -- keyed by the seq of their head.
`peek` is therefore the oldest entry among the free groups. Delivering an
entry makes its group busy until the entry is settled (`released`) or
requeued; so within a group order is strict and at most one message is in
flight, while different groups go to different consumers in parallel. Heap
items are checked lazily: an item whose group became busy or whose head
changed is dropped when it reaches the top.

Deduplication: `Deduplicator` remembers each deduplication id (the
`x-deduplication-id` header, or the body's SHA-256 when
`x-content-based-deduplication` is set) for `DEDUP_WINDOW` seconds after the
first message that carried it; a later message with the same id is accepted
(and confirmed) but not enqueued. For a stored queue each id is also written
to the store, as an entry of the hidden store queue `amq.moorage.dedup.<name>`
whose message body is the id, so the window survives a restart; entries are
acked as they age out.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import deque
from collections.abc import Iterator

from moorage.broker.arguments import DEDUP_WINDOW
from moorage.broker.entry import QueueEntry
from moorage.broker.message import Message
from moorage.broker.ready import PlainReady, sorted_by_seq
from moorage.broker.services import VhostServices

GROUP_HEADER = "x-message-group-id"
DEDUP_HEADER = "x-deduplication-id"
DEDUP_STORE_PREFIX = "amq.moorage.dedup."


def group_of(message: Message) -> str:
    """The message group an entry belongs to ("" when the header is absent)."""
    headers = message.properties.headers
    if not headers:
        return ""
    value = headers.get(GROUP_HEADER)
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class FifoReady:
    """Ready entries by message group; only heads of free groups may go out."""

    __slots__ = ("_count", "_free", "busy", "groups")

    def __init__(self) -> None:
        self.groups: dict[str, PlainReady] = {}
        self.busy: set[str] = set()
        self._free: list[tuple[int, str]] = []  # (head seq, group), checked lazily
        self._count = 0

    def _offer(self, group: str) -> None:
        entries = self.groups.get(group)
        if entries and group not in self.busy:
            heapq.heappush(self._free, (entries[0].seq, group))

    def append(self, entry: QueueEntry) -> None:
        entries = self.groups.get(entry.group)
        if entries is None:
            entries = self.groups[entry.group] = PlainReady()
        entries.append(entry)
        self._count += 1
        if len(entries) == 1:
            self._offer(entry.group)

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[QueueEntry]:
        return iter(sorted_by_seq(e for entries in self.groups.values() for e in entries))

    def clear(self) -> None:
        self.groups.clear()
        self._free.clear()
        self._count = 0

    def peek(self) -> QueueEntry | None:
        free = self._free
        while free:
            seq, group = free[0]
            entries = self.groups.get(group)
            if group not in self.busy and entries and entries[0].seq == seq:
                return entries[0]
            heapq.heappop(free)  # stale
        return None

    def candidates(self) -> Iterator[QueueEntry]:
        heads = [
            entries[0]
            for group, entries in self.groups.items()
            if entries and group not in self.busy
        ]
        return iter(sorted_by_seq(heads))

    def remove_entry(self, entry: QueueEntry, delivered: bool) -> None:
        group = entry.group
        entries = self.groups[group]
        entries.remove_entry(entry, delivered)
        self._count -= 1
        if delivered:
            self.busy.add(group)
        if not entries:
            del self.groups[group]
        elif not delivered:
            self._offer(group)

    def requeue(self, entries: list[QueueEntry]) -> None:
        by_group: dict[str, list[QueueEntry]] = {}
        for entry in entries:
            by_group.setdefault(entry.group, []).append(entry)
        for group, back in by_group.items():
            ready = self.groups.get(group)
            if ready is None:
                ready = self.groups[group] = PlainReady()
            ready.requeue(back)
            self._count += len(back)
            self.busy.discard(group)
            self._offer(group)

    def released(self, entry: QueueEntry) -> None:
        group = entry.group
        if group in self.busy:
            self.busy.discard(group)
            self._offer(group)


def deduplication_id(message: Message, content_based: bool) -> str | None:
    """The id a FIFO queue deduplicates a message by, or None."""
    headers = message.properties.headers
    if headers:
        value = headers.get(DEDUP_HEADER)
        if value is not None:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    if content_based:
        return hashlib.sha256(message.body).hexdigest()
    return None


class Deduplicator:
    """Deduplication ids seen by one FIFO queue within the last `DEDUP_WINDOW` seconds."""

    def __init__(self, vhost: VhostServices, queue: str, *, stored: bool) -> None:
        self.vhost = vhost
        self.clock = vhost.broker.clock
        self.store_name = DEDUP_STORE_PREFIX + queue
        self.stored = stored
        self.seen: dict[str, float] = {}  # id -> until (wall clock)
        self._order: deque[tuple[float, str, int]] = deque()  # (until, id, store seq)
        self._seq = 0
        if stored:
            from moorage.storage import QueueRecord  # the hidden store queue holding the ids

            vhost.broker.store.put_queue(QueueRecord(vhost.name, self.store_name))

    def _prune(self, now: float) -> None:
        order = self._order
        store = self.vhost.broker.store
        while order and order[0][0] <= now:
            until, key, seq = order.popleft()
            if self.seen.get(key) == until:
                del self.seen[key]
            if seq:
                store.ack(self.vhost.name, self.store_name, seq)

    def is_duplicate(self, key: str) -> bool:
        """Was `key` seen within the window? (Does not record it.)"""
        now = self.clock.wall()
        self._prune(now)
        until = self.seen.get(key)
        return until is not None and until > now

    def record(self, key: str) -> None:
        """Remember `key` for the window from now (written to the store when stored)."""
        until = self.clock.wall() + DEDUP_WINDOW
        self.seen[key] = until
        seq = 0
        if self.stored:
            self._seq += 1
            seq = self._seq
            broker = self.vhost.broker
            message_id = broker.next_message_id()
            store = broker.store
            store.put_message(message_id, key.encode())
            store.enqueue(self.vhost.name, self.store_name, seq, message_id, until)
        self._order.append((until, key, seq))

    async def recover(self) -> None:
        """Read the ids still inside their window back from the store."""
        store = self.vhost.broker.store
        now = self.clock.wall()
        after = 0
        while True:
            batch = await store.read_queue(self.vhost.name, self.store_name, after, 10000)
            if not batch:
                break
            for item in batch:
                after = item.seq
                key = item.data.decode()
                if item.expires_at > now:
                    self.seen[key] = item.expires_at
                self._order.append((item.expires_at, key, item.seq))
        self._seq = after
        self._order = deque(sorted(self._order))
        self._prune(now)

    def delete(self) -> None:
        """The queue is gone: forget every id, in memory and in the store."""
        self.seen.clear()
        self._order.clear()
        if self.stored:
            self.vhost.broker.store.delete_queue(self.vhost.name, self.store_name)
