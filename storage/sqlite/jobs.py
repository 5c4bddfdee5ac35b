"""What the gathering batch hands the writer thread, and what the two threads share.

`batch.GatheringBatch` (the event loop's side) hands the writer thread
(`writer`) one job at a time through its queue: a `Batch` of `Segment`s (the
operations and delivery marks of one transaction, with the callbacks waiting
for it) or a `Read` (a function to run on the writer's connection). Both
threads update the store's `SQLiteStats`; a `DurabilityGate` (replication)
decides when a committed batch's callbacks may run. These types have no
behaviour of their own; replication (`storage.replication`) sends `Segment`s
to the standby.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from moorage.storage.sqlite.statements import Op
from moorage.storage.store import DurabilityCallback

if TYPE_CHECKING:
    import sqlite3

__all__ = ["Batch", "DurabilityGate", "Read", "SQLiteStats", "Segment"]


class DurabilityGate(Protocol):
    """What else a committed change must wait for before its callbacks run.

    Replication (`storage.replication.gate`) installs one so that a callback
    fires only once the standby has acknowledged the batch too. Without a
    gate, callbacks run as soon as the local commit returned.
    """

    def release(self, callbacks: list[DurabilityCallback], after: int | None) -> None:
        """Call `callbacks(None)`, in order, once batch `after` (None: every batch
        committed so far) is safe; after every callback released before them."""

    @property
    def pending(self) -> bool:
        """True while some committed batch is not safe yet (a reply must wait)."""


@dataclass(slots=True)
class SQLiteStats:
    """Counters for benchmarks and metrics. Updated by both threads; read freely.

    `fsyncs` counts commits made with ``synchronous=FULL`` (each syncs the
    WAL once); SQLite's checkpoint syncs are not counted.
    """

    batches: int = 0
    """Batch transactions committed."""
    fsyncs: int = 0
    ops_written: int = 0
    """Operations (including delivery marks) in committed batches."""
    messages_written: int = 0
    entries_written: int = 0
    ops_cancelled: int = 0
    """Operations dropped from a batch before it was written (ack before write)."""
    failed_batches: int = 0
    dangling_enqueues: int = 0
    """Enqueues skipped because their message did not exist (a bug in the caller)."""
    vacuumed_pages: int = 0
    expire_runs: int = 0
    """`expire` transactions committed."""
    expired: int = 0
    """Entries removed by `expire`."""


@dataclass(slots=True)
class Segment:
    """Operations and delivery marks handed to the writer together."""

    ops: list[Op | None]
    marks: dict[tuple[int, int], int]


@dataclass(slots=True)
class Batch:
    """One transaction's worth of segments, with the callbacks waiting for it."""

    segments: list[Segment]
    callbacks: list[DurabilityCallback]
    holds: bool
    """True unless the batch carries only delivery marks (which hold no callback)."""
    number: int = 0
    """Set by the writer at commit: the count of batches it committed so far."""


@dataclass(slots=True)
class Read:
    """A function to run on the writer's connection, its result sent to `future`."""

    fn: Callable[[sqlite3.Connection], Any]
    """Called on the writer thread with its connection."""
    future: asyncio.Future[Any]
