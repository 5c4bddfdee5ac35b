"""docs/grafana-dashboard.json: valid Grafana JSON whose every queried metric exists in a
live scrape of /metrics or /metrics/per-object."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import RunningBroker, free_port, make_config

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana-dashboard.json"
METRIC = re.compile(r"\b(rabbitmq_[a-z_]+)\b")


def queried_metrics(dashboard: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names.update(METRIC.findall(target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            names.update(METRIC.findall(variable["definition"]))
    return names


def scraped(port: int, path: str) -> set[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        text = r.read().decode()
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def test_dashboard_is_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "moorage-overview"
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["type"] in {"timeseries", "stat"}
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids
        assert len(ref_ids) == len(set(ref_ids))


def test_every_queried_metric_is_scraped(
    tmp_path: Path, start_broker: Callable[..., RunningBroker]
) -> None:
    config = make_config(tmp_path)
    config.ports["http"] = free_port()
    running = start_broker(config)
    connection = pika.BlockingConnection(pika.URLParameters(running.url))
    try:
        channel = connection.channel()
        channel.queue_declare("graphed")
        channel.basic_publish("", "graphed", b"x")
        port = running.daemon.ports["http"]
        available = scraped(port, "/metrics") | scraped(port, "/metrics/per-object")
    finally:
        connection.close()
    wanted = queried_metrics(json.loads(DASHBOARD.read_text()))
    assert len(wanted) > 15
    assert wanted - available == set()
