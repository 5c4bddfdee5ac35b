"""The ready part of a queue: which entry goes out next.

Theory of operation
-------------------
A plain queue keeps its ready entries in a `PlainReady`, a `deque` in seq
order: the dispatch fast path in `broker.queue` uses its C `popleft` and
`append` directly. Queues whose order is not simply seq order use another
structure with the same small interface:

- `PriorityReady` (`x-max-priority`): one deque per priority level, highest
  level first, seq order within a level.
- `FifoReady` (`x-queue-type: fifo`, in `broker.fifo`): one deque per message
  group; only the head of a group that has nothing in flight may go out.

The interface (besides `append`, `len`, iteration over every entry, `clear`):
`peek()` is the entry that would go out next (None when nothing may go out
now), `candidates()` every entry that may go out now in delivery order (for
consumers with filters), `remove(entry, delivered)` takes one of those out
(`delivered` marks its FIFO group busy), `requeue(entries)` puts delivered
entries back in seq order, and `released(entry)` says that a delivered entry
was settled. Entries are `broker.entry.QueueEntry` objects; nothing here
touches the store or the consumers.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Protocol

from moorage.broker.entry import QueueEntry


class ReadyEntries(Protocol):
    """What `broker.queue.Queue` asks of its ready structure."""

    def append(self, entry: QueueEntry) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[QueueEntry]: ...
    def clear(self) -> None: ...
    def peek(self) -> QueueEntry | None: ...
    def candidates(self) -> Iterator[QueueEntry]: ...
    def remove_entry(self, entry: QueueEntry, delivered: bool) -> None: ...
    def requeue(self, entries: list[QueueEntry]) -> None: ...
    def released(self, entry: QueueEntry) -> None: ...


def _seq(entry: QueueEntry) -> int:
    return entry.seq


def _merge_back(ready: deque[QueueEntry], back: list[QueueEntry]) -> None:
    """Put `back` (sorted by seq) into `ready` (sorted by seq), keeping seq order."""
    if not ready or back[-1].seq < ready[0].seq:
        ready.extendleft(reversed(back))
        return
    merged = sorted(itertools.chain(ready, back), key=_seq)
    ready.clear()
    ready.extend(merged)


class PlainReady(deque["QueueEntry"]):
    """Seq order: the deque every plain queue uses."""

    def peek(self) -> QueueEntry | None:
        return self[0] if self else None

    def candidates(self) -> Iterator[QueueEntry]:
        return iter(list(self))

    def remove_entry(self, entry: QueueEntry, delivered: bool) -> None:
        if self and self[0] is entry:
            self.popleft()
        else:
            self.remove(entry)

    def requeue(self, entries: list[QueueEntry]) -> None:
        _merge_back(self, entries)

    def released(self, entry: QueueEntry) -> None:
        pass


class PriorityReady:
    """Highest priority first, then seq order (AMQP `priority`, capped at `x-max-priority`)."""

    __slots__ = ("_count", "levels")

    def __init__(self, max_priority: int) -> None:
        self.levels: list[PlainReady] = [PlainReady() for _ in range(max_priority + 1)]
        self._count = 0

    def append(self, entry: QueueEntry) -> None:
        self.levels[entry.priority].append(entry)
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[QueueEntry]:
        for level in reversed(self.levels):
            yield from level

    def clear(self) -> None:
        for level in self.levels:
            level.clear()
        self._count = 0

    def peek(self) -> QueueEntry | None:
        if self._count:
            for level in reversed(self.levels):
                if level:
                    return level[0]
        return None

    def candidates(self) -> Iterator[QueueEntry]:
        return iter(list(self))

    def remove_entry(self, entry: QueueEntry, delivered: bool) -> None:
        self.levels[entry.priority].remove_entry(entry, delivered)
        self._count -= 1

    def requeue(self, entries: list[QueueEntry]) -> None:
        by_level: dict[int, list[QueueEntry]] = {}
        for entry in entries:
            by_level.setdefault(entry.priority, []).append(entry)
        for level, back in by_level.items():
            _merge_back(self.levels[level], back)
        self._count += len(entries)

    def released(self, entry: QueueEntry) -> None:
        pass


def sorted_by_seq(entries: Iterable[QueueEntry]) -> list[QueueEntry]:
    return sorted(entries, key=_seq)
