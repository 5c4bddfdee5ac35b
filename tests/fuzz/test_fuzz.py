"""Fuzzing every protocol: mutated frame sequences against the codecs and a live broker.

The short run is part of the default suite (about 2,000 mutated frames per
protocol and mode, well under a minute for all three). The long run:

    MOORAGE_FUZZ_FRAMES=100000 python -m pytest tests/fuzz -p no:cacheprovider -s

(`MOORAGE_FUZZ_SEED=N` replays a run; every failure names the seed of its
case.) See `tests/fuzz/harness.py` for what is checked.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as paho
import pika
import pytest
import stomp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moorage.broker.embedded import embedded_config
from tests.fuzz.corpus import CORPORA
from tests.fuzz.harness import FRAMES, SEED, chunked, decode, run_live, sequences
from tests.helpers import RunningBroker

PROTOCOLS = ["amqp", "mqtt", "stomp"]

pytestmark = pytest.mark.timeout(120 + FRAMES // 100)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_codec_raises_only_its_protocol_error(protocol: str) -> None:
    outcomes = {"ok": 0, "error": 0}
    frames = 0
    for case_seed, sequence in sequences(protocol, FRAMES, SEED):
        frames += len(sequence)
        chunks = chunked(sequence, random.Random(case_seed))
        try:
            outcomes[decode(protocol, chunks)] += 1
        except Exception as e:  # a bug: report how to replay it
            raise AssertionError(
                f"{protocol} codec crashed on case seed {case_seed}: {e!r}\nchunks: {chunks!r}"
            ) from e
    print(f"\n{protocol} codec: {frames} mutated frames (seed {SEED}): {outcomes}")


def _served(protocol: str, running: RunningBroker) -> None:
    """A normal client of `protocol` makes a round trip."""
    port = running.daemon.ports[protocol]
    if protocol == "amqp":
        connection = pika.BlockingConnection(pika.URLParameters(running.url))
        channel = connection.channel()
        channel.queue_declare("after-fuzz", auto_delete=True)
        channel.basic_publish("", "after-fuzz", b"still served")
        deadline = time.monotonic() + 10
        body = None
        while body is None and time.monotonic() < deadline:
            _m, _p, body = channel.basic_get("after-fuzz", auto_ack=True)
        assert body == b"still served"
        connection.close()
    elif protocol == "mqtt":
        received: list[bytes] = []
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="after-fuzz")
        client.username_pw_set("guest", "guest")
        client.on_message = lambda _c, _u, m: received.append(m.payload)
        subscribed = threading.Event()
        client.on_subscribe = lambda *_args: subscribed.set()
        client.connect("127.0.0.1", port)
        client.loop_start()
        try:
            client.subscribe("after/fuzz", qos=1)
            assert subscribed.wait(10), "no SUBACK"  # the subscription exists: publish now
            client.publish("after/fuzz", b"still served", qos=1).wait_for_publish(10)
            deadline = time.monotonic() + 10
            while not received and time.monotonic() < deadline:
                time.sleep(0.05)
            assert received == [b"still served"]
        finally:
            client.disconnect()
            client.loop_stop()
    else:
        connection = stomp.Connection12([("127.0.0.1", port)])
        connection.connect("guest", "guest", wait=True)
        assert connection.is_connected()
        connection.disconnect(receipt="done")


def _client_connections(running: RunningBroker) -> int:
    return running.call(lambda: sum(c.client for c in running.core.connections))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_live_broker_survives_mutated_sequences(
    protocol: str, start_broker: Callable[..., RunningBroker]
) -> None:
    config = embedded_config(protocols=PROTOCOLS)
    config.limits.handshake_timeout = 2.0  # half-sent handshakes go sooner
    running = start_broker(config)  # the fixture fails the test on any loop error
    loop = running.loop
    assert loop is not None
    tasks_before = running.call(lambda: len(asyncio.all_tasks(loop)))
    result = asyncio.run(run_live(protocol, running.daemon.ports[protocol], FRAMES, SEED))
    print(
        f"\n{protocol} live: {result.frames} mutated frames on {result.connections} "
        f"connections (seed {SEED}): {result.closed_by_broker} closed by the broker, "
        f"{result.reset} reset after its answer, {result.left_open} left waiting"
    )
    assert not result.failures, result.failures[:5]

    _served(protocol, running)
    # every fuzzing connection is gone on the broker's side too: nothing leaks
    assert running.wait_until(lambda: _client_connections(running) == 0, timeout=30)
    assert running.wait_until(
        lambda: running.call(lambda: len(asyncio.all_tasks(loop))) <= tasks_before + 2,
        timeout=30,
    ), running.call(lambda: [repr(t) for t in asyncio.all_tasks(loop)][:10])


def test_garbage_listener_ports_stay_open() -> None:
    """The harness's own sanity check: a refused port is a failure, not a pass."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = asyncio.run(run_live("stomp", port, 20, 1))
    assert result.failures


@pytest.mark.parametrize("protocol", PROTOCOLS)
@given(data=st.binary(max_size=512), cut=st.integers(0, 512))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_codec_garbage_after_a_valid_handshake(protocol: str, data: bytes, cut: int) -> None:
    """Hypothesis's own inputs (shrunk on failure): the valid opening frames, then bytes."""
    opening = CORPORA[protocol][0][:4]
    chunks = [*opening, data[:cut], data[cut:]]
    assert decode(protocol, [c for c in chunks if c]) in {"ok", "error"}
