"""The connection benchmark's AMQP 0-9-1 client: a raw, pipelined handshake.

Why it is built this way
------------------------
``moorage bench conn`` opens thousands of connections and measures how fast the
*broker* accepts them, so the client must cost less per connection than the
broker does.  The general client (:class:`bench.amqp_client.RawConnection`) decodes
every method with pamqp and waits on a future per round trip; opening 5,000
connections with it used as much CPU as the wall time of the run.  This one:

* writes the protocol header on ``connection_made`` and, once ``connection.start``
  is in, ``start-ok``, ``tune-ok``, ``connection.open`` and (optionally)
  ``channel.open`` in **one write**: two round trips instead of five.  The four
  methods are encoded once per run by the codec (:func:`handshake_frames`);
* recognises the broker's frames by type, channel and method index only, in the
  order the handshake must produce them (``start``, ``tune``, ``open-ok``,
  ``channel.open-ok``); anything else fails the connection, and a
  ``connection.close`` or ``channel.close`` is decoded (rarely, so with pamqp) for
  its reply code and text;
* resolves a single future when the handshake is done.

Pipelining ``tune-ok`` means it cannot echo the broker's ``connection.tune``.  It
sends values every broker must accept instead: ``frame_max`` 4096 (spec 4.2.3,
``frame-min-size``), ``channel_max`` 1 (the only channel it opens) and heartbeat 0
(off, as the general client).  The tune that arrives is checked against them.  The
broker reads the pipelined frames in order, so it sees exactly the method sequence
of spec 2.2.4.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Any, Final

from pamqp import commands, frame

from moorage.bench.amqp_client import CLIENT_PROPERTIES, CLOSE_TIMEOUT, CONNECT_TIMEOUT
from moorage.bench.errors import BenchError, ServerClosed
from moorage.protocols.amqp091.codec import PROTOCOL_HEADER, encode_method

CHANNEL: Final = 1
FRAME_MAX: Final = 4096  # spec 4.2.3 frame-min-size: every broker accepts it
_FRAME_HEADER: Final = struct.Struct(">BHI")  # type, channel, size
_METHOD_INDEX: Final = struct.Struct(">I")  # class id << 16 | method id
_LONG: Final = struct.Struct(">I")
_TUNE_ARGS: Final = struct.Struct(">HIH")  # channel_max, frame_max, heartbeat
_FRAME_END: Final = 0xCE
_METHOD, _HEARTBEAT = 1, 8
_MAX_FRAME_IN: Final = 1 << 20  # larger than any handshake frame: a broken peer

START: Final = commands.Connection.Start.index
TUNE: Final = commands.Connection.Tune.index
OPEN_OK: Final = commands.Connection.OpenOk.index
CHANNEL_OPEN_OK: Final = commands.Channel.OpenOk.index
CLOSE: Final = commands.Connection.Close.index
CLOSE_OK: Final = commands.Connection.CloseOk.index
CHANNEL_CLOSE: Final = commands.Channel.Close.index
_IGNORED: Final = frozenset(
    (commands.Connection.Blocked.index, commands.Connection.Unblocked.index)
)

_CLOSE_FRAME: Final = encode_method(0, commands.Connection.Close(200, "benchmark done", 0, 0))
_CLOSE_OK_FRAME: Final = encode_method(0, commands.Connection.CloseOk())
_CHANNEL_CLOSE_OK_FRAME: Final = encode_method(CHANNEL, commands.Channel.CloseOk())

# What each state waits for: (channel, method index, next state).
_WAITING, _START, _TUNE, _OPEN_OK, _CHANNEL_OK, _OPEN, _CLOSING, _DONE = range(8)
_EXPECT: Final[dict[int, tuple[int, int, int]]] = {
    _START: (0, START, _TUNE),
    _TUNE: (0, TUNE, _OPEN_OK),
    _OPEN_OK: (0, OPEN_OK, _CHANNEL_OK),
    _CHANNEL_OK: (CHANNEL, CHANNEL_OPEN_OK, _OPEN),
}


def handshake_frames(user: str, password: str, vhost: str, channel: bool = True) -> bytes:
    """start-ok, tune-ok, connection.open and channel.open, encoded by the codec once."""
    frames = [
        commands.Connection.StartOk(
            client_properties=CLIENT_PROPERTIES,
            mechanism="PLAIN",
            response=f"\0{user}\0{password}",
            locale="en_US",
        ),
        commands.Connection.TuneOk(channel_max=CHANNEL, frame_max=FRAME_MAX, heartbeat=0),
        commands.Connection.Open(virtual_host=vhost),
    ]
    out = b"".join(encode_method(0, method) for method in frames)
    if channel:
        out += encode_method(CHANNEL, commands.Channel.Open())
    return out


def offers_plain(payload: bytes) -> bool:
    """Does a connection.start payload (method index first) offer AMQP 0-9 and PLAIN?

    Raises BenchError when the payload is too short for its own lengths.
    """
    if len(payload) < 14 or payload[4] != 0 or payload[5] != 9:
        return False
    at = 10 + _LONG.unpack_from(payload, 6)[0]  # past server-properties
    if at + 4 > len(payload):
        raise BenchError("malformed connection.start")
    end = at + 4 + _LONG.unpack_from(payload, at)[0]
    if end > len(payload):
        raise BenchError("malformed connection.start")
    return b"PLAIN" in payload[at + 4 : end].split()


class PipelinedConnection(asyncio.Protocol):
    """One idle AMQP connection (with channel 1 open unless ``channel`` is False).

    Use :meth:`open`; ``ready`` resolves with the connection once the broker has
    answered ``connection.open-ok`` (and ``channel.open-ok``).
    """

    def __init__(self, label: str, pipelined: bytes, channel: bool, on_failure: Any) -> None:
        self.label = label
        self.transport: asyncio.Transport | None = None
        self.error: BaseException | None = None
        self.ready: asyncio.Future[PipelinedConnection] = asyncio.get_running_loop().create_future()
        self._pipelined = pipelined
        self._last_state = _CHANNEL_OK if channel else _OPEN_OK
        self._state = _WAITING
        self._buf = b""
        self._on_failure = on_failure
        self._close_ok: asyncio.Future[None] | None = None
        self._lost: asyncio.Future[None] | None = None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        label: str,
        pipelined: bytes,
        *,
        channel: bool = True,
        on_failure: Any = None,
    ) -> PipelinedConnection:
        """TCP connect and handshake within CONNECT_TIMEOUT seconds; BenchError otherwise.

        ``pipelined`` is :func:`handshake_frames` (with a channel.open iff ``channel``).
        """
        loop = asyncio.get_running_loop()
        conn: PipelinedConnection | None = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, conn = await loop.create_connection(
                    lambda: cls(label, pipelined, channel, on_failure), host, port
                )
                return await conn.ready
        except OSError as e:
            raise BenchError(f"{label}: cannot connect to {host}:{port}: {e}") from e
        except TimeoutError as e:
            if conn is not None:
                conn.ready.cancel()
                conn._fail(ServerClosed(f"{label}: handshake timed out"))
            raise BenchError(f"{label}: no AMQP handshake within {CONNECT_TIMEOUT:g}s") from e

    async def close(self) -> None:
        """connection.close, wait (bounded) for close-ok, drop the socket; never raises."""
        transport = self.transport
        if transport is None:
            return
        loop = asyncio.get_running_loop()
        self._lost = loop.create_future()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                if self.error is None and self._state == _OPEN:
                    self._state = _CLOSING
                    self._close_ok = loop.create_future()
                    transport.write(_CLOSE_FRAME)
                    await self._close_ok
                self._state = _DONE
                transport.close()
                await self._lost

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        # Both loops set TCP_NODELAY on TCP transports themselves.
        self.transport = transport  # type: ignore[assignment]
        self._state = _START
        transport.write(PROTOCOL_HEADER)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        pos, size = 0, len(buf)
        try:
            while size - pos >= 7:
                kind, channel, length = _FRAME_HEADER.unpack_from(buf, pos)
                if length > _MAX_FRAME_IN:
                    raise BenchError(f"frame of {length} octets")
                end = pos + 7 + length  # the frame-end octet
                if end >= size:
                    break
                if buf[end] != _FRAME_END:
                    raise BenchError("frame without frame-end octet")
                if kind == _METHOD and length >= 4:
                    self._on_method(channel, buf, pos + 7, end)
                elif kind != _HEARTBEAT:
                    raise BenchError(f"unexpected frame type {kind}")
                pos = end + 1
        except BenchError as e:
            self._fail(ServerClosed(f"{self.label}: {e}"))
            return
        self._buf = buf[pos:] if pos < size else b""

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state != _DONE:
            why = f"{exc}" if exc else "closed by the broker"
            self._fail(ServerClosed(f"{self.label}: connection lost ({why})"))
        self.transport = None
        for waiter in (self._close_ok, self._lost):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    # -- frames ------------------------------------------------------------------------------

    def _on_method(self, channel: int, buf: bytes, at: int, end: int) -> None:
        """One method frame whose payload is ``buf[at:end]``; BenchError if it is wrong."""
        index = _METHOD_INDEX.unpack_from(buf, at)[0]
        state = self._state
        expect = _EXPECT.get(state)
        if expect is not None and index == expect[1] and channel == expect[0]:
            if index == START:
                if not offers_plain(buf[at:end]):
                    raise BenchError("broker offers no AMQP 0-9-1 PLAIN login")
                assert self.transport is not None
                self.transport.write(self._pipelined)
            elif index == TUNE:
                frame_max = _TUNE_ARGS.unpack_from(buf, at + 4)[1]
                if frame_max and frame_max < FRAME_MAX:
                    raise BenchError(f"broker's frame_max {frame_max} is below {FRAME_MAX}")
            if state == self._last_state:
                self._state = _OPEN
                self.ready.set_result(self)
            else:
                self._state = expect[2]
        elif index == CLOSE_OK and state == _CLOSING:
            self._state = _DONE
            if self._close_ok is not None and not self._close_ok.done():
                self._close_ok.set_result(None)
        elif index in (CLOSE, CHANNEL_CLOSE):
            assert self.transport is not None
            self.transport.write(_CLOSE_OK_FRAME if index == CLOSE else _CHANNEL_CLOSE_OK_FRAME)
            method: Any = frame.unmarshal(buf[at - 7 : end + 1])[2]
            what = "connection" if index == CLOSE else "channel"
            raise BenchError(f"broker closed the {what}: {method.reply_code} {method.reply_text}")
        elif index not in _IGNORED:
            raise BenchError(
                f"unexpected method {index >> 16}.{index & 0xFFFF} on channel {channel}"
            )

    def _fail(self, error: BaseException) -> None:
        """Record the first error: the handshake fails, or the run hears of it."""
        if self.error is not None:
            return
        self.error = error
        closing = self._state in (_CLOSING, _DONE)
        self._state = _DONE
        if not self.ready.done():
            self.ready.set_exception(error)
        elif not closing and self._on_failure is not None:
            self._on_failure(error)
        if self.transport is not None:
            self.transport.close()
        for waiter in (self._close_ok, self._lost):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
