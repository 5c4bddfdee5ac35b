"""Password checks run off the event loop: a login being checked stalls no other client.

Each test wraps the user directory's `verify` (the documented seam: the
function the worker threads call, `verify_password`) in `HeldVerify`, which
counts the checks and can hold them at a gate. Holding the check makes the
tests deterministic without timing: while it is held, a login is waiting for
its answer, and whatever else the broker does meanwhile it does with the
check still in progress. Were the check run on the event loop, the held gate
would stall the broker and these tests would fail (the gate opens itself
after `HOLD_BOUND`, so such a failure ends).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
import pytest
from pika.exceptions import ProbableAuthenticationError

from moorage.broker.auth_hashing import verify_password
from moorage.broker.embedded import free_port
from tests.helpers import RunningBroker, make_config, make_user
from tests.management.test_api import Api
from tests.mqtt.conftest import PahoClient

pytestmark = pytest.mark.timeout(120)

HOLD_BOUND = 60.0  # seconds a held check waits for its gate before going on alone
WAIT = 30.0  # bound on every condition the tests wait for

ALL = {"/": (".*", ".*", ".*")}


class HeldVerify:
    """`verify_password`, counted; the checks of one password can be held at a gate."""

    def __init__(self) -> None:
        self.calls = 0
        self.entered = threading.Event()  # a held check has started
        self.gate = threading.Event()
        self.held = ""
        self._lock = threading.Lock()

    def hold(self, password: str) -> None:
        """Checks of `password` started from now on wait until `release`."""
        self.entered.clear()
        self.gate.clear()
        self.held = password

    def release(self) -> None:
        self.gate.set()

    def __call__(self, password: str, stored: str, algorithm: str) -> bool:
        with self._lock:
            self.calls += 1
        if password == self.held:
            self.entered.set()
            self.gate.wait(HOLD_BOUND)
        return verify_password(password, stored, algorithm)


@pytest.fixture
def broker(tmp_path: Path, start_broker: Callable[..., RunningBroker]) -> RunningBroker:
    config = make_config(
        tmp_path, make_user("served", "pw-s", ALL), make_user("waiting", "pw-w", ALL)
    )
    config.ports["mqtt"] = free_port()
    config.ports["stomp"] = free_port()
    config.ports["http"] = free_port()
    config.failed_login_delay = 0.01
    return start_broker(config)


@pytest.fixture
def held(broker: RunningBroker) -> HeldVerify:
    verify = HeldVerify()
    broker.call(setattr, broker.core.users, "verify", verify)
    return verify


def _pending_logins(broker: RunningBroker) -> int:
    return broker.call(lambda: broker.core.pending_logins)


def _in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = target()
        except Exception as e:
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _connect(broker: RunningBroker, user: str, password: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(broker.url_for(user, password)))


def test_a_client_is_served_while_another_login_is_checked(
    broker: RunningBroker, held: HeldVerify
) -> None:
    served = _connect(broker, "served", "pw-s")  # checked with the gate open
    channel = served.channel()
    channel.queue_declare("q")
    held.hold("pw-w")
    thread, result = _in_thread(lambda: _connect(broker, "waiting", "pw-w"))
    assert held.entered.wait(WAIT)  # the waiting client's check has started, and is held

    # the connected client publishes and consumes meanwhile
    for n in range(3):
        channel.basic_publish("", "q", f"m{n}".encode())
    bodies = []
    for _ in range(3):
        _method, _props, body = channel.basic_get("q", auto_ack=True)
        bodies.append(body)
    assert bodies == [b"m0", b"m1", b"m2"]
    # MQTT and the management API are served too
    mqtt = PahoClient(broker.daemon.ports["mqtt"], "bystander")
    try:
        mqtt.connect()  # guest: a new password for the cache, checked while the other waits
        assert [int(r.value) for r in mqtt.subscribe("a/b", 0)] == [0]
    finally:
        mqtt.stop()
    assert held.calls == 3  # served, waiting (still held), guest
    assert thread.is_alive()
    assert _pending_logins(broker) == 1

    held.release()
    thread.join(WAIT)
    assert "error" not in result, result
    waiting: pika.BlockingConnection = result["value"]
    try:
        waiting.channel().basic_publish("", "q", b"from the waiting client")
        _method, _props, body = channel.basic_get("q", auto_ack=True)
        assert body == b"from the waiting client"
    finally:
        waiting.close()
        served.close()
    assert _pending_logins(broker) == 0


def test_concurrent_logins_with_the_same_credentials_share_one_check(
    broker: RunningBroker, held: HeldVerify
) -> None:
    clients = 12
    held.hold("pw-w")
    started = [_in_thread(lambda: _connect(broker, "waiting", "pw-w")) for _ in range(clients)]
    try:
        assert held.entered.wait(WAIT)
        # all wait for the one check
        assert broker.wait_until(lambda: broker.core.pending_logins == clients, timeout=WAIT)
        assert broker.call(lambda: broker.core.users.verifying) == 1
    finally:
        held.release()
        for thread, _result in started:
            thread.join(WAIT)
    for _thread, result in started:
        assert "error" not in result, result
        result["value"].close()
    assert held.calls == 1
    # later logins find the password in the cache
    _connect(broker, "waiting", "pw-w").close()
    assert held.calls == 1


def _stomp_answer(port: int, passcode: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(
            b"CONNECT\naccept-version:1.2\nhost:/\nlogin:served\npasscode:"
            + passcode.encode()
            + b"\n\n\x00"
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def _mqtt_code(broker: RunningBroker, password: str, user: str = "served") -> int:
    client = PahoClient(broker.daemon.ports["mqtt"], "c")
    client.client.username_pw_set(user, password)
    try:
        _flags, rc, _props = client.connect(expect_success=False)
        return int(rc.value)
    finally:
        client.stop()


def test_wrong_passwords_get_the_same_answers_and_count_as_failures(
    broker: RunningBroker, held: HeldVerify
) -> None:
    guard = broker.core.login_guard

    def failures() -> int:
        return broker.call(guard.failures, "127.0.0.1:0")

    with pytest.raises(ProbableAuthenticationError) as refused:
        _connect(broker, "served", "wrong")
    assert (
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
        "For details see the broker logfile." in str(refused.value)
    )
    assert (failures(), held.calls) == (1, 1)

    assert _mqtt_code(broker, "wrong") == 0x86  # bad user name or password
    assert (failures(), held.calls) == (2, 2)  # failures are never cached

    answer = _stomp_answer(broker.daemon.ports["stomp"], "wrong")
    head = answer.split(b"\n\n", 1)[0]
    assert head.startswith(b"ERROR\n")
    assert b"\nmessage:ACCESS_REFUSED - user 'served' - invalid credentials" in head
    assert (failures(), held.calls) == (3, 3)

    # an unknown user is refused without a check; the right password resets the count
    assert _mqtt_code(broker, "pw-s", "nobody") == 0x86
    assert (failures(), held.calls) == (4, 3)
    assert _mqtt_code(broker, "pw-s") == 0
    assert (failures(), held.calls) == (0, 4)
    assert _mqtt_code(broker, "pw-s") == 0  # remembered: no check
    assert held.calls == 4


def test_management_api_answers_401_and_200_with_the_check_off_the_loop(
    broker: RunningBroker, held: HeldVerify
) -> None:
    port = broker.daemon.ports["http"]
    guest = Api(port)
    assert guest.call("GET", "/whoami")[0] == 200  # guest's password is now remembered
    status, body, headers = Api(port, "guest", "wrong").call("GET", "/overview")
    assert (status, body) == (401, {"error": "not_authorized", "reason": "Login failed"})
    assert headers["WWW-Authenticate"] == 'Basic realm="Moorage Management"'
    status, body, _ = Api(port, "served", "pw-s").call("GET", "/overview")  # no tag
    assert (status, body) == (401, {"error": "not_authorized", "reason": "Not management user"})
    assert held.calls == 3

    # a request whose password is being checked waits; other requests are answered
    broker.call(lambda: broker.core.users.put_user("waiting", tags=["administrator"]))
    held.hold("pw-w")
    thread, result = _in_thread(lambda: Api(port, "waiting", "pw-w").call("GET", "/whoami"))
    assert held.entered.wait(WAIT)
    assert guest.get("/whoami")["name"] == "guest"
    assert thread.is_alive()
    held.release()
    thread.join(WAIT)
    assert "error" not in result, result
    status, body, _ = result["value"]
    assert (status, body["name"]) == (200, "waiting")
    assert held.calls == 4
