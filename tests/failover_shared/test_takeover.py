"""Two broker processes on one data directory: the waiter takes over, nothing confirmed is lost.

- SIGKILL the holder while a pika publisher with confirms runs: the waiter
  (whose ports refused connections until then) serves within the lease,
  and every confirmed message is there.
- SIGSTOP the holder for longer than its lease: the waiter cannot take
  over while the stopped process keeps its OS locks (flock, and SQLite's
  exclusive lock), so it does not serve during the stop; after SIGCONT
  the old holder notices its lease ran out before it writes anything,
  confirms nothing that was sent to it meanwhile, and exits 3; the waiter
  then takes over, with every confirmed message and without the unconfirmed one.

Measured takeover times (kill to the waiter's ports accepting) are printed
(`-s` shows them). `MOORAGE_SHARED_FAILOVER_CYCLES=N` repeats the SIGKILL
test's kill N times at random moments, back and forth between the nodes, and
prints the median and maximum.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

import pika
import pika.exceptions
import pytest

from tests.failover_shared.pair import LEASE, SharedNode

CYCLES = int(os.environ.get("MOORAGE_SHARED_FAILOVER_CYCLES", "1"))
"""Kill cycles of the SIGKILL test (each at a random moment); raise it for a longer run."""
TAKEOVER_BOUND = LEASE + 30.0
"""Kill to serving, generously: takeover is at once, plus start-up on a loaded machine."""


def connect(node: SharedNode) -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", node.amqp_port, connection_attempts=1)
    )


def publish_until_stopped(
    node: SharedNode, queue: str, confirmed: list[int], stop: threading.Event, offset: int = 0
) -> None:
    """Publish persistent numbered messages with confirms until the connection breaks."""
    with contextlib.suppress(pika.exceptions.AMQPError, OSError):
        connection = connect(node)
        channel = connection.channel()
        channel.confirm_delivery()
        n = offset
        while not stop.is_set():
            channel.basic_publish("", queue, str(n).encode(), pika.BasicProperties(delivery_mode=2))
            confirmed.append(n)  # basic_publish returned: the broker confirmed it
            n += 1


def drain(node: SharedNode, queue: str) -> list[int]:
    connection = connect(node)
    try:
        channel = connection.channel()
        bodies = []
        while True:
            method, _props, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                return bodies
            bodies.append(int(body))
    finally:
        connection.close()


def declare(node: SharedNode, queue: str) -> None:
    connection = connect(node)
    connection.channel().queue_declare(queue, durable=True)
    connection.close()


@pytest.mark.timeout(60 + 20 * CYCLES)
def test_the_waiter_takes_over_from_a_killed_holder_with_every_confirmed_message(
    pair: tuple[SharedNode, SharedNode],
) -> None:
    holder, waiter = pair
    declare(holder, "killed")
    confirmed: list[int] = []
    takeovers: list[float] = []
    for cycle in range(CYCLES):
        assert not any(waiter.accepts(port) for port in waiter.ports)  # no listener open
        stop = threading.Event()
        offset = cycle * 1_000_000  # each cycle's bodies sort after the previous ones
        publisher = threading.Thread(
            target=publish_until_stopped, args=(holder, "killed", confirmed, stop, offset)
        )
        publisher.start()
        kill_after = len(confirmed) + random.randint(50, 300)  # a random moment
        deadline = time.monotonic() + 30
        while len(confirmed) < kill_after and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(confirmed) >= kill_after, holder.text()
        killed = time.monotonic()
        holder.kill()
        serving = waiter.wait_serving(timeout=TAKEOVER_BOUND)
        stop.set()
        publisher.join(10)
        takeovers.append(serving - killed)
        # It knew the holder was gone (a free lock on a local file system, or
        # its pid gone), without waiting for the lease to run out.
        assert "lease expired" not in waiter.text()[waiter.runs :]
        # The old node, restarted (as systemd would), waits behind the new holder.
        holder.spawn().wait_logged("waiting for the shared-storage lock")
        assert not holder.accepts()
        holder, waiter = waiter, holder
    received = drain(holder, "killed")
    assert set(confirmed) <= set(received)  # none lost
    assert received == sorted(received)  # in publishing order
    print(
        f"\nshared storage: SIGKILL to the waiter serving over {CYCLES} cycles: "
        f"median {statistics.median(takeovers):.2f} s, max {max(takeovers):.2f} s"
    )
    assert max(takeovers) < TAKEOVER_BOUND


def test_a_stuck_holder_loses_its_lease_and_confirms_nothing_after_it_wakes(
    pair: tuple[SharedNode, SharedNode],
) -> None:
    a, b = pair
    declare(a, "stuck")
    connection = connect(a)
    channel = connection.channel()
    channel.confirm_delivery()
    for n in range(50):
        channel.basic_publish("", "stuck", str(n).encode(), pika.BasicProperties(delivery_mode=2))

    a.signal(signal.SIGSTOP)
    stopped = time.monotonic()
    outcome: list[str] = []

    def publish_while_stopped() -> None:
        # Sent into the stopped broker's socket buffer; it reads it when it wakes up.
        try:
            channel.basic_publish("", "stuck", b"-1", pika.BasicProperties(delivery_mode=2))
        except pika.exceptions.NackError:
            outcome.append("nack")
        except (pika.exceptions.AMQPError, OSError) as e:
            outcome.append(f"connection lost: {type(e).__name__}")
        else:
            outcome.append("confirmed")

    late = threading.Thread(target=publish_while_stopped)
    late.start()
    try:
        # Well past the lease: the stopped holder keeps its locks, so the waiter waits.
        while time.monotonic() < stopped + LEASE + 1.0:
            assert not b.accepts()
            time.sleep(0.1)
    finally:
        woken = time.monotonic()
        a.signal(signal.SIGCONT)  # also when the loop failed: the pair is shared
    assert a.wait_exit(30) == 3  # EXIT_LEASE_LOST: systemd restarts it as a waiter
    late.join(30)
    assert len(outcome) == 1
    assert outcome[0] != "confirmed"
    print(f"\nshared storage: the publish sent to the stopped holder: {outcome[0]}")
    assert "lease lost" in a.text()
    serving = b.wait_serving(timeout=TAKEOVER_BOUND)
    print(f"\nshared storage: SIGCONT to the waiter serving: {serving - woken:.2f} s")
    received = drain(b, "stuck")
    assert received == list(range(50))  # every confirmed message, and not the late one
    with contextlib.suppress(Exception):
        connection.close()


def test_a_clean_stop_hands_the_storage_over_at_once(pair: tuple[SharedNode, SharedNode]) -> None:
    a, b = pair
    declare(a, "handed-over")
    connection = connect(a)
    channel = connection.channel()
    channel.confirm_delivery()
    for n in range(20):
        channel.basic_publish(
            "", "handed-over", str(n).encode(), pika.BasicProperties(delivery_mode=2)
        )
    connection.close()
    epoch = a.overview()["failover"]["epoch"]
    a.signal(signal.SIGTERM)
    assert a.wait_exit(30) == 0
    b.wait_serving()
    assert "(lease released by" in b.text()
    assert drain(b, "handed-over") == list(range(20))
    role = b.overview()["failover"]  # the management overview names the node's role
    assert role["mode"] == "shared-storage"
    assert role["role"] == "primary"
    assert role["epoch"] == epoch + 1
    assert 0 < role["lease_remaining"] <= LEASE
    status = subprocess.run(
        [sys.executable, "-m", "moorage.broker.cli", "--port", str(b.http_port), "status"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert f"failover: primary, epoch {epoch + 1}; shared storage, lease" in status
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{b.http_port}/metrics", timeout=10)
    scraped = metrics.read().decode()
    assert 'moorage_failover_role{role="primary"} 1.0' in scraped
    assert f"moorage_failover_epoch {float(epoch + 1)}" in scraped
