"""The durability gate: a committed batch's callbacks wait for the standby's ack.

`GatheringBatch` hands every successful `when_durable` callback here with
the number of the batch it waits for (`release(callbacks, after)`; `None`:
every batch committed so far). Theory of operation, by mode:

- ``SYNC``: a standby is attached and has caught up. Callbacks wait until
  the standby acknowledged their batch (`acked(n)` releases, in order,
  everything waiting for a batch <= n).
- ``WAITING``: no standby in sync (it is gone, or still catching up from a
  snapshot). Callbacks wait exactly as in SYNC; whoever owns the gate
  decides, after `replication.standby_timeout`, to go ALONE or FENCED.
- ``ALONE``: the primary carries on without a standby (a witness agreed, or
  no witness is configured and the configuration allows it). Callbacks run
  at once; everything waiting is released when the gate enters ALONE.
- ``FENCED``: the primary may not confirm (it lost both standby and witness,
  or learnt of a newer epoch). Every waiting and every new callback gets a
  `StoreError`; nothing is confirmed that could be lost.

Ordering rules: callbacks run in the order they were released; a batch's
callbacks never run before those of an earlier batch; a callback released
with `after=None` waits for every batch the gate has heard of. Runs on the
event loop only.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque

from moorage.storage.store import DurabilityCallback, StoreError

__all__ = ["GateMode", "ReplicationGate"]

log = logging.getLogger("moorage.replication")


class GateMode(enum.Enum):
    SYNC = "sync"
    WAITING = "waiting"
    ALONE = "alone"
    FENCED = "fenced"


class ReplicationGate:
    """Holds `when_durable` callbacks until the standby has the batch (module docs)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, mode: GateMode = GateMode.WAITING) -> None:
        self.loop = loop
        self.mode = mode
        self.last = 0
        """Highest batch number released to the gate (committed locally)."""
        self.acked = 0
        """Highest batch number the standby acknowledged."""
        self.fence_reason = ""
        self.unacked_since: float | None = None
        """loop.time() since when some committed batch waits for the standby's ack."""
        self._waiting: deque[tuple[int, list[DurabilityCallback]]] = deque()

    @property
    def waiting(self) -> int:
        """Callbacks held back."""
        return sum(len(callbacks) for _, callbacks in self._waiting)

    @property
    def pending(self) -> bool:
        """True while a committed batch waits for the standby (SYNC, WAITING) or every
        reply must fail (FENCED): a reply promising durability cannot go out at once."""
        if self.mode is GateMode.ALONE:
            return False
        return self.mode is GateMode.FENCED or self.last > self.acked

    @property
    def lag_seconds(self) -> float:
        """How long the oldest batch not acknowledged by the standby has waited."""
        since = self.unacked_since
        return 0.0 if since is None else max(0.0, self.loop.time() - since)

    @property
    def lag(self) -> int:
        """Batches committed here that the standby has not acknowledged."""
        return max(0, self.last - self.acked)

    def release(self, callbacks: list[DurabilityCallback], after: int | None) -> None:
        """See `DurabilityGate.release`."""
        if after is not None and after > self.last:
            self.last = after
            if self.unacked_since is None:
                self.unacked_since = self.loop.time()
        number = self.last if after is None else after
        if self.mode is GateMode.FENCED:
            self._fire(callbacks, StoreError(self.fence_reason or "not replicated"))
            return
        if self.mode is GateMode.ALONE or (number <= self.acked and not self._waiting):
            self._fire(callbacks, None)
            return
        if not callbacks:
            return
        if self._waiting and self._waiting[-1][0] >= number:
            self._waiting[-1][1].extend(callbacks)
        else:
            self._waiting.append((number, list(callbacks)))

    def acknowledge(self, number: int) -> None:
        """The standby committed every batch up to `number`: release what waited for them."""
        if number <= self.acked:
            return
        self.acked = number
        # Still behind: the oldest unacknowledged batch came after this ack (an estimate).
        self.unacked_since = None if number >= self.last else self.loop.time()
        if self.mode is GateMode.FENCED:
            return
        while self._waiting and self._waiting[0][0] <= number:
            _, callbacks = self._waiting.popleft()
            self._fire(callbacks, None)

    def set_mode(self, mode: GateMode, reason: str = "") -> None:
        """Enter `mode`: ALONE releases everything waiting, FENCED fails it."""
        if mode is not self.mode:
            log.warning(
                "replication: confirms now %s%s", mode.value, f" ({reason})" if reason else ""
            )
        self.mode = mode
        if mode is GateMode.ALONE:
            self._drain(None)
        elif mode is GateMode.FENCED:
            self.fence_reason = reason
            self._drain(StoreError(reason or "not replicated"))

    def _drain(self, error: StoreError | None) -> None:
        while self._waiting:
            _, callbacks = self._waiting.popleft()
            self._fire(callbacks, error)

    def _fire(self, callbacks: list[DurabilityCallback], error: StoreError | None) -> None:
        for callback in callbacks:
            try:
                callback(error)
            except Exception as exc:  # noqa: BLE001 - reported to the loop's handler
                self.loop.call_exception_handler(
                    {"message": "exception in a when_durable callback", "exception": exc}
                )
