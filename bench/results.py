"""What a run measured and how it is shown: counters, percentiles, results, tables, ratios.

Shared by every benchmark (AMQP, MQTT, STOMP): producers and consumers count
into one `Stats` and stamp each body with `STAMP` (the send time, so latency
is end to end without clock sync: both sides share the process clock);
`make_result` turns the counters into a `Result`; `Progress` prints one line a
second while a run goes; `format_table` prints one result and `compare_table`
two results of one scenario with the ratio of their delivery rates.
Nothing here does I/O beyond printing, so it imports no event loop and no codec.
"""

from __future__ import annotations

import array
import math
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

__all__ = [
    "STAMP",
    "STAMP_SIZE",
    "Progress",
    "Result",
    "RunOptions",
    "Stats",
    "compare_table",
    "delivery_ratio",
    "format_ms",
    "format_self_test",
    "format_table",
    "make_result",
    "percentiles",
]

STAMP: Final = struct.Struct(">Q")
"""The send time (`time.perf_counter_ns()`) in the first 8 octets of every body."""
STAMP_SIZE: Final = STAMP.size


@dataclass(slots=True)
class Stats:
    """Counters and latency samples shared by producers, consumers and the reporter.

    Each counter has one writer (single event loop, or one thread per role with pika),
    so plain integers suffice.
    """

    expected: float = math.inf  # deliveries that complete the run (known late with --duration)
    sent: int = 0
    delivered: int = 0
    confirmed: int = 0  # acks + nacks received
    nacked: int = 0
    start_ns: int = 0
    last_publish_ns: int = 0
    last_delivery_ns: int = 0
    latencies: array.array[int] = field(default_factory=lambda: array.array("q"))
    confirm_latencies: array.array[int] = field(default_factory=lambda: array.array("q"))


def percentiles(samples: array.array[int], points: tuple[float, ...]) -> dict[str, float]:
    """Nearest-rank percentiles of nanosecond samples, in milliseconds (empty: no samples)."""
    if not samples:
        return {}
    ordered = sorted(samples)
    n = len(ordered)
    result = {}
    for q in points:
        rank = max(1, math.ceil(q / 100.0 * n))
        result[f"p{q:g}"] = round(ordered[rank - 1] / 1e6, 3)
    result["max"] = round(ordered[-1] / 1e6, 3)
    return result


@dataclass(slots=True)
class Result:
    """What one run measured; printed as a table or as JSON."""

    scenario: str
    broker: str
    sent: int
    delivered: int
    elapsed_s: float
    sent_per_s: float
    delivered_per_s: float
    latency_ms: dict[str, float]
    confirm_latency_ms: dict[str, float] | None
    nacked: int
    complete: bool
    client_cpu_pct: float
    broker_cpu_pct: float | None = None
    notes: list[str] = field(default_factory=list)


class RunOptions(Protocol):
    """What `make_result` reads of a benchmark's options (every protocol's have it)."""

    @property
    def confirm(self) -> int: ...

    def scenario(self) -> str: ...


def make_result(
    opts: RunOptions, stats: Stats, broker: str, complete: bool, cpu: float, wall: float
) -> Result:
    """Rates over the time from the first publish to the last publish/delivery."""
    start = stats.start_ns
    send_span = max(stats.last_publish_ns - start, 1) / 1e9
    deliver_span = max(stats.last_delivery_ns - start, 1) / 1e9
    return Result(
        scenario=opts.scenario(),
        broker=broker,
        sent=stats.sent,
        delivered=stats.delivered,
        elapsed_s=round(
            max(stats.last_publish_ns, stats.last_delivery_ns, start) / 1e9 - start / 1e9, 3
        ),
        sent_per_s=round(stats.sent / send_span) if stats.sent else 0,
        delivered_per_s=round(stats.delivered / deliver_span) if stats.delivered else 0,
        latency_ms=percentiles(stats.latencies, (50, 99, 99.9)),
        confirm_latency_ms=(
            percentiles(stats.confirm_latencies, (50, 99)) if opts.confirm else None
        ),
        nacked=stats.nacked,
        complete=complete,
        client_cpu_pct=round(100.0 * cpu / wall, 1) if wall > 0 else 0.0,
    )


class Progress:
    """One stderr line per second: publish and delivery rates, outstanding confirms."""

    def __init__(self, stats: Stats, confirm: bool, enabled: bool) -> None:
        self.stats = stats
        self.confirm = confirm
        self.enabled = enabled
        self._t = time.perf_counter()
        self._sent = 0
        self._delivered = 0
        self._t0 = self._t

    def tick(self, final: bool = False) -> None:
        """Print the rates since the previous tick (the final one only if it means much)."""
        now = time.perf_counter()
        dt = now - self._t
        if not self.enabled or dt <= 0 or (final and dt < 0.2):
            return
        s = self.stats
        line = (
            f"[{now - self._t0:6.1f}s] published {(s.sent - self._sent) / dt:>9,.0f}/s"
            f"  delivered {(s.delivered - self._delivered) / dt:>9,.0f}/s"
        )
        if self.confirm:
            line += f"  unconfirmed {s.sent - s.confirmed:>6,}"
        line += f"  (total {s.sent:,} sent, {s.delivered:,} delivered)"
        print(line, file=sys.stderr, flush=True)
        self._t, self._sent, self._delivered = now, s.sent, s.delivered


# -- output --------------------------------------------------------------------------------


def format_ms(values: dict[str, float] | None, key: str) -> str:
    """A value of a percentile dict in milliseconds with two decimals, or "-"."""
    if not values or key not in values:
        return "-"
    return f"{values[key]:.2f}"


def format_table(result: Result) -> str:
    """The final human-readable table: one header, one row, then a details line."""
    lat, conf = result.latency_ms, result.confirm_latency_ms
    columns = [
        ("scenario", result.scenario),
        ("sent/s", f"{result.sent_per_s:,.0f}"),
        ("deliv/s", f"{result.delivered_per_s:,.0f}"),
        ("p50 ms", format_ms(lat, "p50")),
        ("p99 ms", format_ms(lat, "p99")),
        ("p99.9 ms", format_ms(lat, "p99.9")),
    ]
    if conf is not None:
        columns += [
            ("confirm p50", format_ms(conf, "p50")),
            ("confirm p99", format_ms(conf, "p99")),
        ]
    widths = [max(len(h), len(v)) for h, v in columns]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )
        for cells in ([h for h, _ in columns], [v for _, v in columns])
    ]
    broker_cpu = f", broker CPU {result.broker_cpu_pct:.0f}%" if result.broker_cpu_pct else ""
    nacked = f"; {result.nacked:,} nacked" if result.nacked else ""
    lines.append(
        f"broker {result.broker}: {result.sent:,} sent, {result.delivered:,} delivered in "
        f"{result.elapsed_s:.2f}s; max latency {format_ms(lat, 'max')} ms; "
        f"client CPU {result.client_cpu_pct:.0f}%{broker_cpu}{nacked}"
    )
    if not result.complete:
        lines.append("INCOMPLETE RUN")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def format_self_test(report: dict[str, Any]) -> str:
    """The self-test report as aligned lines."""
    return "\n".join(
        f"{k:<30} {v:>12,}" if isinstance(v, int) else f"{k:<30} {v}" for k, v in report.items()
    )


def delivery_ratio(first: Result, second: Result) -> float:
    """Delivered msg/s of `first` over `second` (0 when the second delivered nothing)."""
    return first.delivered_per_s / second.delivered_per_s if second.delivered_per_s else 0.0


def compare_table(first: Result, second: Result) -> str:
    """Both brokers' rows of one scenario and the ratio first/second."""
    rows = [("broker", "deliv/s", "sent/s", "p50 ms", "p99 ms", "p99.9 ms", "complete")]
    for r in (first, second):
        lat = r.latency_ms
        rows.append(
            (
                r.broker,
                f"{r.delivered_per_s:,.0f}",
                f"{r.sent_per_s:,.0f}",
                format_ms(lat, "p50"),
                format_ms(lat, "p99"),
                format_ms(lat, "p99.9"),
                "yes" if r.complete else "NO",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"scenario: {first.scenario}"]
    lines += [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    ratio = delivery_ratio(first, second)
    lines.append(f"ratio deliv/s {first.broker} / {second.broker}: {ratio:.2f}x")
    return "\n".join(lines)
