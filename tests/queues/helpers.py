"""Small pika helpers shared by the queue feature tests, and moving a manual clock."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pika


def get_all(channel: Any, queue: str, timeout: float = 3.0, expect: int | None = None) -> list:
    """basic.get (auto-ack) until the queue is empty, or until `expect` messages arrived."""
    got: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            if expect is None or len(got) >= expect:
                break
            time.sleep(0.02)
            continue
        got.append((method, props, body))
        if expect is not None and len(got) >= expect:
            break
    return got


def wait_get(channel: Any, queue: str, timeout: float = 30.0) -> tuple[Any, Any, bytes]:
    """basic.get until one message comes (auto-ack). Fails after `timeout` (generous: a bound)."""
    got = get_all(channel, queue, timeout, expect=1)
    assert got, f"nothing arrived on {queue!r} within {timeout}s"
    return got[0]


def persistent(**kwargs: Any) -> pika.BasicProperties:
    return pika.BasicProperties(delivery_mode=2, **kwargs)


def advance(running: Any, seconds: float) -> None:
    """Move a broker's `ManualClock` forward (on its loop thread), firing what falls due."""
    running.call(running.clock.advance, seconds)


def settled_count(running: Any, queue: str) -> int:
    """Messages in a queue once the loop has run what the last timers handed to it."""
    running.run(asyncio.sleep(0))
    return running.call(lambda: running.core.vhosts["/"].queues[queue].message_count)
