"""The statements the writer runs, and how one segment of operations becomes few of them.

Owns the operation kinds (an operation is `(kind, params)`, gathered by
`batch.py` and executed here), the constant SQL of each kind, the multi-row
variants of the hot ones, and `execute_ops`. All SQL is constant strings, so
each statement is prepared once and then reused from sqlite3's statement
cache (`schema.py` opens the connection with room for all of them).

Between two topology changes the per-message operations are regrouped by
kind (all puts, then enqueues, then acks; see `execute_ops` for why that is
safe) and each group is applied with multi-row statements, 512 rows a step:
one step per row would hand the GIL back and forth with a busy loop at every
row. Topology changes use `executemany`.

`ACK_RANGE` is one `DELETE ... WHERE queue_id = ? AND seq BETWEEN ? AND ?`, a
range of the primary key; bodies left without entries go by the orphan
trigger. Unlike `ACK` it is not regrouped with the hot operations but is a
barrier (see `execute_ops`), so an enqueue of a seq in the range queued after
it is written after it and kept. `EXPIRE` is a barrier too, and its DELETE
picks up to `limit` entries through the partial index `entries_by_expiry
(queue_id, expires_at) WHERE expires_at > 0`, earliest expiry first, and
deletes them by primary key: it reads no message body.

Ordering rules: nothing moves across a barrier (any kind not in `HOT_KINDS`);
within a run of hot kinds each kind keeps its call order; rows of one
multi-row statement are applied in order, so a later put of the same message
id still wins.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, Final

# Operation kinds. An operation is `(kind, params)`; `params` is bound to each
# statement of `STATEMENTS[kind]` (through the statement's picker, if any).
PUT_VHOST: Final = 0
DELETE_VHOST: Final = 1
PUT_EXCHANGE: Final = 2
DELETE_EXCHANGE: Final = 3
PUT_QUEUE: Final = 4
DELETE_QUEUE: Final = 5
PUT_BINDING: Final = 6
DELETE_BINDING: Final = 7
PUT_MESSAGE: Final = 8
ENQUEUE: Final = 9
ACK: Final = 10
PURGE: Final = 11
COLLECT_MESSAGE: Final = 12
ACK_RANGE: Final = 13
EXPIRE: Final = 14  # params: (queue_id, now, limit, ExpireResult); see `execute_kind`
PUT_SESSION: Final = 15
DELETE_SESSION: Final = 16
PUT_RETAINED: Final = 17
DELETE_RETAINED: Final = 18
PUT_USER: Final = 19
DELETE_USER: Final = 20
PUT_PERMISSION: Final = 21
DELETE_PERMISSION: Final = 22
PUT_TOPIC_PERMISSION: Final = 23
DELETE_TOPIC_PERMISSION: Final = 24
PUT_USERS_SEED: Final = 25

Params = tuple[Any, ...]
Op = tuple[int, Params]
Picker = Callable[[Params], Params] | None


@dataclass(slots=True)
class ExpireResult:
    """Where the writer leaves an `expire`'s row count for the loop to pick up."""

    deleted: int = 0


def _first(params: Params) -> Params:
    return params[:1]


def _rest(params: Params) -> Params:
    return params[1:]


CHUNKS: Final = (512, 64, 8, 1)
"""Row counts of the multi-row variants of the hot statements, largest first."""


def multi_row(template: str, row: str) -> dict[int, str]:
    """`template` with `{rows}` replaced by k copies of `row`, for each k in CHUNKS.

    Why not `executemany`: sqlite3 releases the GIL around every step, and
    while the event loop is busy a thread that needs the GIL back waits for
    the loop's switch interval. One step per row made the writer ~40x slower
    under load (measured: 14k vs 590k rows/s); one step per 512 rows keeps
    it near its idle speed. The strings are built once, so each is still
    prepared once and then found in sqlite3's statement cache.
    """
    return {k: template.format(rows=", ".join([row] * k)) for k in CHUNKS}


Sql = str | dict[int, str]  # one row per `executemany` step, or multi-row variants

# Every statement here is conflict-free (upserts, OR IGNORE, OR REPLACE), so
# no sequence of calls can wedge the store on a constraint error. Runs of one
# kind are executed statement by statement, which is only correct because the
# statements of one kind commute across operations. Topology changes are rare
# and use `executemany`; the per-message kinds use multi-row statements.
STATEMENTS: Final[dict[int, tuple[tuple[Sql, Picker], ...]]] = {
    PUT_VHOST: (("INSERT OR IGNORE INTO vhosts (name) VALUES (?)", None),),
    DELETE_VHOST: (
        ("DELETE FROM bindings WHERE vhost = ?", None),
        ("DELETE FROM exchanges WHERE vhost = ?", None),
        ("DELETE FROM queues WHERE vhost = ?", None),  # entries by cascade
        ("DELETE FROM sessions WHERE vhost = ?", None),
        ("DELETE FROM retained WHERE vhost = ?", None),
        ("DELETE FROM user_permissions WHERE vhost = ?", None),
        ("DELETE FROM topic_permissions WHERE vhost = ?", None),
        ("DELETE FROM vhosts WHERE name = ?", None),
    ),
    PUT_EXCHANGE: (
        (
            "INSERT INTO exchanges (vhost, name, type, auto_delete, internal, arguments)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (vhost, name) DO UPDATE SET"
            " type = excluded.type, auto_delete = excluded.auto_delete,"
            " internal = excluded.internal, arguments = excluded.arguments",
            None,
        ),
    ),
    DELETE_EXCHANGE: (
        (
            "DELETE FROM bindings WHERE vhost = ?1 AND (source = ?2"
            " OR (destination_kind = 'exchange' AND destination = ?2))",
            None,
        ),
        ("DELETE FROM exchanges WHERE vhost = ?1 AND name = ?2", None),
    ),
    PUT_QUEUE: (
        (
            "INSERT INTO queues (id, vhost, name, auto_delete, arguments)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (vhost, name) DO UPDATE SET"
            " auto_delete = excluded.auto_delete, arguments = excluded.arguments",
            None,
        ),
    ),
    DELETE_QUEUE: (  # params: (queue_id, vhost, name)
        (
            "DELETE FROM bindings WHERE vhost = ?1 AND destination_kind = 'queue'"
            " AND destination = ?2",
            _rest,
        ),
        ("DELETE FROM queues WHERE id = ?", _first),  # entries by cascade
    ),
    PUT_BINDING: (
        (
            "INSERT OR IGNORE INTO bindings"
            " (vhost, source, destination, destination_kind, routing_key, arguments)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            None,
        ),
    ),
    DELETE_BINDING: (
        (
            "DELETE FROM bindings WHERE vhost = ? AND source = ? AND destination = ?"
            " AND destination_kind = ? AND routing_key = ? AND arguments = ?",
            None,
        ),
    ),
    PURGE: (("DELETE FROM entries WHERE queue_id = ?", None),),
    PUT_SESSION: (
        (
            "INSERT INTO sessions (vhost, protocol, client_id, state) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (vhost, protocol, client_id) DO UPDATE SET state = excluded.state",
            None,
        ),
    ),
    DELETE_SESSION: (
        ("DELETE FROM sessions WHERE vhost = ? AND protocol = ? AND client_id = ?", None),
    ),
    # Like an enqueue, a reference to a message that no longer exists is not
    # written (the topic keeps its previous one). The upsert's UPDATE fires
    # `retained_drop_replaced_message`; INSERT OR REPLACE would not fire the
    # delete trigger (recursive triggers are off) and would leak the old body.
    PUT_RETAINED: (
        (
            "INSERT INTO retained (vhost, topic, message_id)"
            " SELECT ?1, ?2, id FROM messages WHERE id = ?3"
            " ON CONFLICT (vhost, topic) DO UPDATE SET message_id = excluded.message_id",
            None,
        ),
    ),
    DELETE_RETAINED: (("DELETE FROM retained WHERE vhost = ? AND topic = ?", None),),
    # Users and their permissions (migration 4); the tags are one comma-joined text.
    PUT_USER: (
        (
            "INSERT INTO users (name, password_hash, hashing_algorithm, tags, attributes)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
            " password_hash = excluded.password_hash,"
            " hashing_algorithm = excluded.hashing_algorithm,"
            " tags = excluded.tags, attributes = excluded.attributes",
            None,
        ),
    ),
    DELETE_USER: (
        ("DELETE FROM user_permissions WHERE username = ?", None),
        ("DELETE FROM topic_permissions WHERE username = ?", None),
        ("DELETE FROM users WHERE name = ?", None),
    ),
    PUT_PERMISSION: (
        (
            "INSERT INTO user_permissions (vhost, username, configure, write, read)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (vhost, username) DO UPDATE SET"
            " configure = excluded.configure, write = excluded.write, read = excluded.read",
            None,
        ),
    ),
    DELETE_PERMISSION: (("DELETE FROM user_permissions WHERE vhost = ? AND username = ?", None),),
    PUT_TOPIC_PERMISSION: (
        (
            "INSERT INTO topic_permissions (vhost, username, exchange, write, read)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (vhost, username, exchange) DO UPDATE SET"
            " write = excluded.write, read = excluded.read",
            None,
        ),
    ),
    DELETE_TOPIC_PERMISSION: (
        (
            "DELETE FROM topic_permissions WHERE vhost = ? AND username = ? AND exchange = ?",
            None,
        ),
    ),
    PUT_USERS_SEED: (
        (
            "INSERT INTO users_seed (id, digest) VALUES (1, ?)"
            " ON CONFLICT (id) DO UPDATE SET digest = excluded.digest",
            None,
        ),
    ),
    # Not a hot kind, so a barrier in `execute_ops`: enqueues queued after it
    # are applied after it, even when their seq is in the range.
    ACK_RANGE: (  # params: (queue_id, first_seq, last_seq); a primary key range
        ("DELETE FROM entries WHERE queue_id = ? AND seq BETWEEN ? AND ?", None),
    ),
    # Hot kinds. Rows of one statement are applied in order, so a later put of
    # the same message id still wins.
    PUT_MESSAGE: (
        (multi_row("INSERT OR REPLACE INTO messages (id, data) VALUES {rows}", "(?, ?)"), None),
    ),
    # INSERT ... SELECT: an entry for a message that no longer exists is not
    # written (counted in stats.dangling_enqueues) rather than failing the batch.
    # CROSS JOIN keeps the VALUES list as the outer loop (a primary key lookup each).
    ENQUEUE: (  # params: (queue_id, seq, message_id, expires_at)
        (
            multi_row(
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
    ACK: (
        (
            multi_row(
                "DELETE FROM entries WHERE (queue_id, seq) IN"
                " (SELECT column1, column2 FROM (VALUES {rows}))",
                "(?, ?)",
            ),
            None,
        ),
    ),
    COLLECT_MESSAGE: (
        (
            multi_row(
                "DELETE FROM messages WHERE id IN (VALUES {rows})"
                " AND NOT EXISTS (SELECT 1 FROM entries WHERE message_id = messages.id)"
                " AND NOT EXISTS (SELECT 1 FROM retained WHERE message_id = messages.id)",
                "(?)",
            ),
            None,
        ),
    ),
}

HOT_KINDS: Final = (PUT_MESSAGE, ENQUEUE, ACK, COLLECT_MESSAGE)
"""Kinds regrouped within a segment, in this order (see `execute_ops`)."""
REMOVAL_KINDS: Final = frozenset((ACK, COLLECT_MESSAGE))
"""Removals of single entries: `when_durable(removals=False)` does not wait for them."""

SQL_MARKS: Final = multi_row(  # rows: (queue_id, seq, delivery_count)
    "UPDATE entries SET delivery_count = v.column3 FROM (VALUES {rows}) AS v"
    " WHERE entries.queue_id = v.column1 AND entries.seq = v.column2",
    "(?, ?, ?)",
)
SQL_READ_QUEUE = (
    "SELECT e.seq, e.message_id, m.data, e.delivery_count, e.expires_at"
    " FROM entries AS e JOIN messages AS m ON m.id = e.message_id"
    " WHERE e.queue_id = ? AND e.seq > ? ORDER BY e.seq LIMIT ?"
)
SQL_QUEUE_STATS = (
    "SELECT count(*), coalesce(sum(length(m.data)), 0), coalesce(max(e.seq), 0)"
    " FROM entries AS e JOIN messages AS m ON m.id = e.message_id WHERE e.queue_id = ?"
)
# The subquery walks `entries_by_expiry` (its `expires_at > 0` makes the partial
# index usable) in (expires_at, seq) order, and stops at the limit; then each
# chosen entry is deleted by primary key. No message row is read: the orphan
# trigger deletes bodies left without entries.
SQL_EXPIRE = (
    "DELETE FROM entries WHERE queue_id = ?1 AND seq IN"
    " (SELECT seq FROM entries WHERE queue_id = ?1 AND expires_at > 0 AND expires_at <= ?2"
    " ORDER BY expires_at, seq LIMIT ?3)"
)

# Weight of each deleting kind towards the next free-space check.
DELETE_WEIGHT: Final = {
    ACK: 1,
    COLLECT_MESSAGE: 1,
    PURGE: 1_000_000,
    ACK_RANGE: 1_000_000,
    DELETE_QUEUE: 1_000_000,
    DELETE_VHOST: 1_000_000,
    PUT_RETAINED: 1,
    DELETE_RETAINED: 1,
}


def execute_ops(conn: sqlite3.Connection, ops: Sequence[Op | None], counts: list[int]) -> None:
    """Execute one segment's ops, grouping them so that few statements run.

    The per-message kinds (`HOT_KINDS`) between two other operations are
    regrouped by kind, in the order puts, enqueues, acks, collects, each
    kind keeping its own order. Any other operation is a barrier that
    nothing moves across, and runs of it are executed together, in
    order. That includes `ACK_RANGE`, `PURGE` and `EXPIRE`: regrouped
    with the acks, they would run after an enqueue queued behind them and
    delete its entry (or, for `EXPIRE`, miss one queued before). The
    regrouping only moves a put before the enqueues and acks that follow
    it, and an enqueue before acks: for the fresh message ids and rising
    seqs the core uses, the result is the same as in call order (a
    publish-and-consume stream alternates put, enqueue and ack, and would
    otherwise run one row per statement).
    """
    hot: dict[int, list[Params]] = {kind: [] for kind in HOT_KINDS}
    hot_waiting = False
    run: list[Params] = []
    run_kind = -1
    for op in ops:
        if op is None:
            continue
        kind, params = op
        bucket = hot.get(kind)
        if bucket is not None:
            if run:
                execute_kind(conn, run_kind, run, counts)
                run = []
            bucket.append(params)
            hot_waiting = True
            continue
        if hot_waiting:
            for hot_kind, rows in hot.items():
                if rows:
                    execute_kind(conn, hot_kind, rows, counts)
                    hot[hot_kind] = []
            hot_waiting = False
        if run and kind != run_kind:
            execute_kind(conn, run_kind, run, counts)
            run = []
        run_kind = kind
        run.append(params)
    if run:
        execute_kind(conn, run_kind, run, counts)
    for hot_kind, rows in hot.items():
        if rows:
            execute_kind(conn, hot_kind, rows, counts)


def execute_kind(
    conn: sqlite3.Connection, kind: int, rows: list[Params], counts: list[int]
) -> None:
    """Apply operations of one kind with each of its statements, and count them."""
    if kind == EXPIRE:
        # Not in STATEMENTS: each one reports its own row count (the
        # entries it deleted; the trigger's message deletes are not counted).
        for queue_id, now, limit, result in rows:
            result.deleted = conn.execute(SQL_EXPIRE, (queue_id, now, limit)).rowcount
            counts[4] += result.deleted
            counts[6] += result.deleted
        counts[0] += len(rows)
        counts[5] += len(rows)
        return
    for sql, pick in STATEMENTS[kind]:
        picked = rows if pick is None else [pick(p) for p in rows]
        if isinstance(sql, str):
            changed = conn.executemany(sql, picked).rowcount
        else:
            changed = execute_rows(conn, sql, picked)
        if kind == ENQUEUE and changed < len(rows):
            counts[3] += len(rows) - changed
    counts[0] += len(rows)
    if kind == PUT_MESSAGE:
        counts[1] += len(rows)
    elif kind == ENQUEUE:
        counts[2] += len(rows)
    else:
        counts[4] += DELETE_WEIGHT.get(kind, 0) * len(rows)


def execute_rows(conn: sqlite3.Connection, sqls: dict[int, str], rows: Sequence[Params]) -> int:
    """Apply `rows` in order through the multi-row variants; return the rows changed."""
    changed = 0
    done = 0
    total = len(rows)
    for size in CHUNKS:
        sql = sqls[size]
        while total - done >= size:
            flat = list(chain.from_iterable(rows[done : done + size]))
            changed += conn.execute(sql, flat).rowcount
            done += size
    return changed
