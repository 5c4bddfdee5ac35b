"""The SQLite store's protocol sessions, retained messages, users and permissions.

`SessionAndUserRecords` is a base class of `SQLiteStore` (`store.py`): its
changes are operations of the same gathering batch (so they commit, and
replicate, in order with every other change of the store) and its reads are
jobs of the same writer thread, queued behind every earlier change.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

from moorage.storage.sqlite.batch import GatheringBatch
from moorage.storage.sqlite.statements import (
    DELETE_PERMISSION,
    DELETE_RETAINED,
    DELETE_SESSION,
    DELETE_TOPIC_PERMISSION,
    DELETE_USER,
    PUT_PERMISSION,
    PUT_SESSION,
    PUT_TOPIC_PERMISSION,
    PUT_USER,
    PUT_USERS_SEED,
)
from moorage.storage.store import (
    PermissionRecord,
    RetainedRecord,
    SessionRecord,
    TopicPermissionRecord,
    UserRecord,
    UserTables,
)

__all__ = ["SessionAndUserRecords"]

_T = TypeVar("_T")


class SessionAndUserRecords:
    """The `Store` calls for protocol sessions, retained messages and users."""

    _batch: GatheringBatch

    def _check_open(self) -> None:
        raise NotImplementedError  # `SQLiteStore`'s

    def _check_readable(self) -> None:
        raise NotImplementedError  # `SQLiteStore`'s

    async def _submit(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        raise NotImplementedError  # `SQLiteStore`'s

    # -- protocol sessions and retained messages ----------------------------

    def put_session(self, vhost: str, protocol: str, client_id: str, state: bytes) -> None:
        """Queue the creation or replacement of a protocol session's state."""
        self._check_open()
        self._batch.append(PUT_SESSION, (vhost, protocol, client_id, bytes(state)))

    def delete_session(self, vhost: str, protocol: str, client_id: str) -> None:
        """Queue the deletion of a protocol session's state."""
        self._check_open()
        self._batch.append(DELETE_SESSION, (vhost, protocol, client_id))

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
        self._batch.put_retained(vhost, topic, message_id)

    def delete_retained(self, vhost: str, topic: str) -> None:
        """Queue forgetting a topic's retained message (its body goes if unreferenced)."""
        self._check_open()
        self._batch.append(DELETE_RETAINED, (vhost, topic))

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

    # -- users and permissions ----------------------------------------------

    def put_user(self, record: UserRecord) -> None:
        """Queue the creation or replacement of a user."""
        self._check_open()
        self._batch.append(
            PUT_USER,
            (
                record.name,
                record.password_hash,
                record.hashing_algorithm,
                ",".join(record.tags),
                bytes(record.attributes),
            ),
        )

    def delete_user(self, name: str) -> None:
        """Queue the deletion of a user with its permissions and topic permissions."""
        self._check_open()
        self._batch.append(DELETE_USER, (name,))

    def put_permission(self, record: PermissionRecord) -> None:
        """Queue the creation or replacement of a user's permissions on a vhost."""
        self._check_open()
        self._batch.append(
            PUT_PERMISSION,
            (record.vhost, record.user, record.configure, record.write, record.read),
        )

    def delete_permission(self, vhost: str, user: str) -> None:
        """Queue forgetting a user's permissions on a vhost."""
        self._check_open()
        self._batch.append(DELETE_PERMISSION, (vhost, user))

    def put_topic_permission(self, record: TopicPermissionRecord) -> None:
        """Queue the creation or replacement of a user's topic permissions on an exchange."""
        self._check_open()
        self._batch.append(
            PUT_TOPIC_PERMISSION,
            (record.vhost, record.user, record.exchange, record.write, record.read),
        )

    def delete_topic_permission(self, vhost: str, user: str, exchange: str) -> None:
        """Queue forgetting a user's topic permissions on an exchange."""
        self._check_open()
        self._batch.append(DELETE_TOPIC_PERMISSION, (vhost, user, exchange))

    def put_users_seed(self, digest: str) -> None:
        """Queue recording the digest of the configuration's users just applied."""
        self._check_open()
        self._batch.append(PUT_USERS_SEED, (digest,))

    async def load_users(self) -> UserTables:
        """Every user, permission and topic permission, and the seed digest."""
        self._check_readable()

        def load(conn: sqlite3.Connection) -> UserTables:
            seed = conn.execute("SELECT digest FROM users_seed WHERE id = 1").fetchone()
            return UserTables(
                [
                    UserRecord(r[0], r[1], r[2], tuple(t for t in r[3].split(",") if t), r[4])
                    for r in conn.execute(
                        "SELECT name, password_hash, hashing_algorithm, tags, attributes FROM users"
                    )
                ],
                [
                    PermissionRecord(*r)
                    for r in conn.execute(
                        "SELECT vhost, username, configure, write, read FROM user_permissions"
                    )
                ],
                [
                    TopicPermissionRecord(*r)
                    for r in conn.execute(
                        "SELECT vhost, username, exchange, write, read FROM topic_permissions"
                    )
                ],
                None if seed is None else str(seed[0]),
            )

        return await self._submit(load)
