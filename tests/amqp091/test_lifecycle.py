"""Heartbeats, handshake timeout, server shutdown, and the test fixture's own error check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import aio_pika
import pika
import pytest
from pamqp import commands, heartbeat
from pamqp import header as pamqp_header
from pika.exceptions import AMQPConnectionError, ConnectionClosedByBroker

from tests.helpers import RawClient, RunningBroker, make_config, pump_until

Connect = Callable[..., pika.BlockingConnection]
LOOPS = pytest.mark.parametrize("broker", ["asyncio", "uvloop"], indirect=True)


@LOOPS
def test_silent_client_is_disconnected_after_missed_heartbeats(broker: RunningBroker) -> None:
    with RawClient(broker.port, timeout=30) as client:
        client.handshake(heartbeat_interval=1)
        assert broker.connection_count() == 1
        started = time.monotonic()
        frames = client.wait_closed()  # raises TimeoutError if the server never hangs up
        elapsed = time.monotonic() - started
    # never before two missed heartbeats; the exact instant is checked on a manual
    # clock (tests/broker/test_shell_timers.py), how late depends on the machine
    assert elapsed > 1.5
    # the server kept sending its own heartbeats while it waited
    assert frames
    assert all(isinstance(f, heartbeat.Heartbeat) for f in frames)
    assert broker.wait_until(lambda: not broker.core.connections)


def test_client_heartbeats_keep_a_connection_alive(broker: RunningBroker) -> None:
    with RawClient(broker.port, timeout=6) as client:
        client.handshake(heartbeat_interval=1)
        deadline = time.monotonic() + 2.6  # beyond the 2 s of missed heartbeats
        while time.monotonic() < deadline:
            client.send(heartbeat.Heartbeat.marshal())
            _channel, value = client.read_frame()  # the server's heartbeat, every 0.5 s
            assert isinstance(value, heartbeat.Heartbeat)
        client.open_channel(1)  # still alive and answering


@LOOPS
def test_pika_idle_with_heartbeat_stays_connected(broker: RunningBroker, connect: Connect) -> None:
    # pika closes the connection itself (AMQPHeartbeatTimeout) when the server is silent
    connection = connect(heartbeat=1)
    channel = connection.channel()
    channel.queue_declare("idle")
    connection.process_data_events(time_limit=3.2)
    assert connection.is_open
    # pika only checks for the broker's heartbeats every timeout + 5 s, so count them
    checker = connection._impl._heartbeat_checker
    assert checker._heartbeat_frames_received >= 3
    assert channel.queue_declare("idle", passive=True).method.message_count == 0
    assert broker.connection_count() == 1


def test_handshake_timeout(tmp_path: Path, start_broker: Callable[..., RunningBroker]) -> None:
    running = start_broker(make_config(tmp_path, handshake_timeout=0.5))
    with RawClient(running.port, timeout=30) as client:  # a bound, not a speed
        client.send(pamqp_header.ProtocolHeader().marshal())
        client.expect(commands.Connection.Start)
        client.wait_closed()  # the exact instant: tests/broker/test_shell_timers.py


@LOOPS
def test_shutdown_closes_clients_with_320(broker: RunningBroker, connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("before-shutdown")
    assert broker.loop is not None
    stopping = asyncio.run_coroutine_threadsafe(broker.daemon.stop(), broker.loop)
    with pytest.raises(ConnectionClosedByBroker) as info:
        pump_until(connection, lambda: False, timeout=5)
    assert info.value.reply_code == 320
    assert "CONNECTION_FORCED" in info.value.reply_text
    stopping.result(5)  # stop() returns once every client is gone
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(
            pika.URLParameters(broker.url + "?connection_attempts=1&socket_timeout=1")
        )


async def test_shutdown_seen_by_aio_pika(broker: RunningBroker) -> None:
    connection = await aio_pika.connect(broker.url, timeout=5)
    closed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    connection.close_callbacks.add(lambda _conn, exc: closed.done() or closed.set_result(exc))
    assert broker.loop is not None
    stopping = asyncio.wrap_future(
        asyncio.run_coroutine_threadsafe(broker.daemon.stop(), broker.loop)
    )
    exc = await asyncio.wait_for(closed, 5)
    await asyncio.wait_for(stopping, 5)
    assert exc is not None
    assert "320" in repr(exc)
    await connection.close()


def test_fixture_reports_loop_errors(tmp_path: Path) -> None:
    """The check behind every broker fixture: an exception in a loop callback is seen."""
    running = RunningBroker(make_config(tmp_path)).start()
    assert running.loop is not None

    def boom() -> None:
        raise RuntimeError("boom in a callback")

    running.call(lambda: running.loop.call_soon(boom))  # type: ignore[union-attr]
    running.call(lambda: None)  # the callback ran before this
    running.stop()
    assert any("boom in a callback" in e for e in running.errors)


def test_connection_limit_refuses_the_next_client(start_broker, tmp_path):
    running = start_broker(make_config(tmp_path, max_connections=2))
    first = pika.BlockingConnection(pika.URLParameters(running.url))
    second = pika.BlockingConnection(pika.URLParameters(running.url))
    with pytest.raises(AMQPConnectionError) as refused:
        pika.BlockingConnection(pika.URLParameters(running.url))
    assert "connection limit (2)" in str(refused.value)
    first.close()
    third = pika.BlockingConnection(pika.URLParameters(running.url))  # a slot is free again
    assert third.is_open
    third.close()
    second.close()
