"""A pytest plugin: a Moorage broker in the test's process, on free loopback ports.

Installed with Moorage and registered through the `pytest11` entry point
(`moorage`), so a project that has Moorage installed just asks for the
fixture; nothing changes for tests that don't (no autouse fixture, no
command-line option, and the broker is imported only when a test asks)::

    import pika

    def test_round_trip(moorage_broker):
        connection = pika.BlockingConnection(pika.URLParameters(moorage_broker.amqp_url))
        channel = connection.channel()
        channel.queue_declare("greetings")
        channel.basic_publish("", "greetings", b"hello")
        ...

`moorage_broker` is a running `moorage.broker.embedded.EmbeddedBroker` with
the AMQP, MQTT and STOMP listeners and a memory store, on a background
thread (blocking clients such as pika, paho-mqtt and stomp.py work from the
test; asyncio clients such as aio-pika work from an async test). Its URLs:
`amqp_url`, `mqtt_url`, `stomp_url`, `url(protocol, user=..., password=...,
vhost=...)`, `ports`. Parametrize it indirectly with a dict of
`EmbeddedBroker` settings to change them for a test::

    @pytest.mark.parametrize("moorage_broker", [{"storage": "sqlite"}], indirect=True)

`moorage_broker_factory(**settings)` starts further brokers with any
settings (`protocols`, `storage`, `data_dir`, `users`, `vhosts`, `limits`,
`loop`, or a whole `config`). Every broker is stopped at teardown, closing
its clients with each protocol's own close, and a test whose broker's event
loop reported an error (an exception in a broker callback) fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from moorage.broker.embedded import EmbeddedBroker

FIXTURE_PROTOCOLS = ("amqp", "mqtt", "stomp")


@pytest.fixture
def moorage_broker_factory() -> Iterator[Callable[..., EmbeddedBroker]]:
    """Start brokers on background threads; each is stopped and checked at teardown."""
    from moorage.broker.embedded import EmbeddedBroker

    started: list[EmbeddedBroker] = []

    def start(**settings: Any) -> EmbeddedBroker:
        broker = EmbeddedBroker(**settings)
        started.append(broker)
        return broker.start()

    yield start
    errors: list[str] = []
    for broker in started:
        broker.stop()
        errors.extend(broker.errors)
    if errors:
        pytest.fail("Moorage broker loop reported errors:\n" + "\n".join(errors), pytrace=False)


@pytest.fixture
def moorage_broker(
    request: pytest.FixtureRequest, moorage_broker_factory: Callable[..., EmbeddedBroker]
) -> EmbeddedBroker:
    """A running broker with AMQP, MQTT and STOMP listeners and a memory store."""
    settings: dict[str, Any] = {"protocols": FIXTURE_PROTOCOLS}
    settings.update(getattr(request, "param", None) or {})
    return moorage_broker_factory(**settings)
