"""The standby's end: follow the primary, apply its batches, acknowledge them.

Theory of operation
-------------------
`Replica.run()` connects to the primary's replication port, says HELLO
(its node name and epoch) and reads frames one at a time
(`FrameLink.next_frame`, which also notices a primary silent for
`peer_timeout` seconds):

1. WELCOME: the primary's epoch, node name, client addresses and the
   snapshot's `base` batch number (`on_welcome` may refuse it: a primary
   with an older epoch is never followed).
2. SNAPSHOT chunks then SNAPSHOT_END: the primary's database as of `base`
   is written beside ours, fsynced, and moved over our file (its WAL and
   shared-memory files removed first), with our writer stopped meanwhile.
   `on_installed(epoch)` runs before ACK `base` goes out, so the owner can
   make the epoch durable first.
3. BATCH frames: each becomes a `Batch` for our own `Writer`, which runs it
   exactly as the primary's writer did (`statements.execute_ops`, one
   transaction, in order); when its commit returned (fsynced in "fsync"
   durability) ACK n goes back. PING is answered with the last ACK.

Any failure (connection refused or lost, a malformed frame, a batch of the
wrong epoch or out of order, a failed commit) closes the link and, after
`retry_delay`, starts again with a fresh HELLO and so a fresh snapshot.
`on_primary_lost` is called each time a link that was following is lost.

Ordering rules: batches are submitted to the writer in arrival order and
must be numbered base+1, base+2, ...; an ACK is sent only after the commit
of that batch and every earlier one returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moorage.storage.replication.codec import (
    FrameType,
    ReplicationProtocolError,
    decode_batch,
    decode_json,
    encode_ack,
    encode_json,
)
from moorage.storage.replication.link import FrameLink, connect
from moorage.storage.sqlite.batch import Batch, SQLiteStats
from moorage.storage.sqlite.writer import Writer
from moorage.storage.store import StoreError

__all__ = ["Replica"]

log = logging.getLogger("moorage.replication")


class Replica:
    """Keeps the file at `path` a copy of the primary's store (module docs).

    Args:
        path: the standby's database file.
        primary: the primary's replication address, HOST:PORT.
        node: this node's name, sent in HELLO.
        epoch: this node's durable epoch, sent in HELLO (a callable: it changes).
        durability: the standby's `storage.durability`.
        peer_timeout: seconds of silence after which the primary is given up.
        retry_delay: seconds between connection attempts.
    """

    def __init__(
        self,
        path: Path,
        primary: str,
        *,
        node: str,
        epoch: Callable[[], int],
        durability: str = "fsync",
        peer_timeout: float = 1.5,
        retry_delay: float = 0.2,
    ) -> None:
        self.path = path
        self.primary = primary
        self.node = node
        self.epoch = epoch
        self.durability = durability
        self.peer_timeout = peer_timeout
        self.retry_delay = retry_delay
        self.stats = SQLiteStats()
        self.on_welcome: Callable[[dict[str, Any]], bool] = lambda welcome: True
        self.on_installed: Callable[[int], None] = lambda epoch: None
        self.on_primary_lost: Callable[[], None] = lambda: None
        self.following = False
        """True while a snapshot is installed and batches are being applied."""
        self.applied = 0
        self.primary_epoch = 0
        self.primary_info: dict[str, Any] = {}
        self.snapshots = 0
        self._writer: Writer | None = None
        self._numbers: deque[tuple[FrameLink, int]] = deque()
        """(link, batch number) of each batch handed to the writer, in order."""
        self._link: FrameLink | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_error = ""

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        """Stop following and close the database file (it is then ours to open)."""
        self._stopping = True
        if self._link is not None:
            self._link.abort()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._stop_writer()

    async def run(self) -> None:
        """Follow the primary until stopped (see the module docs)."""
        while not self._stopping:
            try:
                await self._follow_once()
            except asyncio.CancelledError:
                raise
            except (
                OSError,
                TimeoutError,
                ConnectionError,
                ReplicationProtocolError,
                StoreError,
                ValueError,
            ) as e:
                text = f"{type(e).__name__}: {e}"
                if self.following or text != self._last_error:
                    log.warning("replication: primary %s: %s", self.primary, text)
                self._last_error = text
            finally:
                if self._link is not None:
                    self._link.abort()
                    self._link = None
                if self.following:
                    self.following = False
                    self.on_primary_lost()
            await asyncio.sleep(self.retry_delay)

    async def _follow_once(self) -> None:
        link = await connect(self.primary, None, self.peer_timeout)
        self._link = link
        link.send(encode_json(FrameType.HELLO, {"node": self.node, "epoch": self.epoch()}))
        kind, payload = await link.next_frame(self.peer_timeout * 4)
        if kind is FrameType.REFUSE:
            raise ConnectionError(f"refused: {decode_json(payload).get('reason')}")
        if kind is not FrameType.WELCOME:
            raise ReplicationProtocolError(f"expected WELCOME, got {kind.name}")
        welcome = decode_json(payload)
        epoch, base = int(welcome.get("epoch", 0)), int(welcome.get("base", 0))
        if not self.on_welcome(welcome):
            raise ConnectionError(f"not following {self.primary} (epoch {epoch})")
        await self._receive_snapshot(link)
        await self._install_snapshot()
        self.primary_epoch, self.primary_info = epoch, welcome
        self.on_installed(epoch)
        self.applied = base
        self._numbers.clear()
        self.following = True
        self.snapshots += 1
        link.send(encode_ack(base))
        log.warning("replication: following %s from batch %d (epoch %d)", self.primary, base, epoch)
        expected = base + 1
        while True:
            kind, payload = await link.next_frame(self.peer_timeout)
            if kind is FrameType.BATCH:
                batch_epoch, number, segments = decode_batch(payload)
                if batch_epoch != epoch or number != expected:
                    raise ReplicationProtocolError(
                        f"batch {number} of epoch {batch_epoch}; expected {expected} of {epoch}"
                    )
                expected += 1
                assert self._writer is not None
                self._numbers.append((link, number))
                self._writer.submit(Batch(segments, [], True))
            elif kind is FrameType.PING:
                link.send(encode_ack(self.applied))
            else:
                raise ReplicationProtocolError(f"unexpected {kind.name} from the primary")

    async def _receive_snapshot(self, link: FrameLink) -> None:
        incoming = self.path.with_name(self.path.name + ".incoming")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with incoming.open("wb") as f:
            while True:
                kind, payload = await link.next_frame(self.peer_timeout * 4)
                if kind is FrameType.SNAPSHOT:
                    await asyncio.to_thread(f.write, payload)
                elif kind is FrameType.SNAPSHOT_END:
                    break
                elif kind is not FrameType.PING:
                    raise ReplicationProtocolError(f"unexpected {kind.name} in a snapshot")
            await asyncio.to_thread(_sync, f)

    async def _install_snapshot(self) -> None:
        await self._stop_writer()
        incoming = self.path.with_name(self.path.name + ".incoming")
        await asyncio.to_thread(_replace_database, incoming, self.path)
        writer = Writer(
            self.path,
            durability=self.durability,
            vacuum=True,
            stats=self.stats,
            on_done=self._batch_done,
        )
        await writer.start()
        self._writer = writer

    def _batch_done(self, batch: Batch, error: StoreError | None) -> None:
        """The writer committed (or failed) the oldest batch handed to it.

        The ACK goes back on the link the batch came from, and only while that
        link is the current one: a batch of an earlier connection (whose
        numbering may differ) acknowledges nothing on a new one.
        """
        if not self._numbers:
            return
        link, number = self._numbers.popleft()
        if link is not self._link:
            return
        if error is not None:
            log.error("replication: applying batch %d failed: %s", number, error)
            link.abort()
            return
        self.applied = number
        link.send(encode_ack(number))

    async def _stop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.stop()
        self._numbers.clear()


def _sync(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


def _replace_database(incoming: Path, path: Path) -> None:
    """Move a received snapshot over the database file, durably."""
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(str(path) + suffix)
    os.replace(incoming, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
