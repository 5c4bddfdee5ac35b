"""An in-memory `Store`: nothing survives the process, every change is 'durable' at once.

Used when the broker runs without a data directory and as the reference that
the SQLite store's contract tests are checked against.

Every change is applied at the call, so ordering is trivial: `ack_range`
removes what is there now, and `expire` removes what has expired at its first
step. Entries with an expiry are also listed per queue in `_expiring`, so
that `expire` looks only at them rather than at the whole queue.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path

from moorage.storage.store import (
    BindingRecord,
    DurabilityCallback,
    ExchangeRecord,
    PermissionRecord,
    QueueRecord,
    RetainedRecord,
    SessionRecord,
    StoredEntry,
    StoreError,
    TopicPermissionRecord,
    Topology,
    UserRecord,
    UserTables,
    check_expires_at,
)


@dataclass(slots=True)
class _Entry:
    message_id: int
    delivery_count: int = 0
    expires_at: float = 0.0


class MemoryStore:
    """Keeps records in dicts; `when_durable` answers synchronously."""

    def __init__(self) -> None:
        self._open = False
        self._vhosts: dict[str, None] = {}
        self._exchanges: dict[tuple[str, str], ExchangeRecord] = {}
        self._queues: dict[tuple[str, str], QueueRecord] = {}
        self._bindings: dict[BindingRecord, None] = {}
        self._messages: dict[int, bytes] = {}
        self._refs: dict[int, int] = {}
        self._entries: dict[tuple[str, str], dict[int, _Entry]] = {}
        # (vhost, queue) -> seq -> expires_at, for the entries that have one
        self._expiring: dict[tuple[str, str], dict[int, float]] = {}
        self._sessions: dict[tuple[str, str, str], bytes] = {}
        self._retained: dict[tuple[str, str], int] = {}  # (vhost, topic) -> message id
        self._users: dict[str, UserRecord] = {}
        self._permissions: dict[tuple[str, str], PermissionRecord] = {}  # (vhost, user)
        self._topic_permissions: dict[tuple[str, str, str], TopicPermissionRecord] = {}
        self._users_seed: str | None = None

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    def _check(self) -> None:
        if not self._open:
            raise StoreError("store is closed")

    def put_vhost(self, name: str) -> None:
        self._check()
        self._vhosts[name] = None

    def delete_vhost(self, name: str) -> None:
        self._check()
        self._vhosts.pop(name, None)
        for key in [k for k in self._exchanges if k[0] == name]:
            self.delete_exchange(*key)
        for key in [k for k in self._queues if k[0] == name]:
            self.delete_queue(*key)
        for skey in [k for k in self._sessions if k[0] == name]:
            del self._sessions[skey]
        for rkey in [k for k in self._retained if k[0] == name]:
            self.delete_retained(*rkey)
        for pkey in [k for k in self._permissions if k[0] == name]:
            del self._permissions[pkey]
        for tkey in [k for k in self._topic_permissions if k[0] == name]:
            del self._topic_permissions[tkey]

    def put_exchange(self, record: ExchangeRecord) -> None:
        self._check()
        self._exchanges[(record.vhost, record.name)] = record

    def delete_exchange(self, vhost: str, name: str) -> None:
        self._check()
        self._exchanges.pop((vhost, name), None)
        for b in list(self._bindings):
            if b.vhost == vhost and (
                b.source == name or (b.destination_kind == "exchange" and b.destination == name)
            ):
                del self._bindings[b]

    def put_queue(self, record: QueueRecord) -> None:
        self._check()
        self._queues[(record.vhost, record.name)] = record
        self._entries.setdefault((record.vhost, record.name), {})

    def delete_queue(self, vhost: str, name: str) -> None:
        self._check()
        self._queues.pop((vhost, name), None)
        self.purge_queue(vhost, name)
        self._entries.pop((vhost, name), None)
        self._expiring.pop((vhost, name), None)
        for b in list(self._bindings):
            if b.vhost == vhost and b.destination_kind == "queue" and b.destination == name:
                del self._bindings[b]

    def put_binding(self, record: BindingRecord) -> None:
        self._check()
        self._bindings[record] = None

    def delete_binding(self, record: BindingRecord) -> None:
        self._check()
        self._bindings.pop(record, None)

    def put_message(self, message_id: int, data: bytes) -> None:
        self._check()
        self._messages[message_id] = data
        self._refs.setdefault(message_id, 0)

    def enqueue(
        self, vhost: str, queue: str, seq: int, message_id: int, expires_at: float = 0.0
    ) -> None:
        self._check()
        expires_at = check_expires_at(expires_at)
        if message_id not in self._messages:
            raise StoreError(f"message {message_id} was never put")
        key = (vhost, queue)
        self._entries.setdefault(key, {})[seq] = _Entry(message_id, 0, expires_at)
        self._refs[message_id] += 1
        expiring = self._expiring.setdefault(key, {})
        if expires_at > 0:
            expiring[seq] = expires_at
        else:
            expiring.pop(seq, None)

    def _drop_entry(self, message_id: int) -> None:
        self._refs[message_id] -= 1
        if self._refs[message_id] <= 0:
            del self._refs[message_id]
            del self._messages[message_id]

    def _remove(self, key: tuple[str, str], seq: int) -> bool:
        """Remove one entry, and its message if that was the last reference."""
        entry = self._entries.get(key, {}).pop(seq, None)
        if entry is None:
            return False
        if entry.expires_at > 0:
            self._expiring[key].pop(seq, None)
        self._drop_entry(entry.message_id)
        return True

    def ack(self, vhost: str, queue: str, seq: int) -> None:
        self._check()
        self._remove((vhost, queue), seq)

    def ack_range(self, vhost: str, queue: str, first_seq: int, last_seq: int) -> None:
        self._check()
        key = (vhost, queue)
        for seq in [s for s in self._entries.get(key, {}) if first_seq <= s <= last_seq]:
            self._remove(key, seq)

    def mark_delivered(self, vhost: str, queue: str, seq: int, delivery_count: int) -> None:
        self._check()
        entry = self._entries.get((vhost, queue), {}).get(seq)
        if entry is not None:
            entry.delivery_count = delivery_count

    def purge_queue(self, vhost: str, queue: str) -> None:
        self._check()
        entries = self._entries.get((vhost, queue), {})
        for entry in entries.values():
            self._drop_entry(entry.message_id)
        entries.clear()
        self._expiring.pop((vhost, queue), None)

    async def expire(self, vhost: str, queue: str, now: float, limit: int = 10000) -> int:
        self._check()
        key = (vhost, queue)
        expiring = self._expiring.get(key)
        if not expiring or limit <= 0:
            return 0
        due = [(at, seq) for seq, at in expiring.items() if at <= now]
        for _, seq in heapq.nsmallest(limit, due):
            self._remove(key, seq)
        return min(len(due), limit)

    def put_session(self, vhost: str, protocol: str, client_id: str, state: bytes) -> None:
        self._check()
        self._sessions[(vhost, protocol, client_id)] = bytes(state)

    def delete_session(self, vhost: str, protocol: str, client_id: str) -> None:
        self._check()
        self._sessions.pop((vhost, protocol, client_id), None)

    async def load_sessions(self, protocol: str) -> list[SessionRecord]:
        self._check()
        return [
            SessionRecord(v, p, c, state)
            for (v, p, c), state in self._sessions.items()
            if p == protocol
        ]

    def put_retained(self, vhost: str, topic: str, message_id: int) -> None:
        self._check()
        if message_id not in self._messages:
            raise StoreError(f"message {message_id} was never put")
        self._refs[message_id] += 1  # before dropping the old one: it may be the same
        previous = self._retained.get((vhost, topic))
        self._retained[(vhost, topic)] = message_id
        if previous is not None:
            self._drop_entry(previous)

    def delete_retained(self, vhost: str, topic: str) -> None:
        self._check()
        previous = self._retained.pop((vhost, topic), None)
        if previous is not None:
            self._drop_entry(previous)

    async def load_retained(self) -> list[RetainedRecord]:
        self._check()
        return [
            RetainedRecord(v, t, mid, self._messages[mid]) for (v, t), mid in self._retained.items()
        ]

    def put_user(self, record: UserRecord) -> None:
        self._check()
        self._users[record.name] = record

    def delete_user(self, name: str) -> None:
        self._check()
        self._users.pop(name, None)
        for pkey in [k for k in self._permissions if k[1] == name]:
            del self._permissions[pkey]
        for tkey in [k for k in self._topic_permissions if k[1] == name]:
            del self._topic_permissions[tkey]

    def put_permission(self, record: PermissionRecord) -> None:
        self._check()
        self._permissions[(record.vhost, record.user)] = record

    def delete_permission(self, vhost: str, user: str) -> None:
        self._check()
        self._permissions.pop((vhost, user), None)

    def put_topic_permission(self, record: TopicPermissionRecord) -> None:
        self._check()
        self._topic_permissions[(record.vhost, record.user, record.exchange)] = record

    def delete_topic_permission(self, vhost: str, user: str, exchange: str) -> None:
        self._check()
        self._topic_permissions.pop((vhost, user, exchange), None)

    def put_users_seed(self, digest: str) -> None:
        self._check()
        self._users_seed = digest

    async def load_users(self) -> UserTables:
        self._check()
        return UserTables(
            list(self._users.values()),
            list(self._permissions.values()),
            list(self._topic_permissions.values()),
            self._users_seed,
        )

    def when_durable(self, callback: DurabilityCallback, *, removals: bool = True) -> None:
        callback(None)

    @property
    def pending(self) -> bool:
        return False

    async def load_topology(self) -> Topology:
        self._check()
        return Topology(
            vhosts=list(self._vhosts),
            exchanges=list(self._exchanges.values()),
            queues=list(self._queues.values()),
            bindings=list(self._bindings),
        )

    async def read_queue(
        self, vhost: str, queue: str, after_seq: int, limit: int
    ) -> list[StoredEntry]:
        self._check()
        entries = self._entries.get((vhost, queue), {})
        seqs = sorted(s for s in entries if s > after_seq)[:limit]
        result = []
        for seq in seqs:
            e = entries[seq]
            data = self._messages[e.message_id]
            result.append(StoredEntry(seq, e.message_id, data, e.delivery_count, e.expires_at))
        return result

    async def queue_stats(self, vhost: str, queue: str) -> tuple[int, int, int]:
        self._check()
        entries = self._entries.get((vhost, queue), {})
        size = sum(len(self._messages[e.message_id]) for e in entries.values())
        return len(entries), size, max(entries, default=0)

    async def max_message_id(self) -> int:
        self._check()
        return max(self._messages, default=0)

    @property
    def location(self) -> Path | None:
        return None

    async def backup(self, destination: Path) -> int:
        raise StoreError("the memory store keeps nothing on disk to back up")
