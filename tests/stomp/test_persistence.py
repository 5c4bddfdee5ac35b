"""STOMP persistence against a broker in a subprocess: restart and kill -9.

- a durable topic subscription collects persistent messages while its client
  is away, and still has them after a broker restart;
- a `persistent:true` SEND whose RECEIPT arrived is on disk: it survives kill -9;
- a committed transaction is all or nothing across kill -9 (all when its
  COMMIT receipt arrived).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stomp
import stomp.exception

from tests.durability.broker_process import BrokerProcess
from tests.stomp.conftest import Collector

pytestmark = pytest.mark.timeout(90)

PERSISTENT = {"persistent": "true"}


@pytest.fixture
def process(tmp_path: Path) -> Iterator[BrokerProcess]:
    broker = BrokerProcess(tmp_path / "data", stomp=True)
    yield broker
    broker.kill()


def connect(process: BrokerProcess, **headers: str) -> tuple[Any, Collector]:
    conn = stomp.Connection12([("127.0.0.1", process.stomp_port)], auto_content_length=True)
    collector = Collector()
    conn.set_listener("collector", collector)
    conn.connect("guest", "guest", wait=True, headers=headers)
    return conn, collector


def drain(process: BrokerProcess, queue: str) -> list[str]:
    """Every body in /queue/<queue>, in order: consume until a sentinel sent after them."""
    conn, collector = connect(process)
    try:
        conn.subscribe(f"/queue/{queue}", id="drain", ack="auto")
        conn.send(f"/queue/{queue}", "sentinel")
        # the sentinel is the last message (an O(1) test: the list grows large)
        assert collector.wait(
            lambda: bool(collector.messages) and collector.messages[-1].body == "sentinel",
            timeout=60,
        ), (len(collector.messages), collector.errors)
        return collector.bodies[:-1]
    finally:
        conn.disconnect()


def test_durable_topic_subscription_across_restart(process: BrokerProcess) -> None:
    process.start()
    sub = {"activemq.subscriptionName": "audit"}
    reader, got = connect(process, **{"client-id": "auditor"})
    reader.subscribe("/topic/ledger", id="a", ack="client-individual", headers=sub, receipt="s")
    assert got.wait(lambda: "s" in got.receipts)
    reader.disconnect()
    writer, written = connect(process)
    for n in range(5):
        writer.send("/topic/ledger", f"entry-{n}", headers=PERSISTENT, receipt=f"w{n}")
    assert written.wait(lambda: len(written.receipts) == 5)
    writer.disconnect()
    assert process.stop() == 0
    process.start()
    reader, got = connect(process, **{"client-id": "auditor"})
    reader.subscribe("/topic/ledger", id="a", ack="client-individual", headers=sub)
    frames = got.wait_messages(5, timeout=10)
    assert [f.body for f in frames] == [f"entry-{n}" for n in range(5)]
    for frame in frames:
        reader.ack(frame.headers["ack"])
    # and the subscription still receives live messages after the restart
    reader.send("/topic/ledger", "live")
    assert got.wait_messages(6)[5].body == "live"
    reader.disconnect()


def send_until_killed(process: BrokerProcess, rng: random.Random, send: Any) -> Collector:
    """Run `send(conn, i)` for i = 0, 1, ... until the broker is SIGKILLed: at a random
    moment after the first receipt arrived (so that some frames were confirmed)."""
    conn, collector = connect(process)
    delay = rng.uniform(0.0, 0.4)

    def kill_later() -> None:
        collector.wait(lambda: bool(collector.receipts), timeout=20)
        time.sleep(delay)
        process.kill()

    killer = threading.Thread(target=kill_later)
    killer.start()
    try:
        for i in range(1_000_000):
            if not conn.is_connected():
                break
            send(conn, i)
            if i % 50 == 49:
                time.sleep(0.001)  # let receipts come back while we go on
    # AttributeError: stomp.py's receiver thread drops the transport's socket when
    # the broker dies, under a send in progress on this thread (a stomp.py race)
    except (stomp.exception.StompException, OSError, AttributeError):
        pass
    finally:
        killer.join()
        process.kill()
    return collector


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_receipted_persistent_send_survives_kill_9(process: BrokerProcess, seed: int) -> None:
    process.start()

    def send(conn: Any, i: int) -> None:
        conn.send("/queue/crash-send", str(i), headers=PERSISTENT, receipt=str(i))

    collector = send_until_killed(process, random.Random(seed), send)
    receipted = {int(r) for r in collector.receipts}
    assert receipted, "the broker was killed before any receipt"
    process.start()
    found = [int(b) for b in drain(process, "crash-send")]
    assert found == sorted(set(found)), "duplicates or order lost"
    missing = receipted - set(found)
    assert not missing, f"receipted messages lost: {sorted(missing)[:10]}"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_committed_transaction_all_or_nothing_across_kill_9(
    process: BrokerProcess, seed: int
) -> None:
    process.start()
    size = 4

    def send(conn: Any, i: int) -> None:
        tx = f"tx{i}"
        conn.begin(tx)
        for k in range(size):
            conn.send("/queue/crash-tx", f"{i}:{k}", headers=PERSISTENT, transaction=tx)
        conn.commit(tx, receipt=str(i))

    collector = send_until_killed(process, random.Random(seed), send)
    committed = {int(r) for r in collector.receipts}
    assert committed, "the broker was killed before any COMMIT receipt"
    process.start()
    by_tx: dict[int, list[int]] = {}
    for body in drain(process, "crash-tx"):
        i, k = body.split(":")
        by_tx.setdefault(int(i), []).append(int(k))
    partial = {i: ks for i, ks in by_tx.items() if ks != list(range(size))}
    assert not partial, f"transactions partly there after the crash: {partial}"
    lost = committed - set(by_tx)
    assert not lost, f"transactions whose COMMIT receipt arrived are missing: {sorted(lost)}"


def test_transient_message_behind_recovered_backlog_is_delivered(tmp_path: Path) -> None:
    """Regression: a transient SEND queued behind messages still on disk after a restart
    was moved into memory without being dispatched, and stalled an auto-ack consumer."""
    process = BrokerProcess(
        tmp_path / "data", stomp=True, extra_config="[limits]\nqueue_memory_limit = 4096\n"
    )
    try:
        process.start()
        conn, collector = connect(process)
        for n in range(3000):
            conn.send("/queue/backlog", str(n), headers=PERSISTENT, receipt=str(n))
        assert collector.wait(lambda: "2999" in collector.receipts, timeout=30)
        conn.disconnect()
        assert process.stop() == 0
        process.start()
        assert drain(process, "backlog") == [str(n) for n in range(3000)]
    finally:
        process.kill()
