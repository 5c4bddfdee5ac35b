"""Message counters and the rates computed from them, for operators.

Theory of operation
-------------------
Every queue, exchange and session carries one `MessageStats`: plain integer
attributes that the message paths raise by one (`stats.publish += 1`) and
nothing else: no allocation, no clock read, no timer on the hot path. The
fields are RabbitMQ's `message_stats` names (`publish`, `deliver`,
`deliver_no_ack`, `get`, `get_no_ack`, `redeliver`, `ack`, `confirm`,
`return_unroutable`, `drop_unroutable`, and an exchange's `publish_in` /
`publish_out`); `deliver_get` is their sum, computed when read.

Connections and the broker are aggregates: their counters are the sum of
their live sessions plus what the sessions that already closed had counted
(`ClientConnection.close_session` folds a closing session into its
connection's `closed_stats`, `ClientConnection.close` folds the connection
into the broker's). Reading them walks the live sessions: O(sessions), only
when asked.

Rates are computed when asked, from samples: `RateSampler` wakes every
`interval` seconds on the broker's clock, and for every counted object keeps
the counters of the last two ticks (`MessageStats.older`, `.newer`: a time
and a tuple). A rate is the difference of those two samples divided by the
time between them — RabbitMQ's "rate over the last sample interval" (5 s by
default there as here). An object younger than two ticks has rate 0.0.
Keeping two samples per object bounds the memory at any number of queues;
the web UI keeps its own history for its charts while it polls.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from moorage.broker.clock import SYSTEM_CLOCK, Clock
from moorage.broker.periodic import Periodic

FIELDS: tuple[str, ...] = (
    "publish",
    "publish_in",
    "publish_out",
    "confirm",
    "return_unroutable",
    "drop_unroutable",
    "deliver",
    "deliver_no_ack",
    "get",
    "get_no_ack",
    "redeliver",
    "ack",
)
"""Every counter, in the order of a sample's tuple."""

DELIVER_GET = ("deliver", "deliver_no_ack", "get", "get_no_ack")
"""The counters RabbitMQ adds up as `deliver_get`."""

SAMPLE_INTERVAL = 5.0
"""Seconds between two samples: RabbitMQ's default `collect_statistics_interval`."""

_values = operator.attrgetter(*FIELDS)


class MessageStats:
    """The message counters of one queue, exchange, session, connection or broker."""

    __slots__ = (*FIELDS, "newer", "older")

    def __init__(self) -> None:
        self.publish = 0  # messages published (a session), or that entered (a queue)
        self.publish_in = 0  # messages published to an exchange
        self.publish_out = 0  # messages an exchange routed, once per queue reached
        self.confirm = 0  # publisher confirms sent (AMQP basic.ack, MQTT PUBACK/PUBREC)
        self.return_unroutable = 0  # mandatory messages returned: no queue
        self.drop_unroutable = 0  # other messages that reached no queue
        self.deliver = 0  # deliveries to consumers that ack
        self.deliver_no_ack = 0  # deliveries to consumers in auto-ack mode
        self.get = 0  # messages fetched (basic.get, the API's get) that need an ack
        self.get_no_ack = 0  # messages fetched in auto-ack mode
        self.redeliver = 0  # deliveries or gets of a message delivered before
        self.ack = 0  # deliveries and gets acknowledged
        # samples: (monotonic time, counters) at the last two sampler ticks
        self.newer: tuple[float, tuple[int, ...]] | None = None
        self.older: tuple[float, tuple[int, ...]] | None = None

    def values(self) -> tuple[int, ...]:
        """The counters, in `FIELDS` order."""
        values: tuple[int, ...] = _values(self)
        return values

    def snapshot(self) -> StatsSnapshot:
        """The counters now and the last two samples, frozen (for `broker.overview`)."""
        return StatsSnapshot(self.values(), self.older, self.newer)

    def add(self, other: MessageStats) -> None:
        """Add `other`'s counters to these (a closing session into its connection)."""
        for name in FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def set_sum(self, parts: Iterable[MessageStats]) -> None:
        """Make the counters the sum of `parts` (an aggregate, refreshed when read)."""
        # column sums in C: the broker's totals add up every session on every poll
        totals = list(map(sum, zip(*map(_values, parts), strict=True))) or [0] * len(FIELDS)
        for name, value in zip(FIELDS, totals, strict=True):
            setattr(self, name, value)

    def sample(self, now: float) -> None:
        """Keep the current counters as the newest sample taken at `now`."""
        self.older = self.newer
        self.newer = (now, self.values())


_INDEX = {name: i for i, name in enumerate(FIELDS)}
# what each name shown sums (deliver_get: its four parts), and its `_details` key
_INDICES = {name: (i,) for name, i in _INDEX.items()} | {
    "deliver_get": tuple(_INDEX[n] for n in DELIVER_GET)
}
_DETAILS = {name: f"{name}_details" for name in _INDICES}


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """One object's counters at a moment, and its last two samples for the rates."""

    values: tuple[int, ...]
    older: tuple[float, tuple[int, ...]] | None = None
    newer: tuple[float, tuple[int, ...]] | None = None

    def count(self, name: str) -> int:
        """A counter by name (`deliver_get` is the sum of `DELIVER_GET`)."""
        if name == "deliver_get":
            return sum(self.values[_INDEX[n]] for n in DELIVER_GET)
        return self.values[_INDEX[name]]

    def rate(self, name: str) -> float:
        """Messages per second of one counter over the last sample interval (0.0 until
        two samples exist), rounded to 0.1 as RabbitMQ shows them."""
        older, newer = self.older, self.newer
        if older is None or newer is None or newer[0] <= older[0]:
            return 0.0
        names = DELIVER_GET if name == "deliver_get" else (name,)
        moved = sum(newer[1][_INDEX[n]] - older[1][_INDEX[n]] for n in names)
        return round(moved / (newer[0] - older[0]), 1)

    def message_stats(self, fields: Iterable[str]) -> dict[str, Any]:
        """RabbitMQ's `message_stats` object for `fields`: each count and `<name>_details`
        with its rate (`{"publish": 10, "publish_details": {"rate": 2.0}, ...}`).

        One pass over the counters (a listing of 10,000 queues calls this for each)."""
        values = self.values
        older, newer = self.older, self.newer
        span = 0.0
        before = after = values
        if older is not None and newer is not None:
            span = newer[0] - older[0]
            before, after = older[1], newer[1]
        out: dict[str, Any] = {}
        for name in fields:
            indices = _INDICES[name]
            out[name] = sum(values[i] for i in indices)
            if span > 0:
                moved = sum(after[i] - before[i] for i in indices)
                out[_DETAILS[name]] = {"rate": round(moved / span, 1)}
            else:
                out[_DETAILS[name]] = {"rate": 0.0}
        return out


EMPTY = StatsSnapshot((0,) * len(FIELDS))
"""The snapshot of an object that counted nothing yet."""


QUEUE_FIELDS = (
    "publish",
    "deliver",
    "deliver_no_ack",
    "get",
    "get_no_ack",
    "deliver_get",
    "redeliver",
    "ack",
)
"""What RabbitMQ shows in a queue's `message_stats`."""

EXCHANGE_FIELDS = ("publish_in", "publish_out")
"""What RabbitMQ shows in an exchange's `message_stats`."""

CHANNEL_FIELDS = (
    "publish",
    "confirm",
    "return_unroutable",
    "drop_unroutable",
    "deliver",
    "deliver_no_ack",
    "get",
    "get_no_ack",
    "deliver_get",
    "redeliver",
    "ack",
)
"""What RabbitMQ shows in a channel's, a connection's and the overview's `message_stats`."""


class Counted(Protocol):
    """What the sampler walks (`broker.broker.Broker`)."""

    def all_message_stats(self) -> Iterator[MessageStats]:
        """Every queue's, exchange's, session's and connection's stats and the totals."""
        ...


class RateSampler:
    """Samples every counted object of a broker every `interval` seconds on its clock."""

    def __init__(
        self, broker: Counted, interval: float = SAMPLE_INTERVAL, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.broker = broker
        self.clock = clock
        self.interval = interval
        self._periodic = Periodic(interval, self._tick, clock)

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def _tick(self) -> None:
        self.sample()

    def sample(self) -> None:
        """Take one sample of every queue, exchange, session, connection and the broker."""
        now = self.clock.monotonic()
        for stats in self.broker.all_message_stats():
            stats.sample(now)
