"""The client examples of docs/failover.md, run as written against a shared-storage pair.

Each example is read from the document (the fenced block after its
`<!-- example: NAME -->` marker), its loopback ports replaced by the pair's
(5672/5673 AMQP, 1883/1884 MQTT, 61613/61623 STOMP: node a, then node b),
and executed. While it runs, the node holding the lock is killed with
SIGKILL; the example must finish its work on the other node: publishers
have every message confirmed, consumers receive every message published
and confirmed before (duplicates allowed: failover is at-least-once).
Then the killed node is started again, as systemd would, and waits.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pika

from tests.failover_shared.pair import SharedNode, SharedPair

DOC = Path(__file__).resolve().parents[2] / "docs" / "failover.md"
COUNT = 200  # messages per example
KILL_AFTER = 40  # ... of which this many are through when the holder is killed


def example(name: str, pair: SharedPair) -> dict[str, Any]:
    """The namespace of the example `name`, run with the pair's ports."""
    text = DOC.read_text()
    marker = f"<!-- example: {name} -->\n```python\n"
    assert marker in text, f"docs/failover.md has no example {name!r}"
    code = text.split(marker, 1)[1].split("\n```", 1)[0]
    a, b = pair.nodes
    ports = {
        "5672": a.amqp_port, "5673": b.amqp_port, "1883": a.mqtt_port, "1884": b.mqtt_port,
        "61613": a.stomp_port, "61623": b.stomp_port,
    }  # fmt: skip
    code = re.sub(r"\b(5672|5673|1883|1884|61613|61623)\b", lambda m: str(ports[m[1]]), code)
    namespace: dict[str, Any] = {"__name__": f"failover_example_{name}"}
    exec(compile(code, f"docs/failover.md ({name})", "exec"), namespace)  # noqa: S102
    return namespace


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def fail_over(holder: SharedNode, waiter: SharedNode) -> None:
    """SIGKILL the holder, wait for the other node to serve, restart the killed one."""
    holder.kill()
    waiter.wait_serving()
    holder.spawn()


def counting(taken: list[int]) -> Iterator[bytes]:
    """COUNT bodies; `taken` grows as the example asks for the next one."""
    for n in range(COUNT):
        taken.append(n)
        yield str(n).encode()


def drain(node: SharedNode, queue: str) -> list[int]:
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.amqp_port))
    try:
        channel = connection.channel()
        bodies = []
        while True:
            method, _props, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return bodies
            bodies.append(int(body))
    finally:
        connection.close()


def prepublish(node: SharedNode, queue: str, exchange: str = "", key: str = "") -> None:
    """COUNT persistent messages, confirmed, to `queue` (declared) or `exchange`/`key`."""
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.amqp_port))
    channel = connection.channel()
    channel.confirm_delivery()
    if queue:
        channel.queue_declare(queue, durable=True)
    for n in range(COUNT):
        channel.basic_publish(
            exchange, key or queue, str(n).encode(), pika.BasicProperties(delivery_mode=2)
        )
    connection.close()


def run_publisher(name: str, queue: str, pair: tuple[SharedNode, SharedNode], shared: SharedPair):
    holder, waiter = pair
    publish = example(name, shared)["publish"]
    taken: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            publish(counting(taken))
        except BaseException as e:  # reported by the test
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: len(taken) > KILL_AFTER or not thread.is_alive(), "the first messages")
    assert len(taken) < COUNT, "the example finished before the kill; make COUNT larger"
    fail_over(holder, waiter)
    thread.join(90)
    assert not thread.is_alive(), f"{name} never finished after the failover"
    assert errors == []
    received = drain(waiter, queue)
    assert set(received) == set(range(COUNT))  # every message confirmed; duplicates allowed


def run_consumer(
    pair: tuple[SharedNode, SharedNode],
    start: Callable[[Callable[[bytes], None]], Callable[[], None]],
) -> None:
    """Start a consumer (returns its stopper); kill the holder midway; every message arrives."""
    holder, waiter = pair
    received: list[int] = []

    def handle(body: bytes) -> None:
        received.append(int(body))
        time.sleep(0.002)  # a little work, so that the kill falls in the middle

    stop = start(handle)
    try:
        wait_for(lambda: len(received) > KILL_AFTER, "the first deliveries")
        assert len(set(received)) < COUNT, "the consumer finished before the kill"
        fail_over(holder, waiter)
        wait_for(lambda: set(received) == set(range(COUNT)), "every message after failover")
    finally:
        stop()


def in_thread(target: Callable[[threading.Event], None]) -> Callable[[], None]:
    """Run `target(stop)` on a thread; the returned function stops and joins it."""
    stop = threading.Event()
    thread = threading.Thread(target=target, args=(stop,), daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join(30)
        assert not thread.is_alive()

    return stopper


def test_pika_publisher(pair: tuple[SharedNode, SharedNode], shared_pair: SharedPair) -> None:
    run_publisher("pika", "orders", pair, shared_pair)


def test_kombu_publisher(pair: tuple[SharedNode, SharedNode], shared_pair: SharedPair) -> None:
    run_publisher("kombu", "tasks", pair, shared_pair)


def test_aio_pika_consumer(pair: tuple[SharedNode, SharedNode], shared_pair: SharedPair) -> None:
    prepublish(pair[0], "emails")
    consume = example("aio-pika", shared_pair)["consume"]

    def start(handle: Callable[[bytes], None]) -> Callable[[], None]:
        async def handle_async(body: bytes) -> None:
            handle(body)

        def run(stop: threading.Event) -> None:
            async def main() -> None:
                task = asyncio.ensure_future(consume(handle_async))
                await asyncio.to_thread(stop.wait)
                task.cancel()

            asyncio.run(main())

        return in_thread(run)

    run_consumer(pair, start)


def test_stomp_consumer(pair: tuple[SharedNode, SharedNode], shared_pair: SharedPair) -> None:
    prepublish(pair[0], "invoices")
    consume = example("stomp.py", shared_pair)["consume"]
    run_consumer(pair, lambda handle: in_thread(lambda stop: consume(handle, stop)))


def test_paho_persistent_session(
    pair: tuple[SharedNode, SharedNode], shared_pair: SharedPair
) -> None:
    holder, _waiter = pair
    # The persistent session exists before the messages are published.
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="thermostat", clean_session=False
    )
    client.username_pw_set("guest", "guest")
    client.connect("127.0.0.1", holder.mqtt_port)
    client.loop_start()
    subscribed = threading.Event()
    client.on_subscribe = lambda *args: subscribed.set()
    client.subscribe("sensors/+/temperature", qos=1)
    assert subscribed.wait(10)
    client.disconnect()
    client.loop_stop()
    prepublish(holder, "", "amq.topic", "sensors.room1.temperature")
    consume = example("paho-mqtt", shared_pair)["consume"]
    run_consumer(pair, lambda handle: in_thread(lambda stop: consume(handle, stop)))
