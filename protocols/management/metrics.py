"""Prometheus metrics at `/metrics` (totals) and `/metrics/per-object` (per queue).

Metric names are RabbitMQ's (its `rabbitmq_prometheus` plugin), so existing
Grafana dashboards and alert rules keep working; only the port differs
(RabbitMQ serves them on 15692, Moorage on the management listener, 15672).
Like RabbitMQ's, the endpoints need no credentials. Everything is read from
the core's snapshots when scraped; the message counters
(`rabbitmq_global_messages_*_total`, and per queue
`rabbitmq_queue_messages_published_total`) are the core's plain integers
(`broker.stats`), which never go down: closed connections' counts stay in.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from moorage.broker import __version__, overview
from moorage.broker.broker import Broker
from moorage.broker.stats import StatsSnapshot
from moorage.protocols.management.requests import broker_of

routes = web.RouteTableDef()

# (name, help, the field of `overview.QueueInfo` and `overview.QueueTotals` it shows)
_QUEUE_GAUGES = (
    (
        "rabbitmq_queue_messages_ready",
        "Messages ready to be delivered to consumers",
        "messages_ready",
    ),
    (
        "rabbitmq_queue_messages_unacked",
        "Messages delivered to consumers but not yet acknowledged",
        "messages_unacknowledged",
    ),
    ("rabbitmq_queue_messages", "Sum of ready and unacknowledged messages", "messages"),
    ("rabbitmq_queue_consumers", "Consumers on a queue", "consumers"),
    (
        "rabbitmq_queue_messages_ready_bytes",
        "Size in bytes of ready messages",
        "message_bytes_ready",
    ),
)


# RabbitMQ's global counters (rabbitmq_prometheus, "Global Counters") -> `broker.stats` names;
# "routed" is what was published less what reached no queue
_GLOBAL_COUNTERS = (
    (
        "rabbitmq_global_messages_received",
        "Total number of messages received from publishers",
        ("publish",),
    ),
    (
        "rabbitmq_global_messages_confirmed",
        "Total number of messages confirmed to publishers",
        ("confirm",),
    ),
    (
        "rabbitmq_global_messages_delivered",
        "Total number of messages delivered to consumers",
        ("deliver_get",),
    ),
    (
        "rabbitmq_global_messages_delivered_consume_manual_ack",
        "Total number of messages delivered to consumers using basic.consume with manual "
        "acknowledgment",
        ("deliver",),
    ),
    (
        "rabbitmq_global_messages_delivered_consume_auto_ack",
        "Total number of messages delivered to consumers using basic.consume with automatic "
        "acknowledgment",
        ("deliver_no_ack",),
    ),
    (
        "rabbitmq_global_messages_delivered_get_manual_ack",
        "Total number of messages delivered to consumers using basic.get with manual "
        "acknowledgment",
        ("get",),
    ),
    (
        "rabbitmq_global_messages_delivered_get_auto_ack",
        "Total number of messages delivered to consumers using basic.get with automatic "
        "acknowledgment",
        ("get_no_ack",),
    ),
    (
        "rabbitmq_global_messages_redelivered",
        "Total number of messages redelivered to consumers",
        ("redeliver",),
    ),
    (
        "rabbitmq_global_messages_acknowledged",
        "Total number of messages acknowledged by consumers",
        ("ack",),
    ),
    (
        "rabbitmq_global_messages_unroutable_dropped",
        "Total number of messages published as non-mandatory into an exchange and dropped as "
        "unroutable",
        ("drop_unroutable",),
    ),
    (
        "rabbitmq_global_messages_unroutable_returned",
        "Total number of messages published as mandatory into an exchange and returned to the "
        "publisher as unroutable",
        ("return_unroutable",),
    ),
)


def _global_counters(totals: StatsSnapshot) -> Iterator[Metric]:
    for name, text, fields in _GLOBAL_COUNTERS:
        yield CounterMetricFamily(name, text, value=sum(totals.count(f) for f in fields))
    routed = totals.count("publish") - totals.count("drop_unroutable")
    routed -= totals.count("return_unroutable")
    yield CounterMetricFamily(
        "rabbitmq_global_messages_routed",
        "Total number of messages routed to queues or streams",
        value=routed,
    )


def rss_bytes() -> int:
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
        totals = overview.queue_totals(broker)
        connections = overview.client_connection_totals(broker)
        info = GaugeMetricFamily(
            "rabbitmq_build_info", "Moorage version info", labels=["product", "product_version"]
        )
        info.add_metric(["Moorage", __version__], 1)
        yield info
        for name, text, value in (
            ("rabbitmq_connections", "Connections currently open", connections.connections),
            ("rabbitmq_channels", "Channels currently open", connections.channels),
            ("rabbitmq_consumers", "Consumers currently connected", connections.consumers),
            ("rabbitmq_queues", "Queues available", totals.queues),
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
                rss_bytes(),
            ),
        ):
            yield GaugeMetricFamily(name, text, value=value)
        if broker.failover_status is not None:
            yield from _failover_gauges(broker.failover_status())
        queues = overview.queues(broker) if self.per_object else []
        for name, text, attribute in _QUEUE_GAUGES:
            if self.per_object:
                family = GaugeMetricFamily(name, text, labels=["vhost", "queue"])
                for q in queues:
                    family.add_metric([q.vhost, q.name], getattr(q, attribute))
            else:
                family = GaugeMetricFamily(name, text, value=getattr(totals, attribute))
            yield family
        yield from _global_counters(overview.message_totals(broker))
        published = "rabbitmq_queue_messages_published"
        published_text = "Total number of messages published to queues"
        if self.per_object:
            counter = CounterMetricFamily(published, published_text, labels=["vhost", "queue"])
            for q in queues:
                counter.add_metric([q.vhost, q.name], q.stats.count("publish"))
        else:
            counter = CounterMetricFamily(published, published_text, value=totals.published)
        yield counter


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
