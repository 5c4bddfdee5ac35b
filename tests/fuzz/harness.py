"""Feeding mutated frame sequences to a codec, or to a live broker over sockets.

`decode(protocol, chunks)` runs a fresh server-side codec over the chunks
and EOF, and lets only the protocol's own error escape (h11's fuzz rule:
only RemoteProtocolError may leave the parser). `run_live(...)` sends each
sequence on its own connection, concurrently, and reads what the broker
answers until it closes the connection or stays silent for a moment; the
connection must end in one of the protocol's ways (an error and a close,
or being served), never a reset caused by a crash.

Run length: `MOORAGE_FUZZ_FRAMES` mutated frames per protocol and per mode
(codec, live); `MOORAGE_FUZZ_SEED` fixes the first seed (default: random,
printed so that a failure can be replayed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from moorage.protocols.amqp091 import codec as amqp_codec
from moorage.protocols.amqp091.events import NEED_DATA as AMQP_NEED_DATA
from moorage.protocols.amqp091.events import FrameError
from moorage.protocols.mqtt import codec as mqtt_codec
from moorage.protocols.mqtt.packets import NEED_DATA as MQTT_NEED_DATA
from moorage.protocols.mqtt.packets import ConnectionClosed as MqttClosed
from moorage.protocols.mqtt.packets import ProtocolError as MqttError
from moorage.protocols.stomp.codec import StompCodec
from moorage.protocols.stomp.frames import NEED_DATA as STOMP_NEED_DATA
from moorage.protocols.stomp.frames import ConnectionClosed as StompClosed
from moorage.protocols.stomp.frames import ProtocolError as StompError
from tests.fuzz.corpus import CORPORA
from tests.fuzz.mutate import Mutator

FRAMES = int(os.environ.get("MOORAGE_FUZZ_FRAMES", "2000"))
SEED = int(os.environ.get("MOORAGE_FUZZ_SEED", str(random.randrange(1 << 32))))
MAX_EVENTS = 100_000  # events one sequence may decode to: more is a loop in the codec


def sequences(protocol: str, frames: int, seed: int) -> Iterator[tuple[int, list[bytes]]]:
    """(seed, mutated sequence) until `frames` mutated frames have been produced."""
    corpora = CORPORA[protocol]
    produced = 0
    n = 0
    while produced < frames:
        case_seed = seed + n
        mutator = Mutator(case_seed)
        sequence = mutator.mutate(list(mutator.random.choice(corpora)))
        produced += len(sequence)
        n += 1
        yield case_seed, sequence


def chunked(sequence: list[bytes], rng: random.Random) -> list[bytes]:
    """The sequence's bytes cut at random points (a third of the time frame by frame)."""
    data = b"".join(sequence)
    if len(data) < 2:
        return [data] if data else []
    if rng.random() < 0.33:
        return [f for f in sequence if f]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 8))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def _drain_amqp(codec: amqp_codec.Connection) -> None:
    for _ in range(MAX_EVENTS):
        if codec.next_event() is AMQP_NEED_DATA:
            return
    raise AssertionError("the AMQP codec never asked for more data")


def _drain_mqtt(codec: mqtt_codec.Connection) -> bool:
    for _ in range(MAX_EVENTS):
        event = codec.next_event()
        if event is MQTT_NEED_DATA:
            return False
        if isinstance(event, MqttClosed):
            return True
    raise AssertionError("the MQTT codec never asked for more data")


def _drain_stomp(codec: StompCodec) -> bool:
    for _ in range(MAX_EVENTS):
        event = codec.next_event()
        if event is STOMP_NEED_DATA:
            return False
        if isinstance(event, StompClosed):
            return True
    raise AssertionError("the STOMP codec never asked for more data")


def decode(protocol: str, chunks: list[bytes]) -> str:
    """Feed a fresh server codec; return "ok" or "error" (the protocol's own error).

    Any other exception propagates: that is a bug the fuzzer found.
    """
    try:
        if protocol == "amqp":
            amqp = amqp_codec.Connection(amqp_codec.Role.SERVER)
            for chunk in [*chunks, b""]:
                amqp.receive_data(chunk)
                _drain_amqp(amqp)
        elif protocol == "mqtt":
            mqtt = mqtt_codec.Connection(mqtt_codec.Role.SERVER)
            for chunk in [*chunks, b""]:
                mqtt.receive_data(chunk)
                if _drain_mqtt(mqtt):
                    break
        else:
            stomp = StompCodec()
            for chunk in [*chunks, b""]:
                stomp.receive_data(chunk)
                if _drain_stomp(stomp):
                    break
    except (FrameError, MqttError, StompError):
        return "error"
    return "ok"


@dataclass
class LiveResult:
    connections: int = 0
    frames: int = 0
    closed_by_broker: int = 0
    left_open: int = 0
    reset: int = 0
    failures: list[str] = field(default_factory=list)


async def _one(
    port: int, case_seed: int, sequence: list[bytes], result: LiveResult, idle: float
) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
    except (OSError, TimeoutError) as e:
        result.failures.append(f"seed {case_seed}: cannot connect: {e!r}")
        return
    rng = random.Random(case_seed)
    try:
        for chunk in chunked(sequence, rng):
            writer.write(chunk)
        await writer.drain()
        while True:
            data = await asyncio.wait_for(reader.read(65536), idle)
            if not data:
                result.closed_by_broker += 1
                break
    except TimeoutError:
        result.left_open += 1  # waiting for more (a truncated frame, an open session)
    except (ConnectionResetError, BrokenPipeError):
        # The broker closes after its error answer; bytes we sent after that
        # make the kernel answer with a reset. Counted, not a failure.
        result.reset += 1
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await writer.wait_closed()


async def run_live(
    protocol: str, port: int, frames: int, seed: int, concurrency: int = 32, idle: float = 0.3
) -> LiveResult:
    """Send `frames` mutated frames of `protocol`, one sequence per connection."""
    result = LiveResult()
    limit = asyncio.Semaphore(concurrency)

    async def bounded(case_seed: int, sequence: list[bytes]) -> None:
        async with limit:
            await _one(port, case_seed, sequence, result, idle)

    tasks = []
    for case_seed, sequence in sequences(protocol, frames, seed):
        result.connections += 1
        result.frames += len(sequence)
        tasks.append(asyncio.ensure_future(bounded(case_seed, sequence)))
    await asyncio.gather(*tasks)
    return result
