"""The core's shared facilities: ordered replies on the real stores, keep-alive
rules with time as plain numbers, client-id claims, and the header text rule."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from moorage.broker.client_ids import ClientIds
from moorage.broker.header_values import header_text
from moorage.broker.keepalive import Due, KeepAlive
from moorage.broker.replies import OrderedReplies
from moorage.storage import MemoryStore, QueueRecord
from moorage.storage.sqlite import SQLiteStore

# -- ordered replies -----------------------------------------------------------------------


async def test_replies_wait_for_the_store_and_keep_their_order(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    await store.open()
    try:
        replies = OrderedReplies(store)
        sent: list[str] = []
        done = asyncio.Event()

        def reply(name: str) -> object:
            def send(error: BaseException | None) -> None:
                assert error is None
                sent.append(name)
                if name == "last":
                    done.set()

            return send

        replies.send(reply("immediate"))  # nothing pending, nothing stored
        assert sent == ["immediate"]
        store.put_queue(QueueRecord("/", "q"))
        assert store.pending
        replies.send(reply("declare-ok"), durable=True)
        assert sent == ["immediate"]
        assert replies.waiting == 1
        replies.send(reply("behind"))  # needs nothing, but must not overtake
        replies.send(reply("last"), stored=True, removals=False)
        assert sent == ["immediate"]
        await asyncio.wait_for(done.wait(), 30)
        assert sent == ["immediate", "declare-ok", "behind", "last"]
        assert replies.waiting == 0
        assert not replies.must_wait()
        assert replies.must_wait(stored=True)
    finally:
        await store.close()


def test_replies_on_the_memory_store_go_at_once() -> None:
    replies = OrderedReplies(MemoryStore())
    sent: list[BaseException | None] = []
    replies.send(sent.append, stored=True)
    replies.send(sent.append, durable=True)
    assert sent == [None, None]
    assert replies.waiting == 0


# -- keep-alive ----------------------------------------------------------------------------


def test_handshake_deadline() -> None:
    k = KeepAlive(100.0, handshake_timeout=10.0)
    assert k.deadline() == 110.0
    assert k.poll(109.9) is Due.NOTHING
    assert k.poll(110.0) is Due.HANDSHAKE_TIMEOUT


def test_amqp_heartbeats_both_ways() -> None:
    """heartbeat=10: we beat every 5 s when idle; the peer is gone after 20 s of silence."""
    k = KeepAlive(0.0, handshake_timeout=10.0)
    k.start(1.0, recv_timeout=20.0, send_interval=5.0)
    assert k.deadline() == 6.0
    assert k.poll(6.0) is Due.HEARTBEAT  # we sent nothing since start
    k.sent()
    assert k.poll(11.0) is Due.NOTHING  # we did send: no beat needed
    assert k.poll(16.0) is Due.HEARTBEAT
    k.received(15.0)
    assert k.deadline() == 21.0
    assert k.poll(34.9) is Due.HEARTBEAT  # idle since 16 s; the peer not silent until 35 s
    assert k.poll(35.0) is Due.PEER_SILENT


def test_mqtt_keep_alive_receive_only() -> None:
    """Keep Alive 60: the broker closes after 90 s of silence and never beats itself."""
    k = KeepAlive(0.0, handshake_timeout=10.0)
    k.start(2.0, recv_timeout=90.0, send_interval=0.0)
    assert k.deadline() == 92.0
    k.received(50.0)
    assert k.deadline() == 140.0
    assert k.poll(139.0) is Due.NOTHING
    assert k.poll(140.0) is Due.PEER_SILENT


def test_no_keep_alive_never_fires() -> None:
    k = KeepAlive(0.0, handshake_timeout=10.0)
    k.start(1.0, recv_timeout=0.0, send_interval=0.0)
    assert k.deadline() == float("inf")
    assert k.poll(1e9) is Due.NOTHING


# -- client ids ----------------------------------------------------------------------------


def test_client_id_claims() -> None:
    ids: ClientIds[str] = ClientIds()
    assert ids.claim("c", "first") is None
    assert ids.holder("c") == "first"
    assert ids.claim("c", "first") is None  # claiming again is not a takeover
    assert ids.claim("c", "second") == "first"  # MQTT takeover: the old holder is told
    assert not ids.release("c", "first")  # the old holder cannot free its successor's id
    assert ids.holder("c") == "second"
    assert ids.release("c", "second")
    assert ids.holder("c") is None
    assert len(ids) == 0


# -- header text ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (False, "false"),
        ("é", "é"),
        (42, "42"),
        (1.5, "1.5"),
        (Decimal("1.25"), "1.25"),
        (b"\xff", "\ufffd"),
        (datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC), "1700000000"),
        (datetime(2023, 11, 14, 22, 13, 20), "1700000000"),  # naive AMQP timestamps are UTC
        (None, None),
        ({"a": 1}, None),
        ([1, 2], None),
    ],
)
def test_header_text(value: object, text: str | None) -> None:
    assert header_text(value) == text


def test_the_broker_owns_one_registry_per_protocol() -> None:
    from moorage.broker.broker import Broker

    broker = Broker()
    assert broker.client_ids("mqtt") is broker.client_ids("mqtt")
    assert broker.client_ids("mqtt") is not broker.client_ids("stomp")
    assert Broker().client_ids("mqtt") is not broker.client_ids("mqtt")  # brokers never share
