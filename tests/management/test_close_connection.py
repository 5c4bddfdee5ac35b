"""`DELETE /api/connections/{name}`: each protocol's real client sees its protocol's close.

AMQP gets `connection.close` 320 `CONNECTION_FORCED - <reason>` (RabbitMQ's text:
"Closed via management plugin" unless `X-Reason` says otherwise), MQTT 5
DISCONNECT 0x98 with the reason string, MQTT 3.1.1 a closed socket, STOMP an
ERROR frame. `moorage close connection NAME` is the same call.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pika
import pytest
import stomp
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties

from tests.helpers import RunningBroker, free_port, make_config, make_user
from tests.management.test_api import Api

TIMEOUT = 10


@pytest.fixture
def managed(tmp_path: Path, start_broker: Callable[..., RunningBroker]) -> RunningBroker:
    config = make_config(
        tmp_path,
        make_user("app", "pw", {"/": (".*", ".*", ".*")}, tags=("management",)),
        make_user("other", "pw", {"/": (".*", ".*", ".*")}, tags=("monitoring",)),
    )
    for name in ("http", "mqtt", "stomp"):
        config.ports[name] = free_port()
    return start_broker(config)


@pytest.fixture
def api(managed: RunningBroker) -> Api:
    return Api(managed.daemon.ports["http"])


def connection_named(api: Api, protocol: str) -> str:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        names = [c["name"] for c in api.get("/connections") if c["protocol"] == protocol]
        if names:
            return str(names[0])
        time.sleep(0.02)
    raise AssertionError(f"no {protocol} connection listed")


def delete(api: Api, name: str, reason: str | None = None) -> int:
    path = "/connections/" + urllib.parse.quote(name, safe="")
    if reason is None:
        status, _body, _ = api.call("DELETE", path)
        return status
    request = urllib.request.Request(api.base + path, method="DELETE", headers={"X-Reason": reason})
    request.add_header("Authorization", api.auth)
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return int(response.status)


def closed_by_broker(connection: pika.BlockingConnection) -> Any:
    """Serve the connection's events until the broker's connection.close arrives."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            connection.process_data_events(time_limit=0.05)
        except pika.exceptions.ConnectionClosedByBroker as e:
            return e
    raise AssertionError("the broker did not close the connection")


def gone(api: Api, name: str) -> bool:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if name not in [c["name"] for c in api.get("/connections")]:
            return True
        time.sleep(0.02)
    return False


def test_amqp_client_gets_connection_forced(managed: RunningBroker, api: Api) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(managed.url))
    channel = connection.channel()
    channel.queue_declare("kept", durable=True)
    name = connection_named(api, "AMQP 0-9-1")
    assert delete(api, name) == 204
    closed = closed_by_broker(connection)
    assert closed.reply_code == 320
    assert closed.reply_text == "CONNECTION_FORCED - Closed via management plugin"
    assert gone(api, name)
    # the others carry on: a new connection works, the queue is still there
    again = pika.BlockingConnection(pika.URLParameters(managed.url))
    again.channel().queue_declare("kept", durable=True, passive=True)
    again.close()


def test_x_reason_header_is_the_reply_text(managed: RunningBroker, api: Api) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(managed.url))
    name = connection_named(api, "AMQP 0-9-1")
    assert delete(api, name, reason="maintenance window") == 204
    closed = closed_by_broker(connection)
    assert closed.reply_text == "CONNECTION_FORCED - maintenance window"


def _mqtt(managed: RunningBroker, version: int) -> tuple[Any, threading.Event, list[Any]]:
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"closed-{version}", protocol=version
    )
    client.username_pw_set("guest", "guest")
    disconnected = threading.Event()
    seen: list[Any] = []

    def on_disconnect(_c: Any, _u: Any, _flags: Any, reason: Any, props: Any) -> None:
        seen.append((reason, props))
        disconnected.set()

    client.on_disconnect = on_disconnect
    client.connect("127.0.0.1", managed.daemon.ports["mqtt"])
    client.loop_start()
    return client, disconnected, seen


def test_mqtt5_client_gets_disconnect_administrative_action(
    managed: RunningBroker, api: Api
) -> None:
    client, disconnected, seen = _mqtt(managed, paho.MQTTv5)
    try:
        name = connection_named(api, "MQTT")
        assert delete(api, name) == 204
        assert disconnected.wait(TIMEOUT)
        reason, props = seen[0]
        assert reason.value == 0x98  # Administrative action
        assert isinstance(props, Properties)
        assert props.ReasonString == "Closed via management plugin"
        assert gone(api, name)
    finally:
        client.loop_stop()


def test_mqtt311_client_sees_the_socket_close(managed: RunningBroker, api: Api) -> None:
    client, disconnected, seen = _mqtt(managed, paho.MQTTv311)
    try:
        name = connection_named(api, "MQTT")
        assert delete(api, name) == 204
        assert disconnected.wait(TIMEOUT)
        assert seen[0][0].is_failure  # no DISCONNECT in 3.1.1: the connection was lost
        assert gone(api, name)
    finally:
        client.loop_stop()


def test_stomp_client_gets_error_frame(managed: RunningBroker, api: Api) -> None:
    errors: list[Any] = []
    disconnected = threading.Event()

    class Listener(stomp.ConnectionListener):  # type: ignore[misc]
        def on_error(self, frame: Any) -> None:
            errors.append(frame)

        def on_disconnected(self) -> None:
            disconnected.set()

    conn = stomp.Connection12([("127.0.0.1", managed.daemon.ports["stomp"])])
    conn.set_listener("l", Listener())
    conn.connect("guest", "guest", wait=True)
    name = connection_named(api, "STOMP")
    assert delete(api, name) == 204
    assert disconnected.wait(TIMEOUT)
    assert errors
    assert errors[0].headers["message"] == "Closed via management plugin"
    assert gone(api, name)


def test_who_may_close(managed: RunningBroker, api: Api) -> None:
    params = pika.URLParameters(managed.url.replace("guest:guest", "app:pw"))
    connection = pika.BlockingConnection(params)
    name = connection_named(api, "AMQP 0-9-1")
    path = "/connections/" + urllib.parse.quote(name, safe="")
    port = managed.daemon.ports["http"]
    assert Api(port).call("DELETE", "/connections/nope")[0] == 404
    # a monitoring user sees it but may not close another user's connection
    status, body, _ = Api(port, "other", "pw").call("DELETE", path)
    assert (status, body["error"]) == (401, "not_authorized")
    # its own user may (a `management` user)
    assert Api(port, "app", "pw").call("DELETE", path)[0] == 204
    closed_by_broker(connection)
    assert gone(api, name)


def test_cli_close_connection(managed: RunningBroker, api: Api) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(managed.url))
    name = connection_named(api, "AMQP 0-9-1")
    result = subprocess.run(
        [sys.executable, "-m", "moorage.broker.cli", "--port", str(managed.daemon.ports["http"]),
         "close", "connection", name, "--reason", "bye"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "connection closed\n"), result.stderr
    closed = closed_by_broker(connection)
    assert closed.reply_text == "CONNECTION_FORCED - bye"
    missing = subprocess.run(
        [sys.executable, "-m", "moorage.broker.cli", "--port", str(managed.daemon.ports["http"]),
         "close", "connection", name],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode == 1
    assert "404" in missing.stderr
