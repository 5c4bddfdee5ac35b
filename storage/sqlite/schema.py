"""The SQLite file itself: vetting it, its pragmas, its schema and the numbered migrations.

Owns everything that happens between "a path" and "a connection ready for
batches": `open_connection` runs on the writer thread (the connection must be
created in the thread that uses it) and nothing else here keeps state.

Schema: a `schema_version` table holds the number of migrations applied;
`MIGRATIONS[i]` upgrades version i to i + 1, each in one transaction
(version 2 added `entries.expires_at` and its partial index; version 3 the
`sessions` and `retained` tables; version 4 the users, their permissions and
topic permissions, and the digest of the configuration's users last
applied; see the `Store` docs). Message
bodies are stored once (`messages`) and referenced by queue `entries`; a
trigger deletes a message when its last entry goes (acked, purged, or its
queue deleted by the `ON DELETE CASCADE`), using an index on
`entries(message_id)`. That was preferred to a reference counter because
updating a counter in the `messages` row would rewrite the whole row, body
included, at every enqueue and ack.

The file uses `auto_vacuum=INCREMENTAL` (fixed when the file is created; the
writer thread returns free pages, see `writer.py`). WAL checkpoints are
SQLite's automatic ones (every ~1000 pages).

The file is opened with ``locking_mode=EXCLUSIVE``: a second broker (or the
sqlite3 shell) cannot open it while this store is open, which prevents two
processes from writing one store. Before anything is written, an existing
file is checked read-only (header, `PRAGMA quick_check`, schema version); a
file that fails is reported with a `StoreError` and left untouched.

Ordering rules: `locking_mode` comes before the first access and
`auto_vacuum` before the first table; the schema version is read again once
the exclusive lock is held; migrations run in order, each with its version
bump in the same transaction, so a failed migration leaves the previous
version.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from moorage.storage.store import StoreError

__all__ = ["DURABILITY_MODES", "MIGRATIONS", "Opened", "open_connection"]

SQLITE_MAGIC: Final = b"SQLite format 3\x00"

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
    # 4: users and permissions. A file from version 3 gets empty tables and no
    # seed digest, so the next start seeds them from the configuration, which
    # is where version 3 kept its users. `attributes` is opaque to the store.
    (
        """CREATE TABLE users (
            name TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,
            hashing_algorithm TEXT NOT NULL,
            tags TEXT NOT NULL,
            attributes BLOB NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE user_permissions (
            vhost TEXT NOT NULL,
            username TEXT NOT NULL,
            configure TEXT NOT NULL,
            write TEXT NOT NULL,
            read TEXT NOT NULL,
            PRIMARY KEY (vhost, username)
        ) WITHOUT ROWID""",
        """CREATE TABLE topic_permissions (
            vhost TEXT NOT NULL,
            username TEXT NOT NULL,
            exchange TEXT NOT NULL,
            write TEXT NOT NULL,
            read TEXT NOT NULL,
            PRIMARY KEY (vhost, username, exchange)
        ) WITHOUT ROWID""",
        """CREATE TABLE users_seed (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            digest TEXT NOT NULL
        )""",
    ),
)
"""`MIGRATIONS[i]` takes the schema from version i to i + 1. Append only; never edit."""


@dataclass(slots=True)
class Opened:
    """What the writer learns at open and the loop side needs."""

    queue_ids: dict[tuple[str, str], int] = field(default_factory=dict)
    next_queue_id: int = 1
    max_message_id: int = 0
    vacuum_enabled: bool = False
    """The file has `auto_vacuum=INCREMENTAL` and vacuuming was asked for."""


def open_connection(
    path: Path, *, durability: str, vacuum: bool
) -> tuple[sqlite3.Connection, Opened]:
    """Check, open, configure and migrate the file (on the thread that will use it).

    Raises:
        StoreError: the file is not a SQLite database, fails
            `PRAGMA quick_check`, has a newer schema than this code, is
            locked by another process, or cannot be created. The file is
            not modified in any of these cases (except creating a new one).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{path}: cannot create its directory: {exc}") from exc
    version = _check_existing(path)
    try:
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=True, cached_statements=256
        )
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open: {exc}") from exc
    try:
        opened = _configure(conn, path, version, durability=durability, vacuum=vacuum)
    except BaseException:
        conn.close()
        raise
    return conn, opened


def _check_existing(path: Path) -> int:
    """Vet an existing file without writing to it; return its schema version (0: new)."""
    try:
        with path.open("rb") as f:
            header = f.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise StoreError(f"{path}: cannot read: {exc}") from exc
    if not header:
        return 0
    if header != SQLITE_MAGIC:
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


def _configure(
    conn: sqlite3.Connection, path: Path, version: int, *, durability: str, vacuum: bool
) -> Opened:
    try:
        # Must come before the first access: no shared memory, one process.
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        if version == 0 and vacuum:
            # Only effective before the first table is created.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: cannot switch to WAL mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {DURABILITY_MODES[durability]}")
        if durability == "fsync":
            conn.execute("PRAGMA fullfsync = ON")  # macOS: F_FULLFSYNC
            conn.execute("PRAGMA checkpoint_fullfsync = ON")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA journal_size_limit = 67108864")
        conn.execute("PRAGMA cache_size = -16384")  # 16 MiB
        version = _schema_version(conn, path)  # again, now that we hold the file
        _migrate(conn, version)
        opened = Opened()
        opened.vacuum_enabled = vacuum and (
            int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2
        )
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


def schema_version(conn: sqlite3.Connection, path: Path) -> int:
    """The schema version of the store open on `conn` (0: an empty file), for vetting a
    backup (`restore.py`). Raises StoreError: not a Moorage store, or a newer one."""
    return _schema_version(conn, path)


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
