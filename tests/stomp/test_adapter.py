"""The STOMP state machine without sockets: a fake shell, time passed in by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from moorage.broker.auth import UserDirectory
from moorage.broker.broker import Broker
from moorage.broker.config import default_guest
from moorage.protocols.stomp.adapter import StompConnection
from moorage.protocols.stomp.codec import NEED_DATA, Frame, FrameCodec, Role, State
from moorage.storage import MemoryStore
from tests.harness import remember_guest


class FakeShell:
    peer = "127.0.0.1:1"
    from_loopback = True

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def send(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def frames(self) -> list[Frame]:
        codec = FrameCodec(Role.CLIENT)
        codec.version = "1.2"
        codec.receive_data(bytes(self.out))
        self.out.clear()
        found = []
        while (event := codec.next_event()) is not NEED_DATA:
            assert isinstance(event, Frame)
            found.append(event)
        return found


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    b = Broker(store=MemoryStore(), users=UserDirectory([default_guest()]))
    await b.start()
    await remember_guest(b)
    yield b
    await b.stop()


CONNECT = b"STOMP\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:%s\n\n\x00"


async def test_heartbeats_sent_and_enforced(broker: Broker) -> None:
    shell = FakeShell()
    conn = StompConnection(broker, shell, now=100.0)
    conn.data_received(CONNECT % b"1000,1000", now=100.0)
    (connected,) = shell.frames()
    assert connected.get("heart-beat") == "1000,1000"
    assert conn.next_deadline() == pytest.approx(100.5)
    conn.handle_timer(100.5)  # CONNECTED went out since the last tick: no EOL yet
    conn.handle_timer(101.0)
    assert shell.out == b"\n"  # a heart-beat EOL
    conn.data_received(b"\n", now=101.5)  # the client's heart-beat
    conn.handle_timer(103.0)
    assert conn.state is State.CONNECTED
    conn.handle_timer(103.6)  # more than 2 intervals since 101.5
    assert conn.state is State.CLOSED
    assert shell.closed
    assert not broker.connections


CONNECT_AS = b"STOMP\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\nclient-id:%s\n\n\x00"


async def test_client_ids_live_in_each_brokers_registry(broker: Broker) -> None:
    first = StompConnection(broker, FakeShell(), now=0.0)
    first.data_received(CONNECT_AS % b"c1", now=0.0)
    assert broker.client_ids("stomp").holder("c1") is first
    refused_shell = FakeShell()
    refused = StompConnection(broker, refused_shell, now=0.0)
    refused.data_received(CONNECT_AS % b"c1", now=0.0)
    (error,) = refused_shell.frames()
    assert error.command == "ERROR"
    assert (error.get("message") or "").startswith("InvalidClientIDException")
    assert broker.client_ids("stomp").holder("c1") is first  # ActiveMQ: the newcomer is refused
    other = Broker(store=MemoryStore(), users=UserDirectory([default_guest()]))
    await other.start()
    await remember_guest(other)
    try:  # another broker in the process has its own clients
        elsewhere = StompConnection(other, FakeShell(), now=0.0)
        elsewhere.data_received(CONNECT_AS % b"c1", now=0.0)
        assert elsewhere.state is State.CONNECTED
        assert other.client_ids("stomp").holder("c1") is elsewhere
        elsewhere.connection_lost()
    finally:
        await other.stop()
    first.connection_lost()
    assert broker.client_ids("stomp").holder("c1") is None


async def test_no_connect_in_time(broker: Broker) -> None:
    shell = FakeShell()
    conn = StompConnection(broker, shell, now=0.0)
    deadline = conn.next_deadline()
    conn.handle_timer(deadline - 0.1)
    assert not shell.closed
    conn.handle_timer(deadline)
    assert shell.closed


async def test_pipelined_frames_after_connect_use_negotiated_escaping(broker: Broker) -> None:
    shell = FakeShell()
    conn = StompConnection(broker, shell, now=0.0)
    conn.data_received(
        CONNECT % b"0,0"
        + b"SUBSCRIBE\nid:s\ndestination:/queue/esc\n\n\x00"
        + b"SEND\ndestination:/queue/esc\nk:a\\cb\n\n\x00",
        now=0.0,
    )
    connected, message = shell.frames()
    assert connected.command == "CONNECTED"
    assert message.command == "MESSAGE"
    assert message.get("k") == "a:b"


async def test_pre_auth_limits(broker: Broker) -> None:
    shell = FakeShell()
    conn = StompConnection(broker, shell, now=0.0)
    conn.data_received(b"CONNECT\n" + b"x" * 10_000, now=0.0)
    (error,) = shell.frames()
    assert error.command == "ERROR"
    assert error.get("message") == "frame header too large"
    assert shell.closed
