"""The SQLite `Store`: one file in WAL mode, written by one dedicated thread.

One module per job, each with its theory of operation and ordering rules:

- `store.py`: `SQLiteStore`, the public facade (the `Store` interface, queue
  ids, reads, open and close);
- `batch.py`: the gathering batch on the loop (group commit, cancellation of
  writes by acks, the ack window, callback order, retry of a failed batch);
- `jobs.py`: what the batch hands the writer thread (`Batch`, `Segment`,
  `Read`) and what both threads share (`SQLiteStats`, `DurabilityGate`);
- `writer.py`: the writer thread that owns the `sqlite3` connection and runs
  each batch as one transaction;
- `statements.py`: the operation kinds, their SQL and the regrouping of a
  batch into few multi-row statements;
- `schema.py`: vetting and opening the file, pragmas, schema and migrations.

Import order of the rooms: schema and statements import nothing of the
others; jobs imports statements; batch imports jobs and statements; writer
imports jobs, schema and statements; store imports them all.
"""

from moorage.storage.sqlite.jobs import SQLiteStats
from moorage.storage.sqlite.schema import MIGRATIONS
from moorage.storage.sqlite.store import SQLiteStore

__all__ = ["MIGRATIONS", "SQLiteStats", "SQLiteStore"]
