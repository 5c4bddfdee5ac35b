"""Restoring a backup: vet a copy of a store and put it into an empty data directory.

`moorage backup` (SQLite's online backup through the management API) makes
a plain SQLite file. Restoring is the reverse, done with no broker running:
the file is checked first — a SQLite file, `PRAGMA integrity_check` clean
(the full check, not the `quick_check` of every start: a backup is restored
rarely and must be trusted), a Moorage schema this version knows — then
copied page by page with SQLite's backup API into `<dir>/moorage.db.restoring`,
synced, and renamed to `<dir>/moorage.db`. A failure leaves no `moorage.db`
behind, so a broker never starts on half a restore.

Ordering rules: the directory must be empty (or missing) before anything is
written, and the rename comes last, after the copy is on disk.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from moorage.storage.sqlite.schema import SQLITE_MAGIC, schema_version
from moorage.storage.store import StoreError

STORE_FILE = "moorage.db"
PAGES_PER_STEP = 256
"""Pages copied per backup step (1 MiB at SQLite's default 4 KiB page): a progress
report per step."""

Progress = Callable[[int, int], None]
"""Called with (pages copied, pages in all) after each step."""


def vet_backup(path: Path) -> int:
    """Check that `path` is a sound Moorage store; its schema version.

    Raises StoreError with the reason: missing or unreadable, not SQLite,
    integrity_check failures, not a Moorage store, a newer schema.
    """
    try:
        with path.open("rb") as f:
            header = f.read(len(SQLITE_MAGIC))
    except OSError as e:
        raise StoreError(f"{path}: cannot read: {e.strerror or e}") from None
    if header != SQLITE_MAGIC:
        raise StoreError(f"{path} is not a SQLite database")
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as e:
        raise StoreError(f"{path}: cannot open: {e}") from None
    try:
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise StoreError(f"{path} is damaged (integrity_check: {'; '.join(problems[:3])})")
        version = schema_version(conn, path)
        if version == 0:
            raise StoreError(f"{path} is an empty database, not a Moorage store")
        return version
    except sqlite3.Error as e:
        raise StoreError(f"{path} is damaged or unreadable ({e})") from None
    finally:
        conn.close()


def restore(source: Path, data_dir: Path, progress: Progress | None = None) -> Path:
    """Copy the backup `source` into the empty (or missing) `data_dir`; the store's path.

    Raises StoreError: `data_dir` holds anything, the backup fails `vet_backup`,
    or the copy fails (nothing is left in `data_dir` then).
    """
    if data_dir.exists():
        if not data_dir.is_dir():
            raise StoreError(f"{data_dir} is not a directory")
        if any(data_dir.iterdir()):
            raise StoreError(f"{data_dir} is not empty; restore only into an empty directory")
    vet_backup(source)
    data_dir.mkdir(parents=True, exist_ok=True)
    partial = data_dir / (STORE_FILE + ".restoring")
    final = data_dir / STORE_FILE
    uri = source.resolve().as_uri() + "?mode=ro"
    try:
        src = sqlite3.connect(uri, uri=True)
        try:
            target = sqlite3.connect(partial)
            try:

                def step(_status: int, remaining: int, total: int) -> None:
                    if progress is not None:
                        progress(total - remaining, total)

                src.backup(target, pages=PAGES_PER_STEP, progress=step)
            finally:
                target.close()
        finally:
            src.close()
        with partial.open("rb+") as f:
            os.fsync(f.fileno())
        partial.rename(final)
        _sync_directory(data_dir)
    except (sqlite3.Error, OSError) as e:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise StoreError(f"restore into {data_dir} failed: {e}") from None
    return final


def _sync_directory(path: Path) -> None:
    """Make the rename itself durable (POSIX: fsync the directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
