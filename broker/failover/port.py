"""The replication port every node of a pair listens on.

One `FrameLink` per connection; the first frame decides what it is:

- HELLO from a standby: on a primary the link is handed to its
  `ReplicationSource` (which then owns it); a standby or a node changing
  roles answers REFUSE, naming the primary it follows, and closes.
- REQUEST (JSON ``{"op": ...}``) from the operator (`moorage promote`,
  `moorage failover-status`) or the peer starting up: ``status`` answers the
  node's `status()`; ``promote`` (``force`` optional) answers once the
  promotion is done or refused.
- anything else is a protocol error: the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Protocol

from moorage.storage.replication.codec import (
    FrameType,
    ReplicationProtocolError,
    decode_json,
    encode_json,
)
from moorage.storage.replication.link import FrameLink
from moorage.storage.replication.source import ReplicationSource

__all__ = ["PortOwner", "ReplicationPort"]

log = logging.getLogger("moorage.failover")


class PortOwner(Protocol):
    """What the port needs of its node (`node.FailoverNode`)."""

    peer: str

    @property
    def serving_epoch(self) -> int | None:
        """The epoch this node serves as primary in; None when it is no primary."""

    @property
    def source(self) -> ReplicationSource | None: ...
    @property
    def role_name(self) -> str: ...
    def status(self) -> dict[str, Any]: ...
    async def promote(self, *, force: bool) -> dict[str, Any]: ...
    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[Any]: ...


class ReplicationPort:
    """The listening side of the replication port for one node (module docs)."""

    def __init__(self, node: PortOwner) -> None:
        self.node = node
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port. Raises OSError."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: FrameLink(self._first_frame), host, port)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def _first_frame(self, link: FrameLink, kind: FrameType, payload: bytes) -> None:
        node = self.node
        if kind is FrameType.HELLO:
            hello = decode_json(payload)
            serving, source = node.serving_epoch, node.source
            if serving is not None and source is not None:
                epoch = hello.get("epoch", 0)
                if isinstance(epoch, int) and epoch > serving:
                    log.error(
                        "failover: standby %s has epoch %d, newer than ours (%d): refused",
                        hello.get("node"),
                        epoch,
                        serving,
                    )
                    self._refuse(link, "the standby's epoch is newer than this primary's")
                    return
                source.attach(link, hello)
            else:
                self._refuse(link, f"not the primary (this node is {node.role_name})")
        elif kind is FrameType.REQUEST:
            link.handler = _closing
            node.spawn(self._answer(link, decode_json(payload)))
        else:
            raise ReplicationProtocolError(f"unexpected first frame {kind.name}")

    def _refuse(self, link: FrameLink, reason: str) -> None:
        link.send(encode_json(FrameType.REFUSE, {"reason": reason, "primary": self.node.peer}))
        link.close()

    async def _answer(self, link: FrameLink, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "status":
            answer = {"ok": True, **self.node.status()}
        elif op == "promote":
            answer = await self.node.promote(force=bool(message.get("force")))
        else:
            answer = {"ok": False, "reason": f"unknown op {op!r}"}
        link.send(encode_json(FrameType.RESPONSE, answer))
        link.close()


def _closing(link: FrameLink, kind: FrameType, payload: bytes) -> None:
    """After a REQUEST only the answer is expected: more input closes."""
    raise ReplicationProtocolError(f"unexpected {kind.name} after a request")
