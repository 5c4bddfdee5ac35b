"""One framed connection of the replication port (either end), over asyncio.

`FrameLink` is the thin asyncio shell around `codec.FrameDecoder`: bytes in,
frames out to a handler; frames out with back-pressure (`drain()` waits
while the transport's buffer is above its high-water mark); the time of the
last frame received, for keep-alives; one `closed` future. A frame that does
not decode closes the connection (and is logged); the handler is not called
for it. `connect` opens a client link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, cast

from moorage.storage.replication.codec import (
    NEED_DATA,
    FrameDecoder,
    FrameType,
    ReplicationProtocolError,
    decode_json,
    encode_json,
)

__all__ = ["FrameHandler", "FrameLink", "connect", "request", "split_address"]

log = logging.getLogger("moorage.replication")

FrameHandler = Callable[["FrameLink", FrameType, bytes], None]


class FrameLink(asyncio.Protocol):
    """A framed replication-port connection (see the module docs)."""

    def __init__(self, handler: FrameHandler | None = None) -> None:
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.decoder = FrameDecoder()
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.closed: asyncio.Future[None] = loop.create_future()
        self.last_received = loop.time()
        self.on_lost: Callable[[FrameLink], None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._inbox: asyncio.Queue[tuple[FrameType, bytes]] | None = None

    # -- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    def data_received(self, data: bytes) -> None:
        self.last_received = self.loop.time()
        try:
            self.decoder.receive_data(data)
            while not self.is_closed:
                event = self.decoder.next_event()
                if event is NEED_DATA or event is None:
                    break
                assert isinstance(event, tuple)
                self._dispatch(*event)
        except ReplicationProtocolError as e:
            log.warning("replication: closing %s: %s", self.peer, e)
            self.close()

    def _dispatch(self, kind: FrameType, payload: bytes) -> None:
        if self._inbox is not None:
            self._inbox.put_nowait((kind, payload))
        elif self.handler is not None:
            self.handler(self, kind, payload)

    def eof_received(self) -> bool | None:
        return None  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()
        if not self.closed.done():
            self.closed.set_result(None)
        if self.on_lost is not None:
            on_lost, self.on_lost = self.on_lost, None
            on_lost(self)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- use -------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def send(self, frame: bytes) -> None:
        """Queue a frame (dropped once the link is closing)."""
        if not self.is_closed:
            assert self.transport is not None
            self.transport.write(frame)

    async def drain(self) -> None:
        """Wait while the transport's buffer is full."""
        await self._writable.wait()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def next_frame(self, within: float) -> tuple[FrameType, bytes]:
        """The next frame, for request/response use (the handler is bypassed).

        Raises ConnectionError when the link closes first, TimeoutError.
        """
        if self._inbox is None:
            self._inbox = asyncio.Queue()
        getter: asyncio.Future[Any] = asyncio.ensure_future(self._inbox.get())
        closed: asyncio.Future[Any] = self.closed
        try:
            done, _ = await asyncio.wait(
                {getter, closed}, timeout=within, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not getter.done():
                getter.cancel()
        if getter in done:
            frame: tuple[FrameType, bytes] = getter.result()
            return frame
        if self.closed.done():
            raise ConnectionError("replication link closed")
        raise TimeoutError("no answer on the replication link")


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) -> (host, port). Raises ValueError."""
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


async def connect(address: str, handler: FrameHandler | None, within: float) -> FrameLink:
    """A client link to `address` (HOST:PORT). Raises OSError, TimeoutError, ValueError."""
    host, port = split_address(address)
    loop = asyncio.get_running_loop()
    _, link = await asyncio.wait_for(
        loop.create_connection(lambda: FrameLink(handler), host, port), within
    )
    return link


async def request(address: str, message: dict[str, Any], within: float) -> dict[str, Any]:
    """Send one REQUEST to `address` and return its RESPONSE (a JSON object).

    Raises OSError, ConnectionError, TimeoutError or ReplicationProtocolError.
    """
    link = await connect(address, None, within)
    try:
        link.send(encode_json(FrameType.REQUEST, message))
        kind, payload = await link.next_frame(within)
        if kind is not FrameType.RESPONSE:
            raise ReplicationProtocolError(f"expected RESPONSE, got {kind.name}")
        return decode_json(payload)
    finally:
        with contextlib.suppress(Exception):
            link.close()
