"""kill -9 at random moments loses no confirmed message and no declared queue.

Each cycle declares a fresh durable queue and publishes persistent messages
with publisher confirms until the broker is SIGKILLed at a random moment.
After every restart, every queue declared so far is checked: each confirmed
message is there exactly once, in order; nothing that was never published
appears; and messages delivered before an earlier crash come back flagged
`redelivered`.
"""

from __future__ import annotations

import os
import random
import threading

import pika
import pika.exceptions
import pytest

from tests.durability.broker_process import BrokerProcess

CYCLES = int(os.environ.get("MOORAGE_CRASH_CYCLES", "6"))
PERSISTENT = pika.BasicProperties(delivery_mode=2)


def publish_until_killed(
    process: BrokerProcess, queue: str, kill_after: float, after_confirms: int = 0
) -> tuple[bool, list[int]]:
    """Declare `queue`, publish with confirms until the broker dies; (declared, confirmed).

    The SIGKILL comes `kill_after` seconds after the connection opens, or, with
    `after_confirms` > 0, that long after the `after_confirms`-th confirm: a
    moment tied to progress, so that a slow machine still reaches it.
    """
    declared, confirmed = False, []
    killer = threading.Timer(kill_after, process.kill)
    connection = pika.BlockingConnection(process.params)
    if not after_confirms:
        killer.start()
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(queue, durable=True)
        declared = True
        for i in range(1_000_000):
            channel.basic_publish("", queue, f"{queue}:{i}".encode(), PERSISTENT)
            confirmed.append(i)  # basic_publish returns once the broker acked it
            if len(confirmed) == after_confirms:
                killer.start()  # publishing goes on while the timer runs
    except (pika.exceptions.AMQPError, OSError):
        pass
    finally:
        if killer.ident is not None:  # started
            killer.join()
        process.kill()
    return declared, confirmed


def read_queue(channel, queue: str) -> list[tuple[int, bool]]:
    """Every message of `queue` as (index, redelivered), without acking any."""
    count = channel.queue_declare(queue, durable=True, passive=True).method.message_count
    seen: list[tuple[int, bool]] = []
    if count == 0:
        return seen
    for method, _props, body in channel.consume(queue, inactivity_timeout=5):
        if method is None:
            break
        name, index = body.decode().rsplit(":", 1)
        assert name == queue, f"message {body!r} found in queue {queue}"
        seen.append((int(index), method.redelivered))
        if len(seen) == count:
            break
    channel.cancel()
    return seen


@pytest.mark.timeout(240)
def test_kill_9_loses_no_confirmed_message(broker_process: BrokerProcess):
    seed = int(os.environ.get("MOORAGE_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    confirmed: dict[str, list[int]] = {}
    declared: set[str] = set()
    delivered_before: dict[str, set[int]] = {}
    reads: dict[str, set[int]] = {}
    broker_process.start()
    for cycle in range(CYCLES):
        queue = f"crash-{cycle}"
        kill_after = rng.choice([0.0, 0.01, rng.uniform(0.02, 0.8)])
        # Every other cycle kills some time after a random number of confirms
        # (so some cycles confirm something however slow the machine is); the
        # others at a moment counted from the connection (handshake, declare).
        after_confirms = rng.randrange(1, 2000) if cycle % 2 else 0
        ok, confirmed[queue] = publish_until_killed(
            broker_process, queue, kill_after, after_confirms
        )
        if ok:
            declared.add(queue)
            # the declare-ok came after a commit that carried the last reads' delivery marks
            delivered_before = reads
        else:
            delivered_before = {}
        reads: dict[str, set[int]] = {}
        broker_process.start()
        connection = pika.BlockingConnection(broker_process.params)
        try:
            channel = connection.channel()
            for name in sorted(confirmed):
                if name not in declared:
                    continue  # declare-ok never arrived: the queue may or may not exist
                seen = read_queue(channel, name)
                indexes = [i for i, _ in seen]
                context = f"seed={seed} cycle={cycle} queue={name}"
                assert len(indexes) == len(set(indexes)), f"duplicates after restart ({context})"
                assert indexes == sorted(indexes), f"order lost ({context})"
                missing = set(confirmed[name]) - set(indexes)
                assert not missing, f"confirmed messages lost: {sorted(missing)[:10]} ({context})"
                published_max = max(confirmed[name], default=-1) + 1
                invented = [i for i in indexes if i > published_max]
                assert not invented, f"messages never published appeared ({context})"
                not_flagged = [
                    i for i, red in seen if i in delivered_before.get(name, ()) and not red
                ]
                assert not not_flagged, (
                    f"delivered before the crash but not redelivered ({context})"
                )
                reads[name] = set(indexes)
        finally:
            connection.close()
    assert any(confirmed.values()), f"no cycle confirmed anything (seed={seed})"
