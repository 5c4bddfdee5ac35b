"""A broker waiting for the shared-storage lock, in-process: no listener, no store, up for systemd.

The lock is held by a `SharedStorage` of the test itself; `serve()` runs on
the test's loop and waits behind it. SIGTERM (sent to this process, which
`serve` handles on its loop) ends the wait cleanly. Taking over is tested
with real processes in `test_takeover.py`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import pytest

from moorage.broker.config import DEFAULT_PORTS, Config
from moorage.broker.daemon import serve
from moorage.broker.shared_storage import SharedStorage
from tests.durability.broker_process import free_port


async def test_a_waiting_broker_opens_nothing_reports_ready_and_stops_on_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    holder = SharedStorage(data_dir, lease=30.0)
    await holder.acquire()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    port = free_port()
    config = Config(data_dir=data_dir, ports=dict.fromkeys(DEFAULT_PORTS, 0) | {"amqp": port})
    config.storage.mode = "shared"
    config.storage.lock_poll = 0.02
    serving = asyncio.ensure_future(serve(config))
    try:
        loop = asyncio.get_running_loop()
        message = await asyncio.wait_for(loop.sock_recv(notify, 4096), 30)
        assert message == b"READY=1\nSTATUS=waiting for the shared-storage lock"
        await asyncio.sleep(0.2)  # ten attempts at the lock
        assert not serving.done()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        assert sorted(p.name for p in data_dir.iterdir()) == ["moorage.lease", "moorage.lock"]
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(serving, 10) is None
    finally:
        serving.cancel()
        notify.close()
    assert sorted(p.name for p in data_dir.iterdir()) == ["moorage.lease", "moorage.lock"]
    holder.check()  # the holder's lease was never touched
    await holder.release()
