"""Prometheus metrics at `/metrics` (totals) and `/metrics/per-object` (per queue).

Metric names are RabbitMQ's (its `rabbitmq_prometheus` plugin), so existing
Grafana dashboards and alert rules keep working; only the port differs
(RabbitMQ serves them on 15692, Moorage on the management listener, 15672).
Like RabbitMQ's, the endpoints need no credentials. Everything is read from
the core's snapshots when scraped: nothing is counted on a message path.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from moorage.broker import __version__, overview
from moorage.broker.broker import Broker
from moorage.protocols.management.requests import broker_of

routes = web.RouteTableDef()

_QUEUE_GAUGES = (
    ("rabbitmq_queue_messages_ready", "Messages ready to be delivered to consumers"),
    ("rabbitmq_queue_messages_unacked", "Messages delivered to consumers but not yet acknowledged"),
    ("rabbitmq_queue_messages", "Sum of ready and unacknowledged messages"),
    ("rabbitmq_queue_consumers", "Consumers on a queue"),
    ("rabbitmq_queue_messages_ready_bytes", "Size in bytes of ready messages"),
)


def _rss_bytes() -> int:
    """The process's resident memory (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class BrokerCollector(Collector):
    """Builds the metric families from one broker's snapshot on every scrape."""

    def __init__(self, broker: Broker, *, per_object: bool) -> None:
        self.broker = broker
        self.per_object = per_object

    def collect(self) -> Iterator[Metric]:
        broker = self.broker
        queues = overview.queues(broker)
        connections = [
            c for c in overview.connections(broker) if c.protocol != "http" and not c.internal
        ]
        info = GaugeMetricFamily(
            "rabbitmq_build_info", "Moorage version info", labels=["product", "product_version"]
        )
        info.add_metric(["Moorage", __version__], 1)
        yield info
        for name, text, value in (
            ("rabbitmq_connections", "Connections currently open", len(connections)),
            ("rabbitmq_channels", "Channels currently open", sum(c.channels for c in connections)),
            (
                "rabbitmq_consumers",
                "Consumers currently connected",
                sum(q.consumers for q in queues),
            ),
            ("rabbitmq_queues", "Queues available", len(queues)),
            (
                "rabbitmq_alarms_memory_used_watermark",
                "is 1 if the memory alarm is in effect",
                int(broker.flow.memory_alarm),
            ),
            (
                "rabbitmq_alarms_free_disk_space_watermark",
                "is 1 if the free disk space alarm is in effect",
                int(broker.flow.disk_alarm),
            ),
            (
                "rabbitmq_disk_space_available_bytes",
                "Disk space available in bytes",
                broker.disk.free or 0 if broker.disk is not None else 0,
            ),
            (
                "rabbitmq_disk_space_available_limit_bytes",
                "Free disk space low watermark in bytes",
                broker.disk.limit if broker.disk is not None else 0,
            ),
            (
                "rabbitmq_process_resident_memory_bytes",
                "Memory used in bytes",
                _rss_bytes(),
            ),
        ):
            yield GaugeMetricFamily(name, text, value=value)
        if broker.failover_status is not None:
            yield from _failover_gauges(broker.failover_status())
        for name, text in _QUEUE_GAUGES:
            field = name.removeprefix("rabbitmq_queue_")
            if self.per_object:
                family = GaugeMetricFamily(name, text, labels=["vhost", "queue"])
                for q in queues:
                    family.add_metric([q.vhost, q.name], _queue_value(q, field))
            else:
                family = GaugeMetricFamily(
                    name, text, value=sum(_queue_value(q, field) for q in queues)
                )
            yield family


_FAILOVER_GAUGES = (
    ("moorage_failover_epoch", "epoch", "The node's failover epoch"),
    ("moorage_replication_lag_batches", "lag_batches", "Batches the standby has not acked"),
    ("moorage_replication_lag_seconds", "lag_seconds", "Age of the oldest batch not acked"),
    ("moorage_replication_standby_in_sync", "standby_in_sync", "1 while confirms wait for it"),
    ("moorage_replication_applied_batches", "applied_batches", "Batches this standby applied"),
    ("moorage_failover_witness_reachable", "witness_reachable", "1 if the witness answered"),
)


def _failover_gauges(status: dict[str, object]) -> Iterator[Metric]:
    """A replicated node's role (one gauge per role, 1 for the current one) and numbers."""
    role = GaugeMetricFamily("moorage_failover_role", "1 for the node's role", labels=["role"])
    for name in ("primary", "standby"):
        role.add_metric([name], int(status.get("role") == name))
    yield role
    confirms = GaugeMetricFamily(
        "moorage_replication_confirms", "1 for how confirms are given", labels=["mode"]
    )
    for mode in ("sync", "waiting", "alone", "fenced"):
        confirms.add_metric([mode], int(status.get("confirms") == mode))
    yield confirms
    for name, key, text in _FAILOVER_GAUGES:
        value = status.get(key)
        if isinstance(value, bool | int | float):
            yield GaugeMetricFamily(name, text, value=float(value))


def _queue_value(queue: overview.QueueInfo, field: str) -> int:
    return {
        "messages_ready": queue.messages_ready,
        "messages_unacked": queue.messages_unacknowledged,
        "messages": queue.messages,
        "consumers": queue.consumers,
        "messages_ready_bytes": queue.message_bytes_ready,
    }[field]


def _scrape(broker: Broker, *, per_object: bool) -> web.Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(broker, per_object=per_object))
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


@routes.get("/metrics")
async def get_metrics(request: web.Request) -> web.Response:
    return _scrape(broker_of(request), per_object=False)


@routes.get("/metrics/per-object")
async def get_metrics_per_object(request: web.Request) -> web.Response:
    return _scrape(broker_of(request), per_object=True)
