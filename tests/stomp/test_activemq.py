"""ActiveMQ features over stomp.py: selectors on shared queues, JMSXGroupID message
groups on FIFO queues, anonymous access and the one-connection-per-client-id rule."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from moorage.broker.config import Config, ConfigError
from tests.stomp.conftest import Client, RawStomp, StompBroker

VERSIONS = ["1.0", "1.1", "1.2"]


ClientFactory = Callable[..., Client]


def ready_count(stomp_broker: StompBroker, queue: str) -> int:
    return stomp_broker.call(lambda: stomp_broker.broker.vhosts["/"].queues[queue].message_count)


# -- selectors on competing consumers (the core's consumer filter) -----------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_queue_selectors_route_between_consumers(
    stomp_client: ClientFactory, stomp_broker: StompBroker, version: str
) -> None:
    reds = stomp_client(version)
    reds.subscribe(
        "/queue/qsel", id="red", ack="client-individual", headers={"selector": "color = 'red'"}
    )
    blues = stomp_client(version)
    blues.subscribe(
        "/queue/qsel", id="blue", ack="auto", headers={"selector": "color IN ('blue', 'navy')"}
    )
    reds.sync()
    blues.sync()
    producer = stomp_client(version)
    for body, color in [("r1", "red"), ("b1", "blue"), ("g1", "green"), ("r2", "red")]:
        producer.send("/queue/qsel", body, headers={"color": color})
    producer.send("/queue/qsel", "n1", headers={"color": "navy"}, receipt="sent")
    assert producer.collector.wait(lambda: "sent" in producer.collector.receipts)
    assert [f.body for f in reds.collector.wait_messages(2)] == ["r1", "r2"]
    assert [f.body for f in blues.collector.wait_messages(2)] == ["b1", "n1"]
    reds.sync()
    blues.sync()
    assert len(reds.collector.messages) == 2
    assert len(blues.collector.messages) == 2
    # nobody's selector accepts the green one: it stays queued for a later consumer
    assert ready_count(stomp_broker, "qsel") == 1
    anyone = stomp_client(version)
    anyone.subscribe("/queue/qsel", id="all", ack="auto")
    assert [f.body for f in anyone.collector.wait_messages(1)] == ["g1"]


def test_queue_selector_skipped_message_waits_for_a_matching_consumer(
    stomp_client: ClientFactory, stomp_broker: StompBroker
) -> None:
    picky = stomp_client("1.2")
    picky.subscribe("/queue/qsel-later", id="p", headers={"selector": "JMSPriority > 4"})
    picky.sync()
    picky.send("/queue/qsel-later", "low", headers={"priority": "1"})
    picky.send("/queue/qsel-later", "high", headers={"priority": "9"})
    assert [f.body for f in picky.collector.wait_messages(1)] == ["high"]
    picky.sync()
    assert picky.collector.bodies == ["high"]
    assert ready_count(stomp_broker, "qsel-later") == 1
    later = stomp_client("1.2")
    later.subscribe("/queue/qsel-later", id="l", headers={"selector": "JMSPriority < 4"})
    assert [f.body for f in later.collector.wait_messages(1)] == ["low"]


def test_invalid_selector_is_an_error(stomp_client: ClientFactory) -> None:
    c = stomp_client("1.2")
    c.subscribe("/queue/qsel-bad", id="s", headers={"selector": "a = = 1"})
    assert c.collector.wait(lambda: bool(c.collector.errors))
    assert c.collector.errors[0].headers["message"] == "invalid selector"


# -- JMSXGroupID -> FIFO message groups ----------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_jmsx_groups_keep_order_with_two_consumers(
    stomp_client: ClientFactory, stomp_broker: StompBroker, version: str
) -> None:
    # The first SUBSCRIBE declares the queue as a FIFO queue (queue argument header).
    one = stomp_client(version)
    one.subscribe(
        "/queue/groups", id="c1", ack="client-individual", headers={"x-queue-type": "fifo"}
    )
    two = stomp_client(version)
    two.subscribe("/queue/groups", id="c2", ack="client-individual")
    one.sync()
    two.sync()
    assert stomp_broker.call(lambda: stomp_broker.broker.vhosts["/"].queues["groups"].options.fifo)
    producer = stomp_client(version)
    for n in range(1, 4):
        for group in ("A", "B"):
            producer.send("/queue/groups", f"{group}{n}", headers={"JMSXGroupID": group})
    producer.sync()
    handled = {"c1": 0, "c2": 0}
    order: dict[str, list[str]] = {"A": [], "B": []}

    for round_ in range(1, 4):
        # Acks (and sends) were handled before each sync's receipt, and whatever
        # they released was written before the next sync's: no waiting needed.
        one.sync()
        two.sync()
        # one message per group in flight: exactly one of A and one of B out now
        assert len(one.collector.messages) + len(two.collector.messages) == 2 * round_
        pending = []
        for client, sub in ((one, "c1"), (two, "c2")):
            pending += [(client, f) for f in client.collector.messages[handled[sub] :]]
            handled[sub] = len(client.collector.messages)
        assert sorted(f.headers["JMSXGroupID"] for _c, f in pending) == ["A", "B"]
        for client, frame in pending:
            assert frame.headers["x-message-group-id"] == frame.headers["JMSXGroupID"]
            order[frame.headers["JMSXGroupID"]].append(frame.body)
            client.ack(frame)
    assert order == {"A": ["A1", "A2", "A3"], "B": ["B1", "B2", "B3"]}


def test_fifo_declared_by_send_header(
    stomp_client: ClientFactory, stomp_broker: StompBroker
) -> None:
    producer = stomp_client("1.2")
    producer.send(
        "/queue/fifo-by-send",
        "x",
        headers={"x-queue-type": "fifo", "JMSXGroupID": "g"},
        receipt="r",
    )
    assert producer.collector.wait(lambda: "r" in producer.collector.receipts)
    queue = stomp_broker.call(lambda: stomp_broker.broker.vhosts["/"].queues["fifo-by-send"])
    assert queue.options.fifo
    consumer = stomp_client("1.2")
    consumer.subscribe("/queue/fifo-by-send", id="s")
    (frame,) = consumer.collector.wait_messages(1)
    assert "x-queue-type" not in frame.headers  # a queue argument, not a message header
    assert frame.headers["JMSXGroupID"] == "g"


def test_queue_argument_mismatch_is_refused(stomp_client: ClientFactory) -> None:
    c = stomp_client("1.2")
    c.subscribe("/queue/plain-queue", id="s", receipt="r")
    assert c.collector.wait(lambda: "r" in c.collector.receipts)
    d = stomp_client("1.2")
    d.subscribe("/queue/plain-queue", id="s", headers={"x-queue-type": "fifo"})
    assert d.collector.wait(lambda: bool(d.collector.errors))
    assert d.collector.errors[0].headers["message"].startswith("PRECONDITION_FAILED")


# -- anonymous access ------------------------------------------------------------------------


def test_anonymous_refused_by_default(raw: Callable[[], RawStomp]) -> None:
    client = raw()
    client.send(b"CONNECT\naccept-version:1.2\nhost:/\n\n\x00")
    answer = client.read_until_closed()
    assert answer.startswith(b"ERROR\n"), answer
    assert b"message:ACCESS_REFUSED - anonymous login refused" in answer
    assert b"auth.anonymous_user" in answer


@pytest.mark.parametrize("version", VERSIONS)
def test_anonymous_allowed_as_configured_user(
    stomp_client: ClientFactory, stomp_broker: StompBroker, version: str
) -> None:
    users = stomp_broker.broker.users
    stomp_broker.call(lambda: setattr(users, "anonymous", users.users["guest"]))
    c = stomp_client(version, login=None, passcode=None)
    c.subscribe("/queue/anon", id="s")
    c.send("/queue/anon", "hello", headers={"user-id": "guest"})  # acts as guest
    (frame,) = c.collector.wait_messages(1)
    assert frame.body == "hello"
    assert frame.headers["user-id"] == "guest"


def test_anonymous_user_config(tmp_path: Path) -> None:
    path = tmp_path / "moorage.toml"
    path.write_text('[auth]\nanonymous_user = "guest"\n')
    config = Config.load(path)
    directory = config.user_directory()
    assert directory.anonymous is not None
    assert directory.anonymous.name == "guest"
    assert Config.load(None).user_directory().anonymous is None
    path.write_text('[auth]\nanonymous_user = "nobody"\n')
    with pytest.raises(ConfigError, match="anonymous_user 'nobody' is not a user"):
        Config.load(path)


# -- client-id connected once ----------------------------------------------------------------


def test_client_id_connected_once(stomp_client: ClientFactory, raw: Callable[[], RawStomp]) -> None:
    first = stomp_client("1.2", headers={"client-id": "only-one"})
    first.subscribe(
        "/topic/once", id="s", headers={"activemq.subscriptionName": "sub"}, receipt="r"
    )
    assert first.collector.wait(lambda: "r" in first.collector.receipts)
    second = raw()
    second.send(
        b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n"
        b"client-id:only-one\n\n\x00"
    )
    answer = second.read_until_closed()
    assert answer.startswith(b"ERROR\n"), answer
    assert b"message:InvalidClientIDException" in answer
    # the first connection is untouched and keeps its durable subscription
    first.send("/topic/once", "still mine")
    assert first.collector.wait_messages(1)[0].body == "still mine"
    first.disconnect()
    again = stomp_client("1.2", headers={"client-id": "only-one"})  # free again
    again.subscribe("/topic/once", id="s", headers={"activemq.subscriptionName": "sub"})
    again.sync()
    assert again.is_connected()
