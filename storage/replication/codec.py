"""The replication port's wire format: length-prefixed frames, sans-IO.

Every frame is::

    length: uint32 big-endian (bytes after this field, >= 1, <= MAX_FRAME)
    type:   uint8 (`FrameType`)
    payload: length - 1 bytes

Control frames (`HELLO`, `WELCOME`, `REFUSE`, `REQUEST`, `RESPONSE`) carry
one UTF-8 JSON object. `BATCH` carries ``epoch: uint64, number: uint64``
then the batch's operations (`encode_batch`); `ACK` one ``uint64`` (the
highest batch number the standby has committed); `SNAPSHOT` a chunk of the
primary's database file, `SNAPSHOT_END` nothing; `PING` nothing.

A conversation (primary on the left)::

    <- HELLO {"node", "epoch"}            standby introduces itself
    -> WELCOME {"epoch", "node", "base", "clients"} | REFUSE {"reason", ...}
    -> SNAPSHOT* SNAPSHOT_END             the database as of batch `base`
    <- ACK base                           installed and fsynced
    -> BATCH (epoch, base+1, ops) ...     every batch after it, in order
    <- ACK n ...                          committed on the standby's disk
    -> PING / <- ACK                      keep-alives both ways

`REQUEST`/`RESPONSE` carry the operator's and the witness's questions
(`{"op": "promote"}`, `{"op": "status"}`, ...; see `moorage.broker.failover`).

Batch operations are pickled with a restricted unpickler: the only global
it resolves is `ExpireResult` (the writer's out-parameter of an `expire`,
which travels as a fresh, empty one); anything else is a protocol error.
Malformed input of any kind raises `ReplicationProtocolError` and the
connection is closed; nothing is applied from a frame that did not decode.
"""

from __future__ import annotations

import enum
import io
import json
import pickle
import struct
from typing import Any, Final

from moorage.storage.sqlite.batch import Segment
from moorage.storage.sqlite.statements import ExpireResult, Op

__all__ = [
    "MAX_FRAME",
    "NEED_DATA",
    "FrameDecoder",
    "FrameType",
    "ReplicationProtocolError",
    "decode_ack",
    "decode_batch",
    "decode_json",
    "encode_ack",
    "encode_batch",
    "encode_frame",
    "encode_json",
]

MAX_FRAME: Final = 1 << 30
"""Largest frame accepted (1 GiB): a batch may carry several maximum-size messages."""

_HEADER: Final = struct.Struct("!IB")
_BATCH_HEAD: Final = struct.Struct("!QQ")
_ACK: Final = struct.Struct("!Q")


class FrameType(enum.IntEnum):
    """Frame types of the replication port (see the module docs)."""

    HELLO = 1
    WELCOME = 2
    REFUSE = 3
    SNAPSHOT = 4
    SNAPSHOT_END = 5
    BATCH = 6
    ACK = 7
    PING = 8
    REQUEST = 9
    RESPONSE = 10


JSON_FRAMES: Final = frozenset(
    (FrameType.HELLO, FrameType.WELCOME, FrameType.REFUSE, FrameType.REQUEST, FrameType.RESPONSE)
)


class ReplicationProtocolError(Exception):
    """The peer sent something that is not a valid frame; close the connection."""


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


def encode_frame(kind: FrameType, payload: bytes = b"") -> bytes:
    """One frame on the wire."""
    return _HEADER.pack(len(payload) + 1, kind) + payload


def encode_json(kind: FrameType, obj: dict[str, Any]) -> bytes:
    """A control frame carrying `obj` as JSON."""
    return encode_frame(kind, json.dumps(obj, separators=(",", ":")).encode())


def decode_json(payload: bytes) -> dict[str, Any]:
    """The JSON object of a control frame. Raises ReplicationProtocolError."""
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ReplicationProtocolError(f"control frame is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ReplicationProtocolError("control frame is not a JSON object")
    return obj


def encode_ack(number: int) -> bytes:
    return encode_frame(FrameType.ACK, _ACK.pack(number))


def decode_ack(payload: bytes) -> int:
    """The batch number of an ACK. Raises ReplicationProtocolError."""
    if len(payload) != _ACK.size:
        raise ReplicationProtocolError(f"ACK of {len(payload)} bytes")
    number: int = _ACK.unpack(payload)[0]
    return number


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, ExpireResult):  # an out-parameter: a fresh one on the other side
            return (ExpireResult, ())
        return NotImplemented


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name == "ExpireResult" and module == ExpireResult.__module__:
            return ExpireResult
        raise ReplicationProtocolError(f"batch refers to {module}.{name}")


def encode_batch(epoch: int, number: int, segments: list[Segment]) -> bytes:
    """A BATCH frame: the live operations and the delivery marks of each segment."""
    body = [
        ([op for op in segment.ops if op is not None], list(segment.marks.items()))
        for segment in segments
    ]
    buffer = io.BytesIO()
    buffer.write(_BATCH_HEAD.pack(epoch, number))
    _Pickler(buffer, protocol=5).dump(body)
    return encode_frame(FrameType.BATCH, buffer.getvalue())


def decode_batch(payload: bytes) -> tuple[int, int, list[Segment]]:
    """(epoch, number, segments) of a BATCH payload. Raises ReplicationProtocolError."""
    if len(payload) < _BATCH_HEAD.size:
        raise ReplicationProtocolError("BATCH too short")
    epoch, number = _BATCH_HEAD.unpack_from(payload)
    try:
        body = _Unpickler(io.BytesIO(payload[_BATCH_HEAD.size :])).load()
    except ReplicationProtocolError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to decode is the peer's
        raise ReplicationProtocolError(f"BATCH does not decode: {type(e).__name__}") from None
    segments: list[Segment] = []
    try:
        for ops, marks in body:
            checked: list[Op | None] = []
            for kind, params in ops:
                if type(kind) is not int or type(params) is not tuple:
                    raise ReplicationProtocolError("BATCH operation is not (int, tuple)")
                checked.append((kind, params))
            segment_marks: dict[tuple[int, int], int] = {}
            for (queue_id, seq), count in marks:
                segment_marks[(int(queue_id), int(seq))] = int(count)
            segments.append(Segment(checked, segment_marks))
    except ReplicationProtocolError:
        raise
    except (TypeError, ValueError) as e:
        raise ReplicationProtocolError(f"BATCH has the wrong shape: {e}") from None
    return epoch, number, segments


class FrameDecoder:
    """Bytes in, `(FrameType, payload)` out; `receive_data(b"")` is EOF.

    `next_event()` returns a frame, `NEED_DATA`, or None after EOF. Raises
    ReplicationProtocolError on an unknown type, a zero or oversized length,
    or EOF inside a frame; after that the decoder accepts nothing more.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._eof = False
        self._failed = False

    def receive_data(self, data: bytes) -> None:
        if self._failed:
            raise ReplicationProtocolError("decoder already failed")
        if not data:
            self._eof = True
        else:
            self._buffer += data

    def next_event(self) -> tuple[FrameType, bytes] | _NeedData | None:
        buffer = self._buffer
        if len(buffer) < _HEADER.size:
            return self._short()
        length, kind = _HEADER.unpack_from(buffer)
        if length < 1 or length > self.max_frame:
            self._failed = True
            raise ReplicationProtocolError(f"frame length {length} out of range")
        try:
            frame_type = FrameType(kind)
        except ValueError:
            self._failed = True
            raise ReplicationProtocolError(f"unknown frame type {kind}") from None
        end = 4 + length
        if len(buffer) < end:
            return self._short()
        payload = bytes(buffer[_HEADER.size : end])
        del buffer[:end]
        return frame_type, payload

    def _short(self) -> _NeedData | None:
        if self._eof:
            if self._buffer:
                self._failed = True
                raise ReplicationProtocolError("connection closed inside a frame")
            return None
        return NEED_DATA
