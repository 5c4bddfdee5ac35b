"""The management HTTP API over a real socket with a real HTTP client, next to pika and paho.

Field names are checked against RabbitMQ 3.10.8's own answers
(`rabbitmq_fields.json`, recorded from Debian's rabbitmq-server): every field
Moorage sends, RabbitMQ sends too, so a script written for RabbitMQ finds what
it reads.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pika
import pytest

from tests.helpers import RunningBroker, free_port, make_config, make_user, wait_for

FIELDS = json.loads((Path(__file__).parent / "rabbitmq_fields.json").read_text())
TIMEOUT = 10


class Api:
    """Blocking HTTP client for the broker's management port (urllib, basic auth)."""

    def __init__(self, port: int, user: str = "guest", password: str = "guest") -> None:
        self.base = f"http://127.0.0.1:{port}/api"
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def call(
        self, method: str, path: str, body: object = None, raw: bytes | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", self.auth)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                status, payload, headers = response.status, response.read(), response.headers
        except urllib.error.HTTPError as e:
            with e:
                status, payload, headers = e.code, e.read(), e.headers
        parsed = json.loads(payload) if payload else None
        return status, parsed, dict(headers)

    def get(self, path: str) -> Any:
        status, body, _ = self.call("GET", path)
        assert status == 200, (path, status, body)
        return body


@pytest.fixture
def managed(tmp_path: Path, start_broker: Callable[..., RunningBroker]) -> RunningBroker:
    config = make_config(
        tmp_path,
        make_user("ops", "pw", {"/": (".*", ".*", ".*")}, tags=("monitoring",)),
        make_user("dev", "pw", {"dev": ("^dev-.*", "^dev-.*", "^dev-.*")}, tags=("management",)),
        make_user("app", "pw", {"/": (".*", ".*", ".*")}),
        vhosts=("/", "dev"),
    )
    config.ports["http"] = free_port()
    config.ports["mqtt"] = free_port()
    return start_broker(config)


@pytest.fixture
def api(managed: RunningBroker) -> Api:
    return Api(managed.daemon.ports["http"])


@pytest.fixture
def amqp(managed: RunningBroker) -> Iterator[pika.BlockingConnection]:
    connection = pika.BlockingConnection(pika.URLParameters(managed.url))
    yield connection
    if connection.is_open:
        connection.close()


# Fields Moorage adds on purpose (protocols/management/README.md): a connection's message
# counters and rates, which RabbitMQ shows only per channel.
EXTENSIONS = {"connection": {"message_stats"}}


def fields_match(kind: str, item: dict[str, Any]) -> None:
    extra = set(item) - set(FIELDS[kind]) - EXTENSIONS.get(kind, set())
    assert not extra, f"{kind}: fields RabbitMQ does not send: {sorted(extra)}"


# -- authentication ----------------------------------------------------------------------------


def test_whoami_and_overview(api: Api) -> None:
    assert api.get("/whoami") == {"name": "guest", "tags": ["administrator"]}
    overview = api.get("/overview")
    fields_match("overview", overview)
    assert overview["object_totals"]["queues"] == len(api.get("/queues"))
    assert {"node": overview["node"], "protocol": "tcp", "port": api_port(api)} in overview[
        "listeners"
    ]


def test_overview_and_metrics_totals_agree_with_the_listings(
    api: Api, amqp: pika.BlockingConnection
) -> None:
    """The overview and /metrics count without listing; their totals are the listings'."""
    consuming, publishing = amqp.channel(), amqp.channel()
    for name in ("totals-a", "totals-b"):
        publishing.queue_declare(name)
    for _ in range(4):
        publishing.basic_publish("", "totals-a", b"abc")
    publishing.basic_publish("", "totals-b", b"defgh")
    consuming.basic_qos(prefetch_count=1)
    consuming.basic_consume("totals-a", lambda *_: None)
    amqp.process_data_events(0)

    def settled() -> bool:  # one message of totals-a delivered, held by the prefetch
        ready = {q["name"]: q["messages_ready"] for q in api.get("/queues")}
        return ready.get("totals-a") == 3 and ready.get("totals-b") == 1

    assert wait_for(settled)
    overview = api.get("/overview")
    queues = api.get("/queues")
    assert overview["object_totals"] == {
        "connections": len(api.get("/connections")),
        "channels": len(api.get("/channels")),
        "consumers": len(api.get("/consumers")),
        "exchanges": len(api.get("/exchanges")),
        "queues": len(queues),
    }
    assert overview["object_totals"]["channels"] == 2
    for field in ("messages", "messages_ready", "messages_unacknowledged"):
        assert overview["queue_totals"][field] == sum(q[field] for q in queues)
    by_name = {q["name"]: q for q in queues}
    assert by_name["totals-a"]["messages_unacknowledged"] == 1  # the prefetched delivery
    assert by_name["totals-a"]["messages"] == 4
    assert overview["queue_totals"]["messages_unacknowledged"] == 1
    totals = _scrape(api, "/metrics")
    assert totals["rabbitmq_connections"][0].value == 1
    assert totals["rabbitmq_channels"][0].value == 2
    assert totals["rabbitmq_consumers"][0].value == overview["object_totals"]["consumers"]
    assert totals["rabbitmq_queue_messages_ready"][0].value == 4
    unacked = sum(q["messages_unacknowledged"] for q in queues)
    assert totals["rabbitmq_queue_messages_unacked"][0].value == unacked
    assert totals["rabbitmq_queue_messages_ready_bytes"][0].value == 3 * 3 + 5
    assert totals["rabbitmq_queue_messages_published"][0].value == 5


def test_consumer_totals_leave_out_the_brokers_own_consumers(
    api: Api, managed: RunningBroker, amqp: pika.BlockingConnection
) -> None:
    """The overview and /metrics count the consumers /api/consumers lists: a client's, not
    those of the connections the broker opens for itself (MQTT's dead-letter counter)."""
    channel = amqp.channel()
    channel.queue_declare("counted-work")
    channel.basic_consume("counted-work", lambda *_: None, consumer_tag="worker")
    mqtt = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id="kept-sensor", clean_session=False
    )
    mqtt.username_pw_set("guest", "guest")
    mqtt.connect("127.0.0.1", managed.daemon.ports["mqtt"])
    mqtt.loop_start()
    try:
        mqtt.subscribe("readings/#", qos=1)  # a persistent session: a limited session queue
        assert wait_for(lambda: len(api.get("/consumers")) == 2), api.get("/consumers")
        queues = api.get("/queues")
        # the broker's own consumers are there (one per vhost), each on a queue of its own
        counters = [q for q in queues if q["name"] == "mqtt-dead-letter-counter"]
        assert sorted((q["vhost"], q["consumers"]) for q in counters) == [("/", 1), ("dev", 1)]
        assert sum(q["consumers"] for q in queues) == 4
        listed = api.get("/consumers")
        consumed = {c["queue"]["name"] for c in listed}
        assert consumed == {"counted-work", "mqtt-subscription-kept-sensorqos1"}
        assert api.get("/overview")["object_totals"]["consumers"] == len(listed) == 2
        assert _scrape(api, "/metrics")["rabbitmq_consumers"][0].value == 2
        # a user who sees one vhost counts its consumers only, as its listing shows them
        dev = Api(managed.daemon.ports["http"], "dev", "pw")
        assert dev.get("/consumers") == []
        assert dev.get("/overview")["object_totals"]["consumers"] == 0
    finally:
        mqtt.disconnect()
        mqtt.loop_stop()


def test_unacknowledged_counts_follow_deliveries_gets_acks_and_closes(
    api: Api, amqp: pika.BlockingConnection
) -> None:
    """A queue's `messages_unacknowledged` (and the SQS not-visible count built on it)
    rises with each delivery or get that waits for an ack and falls by every way out:
    ack, nack, requeue, the channel closing."""
    channel = amqp.channel()
    channel.queue_declare("unacked-q")
    for n in range(5):
        channel.basic_publish("", "unacked-q", str(n).encode())

    def unacked() -> tuple[int, int]:
        queue = api.get("/queues/%2F/unacked-q")
        return queue["messages_unacknowledged"], queue["messages_ready"]

    assert wait_for(lambda: unacked() == (0, 5))
    got = [channel.basic_get("unacked-q") for _ in range(3)]
    tags = [method.delivery_tag for method, _props, _body in got if method is not None]
    assert len(tags) == 3
    assert unacked() == (3, 2)
    channel.basic_ack(tags[0])
    assert wait_for(lambda: unacked() == (2, 2))
    channel.basic_nack(tags[1], requeue=True)
    assert wait_for(lambda: unacked() == (1, 3))
    channel.basic_nack(tags[2], requeue=False)  # dropped
    assert wait_for(lambda: unacked() == (0, 3))
    channel.basic_get("unacked-q", auto_ack=True)  # no ack awaited: never unacked
    assert unacked() == (0, 2)
    channel.basic_qos(prefetch_count=10)
    channel.basic_consume("unacked-q", lambda *_: None)
    assert wait_for(lambda: (amqp.process_data_events(0), unacked())[1] == (2, 0))
    channel.close()  # both deliveries go back to the queue
    assert wait_for(lambda: unacked() == (0, 2))


def api_port(api: Api) -> int:
    return int(api.base.split(":")[2].split("/")[0])


@pytest.mark.parametrize(
    ("user", "password", "reason"),
    [("guest", "wrong", "Login failed"), ("app", "pw", "Not management user")],
)
def test_refused_logins_are_401_like_rabbitmq(
    managed: RunningBroker, user: str, password: str, reason: str
) -> None:
    status, body, headers = Api(managed.daemon.ports["http"], user, password).call(
        "GET", "/overview"
    )
    assert status == 401
    assert body == {"error": "not_authorized", "reason": reason}
    assert headers["WWW-Authenticate"].startswith("Basic realm=")


def test_no_credentials_is_401(api: Api) -> None:
    request = urllib.request.Request(api.base + "/overview")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=TIMEOUT)
    with info.value:
        assert info.value.code == 401


# -- queues ------------------------------------------------------------------------------------


def test_queue_declare_inspect_delete(api: Api, amqp: pika.BlockingConnection) -> None:
    status, _, _ = api.call(
        "PUT", "/queues/%2F/orders", {"durable": True, "arguments": {"x-max-length": 10}}
    )
    assert status == 201
    assert (
        api.call("PUT", "/queues/%2F/orders", {"durable": True, "arguments": {"x-max-length": 10}})[
            0
        ]
        == 204
    )
    status, body, _ = api.call("PUT", "/queues/%2F/orders", {"durable": False})
    assert status == 400
    assert body["error"] == "bad_request"
    assert "inequivalent arg 'durable'" in body["reason"]
    channel = amqp.channel()
    channel.queue_declare("orders", passive=True)  # AMQP sees what the API declared
    channel.basic_publish("", "orders", b"one")
    channel.basic_publish("", "orders", b"two")
    amqp.process_data_events(0)
    queue = api.get("/queues/%2F/orders")
    fields_match("queue", queue)
    assert queue["name"] == "orders"
    assert queue["vhost"] == "/"
    assert queue["durable"] is True
    assert queue["arguments"] == {"x-max-length": 10}
    assert queue["messages"] == queue["messages_ready"] == 2
    status, body, _ = api.call("DELETE", "/queues/%2F/orders?if-empty=true")
    assert status == 400
    assert api.call("DELETE", "/queues/%2F/orders/contents")[0] == 204
    assert api.get("/queues/%2F/orders")["messages"] == 0
    assert api.call("DELETE", "/queues/%2F/orders")[0] == 204
    assert api.call("GET", "/queues/%2F/orders")[:2] == (
        404,
        {"error": "Object Not Found", "reason": "Not Found"},
    )


def test_get_messages_requeue_or_ack(api: Api, amqp: pika.BlockingConnection) -> None:
    channel = amqp.channel()
    channel.queue_declare("inbox")
    channel.basic_publish(
        "",
        "inbox",
        b"hello",
        pika.BasicProperties(content_type="text/plain", headers={"h": 1}, delivery_mode=2),
    )
    channel.basic_publish("", "inbox", b"\xff\xfe")
    amqp.process_data_events(0)
    status, got, _ = api.call(
        "POST",
        "/queues/%2F/inbox/get",
        {"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto"},
    )
    assert status == 200
    assert [m["payload"] for m in got] == ["hello", base64.b64encode(b"\xff\xfe").decode()]
    assert [m["payload_encoding"] for m in got] == ["string", "base64"]
    first = got[0]
    assert set(first) == set(FIELDS["get_message"])
    assert first["properties"] == {
        "content_type": "text/plain",
        "headers": {"h": 1},
        "delivery_mode": 2,
    }
    assert first["redelivered"] is False
    assert first["message_count"] == 1
    assert api.get("/queues/%2F/inbox")["messages"] == 2  # requeued
    status, got, _ = api.call(
        "POST", "/queues/%2F/inbox/get", {"count": 1, "ackmode": "ack_requeue_false"}
    )
    assert got[0]["redelivered"] is True
    assert api.get("/queues/%2F/inbox")["messages"] == 1
    assert api.call("POST", "/queues/%2F/inbox/get", {"count": 0})[0] == 400
    assert api.call("POST", "/queues/%2F/inbox/get", {"ackmode": "sometimes"})[0] == 400


# -- exchanges, publishing, bindings -----------------------------------------------------------


def test_exchange_binding_publish_round_trip(api: Api, amqp: pika.BlockingConnection) -> None:
    assert api.call("PUT", "/exchanges/%2F/events", {"type": "topic", "durable": True})[0] == 201
    exchange = api.get("/exchanges/%2F/events")
    fields_match("exchange", exchange)
    assert exchange["type"] == "topic"
    assert api.call("PUT", "/queues/%2F/audit", {"durable": True})[0] == 201
    status, _, headers = api.call(
        "POST", "/bindings/%2F/e/events/q/audit", {"routing_key": "order.*", "arguments": {}}
    )
    assert status == 201
    assert headers["Location"] == "audit/order.%252A"  # RabbitMQ's: the key quoted twice
    bindings = api.get("/queues/%2F/audit/bindings")
    for b in bindings:
        fields_match("binding", b)
    assert [(b["source"], b["routing_key"]) for b in bindings] == [
        ("", "audit"),  # the default exchange's implicit binding, listed as RabbitMQ does
        ("events", "order.*"),
    ]
    status, body, _ = api.call(
        "POST",
        "/exchanges/%2F/events/publish",
        {
            "routing_key": "order.created",
            "payload": "{}",
            "payload_encoding": "string",
            "properties": {},
        },
    )
    assert (status, body) == (200, {"routed": True})
    status, body, _ = api.call(
        "POST",
        "/exchanges/%2F/events/publish",
        {
            "routing_key": "user.created",
            "payload": "{}",
            "payload_encoding": "string",
            "properties": {},
        },
    )
    assert body == {"routed": False}
    method, _props, payload = amqp.channel().basic_get("audit", auto_ack=True)
    assert method is not None
    assert (method.exchange, method.routing_key, payload) == ("events", "order.created", b"{}")
    key = urllib.request.quote(bindings[1]["properties_key"], safe="")
    assert api.call("DELETE", f"/bindings/%2F/e/events/q/audit/{key}")[0] == 204
    assert api.call("DELETE", f"/bindings/%2F/e/events/q/audit/{key}")[0] == 404
    assert api.call("DELETE", "/exchanges/%2F/events")[0] == 204
    assert api.call("GET", "/exchanges/%2F/events")[0] == 404


# -- connections of every protocol -------------------------------------------------------------


def test_connections_channels_consumers_of_each_protocol(
    api: Api, managed: RunningBroker, amqp: pika.BlockingConnection
) -> None:
    channel = amqp.channel()
    channel.basic_qos(prefetch_count=7)
    channel.queue_declare("work")
    channel.basic_consume("work", lambda *_: None, consumer_tag="worker-1")
    mqtt = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="sensor-1")
    mqtt.username_pw_set("guest", "guest")
    mqtt.connect("127.0.0.1", managed.daemon.ports["mqtt"])
    mqtt.loop_start()
    try:
        assert wait_for(lambda: len(api.get("/connections")) == 2), api.get("/connections")
        connections = api.get("/connections")
        for c in connections:
            fields_match("connection", c)
        assert sorted(c["protocol"] for c in connections) == ["AMQP 0-9-1", "MQTT"]
        assert {c["user"] for c in connections} == {"guest"}
        consumers = api.get("/consumers")
        worker = next(c for c in consumers if c["consumer_tag"] == "worker-1")
        fields_match("consumer", worker)
        assert worker["queue"] == {"name": "work", "vhost": "/"}
        assert worker["prefetch_count"] == 7
        channels = api.get("/channels")
        for c in channels:
            fields_match("channel", c)
        name = next(c["name"] for c in connections if c["protocol"] == "AMQP 0-9-1")
        assert api.get("/connections/" + urllib.request.quote(name, safe=""))["name"] == name
    finally:
        mqtt.disconnect()
        mqtt.loop_stop()


# -- visibility, permissions -------------------------------------------------------------------


def test_management_user_sees_and_changes_only_its_vhost(managed: RunningBroker) -> None:
    dev = Api(managed.daemon.ports["http"], "dev", "pw")
    assert [v["name"] for v in dev.get("/vhosts")] == ["dev"]
    assert dev.call("GET", "/queues/%2F")[0] == 404
    assert dev.call("PUT", "/queues/dev/dev-jobs", {"durable": True})[0] == 201
    status, body, _ = dev.call("PUT", "/queues/dev/other", {"durable": True})
    assert status == 401
    assert "access to queue 'other' in vhost 'dev' refused" in body["reason"]
    assert dev.call("GET", "/users")[0] == 401
    ops = Api(managed.daemon.ports["http"], "ops", "pw")
    assert {v["name"] for v in ops.get("/vhosts")} == {"/", "dev"}  # monitoring sees all
    admin = Api(managed.daemon.ports["http"])
    users = admin.get("/users")
    for u in users:
        fields_match("user", u)
    assert {u["name"] for u in users} == {"guest", "ops", "dev", "app"}
    for p in admin.get("/permissions"):
        fields_match("permission", p)


# -- paging and columns ------------------------------------------------------------------------


def test_paging_and_columns(api: Api) -> None:
    for i in range(5):
        assert api.call("PUT", f"/queues/%2F/page-{i}", {"durable": False})[0] == 201
    page = api.get("/queues/%2F?page=2&page_size=2&name=page-&columns=name,messages")
    assert set(page) == set(FIELDS["page"])
    assert page["items"] == [{"name": "page-2", "messages": 0}, {"name": "page-3", "messages": 0}]
    assert (page["filtered_count"], page["page_count"], page["item_count"]) == (5, 3, 2)
    by_name = api.get("/queues/%2F?columns=name&sort=name&sort_reverse=true")
    names = [q["name"] for q in by_name if q["name"].startswith("page-")]
    assert names == ["page-4", "page-3", "page-2", "page-1", "page-0"]
    assert api.get("/queues/%2F?page=1&name=^page-[13]$&use_regex=true&columns=name")["items"] == [
        {"name": "page-1"},
        {"name": "page-3"},
    ]
    assert api.call("GET", "/queues?page=9&page_size=2")[0] == 400
    assert api.call("GET", "/queues?page=1&page_size=501")[0] == 400


# -- health checks -----------------------------------------------------------------------------


def test_health_checks(api: Api, managed: RunningBroker) -> None:
    assert api.get("/health/checks/alarms") == {"status": "ok"}
    amqp_port = managed.daemon.ports["amqp"]
    assert api.get(f"/health/checks/port-listener/{amqp_port}")["status"] == "ok"
    status, body, _ = api.call("GET", "/health/checks/port-listener/1")
    assert status == 503
    assert body["status"] == "failed"
    assert body["missing"] == 1


# -- bad input ---------------------------------------------------------------------------------


def test_bad_input_gets_rabbitmqs_errors(api: Api, managed: RunningBroker) -> None:
    assert api.call("PUT", "/queues/%2F/q", raw=b"not json")[:2] == (
        400,
        {"error": "bad_request", "reason": "not_json"},
    )
    assert api.call("PUT", "/queues/%2F/q", {"durable": "x"})[:2] == (
        400,
        {"error": "bad_request", "reason": ["not_boolean", "x"]},
    )
    assert api.call("PUT", "/queues/nope/q", {})[0] == 404
    assert api.call("GET", "/no/such/route")[:2] == (
        404,
        {"error": "Object Not Found", "reason": "Not Found"},
    )
    assert api.call("POST", "/exchanges/%2F/amq.default/publish", {"payload": 1})[0] == 400
    status, _, _ = api.call("PUT", "/queues/%2F/big", raw=b"{" + b" " * (17 * 1024 * 1024) + b"}")
    assert status == 413
    assert api.get("/whoami")["name"] == "guest"  # and the listener carries on


# -- Prometheus --------------------------------------------------------------------------------


def _scrape(api: Api, path: str) -> dict[str, list[Any]]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(api.base.removesuffix("/api") + path, timeout=TIMEOUT) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_prometheus_metrics_with_rabbitmqs_names(api: Api, amqp: pika.BlockingConnection) -> None:
    channel = amqp.channel()
    channel.queue_declare("metered")
    for _ in range(3):
        channel.basic_publish("", "metered", b"x" * 10)
    amqp.process_data_events(0)
    assert wait_for(lambda: _scrape(api, "/metrics")["rabbitmq_queue_messages_ready"][0].value >= 3)
    totals = _scrape(api, "/metrics")
    assert totals["rabbitmq_connections"][0].value == 1
    assert totals["rabbitmq_alarms_memory_used_watermark"][0].value == 0
    assert totals["rabbitmq_process_resident_memory_bytes"][0].value > 0
    per_queue = {
        (s.labels["vhost"], s.labels["queue"]): s.value
        for s in _scrape(api, "/metrics/per-object")["rabbitmq_queue_messages_ready"]
    }
    assert per_queue[("/", "metered")] == 3
    bytes_ready = _scrape(api, "/metrics/per-object")["rabbitmq_queue_messages_ready_bytes"]
    assert {s.labels["queue"]: s.value for s in bytes_ready}["metered"] == 30
