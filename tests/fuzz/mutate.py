"""Mutations of valid frame sequences: the fuzzer's moves.

`Mutator(seed).mutate(frames)` applies one to four of: bit flips,
interesting byte values, truncation (of a frame, or of the whole sequence
at a random point), splicing two frames, overwriting a length field (the
first bytes of a frame: AMQP's size, MQTT's remaining length, STOMP's
command line) with random or extreme values, STOMP `content-length` values,
repeating a frame many times, swapping or shuffling frames (out of order),
dropping frames, and inserting random bytes. Deterministic for a seed, so a
failure names the seed that reproduces it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)


class Mutator:
    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.moves: list[Callable[[list[bytes]], list[bytes]]] = [
            self.flip_bits,
            self.interesting_byte,
            self.truncate_frame,
            self.truncate_sequence,
            self.splice,
            self.length_field,
            self.content_length,
            self.repeat,
            self.swap,
            self.shuffle,
            self.drop,
            self.insert_garbage,
        ]

    def mutate(self, frames: list[bytes]) -> list[bytes]:
        """A mutated copy of `frames` (never empty)."""
        out = list(frames)
        for _ in range(self.random.randint(1, 4)):
            out = self.random.choice(self.moves)(out) or [b"\x00"]
        return out

    def _pick(self, frames: list[bytes]) -> int:
        return self.random.randrange(len(frames))

    def flip_bits(self, frames: list[bytes]) -> list[bytes]:
        i = self._pick(frames)
        data = bytearray(frames[i])
        if data:
            for _ in range(self.random.randint(1, 3)):
                data[self.random.randrange(len(data))] ^= 1 << self.random.randrange(8)
        frames[i] = bytes(data)
        return frames

    def interesting_byte(self, frames: list[bytes]) -> list[bytes]:
        i = self._pick(frames)
        data = bytearray(frames[i])
        if data:
            data[self.random.randrange(len(data))] = self.random.choice(INTERESTING)
        frames[i] = bytes(data)
        return frames

    def truncate_frame(self, frames: list[bytes]) -> list[bytes]:
        i = self._pick(frames)
        frames[i] = frames[i][: self.random.randrange(len(frames[i]) + 1)]
        return frames

    def truncate_sequence(self, frames: list[bytes]) -> list[bytes]:
        data = b"".join(frames)
        return [data[: self.random.randrange(1, len(data) + 1)]] if data else frames

    def splice(self, frames: list[bytes]) -> list[bytes]:
        a, b = frames[self._pick(frames)], frames[self._pick(frames)]
        cut_a, cut_b = self.random.randrange(len(a) + 1), self.random.randrange(len(b) + 1)
        frames.insert(self._pick(frames), a[:cut_a] + b[cut_b:])
        return frames

    def length_field(self, frames: list[bytes]) -> list[bytes]:
        i = self._pick(frames)
        data = bytearray(frames[i])
        if len(data) < 2:
            return frames
        start = self.random.randrange(min(len(data), 8))
        width = self.random.choice((1, 2, 4))
        value = self.random.choice(
            (0, 1, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, self.random.getrandbits(32))
        )
        data[start : start + width] = value.to_bytes(4, "big")[-width:]
        frames[i] = bytes(data)
        return frames

    def content_length(self, frames: list[bytes]) -> list[bytes]:
        i = self._pick(frames)
        value = self.random.choice(("0", "-1", "99999999999", "abc", "", "1" * 40))
        replaced = re.sub(rb"content-length:[^\n]*", b"content-length:" + value.encode(), frames[i])
        if replaced == frames[i] and frames[i][:1].isalpha():
            replaced = frames[i].replace(b"\n", b"\ncontent-length:" + value.encode() + b"\n", 1)
        frames[i] = replaced
        return frames

    def repeat(self, frames: list[bytes]) -> list[bytes]:
        i = self._pick(frames)
        return frames[: i + 1] + [frames[i]] * self.random.randint(1, 50) + frames[i + 1 :]

    def swap(self, frames: list[bytes]) -> list[bytes]:
        i, j = self._pick(frames), self._pick(frames)
        frames[i], frames[j] = frames[j], frames[i]
        return frames

    def shuffle(self, frames: list[bytes]) -> list[bytes]:
        head = self.random.randint(0, min(2, len(frames)))  # often keep the handshake
        rest = frames[head:]
        self.random.shuffle(rest)
        return frames[:head] + rest

    def drop(self, frames: list[bytes]) -> list[bytes]:
        del frames[self._pick(frames)]
        return frames

    def insert_garbage(self, frames: list[bytes]) -> list[bytes]:
        garbage = self.random.randbytes(self.random.randint(1, 64))
        frames.insert(self.random.randrange(len(frames) + 1), garbage)
        return frames
