"""Brute-force slowdown: each refusal from one address waits longer; others are not slowed.

The delay is computed on the broker's clock (unit tests with ManualClock);
over real sockets the tests compare each refusal's duration with the delay
the broker computed for it (a duration can only be longer, however slow the
machine), never with a fixed speed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pika
import pytest
from pika.exceptions import ProbableAuthenticationError

from moorage.broker.auth_guard import LoginGuard, host_of
from moorage.broker.clock import ManualClock
from moorage.broker.embedded import free_port
from tests.helpers import RunningBroker, make_config, make_user
from tests.management.test_api import Api
from tests.mqtt.conftest import PahoClient

pytestmark = pytest.mark.timeout(60)


def test_fifty_failures_wait_longer_each_and_other_addresses_not_at_all() -> None:
    guard = LoginGuard(ManualClock(), step=0.01, max_delay=1.0)
    delays = [guard.failed("127.0.0.1:5000", "x", "bad") for _ in range(50)]
    assert delays == sorted(set(delays))  # strictly growing
    assert delays[0] == pytest.approx(0.01)
    assert delays[-1] == pytest.approx(0.5)
    assert guard.delay(guard.failures("127.0.0.2:1")) == 0.0
    guard.succeeded("127.0.0.1:6000")  # another connection from the same address
    assert guard.failures("127.0.0.1:5000") == 0


def test_the_delay_is_capped_forgotten_and_off_when_step_is_zero() -> None:
    clock = ManualClock()
    guard = LoginGuard(clock, step=1.0, max_delay=3.0, forget_after=60.0)
    assert [guard.failed("[::1]:9", "x", "bad") for _ in range(5)] == [1.0, 2.0, 3.0, 3.0, 3.0]
    clock.advance(61.0)
    assert guard.failed("::1:10", "x", "bad") == 1.0  # forgotten, then counted again
    assert host_of("[::1]:9") == host_of("::1:10") == "::1"
    assert LoginGuard(clock, step=0.0).failed("h:1", "x", "bad") == 0.0


@pytest.fixture
def broker(tmp_path: Path, start_broker: Callable[..., RunningBroker]) -> RunningBroker:
    config = make_config(tmp_path, make_user("app", "pw", {"/": (".*", ".*", ".*")}))
    config.ports["mqtt"] = free_port()
    config.loopback_users = frozenset()
    config.failed_login_delay = 0.15
    return start_broker(config)


def _mqtt_login(broker: RunningBroker, password: str, bind: str = "") -> tuple[int, float]:
    client = PahoClient(broker.daemon.ports["mqtt"], "c", bind_address=bind)
    client.client.username_pw_set("app", password)
    started = time.monotonic()
    try:
        _flags, rc, _props = client.connect(expect_success=False)
        return int(rc.value), time.monotonic() - started
    finally:
        client.stop()


def test_refusals_from_one_address_wait_longer_each_while_another_logs_in(
    broker: RunningBroker, caplog: pytest.LogCaptureFixture
) -> None:
    guard = broker.daemon.broker.login_guard  # type: ignore[union-attr]
    caplog.set_level(logging.WARNING, "moorage.auth")
    durations = []
    for attempt in range(1, 7):
        rc, took = _mqtt_login(broker, "wrong")
        assert rc == 0x86
        assert broker.call(guard.failures, "127.0.0.1:0") == attempt
        assert took >= 0.15 * attempt  # the broker held the refusal at least that long
        durations.append(took)
    assert durations[-1] > durations[0]
    assert "from 127.0.0.1:" in caplog.text
    assert "failure 6 in a row" in caplog.text

    # 127.0.0.2 is not slowed down, and 127.0.0.1 still is
    rc, _took = _mqtt_login(broker, "pw", bind="127.0.0.2")
    assert rc == 0
    assert broker.call(guard.failures, "127.0.0.2:0") == 0
    assert broker.call(broker.daemon.broker.refusal_delay, "127.0.0.1:0") == pytest.approx(0.9)  # type: ignore[union-attr]

    # AMQP counts towards the same address, and a success resets it
    params = pika.ConnectionParameters(
        "127.0.0.1", broker.port, credentials=pika.PlainCredentials("app", "wrong")
    )
    started = time.monotonic()
    with pytest.raises(ProbableAuthenticationError):
        pika.BlockingConnection(params)
    assert time.monotonic() - started >= 0.15 * 7
    rc, _took = _mqtt_login(broker, "pw")
    assert rc == 0
    assert broker.call(guard.failures, "127.0.0.1:0") == 0


def test_management_api_refusals_are_slowed_too(
    tmp_path: Path, start_broker: Callable[..., RunningBroker]
) -> None:
    config = make_config(tmp_path)
    config.ports["http"] = free_port()
    config.failed_login_delay = 0.15
    broker = start_broker(config)
    port = broker.daemon.ports["http"]
    guard = broker.daemon.broker.login_guard  # type: ignore[union-attr]
    for attempt in range(1, 4):
        started = time.monotonic()
        assert Api(port, "guest", "wrong").call("GET", "/overview")[0] == 401
        assert time.monotonic() - started >= 0.15 * attempt
        assert broker.call(guard.failures, "127.0.0.1:0") == attempt
    assert Api(port).call("GET", "/overview")[0] == 200
    assert broker.call(guard.failures, "127.0.0.1:0") == 0
