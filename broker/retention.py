"""Retention: expired entries of paged-out queues leave the disk without being read.

A queue's in-memory entries expire at its head (see `Queue`), dead-lettered
when the queue has a dead-letter exchange. Entries paged out to the store
would have to be read back just to be thrown away; instead, every `interval`
seconds the sweeper asks the store to delete the due ones of each paged-out
queue that has no dead-letter exchange (`Store.expire`, an index scan that
never touches message bodies). Entries due there come from the queue's
`x-message-ttl`, a message's `expiration`, or the broker-wide retention limit
(`storage.retention`, like SQS's MessageRetentionPeriod).

The queue's paged-out count is lowered by what was deleted; its `DiskRange`s
are left as they are, since reading back trusts the store, not the counts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from moorage.broker.clock import SYSTEM_CLOCK, Clock
from moorage.broker.periodic import Periodic
from moorage.broker.vhost import VirtualHost
from moorage.storage import Store, StoreError

log = logging.getLogger("moorage.retention")


class SweptBroker(Protocol):
    """What the sweeper reads of the broker (`broker.broker.Broker`)."""

    @property
    def store(self) -> Store: ...
    @property
    def vhosts(self) -> Mapping[str, VirtualHost]: ...


class RetentionSweeper:
    """Runs `sweep` every `interval` seconds until stopped."""

    def __init__(
        self, broker: SweptBroker, interval: float = 5.0, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.broker = broker
        self.clock = clock
        self.periodic = Periodic(interval, self._tick, clock)

    def start(self) -> None:
        self.periodic.start()

    async def stop(self) -> None:
        await self.periodic.stop()

    async def _tick(self) -> None:
        try:
            await self.sweep()
        except StoreError as e:
            log.warning("retention sweep failed: %s", e)

    async def sweep(self, now: float | None = None) -> int:
        """Delete due entries of paged-out queues; returns how many went."""
        now = self.clock.wall() if now is None else now
        store = self.broker.store
        removed = 0
        for vhost in list(self.broker.vhosts.values()):
            for queue in list(vhost.queues.values()):
                if not queue.stored or queue.deleted or not queue.tail or not queue.may_expire:
                    continue  # nothing of it on disk can be due: spare the store a barrier
                if queue.options.dead_letter_exchange is not None:
                    continue  # expired entries must be read to be dead-lettered
                count = await store.expire(vhost.name, queue.name, now)
                if count:
                    queue.tail_count = max(0, queue.tail_count - count)
                    removed += count
        if removed:
            log.info("retention removed %d expired messages from disk", removed)
        return removed
