"""The `Store` contract for users, permissions and topic permissions (both stores).

Run like `test_store_contract.py`: settled (each step written separately) and
unsettled (everything in one batch) must give the same answers.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from moorage.storage.sqlite import SQLiteStore
from moorage.storage.store import (
    PermissionRecord,
    Store,
    TopicPermissionRecord,
    UserRecord,
)
from tests.storage.conftest import Settle

pytestmark = pytest.mark.timeout(20)

ALICE = UserRecord("alice", "$scrypt$x", "moorage_password_hashing_scrypt", ("management",))
BOB = UserRecord("bob", "abc=", "rabbit_password_hashing_sha256", (), b'{"k": 1}')


@pytest.fixture(params=["settled", "unsettled"])
def step(request: pytest.FixtureRequest, settle: Settle) -> Settle:
    async def nothing(store: Store) -> None:
        return None

    return settle if request.param == "settled" else nothing


async def test_users_round_trip_and_replace(store: Store, step: Settle) -> None:
    assert (await store.load_users()).seed is None  # never seeded
    store.put_user(ALICE)
    store.put_user(BOB)
    await step(store)
    store.put_user(UserRecord("alice", "new", "h", ("administrator", "monitoring")))
    store.put_users_seed("d1")
    await step(store)
    tables = await store.load_users()
    assert sorted(tables.users, key=lambda u: u.name) == [
        UserRecord("alice", "new", "h", ("administrator", "monitoring")),
        BOB,
    ]
    assert tables.seed == "d1"


async def test_permissions_replace_and_delete(store: Store, step: Settle) -> None:
    store.put_vhost("/")
    store.put_user(ALICE)
    store.put_permission(PermissionRecord("/", "alice", ".*", ".*", ".*"))
    store.put_topic_permission(TopicPermissionRecord("/", "alice", "amq.topic", "^a", "^b"))
    store.put_topic_permission(TopicPermissionRecord("/", "alice", "t2", "", ".*"))
    await step(store)
    store.put_permission(PermissionRecord("/", "alice", "", "w", "r"))
    store.delete_topic_permission("/", "alice", "t2")
    await step(store)
    tables = await store.load_users()
    assert tables.permissions == [PermissionRecord("/", "alice", "", "w", "r")]
    assert tables.topic_permissions == [
        TopicPermissionRecord("/", "alice", "amq.topic", "^a", "^b")
    ]
    store.delete_permission("/", "alice")
    store.delete_permission("/", "nobody")  # no-op
    await step(store)
    assert (await store.load_users()).permissions == []


async def test_delete_user_cascades(store: Store, step: Settle) -> None:
    for user in (ALICE, BOB):
        store.put_user(user)
        store.put_permission(PermissionRecord("/", user.name, ".*", ".*", ".*"))
        store.put_topic_permission(TopicPermissionRecord("/", user.name, "x", ".*", ".*"))
    await step(store)
    store.delete_user("alice")
    store.delete_user("nobody")
    await step(store)
    tables = await store.load_users()
    assert [u.name for u in tables.users] == ["bob"]
    assert [p.user for p in tables.permissions] == ["bob"]
    assert [p.user for p in tables.topic_permissions] == ["bob"]


async def test_delete_vhost_drops_its_permissions(store: Store, step: Settle) -> None:
    store.put_vhost("/")
    store.put_vhost("v2")
    store.put_user(ALICE)
    for vhost in ("/", "v2"):
        store.put_permission(PermissionRecord(vhost, "alice", ".*", ".*", ".*"))
        store.put_topic_permission(TopicPermissionRecord(vhost, "alice", "x", ".*", ".*"))
    await step(store)
    store.delete_vhost("v2")
    await step(store)
    tables = await store.load_users()
    assert [u.name for u in tables.users] == ["alice"]
    assert [p.vhost for p in tables.permissions] == ["/"]
    assert [p.vhost for p in tables.topic_permissions] == ["/"]


async def test_sqlite_users_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SQLiteStore(path)
    await store.open()
    store.put_user(BOB)
    store.put_permission(PermissionRecord("/", "bob", "c", "w", "r"))
    store.put_topic_permission(TopicPermissionRecord("/", "bob", "amq.topic", "w", "r"))
    store.put_users_seed("digest")
    await store.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        tables = await asyncio.wait_for(store.load_users(), 10)
    finally:
        await store.close()
    assert tables.users == [BOB]
    assert tables.permissions == [PermissionRecord("/", "bob", "c", "w", "r")]
    assert tables.topic_permissions == [TopicPermissionRecord("/", "bob", "amq.topic", "w", "r")]
    assert tables.seed == "digest"


async def test_a_version_3_file_is_migrated_and_reads_as_never_seeded(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SQLiteStore(path)
    await store.open()
    store.put_vhost("/")
    await store.close()
    conn = sqlite3.connect(path)  # make it a file of the previous schema version
    for table in ("users", "user_permissions", "topic_permissions", "users_seed"):
        conn.execute(f"DROP TABLE {table}")
    conn.execute("UPDATE schema_version SET version = 3")
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        tables = await store.load_users()
        assert (tables.users, tables.seed) == ([], None)  # the broker seeds it from the file
        assert (await store.load_topology()).vhosts == ["/"]
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(4,)]
    conn.close()
