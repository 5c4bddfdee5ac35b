"""The SQLite `Store`: one file in WAL mode, written by one dedicated thread.

Theory of operation
-------------------
The event loop never touches SQLite. Every mutating call (`put_*`, `enqueue`,
`ack`, ...) appends one small tuple to the *gathering batch* and, unless a
flush is already scheduled, schedules one with `loop.call_soon` (or
`loop.call_later(flush_delay)`, see below). So everything the broker does in
one loop iteration ends up in one batch: that is the group commit.

A flush hands the gathering batch to the **writer thread**, which owns the
only `sqlite3.Connection` (created in that thread, `check_same_thread` kept
on). The writer runs the whole batch as ONE transaction (`BEGIN IMMEDIATE`
... `COMMIT`). Between two topology changes it regroups the per-message
operations by kind (all puts, then enqueues, then acks; see `_execute_ops`
for why that is safe) and applies each group with multi-row statements, 512
rows a step: one step per row would hand the GIL back and forth with a busy
loop at every row. Topology changes use `executemany`. All SQL is constant
strings, so each statement is prepared once and then reused from sqlite3's
statement cache. Then it posts the result back with
`loop.call_soon_threadsafe`; on the loop the `when_durable` callbacks of that
batch are called, in registration order, *after* the commit returned (in
"fsync" mode that means after the WAL was fsynced). Only one batch is in
flight: while the writer works, the next batch keeps gathering, and it is
handed off as soon as the previous one completes. The slower the disk, the
bigger the batches. Nothing bounds the gathering batch: the broker bounds it
by waiting for confirms (publisher flow control), not the store.

Reads (`load_topology`, `read_queue`, `queue_stats`, `max_message_id`) are
jobs for the same thread, queued *behind* every change made before the call,
so a read sees every earlier change (like `MemoryStore`) and the SQL never
runs on the loop. A read forces the gathering batch out at once.

Cancellation: an `ack` of an entry whose `enqueue` is still in the gathering
batch (not yet handed to the writer) deletes both operations from the batch,
and the message's `put_message` too when no other operation of the batch
references it. A message consumed and acked within one group-commit window
therefore never touches the disk. `ack_range`, `purge_queue`, `delete_queue`
and `delete_vhost` cancel the batch's enqueues of the entries they remove in
the same way (and still run their DELETE, for what earlier batches wrote).
`stats.ops_cancelled` counts what was dropped.

`ack_range(first, last)` is one `DELETE ... WHERE queue_id = ? AND seq
BETWEEN ? AND ?`, a range of the primary key; bodies left without entries go
by the orphan trigger. Unlike `ack` it is not regrouped with the hot
operations but is a barrier (see `_execute_ops`), so an enqueue of a seq in
the range queued after it is written after it and kept.

Retention: `enqueue(..., expires_at)` stores a wall-clock UNIX time (REAL
seconds, 0: never) in the entry. `expire(vhost, queue, now, limit)` is a
coroutine but, inside, an operation of the gathering batch like any other:
a barrier in `_execute_ops`, so it runs in the batch's transaction after
every change queued before the call (enqueues still gathering included) and
before every change queued after it. At the call the batch's cancellation
maps are reset, as at a flush, so a later `ack` cannot unwrite an enqueue the
expire was to see (the count it returns is then exactly `MemoryStore`'s).
It forces the batch out at once and returns, once the batch is committed,
the number of entries its DELETE removed. That DELETE picks up to `limit`
entries through the partial index `entries_by_expiry (queue_id, expires_at)
WHERE expires_at > 0`, earliest expiry first, and deletes them by primary
key: it reads no message body, the orphan trigger drops bodies left without
entries. Its deletes count towards the free-space check like acks. If the
batch fails, the caller gets the `StoreError` and the expire is removed from
the changes kept for the retry (nobody would hear its result).

`mark_delivered` only records a redelivery flag: it rides along with the next
batch and never holds up `when_durable` (a crash loses at most a flag).

Failure: when a batch fails (for example `SQLITE_FULL`, disk full) it is
rolled back, every callback of that batch is called with a `StoreError`, and
its operations are kept, in order, at the head of the next batch, which is
tried at the next flush (any new change, a `when_durable`, or a timer every
`retry_interval` seconds). `pending` stays true until they are written, and
every callback registered meanwhile gets the error too if the retry fails
again. Publishers waiting for a confirm are thus told, and the store carries
on by itself once space is freed.

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

`flush_delay` is the group-commit window (mosquitto's `flush_period`): 0
(default) writes at the next loop iteration; a positive value waits that
many seconds first, trading confirm latency for bigger batches.

Ack window (`ack_window`, seconds, 0 = off): most persistent messages of a
busy broker go straight to a consumer and are acked milliseconds later, so
writing them only to delete them again is most of the disk work. RabbitMQ
confirms such a message on the consumer's ack and never writes it. Here the
batch is *held* while every live change in it is a message out to a
consumer (its put and an enqueue that `mark_delivered` reported; the core
reports every delivery of a persistent entry that awaits an ack) or an
entry removal. An ack then cancels the write as above, and a `when_durable`
callback fires as soon as every change queued before it is cancelled: the
publisher's confirm follows the ack. Any other change (an enqueue nobody was
given, topology, sessions, a read, an expire) ends the hold at the next
loop iteration, and so does a callback that also waits for removals (every
caller but publisher confirms: a declare-ok, a tx.commit-ok or a receipt is
not held back), the oldest waiting callback turning `ack_window` old, the
batch turning `held_max_age` old or holding `held_max_ops` live changes:
then the batch is written as usual. A held
callback only fires while no earlier batch is in flight or failed, so the
callbacks keep their order and a confirm never overtakes an unwritten
message. `when_durable(removals=False)` (publisher confirms) also passes
over acks queued before it, which only decide whether a message is
redelivered after a crash; every other caller waits for them. A crash
during a hold loses only what no callback has reported durable.

Schema: a `schema_version` table holds the number of migrations applied;
`MIGRATIONS[i]` upgrades version i to i + 1, each in one transaction
(version 2 added `entries.expires_at` and its partial index; version 3 the
`sessions` and `retained` tables, see the `Store` docs). Message
bodies are stored once (`messages`) and referenced by queue `entries`; a
trigger deletes a message when its last entry goes (acked, purged, or its
queue deleted by the `ON DELETE CASCADE`), using an index on
`entries(message_id)`. That was preferred to a reference counter because
updating a counter in the `messages` row would rewrite the whole row, body
included, at every enqueue and ack.

Housekeeping in the writer thread: the file uses `auto_vacuum=INCREMENTAL`
(fixed when the file is created) and after deletes the writer runs
`PRAGMA incremental_vacuum` when more than `vacuum_free_pages` pages are free,
so space is returned to the file system. WAL checkpoints are SQLite's
automatic ones (every ~1000 pages).

The file is opened with ``locking_mode=EXCLUSIVE``: a second broker (or the
sqlite3 shell) cannot open it while this store is open, which prevents two
processes from writing one store. Before anything is written, an existing
file is checked read-only (header, `PRAGMA quick_check`, schema version); a
file that fails is reported with a `StoreError` and left untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Final, TypeVar

from moorage.storage.store import (
    BindingRecord,
    DurabilityCallback,
    ExchangeRecord,
    QueueRecord,
    RetainedRecord,
    SessionRecord,
    StoredEntry,
    StoreError,
    Topology,
    check_expires_at,
)

__all__ = ["MIGRATIONS", "SQLiteStats", "SQLiteStore"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_SQLITE_MAGIC: Final = b"SQLite format 3\x00"

DURABILITY_MODES: Final = {"fsync": "FULL", "nosync": "OFF"}
"""Accepted `durability` values and the `PRAGMA synchronous` each one sets."""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: everything. `auto_vacuum` is set before this runs (it must precede
    # the first table); `schema_version` is a one-row table.
    (
        """CREATE TABLE schema_version (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL
        )""",
        "CREATE TABLE vhosts (name TEXT PRIMARY KEY)",
        """CREATE TABLE exchanges (
            vhost TEXT NOT NULL,
            name TEXT NOT NULL,
            type TEXT NOT NULL,
            auto_delete INTEGER NOT NULL,
            internal INTEGER NOT NULL,
            arguments BLOB NOT NULL,
            PRIMARY KEY (vhost, name)
        )""",
        """CREATE TABLE queues (
            id INTEGER PRIMARY KEY,
            vhost TEXT NOT NULL,
            name TEXT NOT NULL,
            auto_delete INTEGER NOT NULL,
            arguments BLOB NOT NULL,
            UNIQUE (vhost, name)
        )""",
        """CREATE TABLE bindings (
            vhost TEXT NOT NULL,
            source TEXT NOT NULL,
            destination TEXT NOT NULL,
            destination_kind TEXT NOT NULL,
            routing_key TEXT NOT NULL,
            arguments BLOB NOT NULL,
            UNIQUE (vhost, source, destination, destination_kind, routing_key, arguments)
        )""",
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, data BLOB NOT NULL)",
        """CREATE TABLE entries (
            queue_id INTEGER NOT NULL REFERENCES queues (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            message_id INTEGER NOT NULL,
            delivery_count INTEGER NOT NULL,
            PRIMARY KEY (queue_id, seq)
        ) WITHOUT ROWID""",
        "CREATE INDEX entries_by_message ON entries (message_id)",
        # A message goes with its last entry, however the entry is deleted
        # (ack, purge, or the cascade of a queue deletion).
        """CREATE TRIGGER entries_drop_orphan_message AFTER DELETE ON entries
        BEGIN
            DELETE FROM messages WHERE id = OLD.message_id
                AND NOT EXISTS (SELECT 1 FROM entries WHERE message_id = OLD.message_id);
        END""",
    ),
    # 2: retention. `expires_at` is a wall-clock UNIX time in seconds, 0 for
    # never. Adding a column with a constant default rewrites no row: entries
    # of a version 1 file read as 0. A REAL column stores 0 (and any whole
    # number) as a 0-byte integer, so entries without expiry cost nothing.
    # The partial index holds only entries that expire, so it costs nothing
    # either where retention is not used; `expire` walks it in expiry order.
    (
        "ALTER TABLE entries ADD COLUMN expires_at REAL NOT NULL DEFAULT 0",
        "CREATE INDEX entries_by_expiry ON entries (queue_id, expires_at) WHERE expires_at > 0",
    ),
    # 3: protocol sessions and retained messages. A retained row references a
    # message body like an entry does, so the orphan rule becomes "no entry
    # and no retained row": the entries trigger is replaced, and deleting or
    # repointing a retained row drops the body it leaves without references.
    (
        """CREATE TABLE sessions (
            vhost TEXT NOT NULL,
            protocol TEXT NOT NULL,
            client_id TEXT NOT NULL,
            state BLOB NOT NULL,
            PRIMARY KEY (vhost, protocol, client_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE retained (
            vhost TEXT NOT NULL,
            topic TEXT NOT NULL,
            message_id INTEGER NOT NULL,
            PRIMARY KEY (vhost, topic)
        ) WITHOUT ROWID""",
        "CREATE INDEX retained_by_message ON retained (message_id)",
        "DROP TRIGGER entries_drop_orphan_message",
        """CREATE TRIGGER entries_drop_orphan_message AFTER DELETE ON entries
        BEGIN
            DELETE FROM messages WHERE id = OLD.message_id
                AND NOT EXISTS (SELECT 1 FROM entries WHERE message_id = OLD.message_id)
                AND NOT EXISTS (SELECT 1 FROM retained WHERE message_id = OLD.message_id);
        END""",
        """CREATE TRIGGER retained_drop_orphan_message AFTER DELETE ON retained
        BEGIN
            DELETE FROM messages WHERE id = OLD.message_id
                AND NOT EXISTS (SELECT 1 FROM entries WHERE message_id = OLD.message_id)
                AND NOT EXISTS (SELECT 1 FROM retained WHERE message_id = OLD.message_id);
        END""",
        """CREATE TRIGGER retained_drop_replaced_message AFTER UPDATE OF message_id ON retained
        WHEN OLD.message_id <> NEW.message_id
        BEGIN
            DELETE FROM messages WHERE id = OLD.message_id
                AND NOT EXISTS (SELECT 1 FROM entries WHERE message_id = OLD.message_id)
                AND NOT EXISTS (SELECT 1 FROM retained WHERE message_id = OLD.message_id);
        END""",
    ),
)
"""`MIGRATIONS[i]` takes the schema from version i to i + 1. Append only; never edit."""

# Operation kinds. An operation is `(kind, params)`; `params` is bound to each
# statement of `_STATEMENTS[kind]` (through the statement's picker, if any).
_PUT_VHOST: Final = 0
_DELETE_VHOST: Final = 1
_PUT_EXCHANGE: Final = 2
_DELETE_EXCHANGE: Final = 3
_PUT_QUEUE: Final = 4
_DELETE_QUEUE: Final = 5
_PUT_BINDING: Final = 6
_DELETE_BINDING: Final = 7
_PUT_MESSAGE: Final = 8
_ENQUEUE: Final = 9
_ACK: Final = 10
_PURGE: Final = 11
_COLLECT_MESSAGE: Final = 12
_ACK_RANGE: Final = 13
_EXPIRE: Final = 14  # params: (queue_id, now, limit, _ExpireResult); see `_execute_kind`
_PUT_SESSION: Final = 15
_DELETE_SESSION: Final = 16
_PUT_RETAINED: Final = 17
_DELETE_RETAINED: Final = 18

_Params = tuple[Any, ...]
_Op = tuple[int, _Params]
_Picker = Callable[[_Params], _Params] | None


def _first(params: _Params) -> _Params:
    return params[:1]


def _rest(params: _Params) -> _Params:
    return params[1:]


_CHUNKS: Final = (512, 64, 8, 1)
"""Row counts of the multi-row variants of the hot statements, largest first."""


def _multi_row(template: str, row: str) -> dict[int, str]:
    """`template` with `{rows}` replaced by k copies of `row`, for each k in _CHUNKS.

    Why not `executemany`: sqlite3 releases the GIL around every step, and
    while the event loop is busy a thread that needs the GIL back waits for
    the loop's switch interval. One step per row made the writer ~40x slower
    under load (measured: 14k vs 590k rows/s); one step per 512 rows keeps
    it near its idle speed. The strings are built once, so each is still
    prepared once and then found in sqlite3's statement cache.
    """
    return {k: template.format(rows=", ".join([row] * k)) for k in _CHUNKS}


_Sql = str | dict[int, str]  # one row per `executemany` step, or multi-row variants

# Every statement here is conflict-free (upserts, OR IGNORE, OR REPLACE), so
# no sequence of calls can wedge the store on a constraint error. Runs of one
# kind are executed statement by statement, which is only correct because the
# statements of one kind commute across operations. Topology changes are rare
# and use `executemany`; the per-message kinds use multi-row statements.
_STATEMENTS: Final[dict[int, tuple[tuple[_Sql, _Picker], ...]]] = {
    _PUT_VHOST: (("INSERT OR IGNORE INTO vhosts (name) VALUES (?)", None),),
    _DELETE_VHOST: (
        ("DELETE FROM bindings WHERE vhost = ?", None),
        ("DELETE FROM exchanges WHERE vhost = ?", None),
        ("DELETE FROM queues WHERE vhost = ?", None),  # entries by cascade
        ("DELETE FROM sessions WHERE vhost = ?", None),
        ("DELETE FROM retained WHERE vhost = ?", None),
        ("DELETE FROM vhosts WHERE name = ?", None),
    ),
    _PUT_EXCHANGE: (
        (
            "INSERT INTO exchanges (vhost, name, type, auto_delete, internal, arguments)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (vhost, name) DO UPDATE SET"
            " type = excluded.type, auto_delete = excluded.auto_delete,"
            " internal = excluded.internal, arguments = excluded.arguments",
            None,
        ),
    ),
    _DELETE_EXCHANGE: (
        (
            "DELETE FROM bindings WHERE vhost = ?1 AND (source = ?2"
            " OR (destination_kind = 'exchange' AND destination = ?2))",
            None,
        ),
        ("DELETE FROM exchanges WHERE vhost = ?1 AND name = ?2", None),
    ),
    _PUT_QUEUE: (
        (
            "INSERT INTO queues (id, vhost, name, auto_delete, arguments)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (vhost, name) DO UPDATE SET"
            " auto_delete = excluded.auto_delete, arguments = excluded.arguments",
            None,
        ),
    ),
    _DELETE_QUEUE: (  # params: (queue_id, vhost, name)
        (
            "DELETE FROM bindings WHERE vhost = ?1 AND destination_kind = 'queue'"
            " AND destination = ?2",
            _rest,
        ),
        ("DELETE FROM queues WHERE id = ?", _first),  # entries by cascade
    ),
    _PUT_BINDING: (
        (
            "INSERT OR IGNORE INTO bindings"
            " (vhost, source, destination, destination_kind, routing_key, arguments)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            None,
        ),
    ),
    _DELETE_BINDING: (
        (
            "DELETE FROM bindings WHERE vhost = ? AND source = ? AND destination = ?"
            " AND destination_kind = ? AND routing_key = ? AND arguments = ?",
            None,
        ),
    ),
    _PURGE: (("DELETE FROM entries WHERE queue_id = ?", None),),
    _PUT_SESSION: (
        (
            "INSERT INTO sessions (vhost, protocol, client_id, state) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (vhost, protocol, client_id) DO UPDATE SET state = excluded.state",
            None,
        ),
    ),
    _DELETE_SESSION: (
        ("DELETE FROM sessions WHERE vhost = ? AND protocol = ? AND client_id = ?", None),
    ),
    # Like an enqueue, a reference to a message that no longer exists is not
    # written (the topic keeps its previous one). The upsert's UPDATE fires
    # `retained_drop_replaced_message`; INSERT OR REPLACE would not fire the
    # delete trigger (recursive triggers are off) and would leak the old body.
    _PUT_RETAINED: (
        (
            "INSERT INTO retained (vhost, topic, message_id)"
            " SELECT ?1, ?2, id FROM messages WHERE id = ?3"
            " ON CONFLICT (vhost, topic) DO UPDATE SET message_id = excluded.message_id",
            None,
        ),
    ),
    _DELETE_RETAINED: (("DELETE FROM retained WHERE vhost = ? AND topic = ?", None),),
    # Not a hot kind, so a barrier in `_execute_ops`: enqueues queued after it
    # are applied after it, even when their seq is in the range.
    _ACK_RANGE: (  # params: (queue_id, first_seq, last_seq); a primary key range
        ("DELETE FROM entries WHERE queue_id = ? AND seq BETWEEN ? AND ?", None),
    ),
    # Hot kinds. Rows of one statement are applied in order, so a later put of
    # the same message id still wins.
    _PUT_MESSAGE: (
        (_multi_row("INSERT OR REPLACE INTO messages (id, data) VALUES {rows}", "(?, ?)"), None),
    ),
    # INSERT ... SELECT: an entry for a message that no longer exists is not
    # written (counted in stats.dangling_enqueues) rather than failing the batch.
    # CROSS JOIN keeps the VALUES list as the outer loop (a primary key lookup each).
    _ENQUEUE: (  # params: (queue_id, seq, message_id, expires_at)
        (
            _multi_row(
                "INSERT OR REPLACE INTO entries"
                " (queue_id, seq, message_id, delivery_count, expires_at)"
                " SELECT v.column1, v.column2, m.id, 0, v.column4 FROM (VALUES {rows}) AS v"
                " CROSS JOIN messages AS m ON m.id = v.column3",
                "(?, ?, ?, ?)",
            ),
            None,
        ),
    ),
    # `(a, b) IN (VALUES ...)` would scan the table; through a subquery it is
    # a primary key search per row (checked by a test of the query plans).
    _ACK: (
        (
            _multi_row(
                "DELETE FROM entries WHERE (queue_id, seq) IN"
                " (SELECT column1, column2 FROM (VALUES {rows}))",
                "(?, ?)",
            ),
            None,
        ),
    ),
    _COLLECT_MESSAGE: (
        (
            _multi_row(
                "DELETE FROM messages WHERE id IN (VALUES {rows})"
                " AND NOT EXISTS (SELECT 1 FROM entries WHERE message_id = messages.id)"
                " AND NOT EXISTS (SELECT 1 FROM retained WHERE message_id = messages.id)",
                "(?)",
            ),
            None,
        ),
    ),
}

_HOT_KINDS: Final = (_PUT_MESSAGE, _ENQUEUE, _ACK, _COLLECT_MESSAGE)
_REMOVAL_KINDS: Final = frozenset((_ACK, _COLLECT_MESSAGE))
"""Removals of single entries: `when_durable(removals=False)` does not wait for them."""
"""Kinds regrouped within a segment, in this order (see `_execute_ops`)."""

_SQL_MARKS: Final = _multi_row(  # rows: (queue_id, seq, delivery_count)
    "UPDATE entries SET delivery_count = v.column3 FROM (VALUES {rows}) AS v"
    " WHERE entries.queue_id = v.column1 AND entries.seq = v.column2",
    "(?, ?, ?)",
)
_SQL_READ_QUEUE = (
    "SELECT e.seq, e.message_id, m.data, e.delivery_count, e.expires_at"
    " FROM entries AS e JOIN messages AS m ON m.id = e.message_id"
    " WHERE e.queue_id = ? AND e.seq > ? ORDER BY e.seq LIMIT ?"
)
_SQL_QUEUE_STATS = (
    "SELECT count(*), coalesce(sum(length(m.data)), 0), coalesce(max(e.seq), 0)"
    " FROM entries AS e JOIN messages AS m ON m.id = e.message_id WHERE e.queue_id = ?"
)
# The subquery walks `entries_by_expiry` (its `expires_at > 0` makes the partial
# index usable) in (expires_at, seq) order, and stops at the limit; then each
# chosen entry is deleted by primary key. No message row is read: the orphan
# trigger deletes bodies left without entries.
_SQL_EXPIRE = (
    "DELETE FROM entries WHERE queue_id = ?1 AND seq IN"
    " (SELECT seq FROM entries WHERE queue_id = ?1 AND expires_at > 0 AND expires_at <= ?2"
    " ORDER BY expires_at, seq LIMIT ?3)"
)

# Weight of each deleting kind towards the next free-space check.
_DELETE_WEIGHT: Final = {
    _ACK: 1,
    _COLLECT_MESSAGE: 1,
    _PURGE: 1_000_000,
    _ACK_RANGE: 1_000_000,
    _DELETE_QUEUE: 1_000_000,
    _DELETE_VHOST: 1_000_000,
    _PUT_RETAINED: 1,
    _DELETE_RETAINED: 1,
}


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
class _Segment:
    """Operations and delivery marks handed to the writer together."""

    ops: list[_Op | None]
    marks: dict[tuple[int, int], int]


@dataclass(slots=True)
class _Batch:
    """One transaction's worth of segments, with the callbacks waiting for it."""

    segments: list[_Segment]
    callbacks: list[DurabilityCallback]
    holds: bool
    """True unless the batch carries only delivery marks (which hold no callback)."""


@dataclass(slots=True)
class _Waiting:
    """A `when_durable` callback of the gathering batch, and what it waits for."""

    callback: DurabilityCallback
    mark: int
    """How many ops the batch had when it was registered: it waits for those."""
    removals: bool
    since: float
    """loop.time() of the registration."""


@dataclass(slots=True)
class _Read:
    """A function to run on the writer's connection, its result sent to `future`."""

    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]


@dataclass(slots=True)
class _ExpireResult:
    """Where the writer leaves an `expire`'s row count for the loop to pick up."""

    deleted: int = 0


@dataclass(slots=True)
class _Stop:
    future: asyncio.Future[None]


@dataclass(slots=True)
class _Opened:
    """What the writer learns at open and the loop side needs."""

    queue_ids: dict[tuple[str, str], int] = field(default_factory=dict)
    next_queue_id: int = 1
    max_message_id: int = 0


_Job = _Batch | _Read | _Stop


def _set_future(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class SQLiteStore:
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
            write), see "Ack window" in the module docs; 0 writes at once.

    Raises:
        ValueError: unknown `durability`, negative `flush_delay` or `ack_window`.

    All methods must be called from the event loop thread that ran `open()`;
    `when_durable` callbacks run on that loop. An instance is opened once: to
    reopen the file after `close()`, make a new instance.
    """

    retry_interval: float = 1.0
    """Seconds between retries of a failed batch while nothing else triggers a flush."""
    marks_flush_threshold: int = 10_000
    """Gathered delivery marks that force a flush even with no other change."""
    vacuum_check_deletes: int = 256
    """Deleted entries between two looks at the free-page count."""
    vacuum_free_pages: int = 1024
    """Vacuum when more pages than this are free (they are reused before that)."""
    vacuum_keep_pages: int = 256
    """Free pages left in the file after a vacuum, for the next inserts."""
    vacuum_max_pages: int = 8192
    """At most this many pages returned per vacuum, to bound its duration."""
    held_max_age: float = 1.0
    """Seconds a batch held for acks may gather before it is written all the same."""
    held_max_ops: int = 50_000
    """Live operations past which a held batch is written all the same."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: str = "fsync",
        vacuum: bool = True,
        flush_delay: float = 0.0,
        ack_window: float = 0.0,
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
        self.flush_delay = flush_delay
        self.ack_window = ack_window
        self.stats = SQLiteStats()

        self._state = "new"  # new -> open -> closing -> closed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()

        # Loop-thread state. The gathering batch:
        self._ops: list[_Op | None] = []
        self._marks: dict[tuple[int, int], int] = {}
        self._callbacks: list[_Waiting] = []
        self._reads: list[_Read] = []
        self._live = 0  # ops in self._ops that are not cancelled
        # The ack window (see the module docs):
        self._urgent = 0  # ops of kinds that are never held
        self._undelivered: set[tuple[int, int]] = set()  # enqueues not out to a consumer
        self._settled = 0  # ops before this index are cancelled or removals
        self._cancelled_prefix = 0  # ops before this index are cancelled
        self._held_since: float | None = None  # when this batch was first held
        self._holding = False  # the flush handle is the end of a hold
        self._enqueued: dict[tuple[int, int], int] = {}  # (queue_id, seq) -> op index
        self._batch_puts: dict[int, list[int]] = {}  # message id -> [op index, enqueues]
        self._dropped: set[int] = set()  # messages whose put this batch cancelled
        # Failed operations, written ahead of the gathering batch:
        self._retry: list[_Segment] = []
        self._inflight: _Batch | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._flush_is_delayed = False
        self._retry_handle: asyncio.TimerHandle | None = None
        # Queue ids are assigned here so that operations carry them directly.
        self._queue_ids: dict[tuple[str, str], int] = {}
        self._next_queue_id = 1
        self._max_put_id = 0

        # Writer-thread state.
        self._vacuum_enabled = False
        self._deletes_since_check = 0
        self._failing = False

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
        loop = asyncio.get_running_loop()
        self._loop = loop
        ready: asyncio.Future[_Opened] = loop.create_future()
        self._thread = threading.Thread(
            target=self._writer_main, args=(ready,), name=f"moorage-sqlite:{self.path.name}"
        )
        self._thread.daemon = True  # a forgotten close() must not hang interpreter exit
        self._thread.start()
        try:
            opened = await ready
        except BaseException:
            # Failed (the thread has exited) or cancelled (stop it once it is up).
            self._jobs.put(_Stop(loop.create_future()))
            self._thread.join()
            self._state = "closed"
            raise
        self._queue_ids = opened.queue_ids
        self._next_queue_id = opened.next_queue_id
        self._max_put_id = opened.max_message_id
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
        assert self._loop is not None
        assert self._thread is not None
        try:
            # A read job runs after every change queued before it.
            await self._submit(lambda conn: None)
        finally:
            for handle in (self._flush_handle, self._retry_handle):
                if handle is not None:
                    handle.cancel()
            self._flush_handle = self._retry_handle = None
            stopped: asyncio.Future[None] = self._loop.create_future()
            self._jobs.put(_Stop(stopped))
            with contextlib.suppress(StoreError):
                await stopped
            self._thread.join()
            self._state = "closed"
        if self._retry:
            lost = sum(1 for s in self._retry for op in s.ops if op is not None)
            self._retry = []
            raise StoreError(f"{self.path}: closed with {lost} changes that could not be written")

    def _check_open(self) -> None:
        if self._state != "open":
            state = "not open" if self._state == "new" else self._state
            raise StoreError(f"{self.path}: store is {state}, changes are refused")

    # -- topology ----------------------------------------------------------

    def put_vhost(self, name: str) -> None:
        """Queue the creation of a vhost (no-op if it exists)."""
        self._check_open()
        self._append(_PUT_VHOST, (name,))

    def delete_vhost(self, name: str) -> None:
        """Queue the deletion of a vhost with every exchange, queue, binding and entry in it."""
        self._check_open()
        for key in [k for k in self._queue_ids if k[0] == name]:
            self._cancel_queue_entries(self._queue_ids.pop(key))
        self._append(_DELETE_VHOST, (name,))

    def put_exchange(self, record: ExchangeRecord) -> None:
        """Queue the creation or update of an exchange."""
        self._check_open()
        self._append(
            _PUT_EXCHANGE,
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
        self._append(_DELETE_EXCHANGE, (vhost, name))

    def put_queue(self, record: QueueRecord) -> None:
        """Queue the creation or update of a queue; an existing queue keeps its entries."""
        self._check_open()
        key = (record.vhost, record.name)
        queue_id = self._queue_ids.get(key)
        if queue_id is None:
            queue_id = self._queue_ids[key] = self._next_queue_id
            self._next_queue_id += 1
        self._append(
            _PUT_QUEUE, (queue_id, record.vhost, record.name, record.auto_delete, record.arguments)
        )

    def delete_queue(self, vhost: str, name: str) -> None:
        """Queue the deletion of a queue, its bindings and its entries."""
        self._check_open()
        queue_id = self._queue_ids.pop((vhost, name), None)
        if queue_id is not None:
            self._cancel_queue_entries(queue_id)
        self._append(_DELETE_QUEUE, (queue_id, vhost, name))

    def put_binding(self, record: BindingRecord) -> None:
        """Queue the creation of a binding (no-op if an identical one exists)."""
        self._check_open()
        self._append(_PUT_BINDING, self._binding_params(record))

    def delete_binding(self, record: BindingRecord) -> None:
        """Queue the deletion of the binding equal to `record`, if any."""
        self._check_open()
        self._append(_DELETE_BINDING, self._binding_params(record))

    @staticmethod
    def _binding_params(record: BindingRecord) -> _Params:
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
        previous = self._batch_puts.get(message_id)
        enqueues = 0
        if previous is not None:  # put twice in one batch: the last body wins
            self._ops[previous[0]] = None
            self._live -= 1
            enqueues = previous[1]
        self._batch_puts[message_id] = [len(self._ops), enqueues]
        self._dropped.discard(message_id)
        self._max_put_id = max(self._max_put_id, message_id)
        self._append(_PUT_MESSAGE, (message_id, data))

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
        put = self._batch_puts.get(message_id)
        if put is None:
            if message_id > self._max_put_id or message_id in self._dropped:
                raise StoreError(f"message {message_id} was never put")
        else:
            put[1] += 1
        key = (queue_id, seq)
        self._enqueued[key] = len(self._ops)
        if self.ack_window:
            self._undelivered.add(key)
        self._append(_ENQUEUE, (queue_id, seq, message_id, expires_at))

    def ack(self, vhost: str, queue: str, seq: int) -> None:
        """Queue the removal of an entry; cancels its enqueue if that is not written yet."""
        self._check_open()
        queue_id = self._queue_ids.get((vhost, queue))
        if queue_id is None:
            return
        key = (queue_id, seq)
        if key in self._enqueued:
            self._cancel_enqueue(key)
        else:
            self._marks.pop(key, None)
            self._append(_ACK, key)

    def ack_range(self, vhost: str, queue: str, first_seq: int, last_seq: int) -> None:
        """Queue the removal of every entry with first_seq <= seq <= last_seq.

        Enqueues in that range still in the gathering batch are cancelled, as
        by `ack`; the range is deleted on disk all the same (one primary key
        range). Enqueues queued after this call are written after it, so they
        are kept even when their seq is in the range.
        """
        self._check_open()
        queue_id = self._queue_ids.get((vhost, queue))
        if queue_id is None or first_seq > last_seq:
            return

        def in_range(key: tuple[int, int]) -> bool:
            return key[0] == queue_id and first_seq <= key[1] <= last_seq

        for key in [k for k in self._enqueued if in_range(k)]:
            self._cancel_enqueue(key)
        for key in [k for k in self._marks if in_range(k)]:
            del self._marks[key]
        self._append(_ACK_RANGE, (queue_id, first_seq, last_seq))

    def mark_delivered(self, vhost: str, queue: str, seq: int, delivery_count: int) -> None:
        """Record a delivery count; written with the next batch, never holds a callback."""
        self._check_open()
        queue_id = self._queue_ids.get((vhost, queue))
        if queue_id is None:
            return
        key = (queue_id, seq)
        self._marks[key] = delivery_count
        self._undelivered.discard(key)
        if len(self._marks) >= self.marks_flush_threshold:
            self._schedule_flush()

    def purge_queue(self, vhost: str, queue: str) -> None:
        """Queue the removal of every entry of a queue."""
        self._check_open()
        queue_id = self._queue_ids.get((vhost, queue))
        if queue_id is None:
            return
        self._cancel_queue_entries(queue_id)
        self._append(_PURGE, (queue_id,))

    # -- protocol sessions and retained messages ----------------------------

    def put_session(self, vhost: str, protocol: str, client_id: str, state: bytes) -> None:
        """Queue the creation or replacement of a protocol session's state."""
        self._check_open()
        self._append(_PUT_SESSION, (vhost, protocol, client_id, bytes(state)))

    def delete_session(self, vhost: str, protocol: str, client_id: str) -> None:
        """Queue the deletion of a protocol session's state."""
        self._check_open()
        self._append(_DELETE_SESSION, (vhost, protocol, client_id))

    async def load_sessions(self, protocol: str) -> list[SessionRecord]:
        """Every stored session of `protocol`."""
        self._check_readable()

        def load(conn: sqlite3.Connection) -> list[SessionRecord]:
            return [
                SessionRecord(r[0], r[1], r[2], bytes(r[3]))
                for r in conn.execute(
                    "SELECT vhost, protocol, client_id, state FROM sessions WHERE protocol = ?",
                    (protocol,),
                )
            ]

        return await self._submit(load)

    def put_retained(self, vhost: str, topic: str, message_id: int) -> None:
        """Queue making a stored message the retained message of `topic`.

        A put of the message still in the gathering batch is pinned: an ack
        of one of its entries can no longer cancel it.

        Raises:
            StoreError: the message was never put (the same partial check as
                `enqueue`'s).
        """
        self._check_open()
        put = self._batch_puts.get(message_id)
        if put is None:
            if message_id > self._max_put_id or message_id in self._dropped:
                raise StoreError(f"message {message_id} was never put")
        else:
            put[1] += 1  # never decremented: the reference is not cancellable
        self._append(_PUT_RETAINED, (vhost, topic, message_id))

    def delete_retained(self, vhost: str, topic: str) -> None:
        """Queue forgetting a topic's retained message (its body goes if unreferenced)."""
        self._check_open()
        self._append(_DELETE_RETAINED, (vhost, topic))

    async def load_retained(self) -> list[RetainedRecord]:
        """Every retained message with its body."""
        self._check_readable()

        def load(conn: sqlite3.Connection) -> list[RetainedRecord]:
            return [
                RetainedRecord(r[0], r[1], r[2], bytes(r[3]))
                for r in conn.execute(
                    "SELECT r.vhost, r.topic, r.message_id, m.data FROM retained AS r"
                    " JOIN messages AS m ON m.id = r.message_id"
                )
            ]

        return await self._submit(load)

    # -- the gathering batch -----------------------------------------------

    def _append(self, kind: int, params: _Params) -> None:
        self._ops.append((kind, params))
        self._live += 1
        if kind not in _HOT_KINDS:
            self._urgent += 1
        if self._flush_handle is None:
            self._schedule_flush()
        elif self._holding and (kind == _ENQUEUE or kind not in _HOT_KINDS):
            # Look again at the next iteration: an enqueue that is not
            # delivered by then, or an urgent change, ends the hold.
            self._schedule_flush(immediate=True)

    def _cancel_enqueue(self, key: tuple[int, int]) -> None:
        """Drop a not-yet-written enqueue, and its message's put if nothing else uses it."""
        index = self._enqueued.pop(key)
        op = self._ops[index]
        assert op is not None
        assert op[0] == _ENQUEUE
        self._ops[index] = None
        self._live -= 1
        self.stats.ops_cancelled += 1
        self._marks.pop(key, None)
        self._undelivered.discard(key)
        if self._holding and (self._callbacks or not self._live):
            self._schedule_flush(immediate=True)  # callbacks may be settled now
        message_id: int = op[1][2]
        put = self._batch_puts.get(message_id)
        if put is None:
            # The body was written by an earlier batch: if this entry was its
            # last reference it has to go, as after a written ack.
            self._append(_COLLECT_MESSAGE, (message_id,))
            return
        put[1] -= 1
        if put[1] == 0:
            self._ops[put[0]] = None
            self._live -= 1
            self.stats.ops_cancelled += 1
            del self._batch_puts[message_id]
            self._dropped.add(message_id)

    def _cancel_queue_entries(self, queue_id: int) -> None:
        for key in [k for k in self._enqueued if k[0] == queue_id]:
            self._cancel_enqueue(key)
        for key in [k for k in self._marks if k[0] == queue_id]:
            del self._marks[key]

    def _schedule_flush(self, *, immediate: bool = False) -> None:
        """Arrange for `_flush` to run (unless a batch is in flight: its completion will)."""
        loop = self._loop
        if loop is None or self._inflight is not None:
            return
        if self._flush_handle is not None:
            if not (immediate and self._flush_is_delayed):
                return
            self._flush_handle.cancel()
        self._holding = False
        if self.flush_delay > 0 and not immediate:
            self._flush_handle = loop.call_later(self.flush_delay, self._flush)
            self._flush_is_delayed = True
        else:
            self._flush_handle = loop.call_soon(self._flush)
            self._flush_is_delayed = False

    def _flush(self) -> None:
        """Hand the gathering batch (after any failed one) to the writer thread."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._holding = False
        if self._inflight is not None or self._state == "closed":
            return
        if self.ack_window and self._live and self._hold():
            return
        callbacks = [waiting.callback for waiting in self._callbacks]
        reads = self._reads
        segments = list(self._retry)
        if self._live or self._marks:
            segments.append(_Segment(self._ops, self._marks))
        holds = bool(self._live or self._retry)
        self._ops, self._marks, self._callbacks, self._reads = [], {}, [], []
        self._live = self._urgent = self._settled = self._cancelled_prefix = 0
        self._enqueued, self._batch_puts, self._dropped = {}, {}, set()
        self._undelivered = set()
        self._held_since = None
        self._retry = []
        if segments:
            self._inflight = _Batch(segments, callbacks, holds)
            self._jobs.put(self._inflight)
        for read in reads:  # behind the batch, so they see it
            self._jobs.put(read)
        if not segments:
            # Everything was cancelled: nothing to wait for.
            self._fire(callbacks, None)

    def _hold(self) -> bool:
        """Fire the callbacks that cancellations settled; True if the rest may wait for acks.

        A batch is held only while each of its live changes is a message
        out to a consumer (its put and enqueue), or the removal of an entry,
        while every callback waiting for it is a confirm (`removals=False`),
        and only until its oldest waiting callback is `ack_window` old, it
        is `held_max_age` old, or it has `held_max_ops` live changes.
        """
        self._fire_settled()
        if (
            self._urgent
            or self._undelivered
            or self._reads
            or self._retry
            or self._state != "open"
            or self._live >= self.held_max_ops
            or any(waiting.removals for waiting in self._callbacks)
        ):
            return False
        assert self._loop is not None
        now = self._loop.time()
        if self._held_since is None:
            self._held_since = now
        deadline = self._held_since + self.held_max_age
        if self._callbacks:
            deadline = min(deadline, self._callbacks[0].since + self.ack_window)
        if now >= deadline:
            return False
        if self._flush_handle is not None:  # scheduled by a callback just fired
            self._flush_handle.cancel()
        self._flush_handle = self._loop.call_at(deadline, self._flush)
        self._flush_is_delayed = self._holding = True
        return True

    def _fire_settled(self) -> None:
        """Call, in order, the leading callbacks whose changes were all cancelled.

        Only while nothing older is unwritten: no batch in flight that
        callbacks wait for, no failed batch to retry. A callback registered
        with `removals=False` also passes over entry removals (acks).
        """
        if not self._callbacks or self._retry or (self._inflight and self._inflight.holds):
            return
        ops = self._ops
        end = len(ops)
        cancelled = self._cancelled_prefix
        while cancelled < end and ops[cancelled] is None:
            cancelled += 1
        self._cancelled_prefix = cancelled
        settled = max(self._settled, cancelled)
        while settled < end:
            op = ops[settled]
            if op is not None and op[0] not in _REMOVAL_KINDS:
                break
            settled += 1
        self._settled = settled
        ready = 0
        for waiting in self._callbacks:
            if waiting.mark > (cancelled if waiting.removals else settled):
                break
            ready += 1
        if ready:
            fired = self._callbacks[:ready]
            del self._callbacks[:ready]
            self._fire([waiting.callback for waiting in fired], None)

    def _batch_done(self, batch: _Batch, error: StoreError | None) -> None:
        """On the loop: a batch committed or failed. Run its callbacks, send the next."""
        self._inflight = None
        if error is not None and batch.holds:
            # Keep the failed changes, in order, ahead of what gathered since.
            # (A batch of delivery marks only is dropped: they may be lost.)
            # An `expire` is not retried: its caller was told it failed.
            for segment in batch.segments:
                ops = segment.ops
                for i, op in enumerate(ops):
                    if op is not None and op[0] == _EXPIRE:
                        ops[i] = None
            self._retry = [
                s for s in batch.segments if s.marks or any(op is not None for op in s.ops)
            ]
        self._fire(batch.callbacks, error)
        if self._state == "closed":
            return
        if (
            self._live
            or self._callbacks
            or self._reads
            or (len(self._marks) >= self.marks_flush_threshold)
        ):
            self._schedule_flush()
        elif self._retry and self._loop is not None:
            if self._retry_handle is not None:
                self._retry_handle.cancel()
            self._retry_handle = self._loop.call_later(self.retry_interval, self._schedule_flush)

    def _fire(self, callbacks: list[DurabilityCallback], error: StoreError | None) -> None:
        """Call each callback in order; one raising must not stop the others."""
        for callback in callbacks:
            try:
                callback(error)
            except Exception as exc:  # noqa: BLE001 - reported to the loop's handler
                assert self._loop is not None
                self._loop.call_exception_handler(
                    {"message": "exception in a when_durable callback", "exception": exc}
                )

    def when_durable(self, callback: DurabilityCallback, *, removals: bool = True) -> None:
        """Call `callback(None)` once every change queued so far is committed or cancelled.

        With `removals=False` the entry removals (acks) queued so far need
        not be committed. Called synchronously when nothing is pending; with
        a `StoreError` if the batch holding those changes fails. Callbacks
        run on the loop, in registration order.
        """
        if self._live or self._retry or self._callbacks:
            assert self._loop is not None
            self._callbacks.append(_Waiting(callback, len(self._ops), removals, self._loop.time()))
            if self._flush_handle is None:
                self._schedule_flush()
            elif self._holding and (removals or len(self._callbacks) == 1):
                self._schedule_flush(immediate=True)  # the hold ends now, or sooner
        elif self._inflight is not None and self._inflight.holds:
            self._inflight.callbacks.append(callback)
        else:
            callback(None)

    @property
    def pending(self) -> bool:
        """True while some change (other than a delivery mark) is not yet committed."""
        return bool(
            self._live
            or self._retry
            or self._callbacks
            or (self._inflight is not None and self._inflight.holds)
        )

    # -- reads -------------------------------------------------------------

    async def _submit(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `fn(connection)` on the writer thread after every change queued so far."""
        if self._state not in ("open", "closing"):
            raise StoreError(f"{self.path}: store is not open")
        assert self._loop is not None
        future: asyncio.Future[_T] = self._loop.create_future()
        read = _Read(fn, future)
        if self._live or self._marks or self._retry or self._callbacks:
            self._reads.append(read)
            self._schedule_flush(immediate=True)
        else:  # behind any batch in flight, which is all it has to see
            self._jobs.put(read)
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
                for r in conn.execute(_SQL_READ_QUEUE, (queue_id, after_seq, limit))
            ]

        return await self._submit(read)

    async def queue_stats(self, vhost: str, queue: str) -> tuple[int, int, int]:
        """(entries, total bytes of their messages, highest seq or 0). Scans the queue."""
        self._check_readable()
        queue_id = self._queue_ids.get((vhost, queue))
        if queue_id is None:
            return (0, 0, 0)

        def stats(conn: sqlite3.Connection) -> tuple[int, int, int]:
            row = conn.execute(_SQL_QUEUE_STATS, (queue_id,)).fetchone()
            return (int(row[0]), int(row[1]), int(row[2]))

        return await self._submit(stats)

    async def max_message_id(self) -> int:
        """The highest message id stored, or 0."""
        self._check_readable()

        def max_id(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0])

        return await self._submit(max_id)

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
        result = _ExpireResult()
        self._append(_EXPIRE, (queue_id, float(now), int(limit), result))
        # Later acks must not cancel (unwrite) enqueues the expire is to see,
        # nor a later put_message cancel an earlier put: start afresh, as if
        # the batch had been flushed here.
        self._enqueued, self._batch_puts = {}, {}
        self._undelivered = set()
        future: asyncio.Future[int] = self._loop.create_future()

        def done(error: BaseException | None) -> None:
            if future.done():
                return
            if error is None:
                future.set_result(result.deleted)
            else:
                future.set_exception(error)

        self.when_durable(done)
        self._schedule_flush(immediate=True)
        return await future

    def _check_readable(self) -> None:
        if self._state != "open":
            raise StoreError(f"{self.path}: store is not open")

    # -- the writer thread -------------------------------------------------

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` on the loop; dropped if the loop is gone."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # loop closed under us
            self._loop.call_soon_threadsafe(fn, *args)

    def _writer_main(self, ready: asyncio.Future[_Opened]) -> None:
        """The writer thread: open the file, then run jobs in order until stopped."""
        try:
            conn, opened = self._connect()
        except BaseException as exc:  # noqa: BLE001 - handed to open()'s caller
            self._post(_set_future, ready, None, exc)
            return
        self._post(_set_future, ready, opened, None)
        stop: _Stop | None = None
        try:
            while stop is None:
                job = self._jobs.get()
                if isinstance(job, _Batch):
                    self._write_batch(conn, job)
                elif isinstance(job, _Read):
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

    def _run_read(self, conn: sqlite3.Connection, job: _Read) -> None:
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

    def _write_batch(self, conn: sqlite3.Connection, batch: _Batch) -> None:
        """Run a batch in one transaction, report it, then do housekeeping."""
        counts = [0, 0, 0, 0, 0, 0, 0]
        # ops, messages, entries, dangling, delete weight, expire runs, expired
        try:
            conn.execute("BEGIN IMMEDIATE")
            marks: dict[tuple[int, int], int] = {}
            for segment in batch.segments:
                self._execute_ops(conn, segment.ops, counts)
                marks.update(segment.marks)
            if marks:
                _execute_rows(conn, _SQL_MARKS, [(q, s, n) for (q, s), n in marks.items()])
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
            self._post(self._batch_done, batch, error)
            return
        if self._failing:
            logger.warning("%s: writing again after failures", self.path)
            self._failing = False
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
        self._post(self._batch_done, batch, None)
        # Housekeeping after the callbacks were released.
        self._deletes_since_check += counts[4]
        self._maybe_vacuum(conn)

    @staticmethod
    def _execute_ops(
        conn: sqlite3.Connection, ops: Sequence[_Op | None], counts: list[int]
    ) -> None:
        """Execute one segment's ops, grouping them so that few statements run.

        The per-message kinds (`_HOT_KINDS`) between two other operations are
        regrouped by kind, in the order puts, enqueues, acks, collects, each
        kind keeping its own order. Any other operation is a barrier that
        nothing moves across, and runs of it are executed together, in
        order. That includes `_ACK_RANGE`, `_PURGE` and `_EXPIRE`: regrouped
        with the acks, they would run after an enqueue queued behind them and
        delete its entry (or, for `_EXPIRE`, miss one queued before). The
        regrouping only moves a put before the enqueues and acks that follow
        it, and an enqueue before acks: for the fresh message ids and rising
        seqs the core uses, the result is the same as in call order (a
        publish-and-consume stream alternates put, enqueue and ack, and would
        otherwise run one row per statement).
        """
        hot: dict[int, list[_Params]] = {kind: [] for kind in _HOT_KINDS}
        hot_waiting = False
        run: list[_Params] = []
        run_kind = -1
        for op in ops:
            if op is None:
                continue
            kind, params = op
            bucket = hot.get(kind)
            if bucket is not None:
                if run:
                    _execute_kind(conn, run_kind, run, counts)
                    run = []
                bucket.append(params)
                hot_waiting = True
                continue
            if hot_waiting:
                for hot_kind, rows in hot.items():
                    if rows:
                        _execute_kind(conn, hot_kind, rows, counts)
                        hot[hot_kind] = []
                hot_waiting = False
            if run and kind != run_kind:
                _execute_kind(conn, run_kind, run, counts)
                run = []
            run_kind = kind
            run.append(params)
        if run:
            _execute_kind(conn, run_kind, run, counts)
        for hot_kind, rows in hot.items():
            if rows:
                _execute_kind(conn, hot_kind, rows, counts)

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

    # -- opening (writer thread) -------------------------------------------

    def _connect(self) -> tuple[sqlite3.Connection, _Opened]:
        """Check, open, configure and migrate the file. Raises StoreError."""
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{path}: cannot create its directory: {exc}") from exc
        version = self._check_existing(path)
        try:
            conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=True, cached_statements=256
            )
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open: {exc}") from exc
        try:
            opened = self._configure(conn, version)
        except BaseException:
            conn.close()
            raise
        return conn, opened

    @staticmethod
    def _check_existing(path: Path) -> int:
        """Vet an existing file without writing to it; return its schema version (0: new)."""
        try:
            with path.open("rb") as f:
                header = f.read(len(_SQLITE_MAGIC))
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise StoreError(f"{path}: cannot read: {exc}") from exc
        if not header:
            return 0
        if header != _SQLITE_MAGIC:
            raise StoreError(f"{path} is not a SQLite database; refusing to open or overwrite it")
        # Reading a WAL-mode file creates `-wal` and `-shm` beside it; remove
        # the ones this check created, so that a refused file is left as found.
        sidecars = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
        created = [p for p in sidecars if not p.exists()]
        try:
            return _vet_read_only(path)
        finally:
            for sidecar in created:
                with contextlib.suppress(OSError):
                    if sidecar.name.endswith("-shm") or sidecar.stat().st_size == 0:
                        sidecar.unlink()

    def _configure(self, conn: sqlite3.Connection, version: int) -> _Opened:
        path = self.path
        try:
            # Must come before the first access: no shared memory, one process.
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            if version == 0 and self.vacuum:
                # Only effective before the first table is created.
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{path}: cannot switch to WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {DURABILITY_MODES[self.durability]}")
            if self.durability == "fsync":
                conn.execute("PRAGMA fullfsync = ON")  # macOS: F_FULLFSYNC
                conn.execute("PRAGMA checkpoint_fullfsync = ON")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA journal_size_limit = 67108864")
            conn.execute("PRAGMA cache_size = -16384")  # 16 MiB
            version = _schema_version(conn, path)  # again, now that we hold the file
            _migrate(conn, version)
            self._vacuum_enabled = self.vacuum and (
                int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2
            )
            opened = _Opened()
            for queue_id, vhost, name in conn.execute("SELECT id, vhost, name FROM queues"):
                opened.queue_ids[(vhost, name)] = queue_id
                opened.next_queue_id = max(opened.next_queue_id, queue_id + 1)
            opened.max_message_id = int(
                conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0]
            )
        except sqlite3.Error as exc:
            if "locked" in str(exc):
                raise StoreError(f"{path} is in use by another process ({exc})") from exc
            raise StoreError(f"{path}: cannot prepare the store: {exc}") from exc
        return opened


def _execute_kind(
    conn: sqlite3.Connection, kind: int, rows: list[_Params], counts: list[int]
) -> None:
    """Apply operations of one kind with each of its statements, and count them."""
    if kind == _EXPIRE:
        # Not in _STATEMENTS: each one reports its own row count (the
        # entries it deleted; the trigger's message deletes are not counted).
        for queue_id, now, limit, result in rows:
            result.deleted = conn.execute(_SQL_EXPIRE, (queue_id, now, limit)).rowcount
            counts[4] += result.deleted
            counts[6] += result.deleted
        counts[0] += len(rows)
        counts[5] += len(rows)
        return
    for sql, pick in _STATEMENTS[kind]:
        picked = rows if pick is None else [pick(p) for p in rows]
        if isinstance(sql, str):
            changed = conn.executemany(sql, picked).rowcount
        else:
            changed = _execute_rows(conn, sql, picked)
        if kind == _ENQUEUE and changed < len(rows):
            counts[3] += len(rows) - changed
    counts[0] += len(rows)
    if kind == _PUT_MESSAGE:
        counts[1] += len(rows)
    elif kind == _ENQUEUE:
        counts[2] += len(rows)
    else:
        counts[4] += _DELETE_WEIGHT.get(kind, 0) * len(rows)


def _execute_rows(conn: sqlite3.Connection, sqls: dict[int, str], rows: Sequence[_Params]) -> int:
    """Apply `rows` in order through the multi-row variants; return the rows changed."""
    changed = 0
    done = 0
    total = len(rows)
    for size in _CHUNKS:
        sql = sqls[size]
        while total - done >= size:
            flat = list(chain.from_iterable(rows[done : done + size]))
            changed += conn.execute(sql, flat).rowcount
            done += size
    return changed


def _vet_read_only(path: Path) -> int:
    """quick_check and schema version of an existing file, through a read-only connection."""
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        # A short busy timeout: a lock here means another process has the store.
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=0.5)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open: {exc}") from exc
    try:
        problems = [r[0] for r in conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise StoreError(
                f"{path} is corrupt (quick_check: {'; '.join(problems[:3])}); refusing to open it"
            )
        return _schema_version(conn, path)
    except sqlite3.Error as exc:
        if "locked" in str(exc):
            raise StoreError(f"{path} is in use by another process ({exc})") from exc
        raise StoreError(f"{path} is corrupt or unreadable ({exc}); refusing to open it") from exc
    finally:
        conn.close()


def _schema_version(conn: sqlite3.Connection, path: Path) -> int:
    """The file's schema version (0 for an empty file). Raises StoreError if unusable."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return 0
    if "schema_version" not in tables:
        raise StoreError(f"{path} is a SQLite database but not a Moorage store")
    row = conn.execute("SELECT version FROM schema_version WHERE id = 1").fetchone()
    version = int(row[0]) if row else 0
    if version > len(MIGRATIONS):
        raise StoreError(
            f"{path} has schema version {version}, newer than this Moorage knows"
            f" ({len(MIGRATIONS)}); upgrade Moorage"
        )
    return version


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Apply MIGRATIONS[version:], each in its own transaction with its version bump."""
    for target in range(version + 1, len(MIGRATIONS) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[target - 1]:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (id, version) VALUES (1, ?)"
                " ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                (target,),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
