"""`SQLiteStore`: the `Store` in one SQLite file in WAL mode, written by one dedicated thread.

Theory of operation
-------------------
The event loop never touches SQLite. Every mutating call (`put_*`, `enqueue`,
`ack`, ...) becomes one small operation of the *gathering batch*
(`batch.py`), which the loop hands to the **writer thread** (`writer.py`) at
the next loop iteration: that is the group commit. The writer runs the whole
batch as ONE transaction with few multi-row statements (`statements.py`) and
posts the result back; on the loop the `when_durable` callbacks of that batch
are called, in registration order, *after* the commit returned. The file, its
checks, pragmas and migrations are `schema.py`'s.

This class is the facade that ties them together: it checks that the store
is open, maps (vhost, queue) names to the integer queue ids the operations
carry (assigned here, so operations carry them directly), and runs reads as
jobs of the writer thread. Protocol sessions, retained messages and users are
`records.py`'s (a base class using the same batch and read jobs).

Reads (`load_topology`, `read_queue`, `queue_stats`, `max_message_id`, ...)
are queued *behind* every change made before the call, so a read sees every
earlier change (like `MemoryStore`) and the SQL never runs on the loop. A
read forces the gathering batch out at once.

Retention: `enqueue(..., expires_at)` stores a wall-clock UNIX time (REAL
seconds, 0: never) in the entry. `expire(vhost, queue, now, limit)` is a
coroutine but, inside, an operation of the gathering batch like any other (a
barrier: it runs in the batch's transaction after every change queued before
the call and before every change queued after it). It forces the batch out
at once and returns, once the batch is committed, the number of entries its
DELETE removed. Its deletes count towards the free-space check like acks.

Durability modes (`durability=`):

- ``"fsync"`` (default): ``PRAGMA synchronous=FULL``. The WAL is fsynced at
  every commit, before any callback of the batch runs. A process kill, an OS
  crash or a power cut loses no confirmed message.
- ``"nosync"``: ``PRAGMA synchronous=OFF``. Still one transaction per batch,
  callbacks still fire only after the commit returned, but nothing is
  fsynced. The data has reached the OS page cache, so a kill -9 of the broker
  loses nothing; an OS crash or power cut may lose the most recent batches
  and, as SQLite documents for ``synchronous=OFF``, may even corrupt the file.
  Meant for tests, benchmarks and disposable brokers.

Ordering rules: every change is refused unless the store is open; a read is
submitted behind the changes queued before it; `close()` refuses changes from
the moment it is called, then waits for one read job (which runs after every
change) before stopping the thread.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

from moorage.storage.sqlite.batch import GatheringBatch
from moorage.storage.sqlite.jobs import DurabilityGate, Read, Segment, SQLiteStats
from moorage.storage.sqlite.records import SessionAndUserRecords
from moorage.storage.sqlite.schema import DURABILITY_MODES
from moorage.storage.sqlite.statements import (
    DELETE_BINDING,
    DELETE_EXCHANGE,
    DELETE_QUEUE,
    DELETE_VHOST,
    PURGE,
    PUT_BINDING,
    PUT_EXCHANGE,
    PUT_QUEUE,
    PUT_VHOST,
    SQL_QUEUE_STATS,
    SQL_READ_QUEUE,
    Params,
)
from moorage.storage.sqlite.writer import Writer, backup_to
from moorage.storage.store import (
    BindingRecord,
    DurabilityCallback,
    ExchangeRecord,
    QueueRecord,
    StoredEntry,
    StoreError,
    Topology,
    check_expires_at,
)

__all__ = ["SQLiteStore"]

_T = TypeVar("_T")
_V = TypeVar("_V")


class _Setting(Generic[_V]):
    """A tuning attribute of the store that lives on its batch or writer (read and set)."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type) -> _Setting[_V]: ...
    @overload
    def __get__(self, instance: object, owner: type) -> _V: ...
    def __get__(self, instance: object | None, owner: type) -> _V | _Setting[_V]:
        if instance is None:
            return self
        value: _V = getattr(getattr(instance, self.part), self.name)
        return value

    def __set__(self, instance: object, value: _V) -> None:
        setattr(getattr(instance, self.part), self.name, value)


class SQLiteStore(SessionAndUserRecords):
    """A `Store` in one SQLite file, with group commit on a writer thread.

    Args:
        path: the database file; its parent directory is created if missing.
        durability: ``"fsync"`` (default) or ``"nosync"``, see the module docs.
        vacuum: reclaim free pages with ``PRAGMA incremental_vacuum``. Only
            effective for files created with it on (SQLite fixes the
            auto-vacuum mode when the first table is created).
        flush_delay: group-commit window in seconds; 0 flushes at the next
            loop iteration.
        ack_window: seconds a message delivered to a consumer may wait in
            the gathering batch for that consumer's ack (which cancels its
            write), see "Ack window" in `batch.py`; 0 writes at once.
        guard: called on the writer thread inside every write transaction
            before its changes; when it raises, the batch is refused (rolled
            back, its callbacks get a `StoreError`). Shared-storage mode
            passes its lease check (`broker.shared_storage`).

    Raises:
        ValueError: unknown `durability`, negative `flush_delay` or `ack_window`.

    All methods must be called from the event loop thread that ran `open()`;
    `when_durable` callbacks run on that loop. An instance is opened once: to
    reopen the file after `close()`, make a new instance.

    The tuning attributes below live on the gathering batch or the writer
    (see their docs there); setting them here sets them there.
    """

    flush_delay = _Setting[float]("_batch")
    ack_window = _Setting[float]("_batch")
    retry_interval = _Setting[float]("_batch")
    marks_flush_threshold = _Setting[int]("_batch")
    held_max_age = _Setting[float]("_batch")
    held_max_ops = _Setting[int]("_batch")
    vacuum_check_deletes = _Setting[int]("_writer")
    vacuum_free_pages = _Setting[int]("_writer")
    vacuum_keep_pages = _Setting[int]("_writer")
    vacuum_max_pages = _Setting[int]("_writer")

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: str = "fsync",
        vacuum: bool = True,
        flush_delay: float = 0.0,
        ack_window: float = 0.0,
        guard: Callable[[], None] | None = None,
    ) -> None:
        if durability not in DURABILITY_MODES:
            raise ValueError(
                f"unknown durability {durability!r}; expected one of {sorted(DURABILITY_MODES)}"
            )
        if flush_delay < 0:
            raise ValueError(f"flush_delay must be >= 0, got {flush_delay!r}")
        if not ack_window >= 0:
            raise ValueError(f"ack_window must be >= 0, got {ack_window!r}")
        self.path = Path(os.fspath(path))
        self.durability = durability
        self.vacuum = vacuum
        self.stats = SQLiteStats()
        self._state = "new"  # new -> open -> closing -> closed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer = Writer(
            self.path,
            durability=durability,
            vacuum=vacuum,
            stats=self.stats,
            on_done=self._batch_done,
            guard=guard,
        )
        self._batch = GatheringBatch(
            stats=self.stats,
            submit=self._writer.submit,
            flush_delay=flush_delay,
            ack_window=ack_window,
        )
        # Queue ids are assigned here so that operations carry them directly.
        self._queue_ids: dict[tuple[str, str], int] = {}
        self._next_queue_id = 1

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        """Open or create the file, check it, migrate it and start the writer thread.

        Raises:
            StoreError: the file is not a SQLite database, fails
                `PRAGMA quick_check`, has a newer schema than this code, is
                locked by another process, or cannot be created. The file is
                not modified in any of these cases (except creating a new one).
        """
        if self._state != "new":
            raise StoreError(f"{self.path}: store already opened")
        self._loop = asyncio.get_running_loop()
        try:
            opened = await self._writer.start()
        except BaseException:
            self._state = "closed"
            raise
        self._queue_ids = opened.queue_ids
        self._next_queue_id = opened.next_queue_id
        self._batch.max_put_id = opened.max_message_id
        self._batch.loop = self._loop
        self._batch.may_hold = True
        self._state = "open"

    async def close(self) -> None:
        """Write everything pending, wait for it, close the file and join the thread.

        Idempotent. Changes are refused from the moment it is called.

        Raises:
            StoreError: the final batch could not be written (its callbacks
                were already called with the error). Resources are released
                anyway.
        """
        if self._state != "open":
            return
        self._state = "closing"
        self._batch.may_hold = False
        try:
            # A read job runs after every change queued before it.
            await self._submit(lambda conn: None)
        finally:
            self._batch.cancel_timers()
            await self._writer.stop()
            self._batch.closed = True
            self._state = "closed"
        lost = self._batch.discard_unwritten()
        if lost:
            raise StoreError(f"{self.path}: closed with {lost} changes that could not be written")

    def _check_open(self) -> None:
        if self._state != "open":
            state = "not open" if self._state == "new" else self._state
            raise StoreError(f"{self.path}: store is {state}, changes are refused")

    def _check_readable(self) -> None:
        if self._state != "open":
            raise StoreError(f"{self.path}: store is not open")

    def _batch_done(self, batch: Any, error: StoreError | None) -> None:
        """On the loop: the writer finished `batch` (see `GatheringBatch.batch_done`)."""
        self._batch.batch_done(batch, error)

    # -- topology ----------------------------------------------------------

    def put_vhost(self, name: str) -> None:
        """Queue the creation of a vhost (no-op if it exists)."""
        self._check_open()
        self._batch.append(PUT_VHOST, (name,))

    def delete_vhost(self, name: str) -> None:
        """Queue the deletion of a vhost with every exchange, queue, binding and entry in it."""
        self._check_open()
        for key in [k for k in self._queue_ids if k[0] == name]:
            self._batch.cancel_queue_entries(self._queue_ids.pop(key))
        self._batch.append(DELETE_VHOST, (name,))

    def put_exchange(self, record: ExchangeRecord) -> None:
        """Queue the creation or update of an exchange."""
        self._check_open()
        self._batch.append(
            PUT_EXCHANGE,
            (
                record.vhost,
                record.name,
                record.type,
                record.auto_delete,
                record.internal,
                record.arguments,
            ),
        )

    def delete_exchange(self, vhost: str, name: str) -> None:
        """Queue the deletion of an exchange and of every binding from or to it."""
        self._check_open()
        self._batch.append(DELETE_EXCHANGE, (vhost, name))

    def put_queue(self, record: QueueRecord) -> None:
        """Queue the creation or update of a queue; an existing queue keeps its entries."""
        self._check_open()
        key = (record.vhost, record.name)
        queue_id = self._queue_ids.get(key)
        if queue_id is None:
            queue_id = self._queue_ids[key] = self._next_queue_id
            self._next_queue_id += 1
        self._batch.append(
            PUT_QUEUE, (queue_id, record.vhost, record.name, record.auto_delete, record.arguments)
        )

    def delete_queue(self, vhost: str, name: str) -> None:
        """Queue the deletion of a queue, its bindings and its entries."""
        self._check_open()
        queue_id = self._queue_ids.pop((vhost, name), None)
        if queue_id is not None:
            self._batch.cancel_queue_entries(queue_id)
        self._batch.append(DELETE_QUEUE, (queue_id, vhost, name))

    def put_binding(self, record: BindingRecord) -> None:
        """Queue the creation of a binding (no-op if an identical one exists)."""
        self._check_open()
        self._batch.append(PUT_BINDING, self._binding_params(record))

    def delete_binding(self, record: BindingRecord) -> None:
        """Queue the deletion of the binding equal to `record`, if any."""
        self._check_open()
        self._batch.append(DELETE_BINDING, self._binding_params(record))

    @staticmethod
    def _binding_params(record: BindingRecord) -> Params:
        return (
            record.vhost,
            record.source,
            record.destination,
            record.destination_kind,
            record.routing_key,
            record.arguments,
        )

    # -- messages ----------------------------------------------------------

    def put_message(self, message_id: int, data: bytes) -> None:
        """Queue a message body, before the entries that reference it."""
        self._check_open()
        self._batch.put_message(message_id, data)

    def enqueue(
        self, vhost: str, queue: str, seq: int, message_id: int, expires_at: float = 0.0
    ) -> None:
        """Queue an entry for a stored message at position `seq` of a queue.

        `expires_at` (wall-clock seconds, 0: never) is when `expire` may remove it.

        Raises:
            ValueError: `expires_at` is negative, infinite or NaN.
            StoreError: the queue was never put (`MemoryStore` tolerates
                that), or the message was never put. The latter check is
                cheap and partial: it knows ids above the highest id ever
                put and messages dropped in the current batch; an entry for
                another missing message is skipped by the writer and counted
                in `stats.dangling_enqueues`.
        """
        self._check_open()
        expires_at = check_expires_at(expires_at)
        queue_id = self._queue_ids.get((vhost, queue))
        if queue_id is None:
            raise StoreError(f"queue {queue!r} in vhost {vhost!r} was never put")
        self._batch.enqueue(queue_id, seq, message_id, expires_at)

    def ack(self, vhost: str, queue: str, seq: int) -> None:
        """Queue the removal of an entry; cancels its enqueue if that is not written yet."""
        self._check_open()
        queue_id = self._queue_ids.get((vhost, queue))
        if queue_id is not None:
            self._batch.ack(queue_id, seq)

    def ack_range(self, vhost: str, queue: str, first_seq: int, last_seq: int) -> None:
        """Queue the removal of every entry with first_seq <= seq <= last_seq.

        Enqueues in that range still in the gathering batch are cancelled, as
        by `ack`; the range is deleted on disk all the same (one primary key
        range). Enqueues queued after this call are written after it, so they
        are kept even when their seq is in the range.
        """
        self._check_open()
        queue_id = self._queue_ids.get((vhost, queue))
        if queue_id is not None and first_seq <= last_seq:
            self._batch.ack_range(queue_id, first_seq, last_seq)

    def mark_delivered(self, vhost: str, queue: str, seq: int, delivery_count: int) -> None:
        """Record a delivery count; written with the next batch, never holds a callback."""
        self._check_open()
        queue_id = self._queue_ids.get((vhost, queue))
        if queue_id is not None:
            self._batch.mark_delivered(queue_id, seq, delivery_count)

    def purge_queue(self, vhost: str, queue: str) -> None:
        """Queue the removal of every entry of a queue."""
        self._check_open()
        queue_id = self._queue_ids.get((vhost, queue))
        if queue_id is None:
            return
        self._batch.cancel_queue_entries(queue_id)
        self._batch.append(PURGE, (queue_id,))

    # -- durability --------------------------------------------------------

    def when_durable(self, callback: DurabilityCallback, *, removals: bool = True) -> None:
        """Call `callback(None)` once every change queued so far is committed or cancelled.

        With `removals=False` the entry removals (acks) queued so far need
        not be committed. Called synchronously when nothing is pending; with
        a `StoreError` if the batch holding those changes fails. Callbacks
        run on the loop, in registration order.
        """
        self._batch.when_durable(callback, removals=removals)

    @property
    def pending(self) -> bool:
        """True while some change (other than a delivery mark) is not yet committed."""
        return self._batch.pending

    # -- reads -------------------------------------------------------------

    async def _submit(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `fn(connection)` on the writer thread after every change queued so far."""
        if self._state not in ("open", "closing"):
            raise StoreError(f"{self.path}: store is not open")
        assert self._loop is not None
        future: asyncio.Future[_T] = self._loop.create_future()
        self._batch.add_read(Read(fn, future))
        return await future

    async def load_topology(self) -> Topology:
        """Every durable vhost, exchange, queue and binding, in creation order."""

        def load(conn: sqlite3.Connection) -> Topology:
            return Topology(
                vhosts=[r[0] for r in conn.execute("SELECT name FROM vhosts ORDER BY rowid")],
                exchanges=[
                    ExchangeRecord(r[0], r[1], r[2], bool(r[3]), bool(r[4]), bytes(r[5]))
                    for r in conn.execute(
                        "SELECT vhost, name, type, auto_delete, internal, arguments"
                        " FROM exchanges ORDER BY rowid"
                    )
                ],
                queues=[
                    QueueRecord(r[0], r[1], bool(r[2]), bytes(r[3]))
                    for r in conn.execute(
                        "SELECT vhost, name, auto_delete, arguments FROM queues ORDER BY id"
                    )
                ],
                bindings=[
                    BindingRecord(r[0], r[1], r[2], r[3], r[4], bytes(r[5]))
                    for r in conn.execute(
                        "SELECT vhost, source, destination, destination_kind, routing_key,"
                        " arguments FROM bindings ORDER BY rowid"
                    )
                ],
            )

        self._check_readable()
        return await self._submit(load)

    async def read_queue(
        self, vhost: str, queue: str, after_seq: int, limit: int
    ) -> list[StoredEntry]:
        """Up to `limit` entries with seq > `after_seq`, in seq order (an index range scan)."""
        self._check_readable()
        queue_id = self._queue_ids.get((vhost, queue))
        if queue_id is None or limit <= 0:
            return []

        def read(conn: sqlite3.Connection) -> list[StoredEntry]:
            return [
                StoredEntry(r[0], r[1], bytes(r[2]), r[3], r[4])
                for r in conn.execute(SQL_READ_QUEUE, (queue_id, after_seq, limit))
            ]

        return await self._submit(read)

    async def queue_stats(self, vhost: str, queue: str) -> tuple[int, int, int]:
        """(entries, total bytes of their messages, highest seq or 0). Scans the queue."""
        self._check_readable()
        queue_id = self._queue_ids.get((vhost, queue))
        if queue_id is None:
            return (0, 0, 0)

        def stats(conn: sqlite3.Connection) -> tuple[int, int, int]:
            row = conn.execute(SQL_QUEUE_STATS, (queue_id,)).fetchone()
            return (int(row[0]), int(row[1]), int(row[2]))

        return await self._submit(stats)

    async def max_message_id(self) -> int:
        """The highest message id stored, or 0."""
        self._check_readable()

        def max_id(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0])

        return await self._submit(max_id)

    @property
    def location(self) -> Path | None:
        return self.path.parent

    async def backup(self, destination: Path) -> int:
        """SQLite's online backup in one step on the writer thread, queued like a read:
        one consistent state; commits wait while the pages are copied."""
        destination = Path(destination)
        if destination.exists():
            raise StoreError(f"{destination} exists; a backup never overwrites a file")
        return await self._submit(lambda conn: backup_to(conn, destination))

    # -- replication (`storage.replication`) ---------------------------------

    def replicate(
        self, tap: Callable[[int, list[Segment]], None] | None, gate: DurabilityGate | None
    ) -> None:
        """Ship every committed batch to `tap` (on the writer thread, in commit order,
        with its number) and let `gate` hold back every `when_durable` callback
        until its batch is safe elsewhere too. None, None: stop replicating.

        Call it before `open()` or while nothing is in flight (at start-up).
        """
        self._writer.tap = tap
        self._batch.gate = gate

    async def snapshot(self, destination: Path) -> tuple[int, int]:
        """`backup` that also says which batches it holds: (number of the last batch
        committed before the copy, size of the copy). Batches numbered after it
        are exactly the changes the copy lacks. Raises StoreError."""
        destination = Path(destination)
        if destination.exists():
            raise StoreError(f"{destination} exists; a snapshot never overwrites a file")
        writer = self._writer

        def copy(conn: sqlite3.Connection) -> tuple[int, int]:
            return writer.committed, backup_to(conn, destination)

        return await self._submit(copy)

    async def release_memory(self) -> None:
        """Give back the page cache (`PRAGMA shrink_memory`), queued like a read.

        Not part of the `Store` protocol: the broker's memory monitor calls
        it, where a store has it, once a large drain has settled
        (`broker.memory`). The cache (`cache_size`, 16 MiB) refills from the
        OS's cache as pages are read again.
        """

        def shrink(conn: sqlite3.Connection) -> None:
            conn.execute("PRAGMA shrink_memory")

        await self._submit(shrink)

    async def expire(self, vhost: str, queue: str, now: float, limit: int = 10000) -> int:
        """Delete up to `limit` entries of a queue with 0 < expires_at <= now; return how many.

        Queued like any change, as a barrier: it runs in the next batch's
        transaction after every change queued before the call (including
        enqueues still gathering, which it sees) and before every change
        queued after it (which it cannot touch, and which can no longer
        cancel an enqueue queued before it). The batch is flushed at once,
        and this returns when it is committed. Earliest expiry first. Reads
        no message body: bodies left without entries go by the orphan
        trigger.

        Raises:
            StoreError: the store is not open, or the batch failed. A failed
                expire is not retried with the batch's other changes (which
                are); nothing it deleted is kept.
        """
        self._check_open()
        queue_id = self._queue_ids.get((vhost, queue))
        if queue_id is None or limit <= 0:
            return 0
        assert self._loop is not None
        result = self._batch.expire(queue_id, now, limit)
        future: asyncio.Future[int] = self._loop.create_future()

        def done(error: BaseException | None) -> None:
            if future.done():
                return
            if error is None:
                future.set_result(result.deleted)
            else:
                future.set_exception(error)

        self._batch.when_durable(done)
        self._batch.schedule_flush(immediate=True)
        return await future
