"""Definitions: a file exported from RabbitMQ 3.10.8 loads into Moorage, and Moorage's
export loads back. `rabbitmq_definitions.json` was exported from Debian's
rabbitmq-server (user `imported`, password `secret`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pika
import pytest

from tests.helpers import RunningBroker, free_port, make_config
from tests.management.test_api import Api

EXPORTED = json.loads((Path(__file__).parent / "rabbitmq_definitions.json").read_text())


@pytest.fixture
def api(tmp_path: Path, start_broker: Callable[..., RunningBroker]) -> Api:
    config = make_config(tmp_path)
    config.ports["http"] = free_port()
    running = start_broker(config)
    api = Api(running.daemon.ports["http"])
    api.running = running  # type: ignore[attr-defined]
    return api


def test_rabbitmq_export_loads(api: Api) -> None:
    status, body, _ = api.call("POST", "/definitions", EXPORTED)
    assert status == 204, body
    assert api.get("/queues/mref/q1")["arguments"] == {"x-max-length": 10}
    assert api.get("/exchanges/mref/x1")["type"] == "topic"
    bindings = {
        (b["source"], b["destination"], b["routing_key"]) for b in api.get("/bindings/mref")
    }
    assert ("x1", "q1", "a.*") in bindings
    assert ("fan", "x1", "") in bindings
    # the imported user logs in with its RabbitMQ password hash, over HTTP and AMQP
    imported = Api(api_port(api), "imported", "secret")
    assert imported.get("/whoami") == {"name": "imported", "tags": ["management"]}
    running: RunningBroker = api.running  # type: ignore[attr-defined]
    connection = pika.BlockingConnection(
        pika.URLParameters(running.url_for("imported", "secret", "mref"))
    )
    try:
        channel = connection.channel()
        channel.basic_publish("fan", "a.b", b"through two exchanges")
        _method, _props, body = channel.basic_get("q1", auto_ack=True)
        assert body == b"through two exchanges"
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            channel.queue_declare("not-imp")  # configure is ^imp-.* only
        assert info.value.reply_code == 403
    finally:
        if connection.is_open:
            connection.close()


def api_port(api: Api) -> int:
    return int(api.base.split(":")[2].split("/")[0])


def test_export_round_trips(api: Api) -> None:
    assert api.call("POST", "/definitions", EXPORTED)[0] == 204
    exported = api.get("/definitions")
    for key in ("users", "vhosts", "permissions", "queues", "exchanges", "bindings", "policies"):
        assert isinstance(exported[key], list)
    mine = {
        k: [i for i in v if i.get("vhost") == "mref"]
        for k, v in exported.items()
        if k in ("queues", "exchanges", "bindings")
    }
    theirs = {k: EXPORTED[k] for k in mine}
    key = lambda i: json.dumps(i, sort_keys=True)  # noqa: E731
    assert {k: sorted(map(key, v)) for k, v in mine.items()} == {
        k: sorted(map(key, v)) for k, v in theirs.items()
    }
    imported = next(u for u in exported["users"] if u["name"] == "imported")
    assert imported["password_hash"] == EXPORTED["users"][0]["password_hash"]


@pytest.mark.parametrize(
    "bad",
    [
        {"queues": "nope"},
        {"queues": [{"name": 1, "vhost": "/"}]},
        {
            "users": [
                {
                    "name": "x",
                    "password_hash": "h",
                    "hashing_algorithm": "rabbit_password_hashing_md5",
                }
            ]
        },
        {"permissions": [{"user": "ghost", "vhost": "/"}]},
    ],
)
def test_bad_definitions_are_400(api: Api, bad: dict[str, object]) -> None:
    status, body, _ = api.call("POST", "/definitions", bad)
    assert status == 400, body
    assert body["error"] == "bad_request"


def test_definitions_need_an_administrator(api: Api) -> None:
    assert api.call("POST", "/definitions", EXPORTED)[0] == 204
    imported = Api(api_port(api), "imported", "secret")
    assert imported.call("GET", "/definitions")[0] == 401
    assert imported.call("POST", "/definitions", {})[0] == 401
