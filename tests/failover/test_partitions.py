"""Partitions between the nodes, through fault-injecting proxies.

The nodes reach each other and the witness only through `FaultyProxy`s;
clients connect to the nodes directly. Asserted from the clients' side:

- the isolated primary stops confirming (its publisher gets nacks, not
  confirms) while the other side promotes the standby, and every message
  the old primary ever confirmed is on the new one: never two nodes
  confirming in one epoch;
- healed, the old primary learns of the newer epoch, steps down, refuses
  clients and resynchronises as standby;
- a one-way loss from primary to standby and a delay on the link cause no
  promotion: the primary keeps confirming (alone with the witness's leave,
  or in sync) and nothing confirmed is lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pika
import pika.exceptions
import pytest

from tests.failover.cluster import Node, Witness, wait_for
from tests.failover.proxy import FaultyProxy

PERSISTENT = pika.BasicProperties(delivery_mode=2)


class Publisher(threading.Thread):
    """Publishes with confirms; records what was confirmed and what was nacked."""

    def __init__(self, node: Node, queue: str) -> None:
        super().__init__(daemon=True)
        self.node, self.queue = node, queue
        self.confirmed: list[int] = []
        self.nacked: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            connection = pika.BlockingConnection(self.node.params)
            channel = connection.channel()
            channel.confirm_delivery()
            channel.queue_declare(self.queue, durable=True)
            i = 0
            while not self.stop.is_set():
                try:
                    channel.basic_publish("", self.queue, str(i).encode(), PERSISTENT)
                    self.confirmed.append(i)
                except pika.exceptions.NackError:
                    self.nacked.append(i)
                    time.sleep(0.05)
                i += 1
            connection.close()
        except (pika.exceptions.AMQPError, OSError):
            pass


def queue_contents(node: Node, queue: str) -> set[int]:
    connection = pika.BlockingConnection(node.params)
    try:
        channel = connection.channel()
        count = channel.queue_declare(queue, durable=True, passive=True).method.message_count
        seen: set[int] = set()
        if count:
            for method, _props, body in channel.consume(queue, inactivity_timeout=5):
                if method is None:
                    break
                seen.add(int(body))
                if len(seen) >= count:
                    break
        return seen
    finally:
        connection.close()


@pytest.fixture
def partitioned(tmp_path) -> Iterator[tuple[Node, Node, Witness, dict[str, FaultyProxy]]]:
    """A primary `a` and standby `b` that reach each other and the witness only
    through proxies: `b_to_a` (b's replication link), `a_to_w`, `b_to_w`."""
    w = Witness(tmp_path).start()
    a, b = Node(tmp_path, "a"), Node(tmp_path, "b")
    proxies = {
        "b_to_a": FaultyProxy(a.replication).start(),
        "a_to_w": FaultyProxy(w.port).start(),
        "b_to_w": FaultyProxy(w.port).start(),
    }
    via = {name: Witness.__new__(Witness) for name in ("a", "b")}
    for name, proxy in (("a", proxies["a_to_w"]), ("b", proxies["b_to_w"])):
        via[name].port = proxy.port  # the witness as each node sees it
    peer_a = Node.__new__(Node)
    peer_a.replication = proxies["b_to_a"].port
    try:
        a.start("primary", witness=via["a"])
        b.start("standby", peer=peer_a, witness=via["b"])
        a.wait_in_sync()
        yield a, b, w, proxies
    finally:
        for process in (a, b, w):
            process.kill()
        for proxy in proxies.values():
            proxy.stop()


@pytest.mark.timeout(90)
def test_an_isolated_primary_stops_confirming_and_steps_down_when_healed(partitioned):
    a, b, _w, proxies = partitioned
    publisher = Publisher(a, "isolated")
    publisher.start()
    wait_for(lambda: len(publisher.confirmed) >= 5, what="confirms before the partition")
    proxies["b_to_a"].cut()
    proxies["a_to_w"].cut()
    # The majority side (standby and witness) promotes the standby ...
    assert b.wait_role("primary")["epoch"] == 2
    # ... while the isolated primary fails confirms instead of giving them.
    wait_for(lambda: publisher.nacked, what="nacks from the isolated primary")
    assert (a.status() or {}).get("confirms") == "fenced"
    confirmed_by_a = set(publisher.confirmed)
    assert confirmed_by_a <= queue_contents(b, "isolated")
    # Healed: the old primary hears of epoch 2, steps down and follows b.
    for proxy in proxies.values():
        proxy.heal()
    publisher.stop.set()
    publisher.join(30)
    assert set(publisher.confirmed) == confirmed_by_a  # not one more confirm from a
    a.wait_role("standby")
    b_status = wait_for(lambda: (b.status() or {}).get("confirms") == "sync" and b.status())
    assert b_status["epoch"] == 2
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(a.params)


@pytest.mark.timeout(90)
def test_one_way_loss_and_delay_cause_no_promotion_and_lose_nothing(partitioned):
    a, b, w, proxies = partitioned
    publisher = Publisher(a, "lossy")
    publisher.start()
    wait_for(lambda: len(publisher.confirmed) >= 5, what="confirms before the fault")
    proxies["b_to_a"].delay = 0.05  # a slow link: slower confirms, nothing else
    count = len(publisher.confirmed)
    wait_for(lambda: len(publisher.confirmed) >= count + 5, what="confirms over a slow link")
    assert (a.status() or {}).get("confirms") == "sync"
    proxies["b_to_a"].heal()
    proxies["b_to_a"].down = "drop"  # the primary's frames never reach the standby
    # The primary loses its acks, waits standby_timeout, and confirms alone with
    # the witness's leave; the witness refuses to promote the standby.
    wait_for(lambda: (a.status() or {}).get("confirms") == "alone", what="confirms alone")
    count = len(publisher.confirmed)
    wait_for(lambda: len(publisher.confirmed) >= count + 5, what="confirms alone")
    assert (b.status() or {}).get("role") == "standby"
    assert w.status()["epoch"] == 1
    proxies["b_to_a"].heal()
    a.wait_in_sync()
    # The witness learns it at the primary's next report: until then it still
    # refuses a promotion (the standby might lack what was confirmed alone).
    wait_for(lambda: w.status().get("alone") is False, what="the witness to see sync")
    publisher.stop.set()
    publisher.join(30)
    a.kill()  # and now the standby, in sync again, takes over with everything
    assert b.wait_role("primary")["epoch"] == 2
    assert set(publisher.confirmed) <= queue_contents(b, "lossy")
