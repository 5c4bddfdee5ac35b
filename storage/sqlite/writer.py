"""The writer thread: the one owner of the `sqlite3.Connection`.

Owns the thread, its job queue and the connection (created in that thread,
`check_same_thread` kept on). The event loop never touches SQLite: it puts
jobs on the queue (`submit`) and the thread runs them strictly in order:

- a `Batch` runs as ONE transaction (`BEGIN IMMEDIATE` ... `COMMIT`), its
  segments through `statements.execute_ops` and the delivery marks last;
- a `Read` runs its function on the connection and sends the result (or the
  error) to its future;
- a `_Stop` closes the connection and ends the thread.

Results go back with `loop.call_soon_threadsafe`: a batch's outcome to
`on_done` (the gathering batch's `batch_done`), which calls the batch's
`when_durable` callbacks on the loop *after* the commit returned (in "fsync"
mode that means after the WAL was fsynced).

Guard: an optional `guard()` runs inside every batch's transaction, right
after `BEGIN IMMEDIATE`; when it raises, the batch fails like any other
(rolled back, nothing written, retried). Shared-storage mode uses it to
refuse writes once its lease has lapsed (`broker.shared_storage`).

Failure: when a batch fails (for example `SQLITE_FULL`, disk full) it is
rolled back and reported with a `StoreError`; the thread carries on. The
error is logged once per outage, not at every retry.

Replication tap: every committed batch gets a number (`Batch.number`, the
count of batches this writer committed), and when `tap` is set it is called
on this thread with that number and the batch's segments right after the
commit, before the outcome is posted, so the numbers reach the tap in commit
order (`storage.replication` ships them to a standby). A `Read` that runs
here sees `committed`: the number of the last batch its state includes.

Housekeeping, after a batch's outcome was posted: the file uses
`auto_vacuum=INCREMENTAL`, and once enough entries were deleted the writer
runs `PRAGMA incremental_vacuum` when more than `vacuum_free_pages` pages are
free, so space is returned to the file system.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moorage.storage.sqlite.jobs import Batch, Read, Segment, SQLiteStats
from moorage.storage.sqlite.schema import Opened, open_connection
from moorage.storage.sqlite.statements import SQL_MARKS, execute_ops, execute_rows
from moorage.storage.store import StoreError

__all__ = ["Writer"]

logger = logging.getLogger("moorage.storage.sqlite")


@dataclass(slots=True)
class _Stop:
    future: asyncio.Future[None]


_Job = Batch | Read | _Stop


def _set_future(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class Writer:
    """The writer thread of one store file (see the module docs).

    Args:
        path: the database file.
        durability: ``"fsync"`` or ``"nosync"`` (see `schema.DURABILITY_MODES`).
        vacuum: reclaim free pages (when the file allows it).
        stats: the store's counters, updated here after each transaction.
        on_done: called on the loop with each batch and its error (or None).
        guard: called on the thread inside each batch's transaction; raising
            refuses the batch (see the module docs).
    """

    vacuum_check_deletes: int = 256
    """Deleted entries between two looks at the free-page count."""
    vacuum_free_pages: int = 1024
    """Vacuum when more pages than this are free (they are reused before that)."""
    vacuum_keep_pages: int = 256
    """Free pages left in the file after a vacuum, for the next inserts."""
    vacuum_max_pages: int = 8192
    """At most this many pages returned per vacuum, to bound its duration."""

    def __init__(
        self,
        path: Path,
        *,
        durability: str,
        vacuum: bool,
        stats: SQLiteStats,
        on_done: Callable[[Batch, StoreError | None], None],
        guard: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.guard = guard
        self.durability = durability
        self.vacuum = vacuum
        self.stats = stats
        self.on_done = on_done
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.tap: Callable[[int, list[Segment]], None] | None = None
        """Called on this thread with each committed batch (see the module docs)."""
        self.committed = 0
        """Batches committed so far (thread-side; a `Read` may look at it)."""
        # Thread-side state.
        self._vacuum_enabled = False
        self._deletes_since_check = 0
        self._failing = False

    def submit(self, job: Batch | Read) -> None:
        """Queue a job; the thread runs jobs in the order they were submitted."""
        self._jobs.put(job)

    async def start(self) -> Opened:
        """Start the thread, which opens the file; return what it found.

        Raises:
            StoreError: the file was refused (see `schema.open_connection`);
                the thread has ended.
        """
        loop = asyncio.get_running_loop()
        self._loop = loop
        ready: asyncio.Future[Opened] = loop.create_future()
        self._thread = threading.Thread(
            target=self._main, args=(ready,), name=f"moorage-sqlite:{self.path.name}"
        )
        self._thread.daemon = True  # a forgotten close() must not hang interpreter exit
        self._thread.start()
        try:
            return await ready
        except BaseException:
            # Failed (the thread has exited) or cancelled (stop it once it is up).
            self._jobs.put(_Stop(loop.create_future()))
            self._thread.join()
            raise

    async def stop(self) -> None:
        """Close the connection after every job queued so far, and join the thread.

        A failure to close is suppressed: every change was committed before.
        """
        assert self._loop is not None
        assert self._thread is not None
        stopped: asyncio.Future[None] = self._loop.create_future()
        self._jobs.put(_Stop(stopped))
        with contextlib.suppress(StoreError):
            await stopped
        self._thread.join()

    # -- the thread ----------------------------------------------------------

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` on the loop; dropped if the loop is gone."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # loop closed under us
            self._loop.call_soon_threadsafe(fn, *args)

    def _main(self, ready: asyncio.Future[Opened]) -> None:
        """The writer thread: open the file, then run jobs in order until stopped."""
        try:
            conn, opened = open_connection(
                self.path, durability=self.durability, vacuum=self.vacuum
            )
        except BaseException as exc:  # noqa: BLE001 - handed to open()'s caller
            self._post(_set_future, ready, None, exc)
            return
        self._vacuum_enabled = opened.vacuum_enabled
        self._post(_set_future, ready, opened, None)
        stop: _Stop | None = None
        try:
            while stop is None:
                job = self._jobs.get()
                if isinstance(job, Batch):
                    self._write_batch(conn, job)
                elif isinstance(job, Read):
                    self._run_read(conn, job)
                else:
                    stop = job
        finally:
            error: BaseException | None = None
            try:
                conn.close()
            except sqlite3.Error as exc:
                error = StoreError(f"{self.path}: close failed: {exc}")
            if stop is not None:
                self._post(_set_future, stop.future, None, error)

    def _run_read(self, conn: sqlite3.Connection, job: Read) -> None:
        try:
            result = job.fn(conn)
        except sqlite3.Error as exc:
            error = StoreError(f"{self.path}: read failed: {exc}")
            error.__cause__ = exc
            self._post(_set_future, job.future, None, error)
        except Exception as exc:  # noqa: BLE001 - a bug; surfaced to the awaiting caller
            self._post(_set_future, job.future, None, exc)
        else:
            self._post(_set_future, job.future, result, None)

    def _write_batch(self, conn: sqlite3.Connection, batch: Batch) -> None:
        """Run a batch in one transaction, report it, then do housekeeping."""
        counts = [0, 0, 0, 0, 0, 0, 0]
        # ops, messages, entries, dangling, delete weight, expire runs, expired
        try:
            conn.execute("BEGIN IMMEDIATE")
            if self.guard is not None:
                self.guard()
            marks: dict[tuple[int, int], int] = {}
            for segment in batch.segments:
                execute_ops(conn, segment.ops, counts)
                marks.update(segment.marks)
            if marks:
                execute_rows(conn, SQL_MARKS, [(q, s, n) for (q, s), n in marks.items()])
                counts[0] += len(marks)
            conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - any failure fails the batch, never the thread
            # SQLITE_FULL and friends may already have rolled back.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            self.stats.failed_batches += 1
            error = StoreError(f"{self.path}: write failed: {exc}")
            error.__cause__ = exc
            # Logged once per outage, not at every retry.
            if not self._failing:
                logger.error("%s (changes are kept and retried)", error)
            self._failing = True
            self._post(self.on_done, batch, error)
            return
        if self._failing:
            logger.warning("%s: writing again after failures", self.path)
            self._failing = False
        self.committed += 1
        batch.number = self.committed
        tap = self.tap
        if tap is not None:
            try:
                tap(self.committed, batch.segments)
            except Exception:  # a bug in the tap must not stop the writer
                logger.exception("%s: replication tap failed on batch %d", self.path, batch.number)
        stats = self.stats
        stats.batches += 1
        if self.durability == "fsync":
            stats.fsyncs += 1
        stats.ops_written += counts[0]
        stats.messages_written += counts[1]
        stats.entries_written += counts[2]
        stats.expire_runs += counts[5]
        stats.expired += counts[6]
        if counts[3]:
            stats.dangling_enqueues += counts[3]
            logger.warning("%s: %d enqueues of missing messages skipped", self.path, counts[3])
        self._post(self.on_done, batch, None)
        # Housekeeping after the callbacks were released.
        self._deletes_since_check += counts[4]
        self._maybe_vacuum(conn)

    def _maybe_vacuum(self, conn: sqlite3.Connection) -> None:
        """Look at the free-page count once enough entries were deleted since the last look."""
        if self._vacuum_enabled and self._deletes_since_check >= self.vacuum_check_deletes:
            self._deletes_since_check = 0
            self._incremental_vacuum(conn)

    def _incremental_vacuum(self, conn: sqlite3.Connection) -> None:
        """Return free pages to the file system once there are many of them."""
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        if free <= self.vacuum_free_pages:
            return
        pages = min(free - self.vacuum_keep_pages, self.vacuum_max_pages)
        try:
            conn.execute("BEGIN IMMEDIATE")
            # Python's sqlite3 steps a pragma once, and each step of
            # incremental_vacuum frees one page: hence the loop.
            for _ in range(pages):
                conn.execute("PRAGMA incremental_vacuum")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            logger.warning("%s: incremental vacuum failed: %s", self.path, exc)
            return
        self.stats.vacuumed_pages += pages
        if self.durability == "fsync":
            self.stats.fsyncs += 1


def backup_to(conn: sqlite3.Connection, destination: Path) -> int:
    """On the writer thread: copy the database into a new file at `destination` with
    SQLite's online backup, in one step (one consistent state); the copy's size.

    Raises StoreError (and leaves no partial file) when the copy fails.
    """
    try:
        target = sqlite3.connect(destination)
        try:
            conn.backup(target)
        finally:
            target.close()
        return destination.stat().st_size
    except (sqlite3.Error, OSError) as e:
        with contextlib.suppress(OSError):
            destination.unlink()
        raise StoreError(f"backup to {destination} failed: {e}") from e
