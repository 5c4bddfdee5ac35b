"""Shared fixtures: a broker running in-process on free loopback ports.

`broker` starts an embedded broker (`moorage.broker.embedded`, the same API
the `moorage_broker` pytest fixture of `moorage.testing` offers other
projects: an AMQP listener, memory store, the guest user) on a background
thread with its own event loop and stops it at teardown; the test fails if
the loop thread raised or asyncio logged an error there. Parametrize it
indirectly with "asyncio" or "uvloop" to choose the loop::

    @pytest.mark.parametrize("broker", ["asyncio", "uvloop"], indirect=True)

`start_broker(config)` starts one with a custom configuration, e.g. extra
users made with `tests.helpers.make_user` and `make_config`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest
from hypothesis import HealthCheck, settings

from moorage.broker.clock import SYSTEM_CLOCK, Clock
from moorage.broker.config import Config
from tests.helpers import RunningBroker

# Property tests bound their work by examples, never by time: hypothesis's
# default 200 ms deadline per example fails on a loaded machine, and so does its
# "input generation is slow" health check (a one-core run failed on it).
settings.register_profile("moorage", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("moorage")


@pytest.fixture
def start_broker() -> Iterator[Callable[..., RunningBroker]]:
    """Start brokers on demand; each is stopped and checked for loop errors at teardown."""
    started: list[RunningBroker] = []

    def start(
        config: Config | None = None, loop: str = "asyncio", clock: Clock = SYSTEM_CLOCK
    ) -> RunningBroker:
        running = RunningBroker(config, loop, clock)
        started.append(running)
        return running.start()

    yield start
    errors: list[str] = []
    for running in started:
        running.stop()
        errors.extend(running.errors)
    if errors:
        pytest.fail("broker loop reported errors:\n" + "\n".join(errors), pytrace=False)


@pytest.fixture
def broker(
    request: pytest.FixtureRequest, start_broker: Callable[..., RunningBroker]
) -> RunningBroker:
    """A running broker; `request.param` (indirect parametrization) picks the loop."""
    return start_broker(loop=getattr(request, "param", "asyncio"))


@pytest.fixture
def connect(broker: RunningBroker) -> Iterator[Callable[..., pika.BlockingConnection]]:
    """Open pika BlockingConnections to `broker`; those left open are closed at teardown."""
    opened: list[pika.BlockingConnection] = []

    def open_connection(url: str | None = None, **params: Any) -> pika.BlockingConnection:
        parameters = pika.URLParameters(url or broker.url)
        for key, value in params.items():
            setattr(parameters, key, value)
        connection = pika.BlockingConnection(parameters)
        opened.append(connection)
        return connection

    yield open_connection
    for connection in opened:
        if connection.is_open:
            with contextlib.suppress(Exception):
                connection.close()
