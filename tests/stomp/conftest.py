"""Fixtures for the STOMP tests: a core broker with STOMP and AMQP listeners on port 0.

The broker runs on a background thread with its own event loop (stomp.py and
pika are blocking clients). `stomp_client(version)` opens stomp.py
connections that are closed at teardown; `Collector` records what arrives
and lets a test wait on it (a condition variable, never a fixed sleep).
`RawStomp` speaks STOMP over a plain socket for what no library would send.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import stomp
import stomp.utils

import moorage.protocols.amqp091
import moorage.protocols.amqp091.server
import moorage.protocols.stomp.server
from moorage.broker.auth import UserDirectory
from moorage.broker.broker import Broker
from moorage.broker.config import default_guest
from moorage.storage import MemoryStore

T = TypeVar("T")
TIMEOUT = 3.0


class StompBroker:
    """A `Broker` with STOMP and AMQP listeners, on its own loop thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.errors: list[str] = []
        self.loop.set_exception_handler(lambda _loop, ctx: self.errors.append(str(ctx)))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.broker = Broker(
            store=MemoryStore(),
            users=UserDirectory([default_guest()], frozenset({"guest"})),
            vhosts=("/", "other"),
        )
        self.run(self.broker.start())
        stomp, amqp = moorage.protocols.stomp.server.plugin, moorage.protocols.amqp091.server.plugin
        self.stomp = self.run(stomp.start(self.broker, "127.0.0.1", 0))
        self.amqp = self.run(amqp.start(self.broker, "127.0.0.1", 0))
        self.port = self.stomp.server.sockets[0].getsockname()[1]
        self.amqp_port = self.amqp.server.sockets[0].getsockname()[1]

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)

    def call(self, fn: Callable[[], T]) -> T:
        async def wrapper() -> T:
            return fn()

        return self.run(wrapper())

    def wait_until(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        while not self.call(predicate):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def queue_exists(self, name: str, vhost: str = "/") -> bool:
        return self.call(lambda: name in self.broker.vhosts[vhost].queues)

    def stop(self) -> None:
        async def close() -> None:
            for listener in (self.stomp, self.amqp):
                listener.server.close()
                for conn in list(listener.connections):
                    if conn.transport is not None:
                        conn.transport.abort()
            await self.broker.stop()

        with contextlib.suppress(Exception):
            self.run(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


class Collector(stomp.ConnectionListener):
    """Records MESSAGE, RECEIPT, ERROR frames and heart-beats; `wait` on a predicate."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.messages: list[stomp.utils.Frame] = []
        self.receipts: list[str] = []
        self.errors: list[stomp.utils.Frame] = []
        self.heartbeats = 0
        self.disconnected = False

    def _add(self, fn: Callable[[], None]) -> None:
        with self.cond:
            fn()
            self.cond.notify_all()

    def on_message(self, frame: stomp.utils.Frame) -> None:
        self._add(lambda: self.messages.append(frame))

    def on_receipt(self, frame: stomp.utils.Frame) -> None:
        self._add(lambda: self.receipts.append(frame.headers["receipt-id"]))

    def on_error(self, frame: stomp.utils.Frame) -> None:
        self._add(lambda: self.errors.append(frame))

    def on_heartbeat(self) -> None:
        def bump() -> None:
            self.heartbeats += 1

        self._add(bump)

    def on_disconnected(self) -> None:
        self._add(lambda: setattr(self, "disconnected", True))

    def wait(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def wait_messages(self, n: int, timeout: float = TIMEOUT) -> list[stomp.utils.Frame]:
        assert self.wait(lambda: len(self.messages) >= n, timeout), (
            f"expected {n} messages, got {len(self.messages)}: {self.errors}"
        )
        return self.messages[:n]

    @property
    def bodies(self) -> list[str]:
        return [m.body for m in self.messages]


CONNECTIONS = {"1.0": stomp.Connection10, "1.1": stomp.Connection11, "1.2": stomp.Connection12}


class Client:
    """A stomp.py connection and its collector, with version-neutral ack/nack."""

    def __init__(self, conn: Any, collector: Collector, version: str) -> None:
        self.conn = conn
        self.collector = collector
        self.version = version

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    def ack(self, frame: stomp.utils.Frame, **kw: Any) -> None:
        h = frame.headers
        if self.version == "1.0":
            self.conn.ack(h["message-id"], **kw)
        elif self.version == "1.1":
            self.conn.ack(h["message-id"], h["subscription"], **kw)
        else:
            self.conn.ack(h["ack"], **kw)

    def nack(self, frame: stomp.utils.Frame, **kw: Any) -> None:
        h = frame.headers
        if self.version == "1.1":
            self.conn.nack(h["message-id"], h["subscription"], **kw)
        else:
            self.conn.nack(h["ack"], **kw)

    def sync(self) -> None:
        """A round trip: every frame the server sent before the receipt has arrived."""
        receipt = f"sync-{time.monotonic_ns()}"
        self.conn.send("/queue/stomp-sync-sink", "", receipt=receipt)
        assert self.collector.wait(lambda: receipt in self.collector.receipts)


@pytest.fixture
def stomp_broker() -> Iterator[StompBroker]:
    running = StompBroker()
    yield running
    running.stop()
    assert not running.errors, running.errors


@pytest.fixture
def stomp_client(stomp_broker: StompBroker) -> Iterator[Callable[..., Client]]:
    opened: list[Any] = []

    def open_client(
        version: str = "1.2",
        *,
        login: str = "guest",
        passcode: str = "guest",
        heartbeats: tuple[int, int] = (0, 0),
        headers: dict[str, str] | None = None,
    ) -> Client:
        cls = CONNECTIONS[version]
        kwargs: dict[str, Any] = {"auto_content_length": True}
        if version != "1.0":
            kwargs["heartbeats"] = heartbeats
        conn = cls([("127.0.0.1", stomp_broker.port)], **kwargs)
        collector = Collector()
        conn.set_listener("collector", collector)
        conn.connect(login, passcode, wait=True, headers=headers or {})
        opened.append(conn)
        return Client(conn, collector, version)

    yield open_client
    for conn in opened:
        if conn.is_connected():
            with contextlib.suppress(Exception):
                conn.disconnect()


class RawStomp:
    """STOMP over a blocking socket: send bytes, read frames until the server closes."""

    def __init__(self, port: int, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def connect(self, version: str = "1.2", heart_beat: str = "0,0") -> bytes:
        self.send(
            f"CONNECT\naccept-version:{version}\nhost:/\nlogin:guest\npasscode:guest\n"
            f"heart-beat:{heart_beat}\n\n\x00".encode()
        )
        data = b""
        while b"\x00" not in data:
            chunk = self.sock.recv(4096)
            assert chunk, "server closed during CONNECT"
            data += chunk
        assert data.startswith(b"CONNECTED"), data
        return data

    def read_until_closed(self) -> bytes:
        data = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(stomp_broker: StompBroker) -> Iterator[Callable[[], RawStomp]]:
    opened: list[RawStomp] = []

    def open_raw() -> RawStomp:
        client = RawStomp(stomp_broker.port)
        opened.append(client)
        return client

    yield open_raw
    for client in opened:
        client.close()
