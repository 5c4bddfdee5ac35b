"""The primary's end: number, ship and track every committed batch.

Theory of operation
-------------------
`ReplicationSource.tap` runs on the writer thread right after each commit
(`SQLiteStore.replicate`). While a standby is attached it encodes the batch
there (off the event loop) and posts the frame to the loop, where it is
written to the standby's link. The writer does not wait for the standby: it
commits batch N+1 while N is on the wire, and the `ReplicationGate` holds
N's callbacks until the standby's ACK covers N. That is the pipeline:
committing, shipping and the standby's commit of consecutive batches
overlap.

Attaching a standby (`attach`): the source asks the store for a `snapshot`
(SQLite's online backup, run on the writer thread between two batches, so
it holds exactly the batches numbered up to `base`), sends WELCOME with
`base`, streams the file in SNAPSHOT chunks, then every batch numbered after
`base` (they were buffered meanwhile) and then live batches. Traffic never
stops: the backup costs one pause of the writer while the pages are copied.
Only one standby is attached at a time; a new HELLO replaces the old link.

When the standby's ACK reaches the last batch committed here, the standby
is in sync: `on_in_sync` is called (the owner then puts the gate in SYNC).
A link that closes, or from which nothing was heard for `peer_timeout`
seconds, is dropped and reported with `on_standby_lost`.

Ordering rules: frames are written in batch-number order (the writer posts
them in commit order and the loop runs posts in order); a snapshot's
buffered batches go out before any later live one; ACKs only move forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from moorage.storage.replication.codec import (
    FrameType,
    ReplicationProtocolError,
    decode_ack,
    encode_batch,
    encode_frame,
    encode_json,
)
from moorage.storage.replication.gate import ReplicationGate
from moorage.storage.replication.link import FrameLink
from moorage.storage.sqlite import SQLiteStore
from moorage.storage.sqlite.batch import Segment
from moorage.storage.store import StoreError

__all__ = ["ReplicationSource"]

log = logging.getLogger("moorage.replication")

SNAPSHOT_CHUNK = 1 << 20
"""Bytes of the database file per SNAPSHOT frame."""


class ReplicationSource:
    """Ships a `SQLiteStore`'s committed batches to one standby (module docs).

    Args:
        store: the primary's store (not yet opened, or idle).
        gate: the gate the store's callbacks go through.
        epoch: stamped on every batch.
        welcome: extra WELCOME fields (the primary's node name, client addresses).
        heartbeat: seconds between PINGs.
        peer_timeout: seconds of silence after which the standby is dropped.
    """

    def __init__(
        self,
        store: SQLiteStore,
        gate: ReplicationGate,
        *,
        epoch: int,
        welcome: dict[str, Any],
        heartbeat: float = 0.25,
        peer_timeout: float = 1.5,
    ) -> None:
        self.store = store
        self.gate = gate
        self.epoch = epoch
        self.welcome = welcome
        self.heartbeat = heartbeat
        self.peer_timeout = peer_timeout
        self.loop = asyncio.get_running_loop()
        self.link: FrameLink | None = None
        self.standby_node = ""
        self.on_in_sync: Callable[[], None] = lambda: None
        self.on_standby_lost: Callable[[str], None] = lambda reason: None
        self.in_sync = False
        self.snapshots = 0
        self.last_ack_time = 0.0
        self.shipped_bytes = 0
        self._shipping = False  # read by the writer thread
        self._buffer: list[tuple[int, bytes]] | None = None  # batches while a snapshot goes
        self._base = 0
        self._task: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        store.replicate(self.tap, gate)

    # -- the writer thread -----------------------------------------------------

    def tap(self, number: int, segments: list[Segment]) -> None:
        """On the writer thread: encode a committed batch and post it to the loop."""
        if not self._shipping:
            return
        frame = encode_batch(self.epoch, number, segments)
        with contextlib.suppress(RuntimeError):  # loop closed under us
            self.loop.call_soon_threadsafe(self._ship, number, frame)

    # -- the loop ------------------------------------------------------------------

    def _ship(self, number: int, frame: bytes) -> None:
        link = self.link
        if link is None:
            return
        if self._buffer is not None:
            self._buffer.append((number, frame))
        elif number > self._base:
            self.shipped_bytes += len(frame)
            link.send(frame)

    def attach(self, link: FrameLink, hello: dict[str, Any]) -> None:
        """A standby said HELLO on `link`: replace any other, and start its resync."""
        if self.link is not None and self.link is not link:
            self._drop("replaced by a new standby connection")
        self.link = link
        self.standby_node = str(hello.get("node", link.peer))
        self.in_sync = False
        self._buffer = []
        self._shipping = True
        link.handler = self._on_frame
        link.on_lost = lambda lost: self._lost(lost, "connection closed")
        self._task = self.loop.create_task(self._resync(link))
        self._pinger = self.loop.create_task(self._keepalive(link))

    async def _resync(self, link: FrameLink) -> None:
        path = self.store.path.with_name(f"{self.store.path.name}.snapshot-{id(link)}")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        try:
            base, size = await self.store.snapshot(path)
            self._base = base
            link.send(
                encode_json(
                    FrameType.WELCOME,
                    {**self.welcome, "epoch": self.epoch, "base": base, "size": size},
                )
            )
            log.warning(
                "replication: resynchronising standby %s from a snapshot of batch %d (%d bytes)",
                self.standby_node,
                base,
                size,
            )
            with path.open("rb") as f:
                while True:
                    chunk = await asyncio.to_thread(f.read, SNAPSHOT_CHUNK)
                    if not chunk or link.is_closed:
                        break
                    link.send(encode_frame(FrameType.SNAPSHOT, chunk))
                    await link.drain()
            link.send(encode_frame(FrameType.SNAPSHOT_END))
            self.snapshots += 1
            buffered, self._buffer = self._buffer or [], None
            for number, frame in buffered:
                if number > base:
                    link.send(frame)
        except (StoreError, OSError) as e:
            log.error("replication: snapshot for %s failed: %s", self.standby_node, e)
            link.close()
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    async def _keepalive(self, link: FrameLink) -> None:
        ping = encode_frame(FrameType.PING)
        while not link.is_closed:
            await asyncio.sleep(self.heartbeat)
            if self.loop.time() - link.last_received > self.peer_timeout:
                log.warning(
                    "replication: standby %s silent for %.1f s",
                    self.standby_node,
                    self.peer_timeout,
                )
                link.abort()
                return
            link.send(ping)

    def _on_frame(self, link: FrameLink, kind: FrameType, payload: bytes) -> None:
        if kind is FrameType.ACK:
            number = decode_ack(payload)
            self.last_ack_time = time.time()
            self.gate.acknowledge(number)
            if not self.in_sync and self._buffer is None and number >= self.gate.last:
                self.in_sync = True
                log.warning(
                    "replication: standby %s in sync at batch %d", self.standby_node, number
                )
                self.on_in_sync()
        elif kind is FrameType.PING:
            pass
        else:
            raise ReplicationProtocolError(f"unexpected {kind.name} from the standby")

    def _lost(self, link: FrameLink, reason: str) -> None:
        if link is self.link:
            self._drop(reason)

    def _drop(self, reason: str) -> None:
        link, self.link = self.link, None
        self._shipping = False
        self._buffer = None
        self.in_sync = False
        for task in (self._task, self._pinger):
            if task is not None:
                task.cancel()
        if link is not None:
            link.on_lost = None
            link.abort()
        log.warning("replication: standby %s lost: %s", self.standby_node, reason)
        self.on_standby_lost(reason)

    def close(self) -> None:
        """Detach any standby and stop tapping the store."""
        if self.link is not None:
            link, self.link = self.link, None
            link.on_lost = None
            link.abort()
        self._shipping = False
        for task in (self._task, self._pinger):
            if task is not None:
                task.cancel()
