"""The WebSocket shell without a network: a fake WebSocket and a fake adapter."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiohttp import WSCloseCode, WSMessage, WSMsgType

from moorage.broker.clock import SYSTEM_CLOCK
from moorage.broker.flow import WriteFlow
from moorage.protocols.websocket import (
    HIGH_WATER,
    Framing,
    WebSocketConnection,
    WebSocketPlugin,
    offered_subprotocols,
)
from moorage.storage import MemoryStore


class FakeWS:
    """Messages in from a queue; `send_frame` waits on `gate` (a slow client)."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[WSMessage] = asyncio.Queue()
        self.sent: list[tuple[bytes, WSMsgType]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.closed = False
        self.close_code: int | None = None

    async def receive(self) -> WSMessage:
        if self.closed:
            return WSMessage(WSMsgType.CLOSED, None, None)
        return await self.incoming.get()

    async def send_frame(self, message: bytes, opcode: WSMsgType) -> None:
        await self.gate.wait()
        self.sent.append((message, opcode))

    async def close(self, *, code: int) -> None:
        self.closed = True
        self.close_code = code
        self.incoming.put_nowait(WSMessage(WSMsgType.CLOSING, None, None))


class FakeAdapter:
    def __init__(self, shell: WebSocketConnection) -> None:
        self.shell = shell
        self.received: list[bytes] = []
        self.writable: list[bool] = []
        self.lost = False
        self.closed = False
        self.publisher = True
        self.waiting = False  # set by a test: an answer is awaited, input not handled
        self.held_at: list[float] = []

    def data_received(self, data: bytes, now: float) -> None:
        self.received.append(data)
        if data == b"echo":
            self.shell.send(b"one")
            self.shell.send(b"two")
        elif data == b"bye":
            self.shell.send(b"goodbye")
            self.shell.close()

    def next_deadline(self) -> float:
        return float("inf")

    def handle_timer(self, now: float) -> None:
        pass

    def peer_held(self, now: float) -> None:
        self.held_at.append(now)

    def set_writable(self, writable: bool) -> None:
        self.writable.append(writable)

    def connection_lost(self) -> None:
        self.lost = True

    def shutdown(self, reason: str = "shutdown") -> None:
        self.shell.close()


def make_connection(framing: Framing) -> tuple[WebSocketConnection, FakeWS]:
    class Plugin(WebSocketPlugin):
        def make_adapter(self, broker: Any, shell: WebSocketConnection, now: float) -> Any:
            return FakeAdapter(shell)

    plugin = Plugin()
    plugin.framing = framing
    flow = WriteFlow(MemoryStore(), 1 << 20)
    broker = SimpleNamespace(flow=flow, clock=SYSTEM_CLOCK)  # what the shell reads of it
    listener: Any = SimpleNamespace(plugin=plugin, broker=broker)
    request: Any = SimpleNamespace(transport=None)
    ws = FakeWS()
    return WebSocketConnection(listener, request, ws), ws  # type: ignore[arg-type]


def binary(data: bytes) -> WSMessage:
    return WSMessage(WSMsgType.BINARY, data, None)


async def test_binary_output_is_coalesced_and_close_is_1000():
    conn, ws = make_connection(Framing.BINARY)
    task = asyncio.create_task(conn.run())
    await ws.incoming.put(binary(b"echo"))
    await ws.incoming.put(WSMessage(WSMsgType.TEXT, "bye", None))
    await asyncio.wait_for(task, 1)
    assert conn.adapter.received == [b"echo", b"bye"]
    assert ws.sent == [(b"onetwogoodbye", WSMsgType.BINARY)]  # one tick, one message
    assert ws.close_code == WSCloseCode.OK
    assert conn.adapter.lost


async def test_text_framing_keeps_boundaries_and_falls_back_to_binary():
    conn, ws = make_connection(Framing.TEXT)
    task = asyncio.create_task(conn.run())
    await ws.incoming.put(binary(b"echo"))
    await asyncio.sleep(0)
    conn.send(b"\xff\x00")
    await ws.incoming.put(binary(b"bye"))
    await asyncio.wait_for(task, 1)
    assert ws.sent == [
        (b"one", WSMsgType.TEXT),
        (b"two", WSMsgType.TEXT),
        (b"\xff\x00", WSMsgType.BINARY),
        (b"goodbye", WSMsgType.TEXT),
    ]


async def test_client_close_is_end_of_stream_then_connection_lost():
    conn, ws = make_connection(Framing.BINARY)
    task = asyncio.create_task(conn.run())
    await ws.incoming.put(WSMessage(WSMsgType.CLOSE, WSCloseCode.OK, ""))
    await asyncio.wait_for(task, 1)
    assert conn.adapter.received == [b""]
    assert conn.adapter.lost


async def test_slow_client_pauses_deliveries_until_drained():
    conn, ws = make_connection(Framing.BINARY)
    task = asyncio.create_task(conn.run())
    await asyncio.sleep(0)
    ws.gate.clear()  # the client stops reading
    chunk = b"x" * 4096
    for _ in range(HIGH_WATER // len(chunk) + 2):
        conn.send(chunk)
    for _ in range(5):
        await asyncio.sleep(0)
    assert conn.adapter.writable == [False]
    ws.gate.set()
    for _ in range(50):
        await asyncio.sleep(0)
    assert conn.adapter.writable == [False, True]
    assert sum(len(m) for m, _ in ws.sent) == len(chunk) * (HIGH_WATER // len(chunk) + 2)
    conn.shutdown("test")
    await asyncio.wait_for(task, 1)
    assert ws.close_code == WSCloseCode.GOING_AWAY


def test_offered_subprotocols_splits_every_header():
    request: Any = SimpleNamespace(
        headers=SimpleNamespace(getall=lambda _name, _default: ["mqtt, mqttv3.1", " v12.stomp ,"])
    )
    assert offered_subprotocols(request) == ["mqtt", "mqttv3.1", "v12.stomp"]


async def test_memory_alarm_stops_reading_a_publisher_until_it_clears():
    conn, ws = make_connection(Framing.BINARY)
    flow = conn.listener.broker.flow
    task = asyncio.create_task(conn.run())
    ws.incoming.put_nowait(binary(b"first"))
    await asyncio.sleep(0.01)
    flow.set_memory_alarm(True)
    ws.incoming.put_nowait(binary(b"second"))  # read: the alarm is checked after a message
    ws.incoming.put_nowait(binary(b"third"))
    await asyncio.sleep(0.05)
    adapter = conn.adapter
    assert adapter is not None
    assert adapter.received == [b"first", b"second"]
    flow.set_memory_alarm(False)
    await asyncio.sleep(0.01)
    assert adapter.received == [b"first", b"second", b"third"]
    ws.incoming.put_nowait(binary(b"bye"))
    await asyncio.wait_for(task, 2)


async def test_a_waiting_adapter_is_not_read_until_it_wants_input():
    """`Adapter.waiting` (a backend's answer awaited): the shell reads no further
    message until the adapter calls `input_wanted`, so nothing piles up."""
    conn, ws = make_connection(Framing.BINARY)
    task = asyncio.create_task(conn.run())
    await asyncio.sleep(0)  # the task made its adapter
    adapter = conn.adapter
    assert adapter is not None
    adapter.waiting = True  # the next message's handling starts a wait
    ws.incoming.put_nowait(binary(b"login"))
    ws.incoming.put_nowait(binary(b"second"))
    ws.incoming.put_nowait(binary(b"third"))
    for _ in range(20):  # the loop turns; nothing beyond the message being waited on
        await asyncio.sleep(0)
    assert adapter.received == [b"login"]
    adapter.waiting = False
    conn.input_wanted()
    for _ in range(10_000):  # loop turns, not time: the shell reads on its own turns
        if len(adapter.received) == 3:
            break
        await asyncio.sleep(0)
    assert adapter.received == [b"login", b"second", b"third"]
    ws.incoming.put_nowait(binary(b"bye"))
    await asyncio.wait_for(task, 2)
