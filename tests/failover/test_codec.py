"""The replication port's framing and batch encoding, with plain bytes."""

from __future__ import annotations

import contextlib
import pickle
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moorage.storage.replication.codec import (
    NEED_DATA,
    FrameDecoder,
    FrameType,
    ReplicationProtocolError,
    decode_ack,
    decode_batch,
    decode_json,
    encode_ack,
    encode_batch,
    encode_frame,
    encode_json,
)
from moorage.storage.sqlite.batch import Segment
from moorage.storage.sqlite.statements import ENQUEUE, EXPIRE, PUT_MESSAGE, ExpireResult

CASES = [
    (FrameType.PING, b"", b"\x00\x00\x00\x01\x08"),
    (FrameType.ACK, struct.pack("!Q", 7), b"\x00\x00\x00\x09\x07" + b"\x00" * 7 + b"\x07"),
    (FrameType.SNAPSHOT, b"abc", b"\x00\x00\x00\x04\x04abc"),
]


def decode_chunks(chunks: list[bytes]) -> list[tuple[FrameType, bytes]]:
    decoder = FrameDecoder()
    frames = []
    for chunk in chunks:
        decoder.receive_data(chunk)
        while True:
            event = decoder.next_event()
            if event is NEED_DATA or event is None:
                break
            frames.append(event)
    return frames


@pytest.mark.parametrize(("kind", "payload", "wire"), CASES)
def test_encode(kind, payload, wire):
    assert encode_frame(kind, payload) == wire


@pytest.mark.parametrize(("kind", "payload", "wire"), CASES)
def test_decode_in_any_chunking(kind, payload, wire):
    assert decode_chunks([wire]) == [(kind, payload)]
    assert decode_chunks([wire[i : i + 1] for i in range(len(wire))]) == [(kind, payload)]
    assert decode_chunks([wire + encode_frame(FrameType.PING)]) == [
        (kind, payload),
        (FrameType.PING, b""),
    ]


def test_ack_and_json_round_trip():
    assert decode_ack(decode_chunks([encode_ack(2**40)])[0][1]) == 2**40
    frame = encode_json(FrameType.HELLO, {"node": "n:1", "epoch": 3})
    assert decode_json(decode_chunks([frame])[0][1]) == {"node": "n:1", "epoch": 3}


@pytest.mark.parametrize(
    "wire",
    [
        b"\x00\x00\x00\x00\x08",  # zero length
        b"\x7f\xff\xff\xff\x06",  # oversized
        b"\x00\x00\x00\x01\xee",  # unknown type
    ],
)
def test_bad_headers_are_protocol_errors(wire):
    with pytest.raises(ReplicationProtocolError):
        decode_chunks([wire])


def test_eof_inside_a_frame_is_a_protocol_error():
    with pytest.raises(ReplicationProtocolError):
        decode_chunks([b"\x00\x00\x00\x05\x04ab", b""])
    assert decode_chunks([encode_frame(FrameType.PING), b""]) == [(FrameType.PING, b"")]


def test_a_batch_round_trips_without_cancelled_ops_and_with_a_fresh_expire_result():
    result = ExpireResult(deleted=5)
    segments = [
        Segment(
            [(PUT_MESSAGE, (1, b"body")), None, (ENQUEUE, (1, 1, 1, 0.0))],
            {(1, 1): 2},
        ),
        Segment([(EXPIRE, (1, 12.5, 100, result))], {}),
    ]
    frame = encode_batch(4, 17, segments)
    [(kind, payload)] = decode_chunks([frame])
    assert kind is FrameType.BATCH
    epoch, number, decoded = decode_batch(payload)
    assert (epoch, number) == (4, 17)
    assert decoded[0].ops == [(PUT_MESSAGE, (1, b"body")), (ENQUEUE, (1, 1, 1, 0.0))]
    assert decoded[0].marks == {(1, 1): 2}
    kind_, params = decoded[1].ops[0]
    assert kind_ == EXPIRE
    assert params[:3] == (1, 12.5, 100)
    assert isinstance(params[3], ExpireResult)
    assert params[3].deleted == 0


def test_a_batch_naming_any_other_global_is_refused():
    body = pickle.dumps([([(1, (print,))], [])])
    with pytest.raises(ReplicationProtocolError, match=r"builtins\.print"):
        decode_batch(struct.pack("!QQ", 1, 1) + body)


@pytest.mark.parametrize(
    "body",
    [
        pickle.dumps("not a list"),
        pickle.dumps([([("kind", ())], [])]),
        pickle.dumps([([(1, [1])], [])]),
        pickle.dumps([([], [((1,), 2)])]),
        b"\x80\x05garbage",
    ],
)
def test_malformed_batches_are_protocol_errors(body):
    with pytest.raises(ReplicationProtocolError):
        decode_batch(struct.pack("!QQ", 1, 1) + body)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_raises_only_protocol_error(data):
    with contextlib.suppress(ReplicationProtocolError):
        for kind, payload in decode_chunks([data, b""]):
            if kind is FrameType.BATCH:
                decode_batch(payload)
            elif kind is FrameType.ACK:
                decode_ack(payload)
            elif kind in (FrameType.HELLO, FrameType.REQUEST):
                decode_json(payload)
