"""A queue's entries: one message's place in one queue, and runs of them paged out.

`QueueEntry` is what the ready structures (`broker.ready`, `broker.fifo`)
order and what a session holds unacked; `DiskRange` stands in a queue's
`tail` for entries that are in the store only (see `broker.queue`, Paging).
Nothing here touches the store, a consumer or a vhost.
"""

from __future__ import annotations

from moorage.broker.message import Message


class DiskRange:
    """Entries `first..last` (by seq) that are in the store but not in memory."""

    __slots__ = ("count", "first", "last")

    def __init__(self, first: int, last: int, count: int) -> None:
        self.first = first
        self.last = last
        self.count = count


class QueueEntry:
    """One message's place in one queue.

    `expires_at` is a wall-clock time (0: never); `group` the FIFO message
    group and `priority` the level in a priority queue (set only there).
    """

    __slots__ = ("delivery_count", "expires_at", "group", "message", "persisted", "priority", "seq")

    def __init__(
        self,
        seq: int,
        message: Message,
        persisted: bool,
        delivery_count: int = 0,
        expires_at: float = 0.0,
    ) -> None:
        self.seq = seq
        self.message = message
        self.persisted = persisted
        self.delivery_count = delivery_count
        self.expires_at = expires_at
        self.group = ""
        self.priority = 0
