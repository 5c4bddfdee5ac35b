"""What the lower rooms of the core need of the broker and of a vhost, as interfaces.

The core's modules import one way: `broker` (the composition of it all) ->
`session` -> `vhost` -> `queue` -> the queue's parts (`entry`, `ready`,
`fifo`, `dead_letter`, `delayed`). A queue still needs the store, the limits
and a message id from the broker, and a FIFO queue's deduplicator needs its
vhost's name; rather than import the modules above them (an import cycle),
they ask for these narrow interfaces, which `broker.Broker` and
`vhost.VirtualHost` satisfy structurally (STYLE.md §2: `DeliverySink` works
the same way in the other direction).
"""

from __future__ import annotations

from typing import Protocol

from moorage.broker.clock import Clock
from moorage.broker.config import Limits
from moorage.broker.flow import WriteFlow
from moorage.broker.limits import ResourceLimits
from moorage.broker.memory import MemoryMonitor
from moorage.storage import Store


class BrokerServices(Protocol):
    """The broker-wide facilities a vhost, a queue or a session uses (`broker.Broker`)."""

    @property
    def store(self) -> Store: ...
    @property
    def clock(self) -> Clock:
        """The broker's time: every timer reads and arms it (`broker.clock`)."""
        ...

    @property
    def limits(self) -> Limits: ...
    @property
    def flow(self) -> WriteFlow: ...
    @property
    def memory(self) -> MemoryMonitor: ...
    @property
    def resource_limits(self) -> ResourceLimits:
        """Per-vhost and per-user limits (`broker.limits`)."""
        ...

    @property
    def retention(self) -> float:
        """Seconds a message may stay queued (`storage.retention`); 0 = forever."""
        ...

    def next_message_id(self) -> int:
        """A fresh id for a message body put in the store."""
        ...


class VhostServices(Protocol):
    """A vhost as the parts of a queue see it (`vhost.VirtualHost`)."""

    @property
    def name(self) -> str: ...
    @property
    def broker(self) -> BrokerServices: ...
