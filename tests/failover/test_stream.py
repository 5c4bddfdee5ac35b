"""The batch stream in one process: a primary `SQLiteStore` shipping to a `Replica`.

Every kind of store operation reaches the standby's file through the generic
path (no replication code per kind), callbacks wait for the standby's ack,
the ack window still keeps acked messages off the disk and off the wire, and
a standby that joins late is resynchronised from a snapshot plus the batches
after it while writes go on.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from moorage.storage.replication.codec import FrameType, decode_json
from moorage.storage.replication.gate import GateMode, ReplicationGate
from moorage.storage.replication.link import FrameLink
from moorage.storage.replication.replica import Replica
from moorage.storage.replication.source import ReplicationSource
from moorage.storage.sqlite import SQLiteStore
from moorage.storage.store import BindingRecord, ExchangeRecord, QueueRecord

pytestmark = pytest.mark.timeout(60)


async def wait_until(condition, within: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


class Pair:
    def __init__(self, tmp: Path, *, ack_window: float = 0.0) -> None:
        self.tmp = tmp
        self.store = SQLiteStore(tmp / "a.db", durability="nosync", ack_window=ack_window)
        self.gate: ReplicationGate | None = None
        self.source: ReplicationSource | None = None
        self.replica: Replica | None = None
        self.server: asyncio.Server | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.gate = ReplicationGate(loop, GateMode.SYNC)
        self.source = ReplicationSource(self.store, self.gate, epoch=1, welcome={"node": "a"})
        await self.store.open()
        source = self.source

        def hello(link: FrameLink, kind: FrameType, payload: bytes) -> None:
            assert kind is FrameType.HELLO
            source.attach(link, decode_json(payload))

        self.server = await loop.create_server(lambda: FrameLink(hello), "127.0.0.1", 0)

    async def follow(self) -> Replica:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        self.replica = Replica(
            self.tmp / "b.db", f"127.0.0.1:{port}", node="b", epoch=lambda: 1, durability="nosync"
        )
        self.replica.start()
        await wait_until(lambda: self.replica is not None and self.replica.following)
        return self.replica

    async def durable(self) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.store.when_durable(
            lambda error: done.set_result(None) if error is None else done.set_exception(error)
        )
        await done

    async def close(self) -> None:
        if self.replica is not None:
            await self.replica.stop()
        if self.source is not None:
            self.source.close()
        if self.server is not None:
            self.server.close()
        await self.store.close()


@contextlib.asynccontextmanager
async def pair(tmp: Path, **options: float):
    p = Pair(tmp, **options)
    await p.open()
    try:
        yield p
    finally:
        await p.close()


async def contents(store: SQLiteStore) -> tuple[object, ...]:
    return (
        await store.load_topology(),
        await store.read_queue("/", "q", 0, 100),
        await store.load_sessions("mqtt"),
        await store.load_retained(),
        await store.max_message_id(),
    )


def write_every_kind(store: SQLiteStore, base: int) -> None:
    store.put_vhost("/")
    store.put_exchange(ExchangeRecord("/", "x", "topic", arguments=b"args"))
    store.put_queue(QueueRecord("/", "q"))
    store.put_queue(QueueRecord("/", "gone"))
    store.put_binding(BindingRecord("/", "x", "q", "queue", "a.#"))
    for i in range(base, base + 5):
        store.put_message(i, f"body {i}".encode())
        store.enqueue("/", "q", i, i, expires_at=100.0 if i == base else 0.0)
    store.mark_delivered("/", "q", base + 1, 2)
    store.ack("/", "q", base + 2)
    store.put_session("/", "mqtt", f"client-{base}", b"state")
    store.put_retained("/", "a/b", base + 3)
    store.delete_queue("/", "gone")


async def test_every_kind_of_operation_reaches_the_standby_and_callbacks_wait_for_it(tmp_path):
    async with pair(tmp_path) as p:
        replica = await p.follow()
        write_every_kind(p.store, 1)
        assert await p.store.expire("/", "q", now=200.0) == 1  # a barrier, also shipped
        await p.durable()
        assert p.gate is not None
        # The callback ran, so the standby had acknowledged every batch.
        assert replica.applied == p.gate.last == p.gate.acked
        expected = await contents(p.store)
        await replica.stop()
        p.replica = None
        copy = SQLiteStore(tmp_path / "b.db", durability="nosync")
        await copy.open()
        try:
            assert await contents(copy) == expected
            assert [e.seq for e in expected[1]] == [2, 4, 5]  # the test wrote something
        finally:
            await copy.close()


async def test_without_the_standby_callbacks_wait_until_the_gate_lets_them_go(tmp_path):
    async with pair(tmp_path) as p:
        replica = await p.follow()
        p.store.put_vhost("/")
        await p.durable()
        await replica.stop()
        p.replica = None
        fired: list[object] = []
        p.store.put_vhost("other")
        p.store.when_durable(fired.append)
        assert p.gate is not None
        await wait_until(lambda: p.gate is not None and p.gate.last > p.gate.acked)
        assert p.store.pending  # a reply promising durability must wait too
        await asyncio.sleep(0.2)  # committed locally, but nobody acknowledges it
        assert fired == []
        p.gate.set_mode(GateMode.ALONE)
        assert fired == [None]
        assert not p.store.pending


async def test_the_ack_window_keeps_acked_messages_off_the_wire(tmp_path):
    async with pair(tmp_path, ack_window=5.0) as p:
        await p.follow()
        p.store.put_vhost("/")
        p.store.put_queue(QueueRecord("/", "q"))
        await p.durable()
        assert p.gate is not None
        shipped = p.source.shipped_bytes if p.source else 0
        batches = p.gate.last
        p.store.put_message(1, b"x" * 10_000)
        p.store.enqueue("/", "q", 1, 1)
        p.store.mark_delivered("/", "q", 1, 1)  # out to a consumer ...
        confirmed: list[object] = []
        p.store.when_durable(confirmed.append, removals=False)
        p.store.ack("/", "q", 1)  # ... which acks it within the window
        await wait_until(lambda: confirmed == [None])
        await p.durable()
        assert p.source is not None
        assert p.source.shipped_bytes - shipped < 10_000  # the body never travelled
        assert p.gate.last == batches  # nor was a batch written for it


async def test_a_late_standby_resyncs_from_a_snapshot_while_writes_go_on(tmp_path):
    async with pair(tmp_path) as p:
        p.store.put_vhost("/")
        p.store.put_queue(QueueRecord("/", "q"))
        for i in range(1, 201):
            p.store.put_message(i, b"m")
            p.store.enqueue("/", "q", i, i)
        early: list[object] = []
        p.store.when_durable(early.append)  # no standby yet: acknowledged by nobody...
        writing = True

        async def writer() -> None:
            i = 1000
            while writing:
                p.store.put_message(i, b"n")
                p.store.enqueue("/", "q", i, i)
                i += 1
                await asyncio.sleep(0.001)

        task = asyncio.ensure_future(writer())
        await asyncio.sleep(0.05)
        assert early == []
        replica = await p.follow()  # ...until the snapshot is acknowledged
        await wait_until(lambda: early == [None])
        await asyncio.sleep(0.1)
        writing = False
        await task
        await p.durable()
        assert replica.snapshots == 1
        expected = await contents(p.store)
        await replica.stop()
        p.replica = None
        copy = SQLiteStore(tmp_path / "b.db", durability="nosync")
        await copy.open()
        try:
            assert await copy.queue_stats("/", "q") == await p.store.queue_stats("/", "q")
            assert (await contents(copy))[0] == expected[0]
        finally:
            await copy.close()
