"""Unacked: one delivery a session waits to see settled (acked, rejected, requeued).

A session's `unacked` maps each delivery tag to one of these
(`broker.session`); the consumer timeout (`broker.session_timeouts`) takes
them out of it too.
"""

from __future__ import annotations

from moorage.broker.entry import QueueEntry
from moorage.broker.queue import Consumer, Queue


class Unacked:
    """A delivered entry, its queue and its consumer (None for `basic.get`)."""

    __slots__ = ("consumer", "entry", "queue")

    def __init__(self, entry: QueueEntry, queue: Queue, consumer: Consumer | None) -> None:
        self.entry = entry
        self.queue = queue
        self.consumer = consumer
