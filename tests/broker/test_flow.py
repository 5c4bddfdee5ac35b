"""Publisher flow control blocks past the backlog limit and resumes when written."""

from __future__ import annotations

import asyncio

from moorage.broker.flow import WriteFlow
from moorage.storage import QueueRecord
from moorage.storage.sqlite import SQLiteStore


async def test_blocks_past_limit_and_resumes_once_durable(tmp_path):
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    store.put_vhost("/")
    store.put_queue(QueueRecord("/", "q"))
    flow = WriteFlow(store, limit=10_000)
    resumed = asyncio.Event()
    for i in range(1, 30):
        store.put_message(i, b"x" * 1000)
        store.enqueue("/", "q", i, i)
        flow.wrote(1000)
    assert flow.blocked
    flow.on_resume(resumed.set)
    assert not resumed.is_set()
    await asyncio.wait_for(resumed.wait(), 5)
    assert not flow.blocked
    assert flow.backlog == 0
    # not blocked: resume is immediate
    called = []
    flow.on_resume(lambda: called.append(1))
    assert called == [1]
    await store.close()
