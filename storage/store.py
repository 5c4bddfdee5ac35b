"""The `Store` interface: what the broker core asks of durable storage.

Theory of operation
-------------------
Every mutating call (`put_*`, `delete_*`, `enqueue`, `ack`, ...) returns at
once: it only appends the change to the *current batch*. The implementation
writes batches in order, one transaction each, off the event loop (group
commit). `when_durable(callback)` asks to be told when every change queued so
far is on disk; that is the moment an adapter may send a publisher confirm,
PUBACK or RECEIPT, or a durable entity's declare-ok.

Records are plain values. Opaque `bytes` fields (`arguments`, message `data`)
are encoded by the core; the store never interprets them, so storage does not
depend on the broker's types.

Reading (`load_topology`, `read_queue`) happens at start-up and when a queue
pages messages back in; both are coroutines so that an implementation may run
them off the loop. A read sees every change queued before the call, written
yet or not: the caller need not wait for `when_durable` first.

Removing entries: `ack` removes one, `ack_range` every entry in a seq range
(a purge of entries paged out to the store, which the core knows only as a
range), `purge_queue` all of a queue's. Each is an ordinary queued change,
ordered with the others: an entry enqueued *after* an `ack_range` that
covers its seq is kept.

Protocol state: `put_session` / `delete_session` / `load_sessions` keep an
opaque blob per (vhost, protocol, client id), for the protocol adapters'
sessions that outlive a connection (MQTT persistent sessions).
`put_retained` / `delete_retained` / `load_retained` keep one message per
(vhost, topic) (MQTT retained messages): the body is stored with
`put_message` first, and a retained reference keeps it alive like a queue
entry does, so a body goes only when no entry and no retained reference is
left. Both are ordinary queued changes, covered by `when_durable`.

Retention: `enqueue` may give an entry an `expires_at`, a wall-clock UNIX
time in seconds (0: never). The store never drops an entry by itself; the
core calls `expire(vhost, queue, now)` (typically from a timer), which
removes up to `limit` entries of that queue with 0 < expires_at <= now,
earliest expiry first, and says how many went. Unlike the other changes,
`expire` is a coroutine: it acts after every change queued before the call
(an entry enqueued just before it is seen, one enqueued after it is not)
and its result is known only once it has been written. Bodies whose last
entry expired go with it, as after an `ack`. `read_queue` returns each
entry's `expires_at`, so the core may also skip expired entries it pages in.

Users: `put_user` / `delete_user`, `put_permission` / `delete_permission`
and `put_topic_permission` / `delete_topic_permission` keep the broker's
users, their per-vhost permissions and their topic permissions (per vhost
and exchange); `load_users` reads them all back with the digest of the
configuration's users last applied (`put_users_seed`; None while the store
has never been seeded, which is how the broker knows a first start).
Deleting a user deletes its permissions and topic permissions; deleting a
vhost deletes the permissions and topic permissions on it. They are
ordinary queued changes, covered by `when_durable`, so they replicate and
survive restarts like the topology.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

DurabilityCallback = Callable[["BaseException | None"], None]
"""Called with None once the batch is durable, or with the error that stopped it."""


class StoreError(Exception):
    """The store cannot do what was asked: corrupt file, full disk, closed store."""


def check_expires_at(expires_at: float) -> float:
    """`expires_at` as a float, or ValueError unless it is finite and >= 0 (0: never).

    Shared by the implementations so that they refuse the same values (a NaN
    would also break SQLite's NOT NULL column, and with it the whole batch).
    """
    value = float(expires_at)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"expires_at must be a finite time >= 0 (0: never), got {expires_at!r}")
    return value


@dataclass(frozen=True, slots=True)
class ExchangeRecord:
    """A durable exchange."""

    vhost: str
    name: str
    type: str
    auto_delete: bool = False
    internal: bool = False
    arguments: bytes = b""


@dataclass(frozen=True, slots=True)
class QueueRecord:
    """A durable queue."""

    vhost: str
    name: str
    auto_delete: bool = False
    arguments: bytes = b""


@dataclass(frozen=True, slots=True)
class BindingRecord:
    """A durable binding from exchange `source` to a queue or exchange."""

    vhost: str
    source: str
    destination: str
    destination_kind: str  # "queue" or "exchange"
    routing_key: str
    arguments: bytes = b""


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """One message in one queue, as read back from the store."""

    seq: int
    message_id: int
    data: bytes
    delivery_count: int = 0
    expires_at: float = 0.0
    """Wall-clock UNIX time (seconds) after which `expire` may remove it; 0: never."""


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A protocol session's state, as the adapter encoded it."""

    vhost: str
    protocol: str
    client_id: str
    state: bytes


@dataclass(frozen=True, slots=True)
class RetainedRecord:
    """A retained message of a topic, with its stored body."""

    vhost: str
    topic: str
    message_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A broker user. `attributes` is opaque to the store (the core encodes it):
    room for what a user carries beyond RabbitMQ's fields (access keys, limits)."""

    name: str
    password_hash: str  # "" for a user who cannot log in with a password
    hashing_algorithm: str
    tags: tuple[str, ...] = ()
    attributes: bytes = b""


@dataclass(frozen=True, slots=True)
class PermissionRecord:
    """A user's configure/write/read patterns on one vhost."""

    vhost: str
    user: str
    configure: str
    write: str
    read: str


@dataclass(frozen=True, slots=True)
class TopicPermissionRecord:
    """A user's write/read routing-key patterns on one exchange of one vhost."""

    vhost: str
    user: str
    exchange: str
    write: str
    read: str


@dataclass(slots=True)
class UserTables:
    """Every user with its permissions, as loaded at start-up."""

    users: list[UserRecord] = field(default_factory=list)
    permissions: list[PermissionRecord] = field(default_factory=list)
    topic_permissions: list[TopicPermissionRecord] = field(default_factory=list)
    seed: str | None = None
    """Digest of the configuration's users last applied; None: never seeded."""


@dataclass(slots=True)
class Topology:
    """Every durable entity, as loaded at start-up."""

    vhosts: list[str] = field(default_factory=list)
    exchanges: list[ExchangeRecord] = field(default_factory=list)
    queues: list[QueueRecord] = field(default_factory=list)
    bindings: list[BindingRecord] = field(default_factory=list)


class Store(Protocol):
    """Durable storage for topology and persistent messages.

    Ordering guarantee: changes become durable in the order they were queued,
    and `when_durable` callbacks fire in the order they were registered.
    Queue entries are identified by `(vhost, queue, seq)`; `seq` increases
    within a queue in publish order, which is also the recovery order.
    A message body (`put_message`) may be referenced by entries of several
    queues; it is dropped when its last entry is acked or its queue deleted.
    """

    async def open(self) -> None:
        """Open or create the store. Raises StoreError if it is unusable."""
        ...

    async def close(self) -> None:
        """Write what is pending and release every resource."""
        ...

    def put_vhost(self, name: str) -> None: ...
    def delete_vhost(self, name: str) -> None:
        """Delete a vhost with its exchanges, queues, bindings, entries, sessions, retained."""
        ...

    def put_exchange(self, record: ExchangeRecord) -> None: ...
    def delete_exchange(self, vhost: str, name: str) -> None:
        """Delete an exchange and every binding from or to it."""
        ...

    def put_queue(self, record: QueueRecord) -> None: ...
    def delete_queue(self, vhost: str, name: str) -> None:
        """Delete a queue, its bindings and its entries."""
        ...

    def put_binding(self, record: BindingRecord) -> None: ...
    def delete_binding(self, record: BindingRecord) -> None: ...

    def put_message(self, message_id: int, data: bytes) -> None:
        """Store a message body once, before the entries that reference it."""
        ...

    def enqueue(
        self, vhost: str, queue: str, seq: int, message_id: int, expires_at: float = 0.0
    ) -> None:
        """Add an entry for a stored message at position `seq` of a queue.

        `expires_at` is a wall-clock UNIX time in seconds after which `expire`
        may remove the entry; 0 (the default) means never.

        Raises:
            ValueError: `expires_at` is negative, infinite or NaN.
        """
        ...

    def ack(self, vhost: str, queue: str, seq: int) -> None:
        """Remove an entry (acknowledged, dropped or dead-lettered)."""
        ...

    def ack_range(self, vhost: str, queue: str, first_seq: int, last_seq: int) -> None:
        """Remove every entry with first_seq <= seq <= last_seq (a purge of paged-out entries).

        Ordered like any other change: entries enqueued before the call are
        removed (whether written yet or not), entries enqueued after it are
        kept even if their seq is in the range. No-op if first_seq > last_seq.
        """
        ...

    def mark_delivered(self, vhost: str, queue: str, seq: int, delivery_count: int) -> None:
        """Record that an entry has been delivered `delivery_count` times.

        Such marks never hold up `when_durable`: losing one in a crash only
        loses a `redelivered` flag, never a message. The core calls it for
        every delivery that awaits an ack, so it also tells the store that
        the entry is out to a consumer: an implementation may wait a little
        for that ack before writing an entry (SQLiteStore's ack window).
        """
        ...

    def purge_queue(self, vhost: str, queue: str) -> None:
        """Remove every entry of a queue."""
        ...

    def when_durable(self, callback: DurabilityCallback, *, removals: bool = True) -> None:
        """Call `callback` once every change queued so far is on disk (or cancelled).

        A change cancelled before it was written counts as done: an entry
        acked before its enqueue was written, with its message, is never
        written at all. With `removals=False` the callback does not wait for
        the entry removals (`ack`) queued before it either: publisher
        confirms use it, since they promise that the published messages are
        safe, not that earlier acks are. Callbacks are called in the order
        they were registered, whatever they wait for. It may be called
        synchronously when nothing is pending. On a failed write it is
        called with the error instead, and so is every later callback until
        the store recovers.
        """
        ...

    @property
    def pending(self) -> bool:
        """True while some queued change is not yet durable."""
        ...

    async def load_topology(self) -> Topology:
        """Every durable vhost, exchange, queue and binding."""
        ...

    async def read_queue(
        self, vhost: str, queue: str, after_seq: int, limit: int
    ) -> list[StoredEntry]:
        """Up to `limit` entries of a queue with seq > after_seq, in seq order."""
        ...

    async def queue_stats(self, vhost: str, queue: str) -> tuple[int, int, int]:
        """(entries, total bytes of their messages, highest seq or 0)."""
        ...

    async def max_message_id(self) -> int:
        """The highest message id stored, or 0: ids continue from it after a restart."""
        ...

    @property
    def location(self) -> Path | None:
        """The folder the store keeps its files in; None for a store with no files."""
        ...

    async def backup(self, destination: Path) -> int:
        """Copy the store into a new file at `destination`, consistently, while it runs.

        The copy holds everything written so far and every change queued
        before the call (it runs after them, like a read); a broker started
        on it recovers as from this store. Returns the copy's size in bytes.

        Raises:
            StoreError: the store has nothing on disk (the memory store), the
                destination exists, or the copy failed.
        """
        ...

    def put_session(self, vhost: str, protocol: str, client_id: str, state: bytes) -> None:
        """Create or replace the state of a protocol session (opaque to the store)."""
        ...

    def delete_session(self, vhost: str, protocol: str, client_id: str) -> None:
        """Forget a protocol session's state (no-op if there is none)."""
        ...

    async def load_sessions(self, protocol: str) -> list[SessionRecord]:
        """Every stored session of `protocol`, in no particular order."""
        ...

    def put_retained(self, vhost: str, topic: str, message_id: int) -> None:
        """Make the stored message `message_id` the retained message of `topic`.

        It replaces (and may drop the body of) the topic's previous one. The
        body must have been put with `put_message`; the reference keeps it
        alive until `delete_retained`, a later `put_retained` of the topic or
        the vhost's deletion.

        Raises:
            StoreError: the message was never put (checked as far as
                `enqueue` checks it).
        """
        ...

    def delete_retained(self, vhost: str, topic: str) -> None:
        """Forget a topic's retained message (its body goes if nothing else uses it)."""
        ...

    async def load_retained(self) -> list[RetainedRecord]:
        """Every retained message of every vhost, with its body."""
        ...

    def put_user(self, record: UserRecord) -> None:
        """Create or replace a user (its permissions are kept)."""
        ...

    def delete_user(self, name: str) -> None:
        """Delete a user with its permissions and topic permissions (no-op if unknown)."""
        ...

    def put_permission(self, record: PermissionRecord) -> None:
        """Create or replace a user's permissions on a vhost."""
        ...

    def delete_permission(self, vhost: str, user: str) -> None:
        """Forget a user's permissions on a vhost (no-op if there are none)."""
        ...

    def put_topic_permission(self, record: TopicPermissionRecord) -> None:
        """Create or replace a user's topic permissions on an exchange of a vhost."""
        ...

    def delete_topic_permission(self, vhost: str, user: str, exchange: str) -> None:
        """Forget a user's topic permissions on an exchange (no-op if there are none)."""
        ...

    def put_users_seed(self, digest: str) -> None:
        """Record the digest of the configuration's users just applied."""
        ...

    async def load_users(self) -> UserTables:
        """Every user, permission and topic permission, and the seed digest."""
        ...

    async def expire(self, vhost: str, queue: str, now: float, limit: int = 10000) -> int:
        """Remove up to `limit` entries of a queue with 0 < expires_at <= now; return how many.

        The earliest `expires_at` go first (ties in seq order). It acts after
        every change queued before the call, and is itself written before any
        change queued after it; when it returns, the removal is committed.
        Messages left without entries are dropped, as after `ack`. An
        unknown queue or `limit` <= 0 removes nothing.
        """
        ...
