"""Durable users: kept in the store across restarts, seeded by the file, changed live.

Real brokers (SQLite store where it matters), pika for logins and the
management API over HTTP.
"""

from __future__ import annotations

import io
import json
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, ProbableAuthenticationError

from moorage.broker import ctl
from moorage.broker.config import Config
from moorage.broker.embedded import free_port
from tests.helpers import RunningBroker, make_config, make_user
from tests.management.test_api import Api

pytestmark = pytest.mark.timeout(120)


def _file(tmp_path: Path, amqp: int, http: int, users: str) -> Config:
    path = tmp_path / "moorage.toml"
    path.write_text(
        textwrap.dedent(f"""\
        [broker]
        data_dir = "{tmp_path / "data"}"
        [listeners]
        amqp_port = {amqp}
        http_port = {http}
        mqtt_port = 0
        stomp_port = 0
        mqtt_ws_port = 0
        stomp_ws_port = 0
        sqs_port = 0
        """)
        + textwrap.dedent(users)
    )
    return Config.load(path)


def _user(name: str, password: str, tags: str = "") -> str:
    return f"""
    [[users]]
    name = "{name}"
    password = "{password}"
    tags = [{", ".join(f'"{t}"' for t in tags.split(",") if t)}]
    [users.permissions."/"]
    configure = ".*"
    write = ".*"
    read = ".*"
    """


def logs_in(port: int, name: str, password: str) -> bool:
    params = pika.ConnectionParameters(
        "127.0.0.1", port, credentials=pika.PlainCredentials(name, password)
    )
    try:
        pika.BlockingConnection(params).close()
    except ProbableAuthenticationError:
        return False
    return True


def test_users_survive_restarts_and_the_file_seeds_only_what_changed(
    tmp_path: Path, start_broker: Callable[..., RunningBroker]
) -> None:
    amqp, http = free_port(), free_port()
    v1 = _user("alice", "pw1", "administrator")
    broker = start_broker(_file(tmp_path, amqp, http, v1))
    api = Api(http, "alice", "pw1")
    assert api.call("PUT", "/users/carol", {"password": "c", "tags": ""})[0] == 201
    perms = {"configure": ".*", "write": ".*", "read": ".*"}
    assert api.call("PUT", "/permissions/%2F/carol", perms)[0] == 201
    assert api.call("PUT", "/users/alice", {"password": "pw2", "tags": "administrator"})[0] == 204
    broker.stop()

    # The same file again: what the API changed holds (the file's users are unchanged).
    broker = start_broker(_file(tmp_path, amqp, http, v1))
    assert logs_in(amqp, "alice", "pw2")
    assert not logs_in(amqp, "alice", "pw1")
    assert logs_in(amqp, "carol", "c")
    broker.stop()

    # A changed file is applied: its users replaced, the API's user kept.
    v2 = _user("alice", "pw3", "administrator") + _user("dave", "d")
    broker = start_broker(_file(tmp_path, amqp, http, v2))
    assert logs_in(amqp, "alice", "pw3")
    assert not logs_in(amqp, "alice", "pw2")
    assert logs_in(amqp, "dave", "d")
    assert logs_in(amqp, "carol", "c")

    # SIGHUP's path: dave leaves the file, so he is deleted; carol is not the file's.
    broker.call(broker.daemon.reload, _file(tmp_path, amqp, http, v1 + _user("erin", "e")))
    assert not logs_in(amqp, "dave", "d")
    assert logs_in(amqp, "erin", "e")
    assert logs_in(amqp, "carol", "c")
    assert logs_in(amqp, "alice", "pw1")
    names = [u["name"] for u in Api(http, "alice", "pw1").get("/users")]
    assert names == ["alice", "carol", "erin"]


def test_imported_rabbitmq_hash_is_upgraded_to_scrypt_at_login(
    tmp_path: Path, start_broker: Callable[..., RunningBroker]
) -> None:
    config = make_config(tmp_path)
    config.storage.backend = "sqlite"
    config.ports["http"] = free_port()
    broker = start_broker(config)
    api = Api(broker.daemon.ports["http"])
    # RabbitMQ's SHA-512 hash of "secret", as rabbitmqctl export_definitions writes it
    definitions = {
        "users": [
            {
                "name": "legacy",
                "password_hash": _rabbit_sha512("secret"),
                "hashing_algorithm": "rabbit_password_hashing_sha512",
                "tags": "management",
            }
        ],
        "permissions": [
            {"user": "legacy", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
        ],
        "topic_permissions": [
            {"user": "legacy", "vhost": "/", "exchange": "amq.topic", "write": "^a", "read": ".*"}
        ],
    }
    assert api.call("POST", "/definitions", definitions)[0] == 204
    before = api.get("/users/legacy")
    assert before["hashing_algorithm"] == "rabbit_password_hashing_sha512"
    assert before["tags"] == ["management"]
    assert logs_in(broker.port, "legacy", "secret")
    after = api.get("/users/legacy")
    assert after["hashing_algorithm"] == "moorage_password_hashing_scrypt"
    assert after["password_hash"].startswith("$scrypt$")
    exported = api.get("/definitions")
    assert {
        "user": "legacy",
        "vhost": "/",
        "exchange": "amq.topic",
        "write": "^a",
        "read": ".*",
    } in (exported["topic_permissions"])
    broker.stop()
    broker = start_broker(config)  # the upgraded hash was stored
    assert logs_in(broker.port, "legacy", "secret")
    assert (
        Api(broker.daemon.ports["http"]).get("/users/legacy")["password_hash"]
        == (after["password_hash"])
    )


def _rabbit_sha512(password: str) -> str:
    import base64
    import hashlib

    salt = b"\x01\x02\x03\x04"
    return base64.b64encode(salt + hashlib.sha512(salt + password.encode()).digest()).decode()


def test_changes_reach_connected_sessions(
    tmp_path: Path, start_broker: Callable[..., RunningBroker]
) -> None:
    config = make_config(tmp_path, make_user("app", "pw", {"/": (".*", ".*", ".*")}))
    config.ports["http"] = free_port()
    broker = start_broker(config)
    api = Api(broker.daemon.ports["http"])
    connection = pika.BlockingConnection(pika.URLParameters(broker.url_for("app", "pw")))
    try:
        channel = connection.channel()
        channel.queue_declare("jobs")  # allowed, and the check is now cached by the session
        channel.queue_declare("jobs")
        perms = {"configure": "^other$", "write": ".*", "read": ".*"}
        assert api.call("PUT", "/permissions/%2F/app", perms)[0] == 204
        with pytest.raises(ChannelClosedByBroker) as refused:
            channel.queue_declare("jobs")
        assert refused.value.reply_code == 403
        channel = connection.channel()
        channel.queue_declare("other")
        assert api.call("DELETE", "/users/app")[0] == 204
        with pytest.raises(ChannelClosedByBroker) as refused:
            channel.queue_declare("other")  # a deleted user can do nothing more
        assert refused.value.reply_code == 403
    finally:
        if connection.is_open:
            connection.close()
    assert not logs_in(broker.port, "app", "pw")


def test_api_error_cases(tmp_path: Path, start_broker: Callable[..., RunningBroker]) -> None:
    config = make_config(
        tmp_path,
        make_user("viewer", "pw", {"/": (".*", ".*", ".*")}, tags=("monitoring",)),
        vhosts=("/", "v2"),
    )
    config.ports["http"] = free_port()
    broker = start_broker(config)
    port = broker.daemon.ports["http"]
    api = Api(port)
    status = lambda *a: api.call(*a)[0]  # noqa: E731
    assert Api(port, "guest", "wrong").call("GET", "/users")[0] == 401
    assert Api(port, "viewer", "pw").call("PUT", "/users/x", {"password": "p"})[0] == 401
    assert Api(port, "viewer", "pw").call("GET", "/permissions")[0] == 401
    assert status("GET", "/users/nobody") == 404
    assert status("DELETE", "/users/nobody") == 404
    assert status("GET", "/permissions/%2F/nobody") == 404
    assert status("DELETE", "/permissions/v2/viewer") == 404  # has none there
    assert (
        status("PUT", "/permissions/nowhere/viewer", {"configure": "", "write": "", "read": ""})
        == 404
    )
    assert (
        status("PUT", "/permissions/%2F/nobody", {"configure": "", "write": "", "read": ""}) == 400
    )
    assert status("PUT", "/permissions/v2/viewer", {"configure": ".*"}) == 400  # keys missing
    assert (
        status("PUT", "/permissions/v2/viewer", {"configure": "(", "write": "", "read": ""}) == 400
    )
    assert api.call("PUT", "/users/x", raw=b"{not json")[0] == 400
    assert status("PUT", "/users/x", {"password_hash": "abc", "tags": ""}) == 400
    bad_algorithm = {"password_hash": "", "hashing_algorithm": "rot13", "tags": ""}
    assert status("PUT", "/users/x", bad_algorithm) == 400
    assert status("PUT", "/users/x", {"password": 5}) == 400
    assert status("PUT", "/users/x", {"password": "p", "tags": 7}) == 400
    assert status("PUT", "/topic-permissions/%2F/viewer", {"exchange": "amq.topic"}) == 400
    assert status("DELETE", "/topic-permissions/%2F/viewer") == 404
    assert status("GET", "/users/x") == 404  # nothing was created by the refused calls

    # and the successful shapes, in RabbitMQ's fields
    assert status("PUT", "/users/x", {"password": "p", "tags": ["management", "monitoring"]}) == 201
    user = api.get("/users/x")
    assert set(user) == {"name", "password_hash", "hashing_algorithm", "tags", "limits"}
    assert user["tags"] == ["management", "monitoring"]
    topic = {"exchange": "amq.topic", "write": "^{username}\\.", "read": ".*"}
    assert status("PUT", "/topic-permissions/%2F/x", topic) == 201
    assert status("PUT", "/topic-permissions/%2F/x", topic) == 204
    expected = [{"user": "x", "vhost": "/", **topic}]
    assert api.get("/topic-permissions/%2F/x") == expected
    assert api.get("/users/x/topic-permissions") == expected
    assert status("DELETE", "/topic-permissions/%2F/x?exchange=amq.topic") == 204
    assert api.get("/topic-permissions") == []
    assert status("POST", "/users/bulk-delete", {"users": ["x", "viewer"]}) == 204
    assert [u["name"] for u in api.get("/users")] == ["guest"]


@dataclass
class _Done:
    returncode: int
    stdout: str
    stderr: str


def _ctl(port: int, *args: str, stdin: str | None = None) -> _Done:
    """`moorage ARGS` in this process (tests/management/test_ctl.py runs the real
    executable; this spares a Python start-up per command)."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin or "")
    try:
        ctl.run(ctl.build_parser().parse_args(["--port", str(port), *args]), out)
        code = 0
    except ctl.CtlError as e:
        print(f"moorage: {e}", file=err)
        code = 1
    finally:
        sys.stdin = saved
    return _Done(code, out.getvalue(), err.getvalue())


def test_cli_user_and_permission_commands(
    tmp_path: Path, start_broker: Callable[..., RunningBroker]
) -> None:
    config = make_config(tmp_path)
    config.ports["http"] = free_port()
    broker = start_broker(config)
    port = broker.daemon.ports["http"]
    done = _ctl(port, "user", "add", "ann", "--tags", "management", stdin="first\n")
    assert (done.returncode, done.stdout) == (0, "user 'ann' added\n"), done.stderr
    assert _ctl(port, "permissions", "set", "ann", ".*", ".*", "^ann\\.").returncode == 0
    assert _ctl(port, "topic-permissions", "set", "ann", "amq.topic", "^a", ".*").returncode == 0
    assert logs_in(broker.port, "ann", "first")
    assert _ctl(port, "user", "passwd", "ann", "second").returncode == 0
    assert not logs_in(broker.port, "ann", "first")
    assert logs_in(broker.port, "ann", "second")
    assert _ctl(port, "user", "tags", "ann", "monitoring", "management").returncode == 0
    listed = _ctl(port, "user", "list").stdout
    assert "ann  [monitoring, management]" in listed
    api = Api(port)
    assert api.get("/permissions/%2F/ann")["read"] == "^ann\\."
    assert json.loads(_ctl(port, "--json", "list", "permissions").stdout)
    assert _ctl(port, "topic-permissions", "clear", "ann").returncode == 0
    assert _ctl(port, "permissions", "clear", "ann").returncode == 0
    assert api.call("GET", "/permissions/%2F/ann")[0] == 404
    assert _ctl(port, "user", "delete", "ann").returncode == 0
    missing = _ctl(port, "user", "tags", "ann", "x")
    assert missing.returncode == 1
    assert "404" in missing.stderr
