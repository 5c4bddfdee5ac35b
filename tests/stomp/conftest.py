"""Fixtures for the STOMP tests: an embedded broker with STOMP and AMQP listeners.

The broker runs on a background thread with its own event loop (stomp.py and
pika are blocking clients). `stomp_client(version)` opens stomp.py
connections that are closed at teardown; `Collector` records what arrives
and lets a test wait on it (a condition variable, never a fixed sleep).
`RawStomp` speaks STOMP over a plain socket for what no library would send.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import stomp
import stomp.utils

from moorage.broker.broker import Broker
from moorage.broker.embedded import embedded_config
from tests.helpers import RunningBroker

TIMEOUT = 10.0  # a generous bound for what must arrive (a loaded machine is slow)


class StompBroker(RunningBroker):
    """An embedded broker (`moorage.broker.embedded`) with the STOMP and AMQP listeners
    and the vhosts `/` and `other`, on a background thread."""

    def __init__(self) -> None:
        super().__init__(embedded_config(protocols=("stomp", "amqp"), vhosts=("/", "other")))

    def start(self) -> StompBroker:
        super().start()
        return self

    @property
    def broker(self) -> Broker:
        """The core (only touch it through `call`)."""
        return self.embedded.core

    @property
    def port(self) -> int:
        return self.embedded.ports["stomp"]

    @property
    def amqp_port(self) -> int:
        return self.embedded.ports["amqp"]

    def wait_until(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        return super().wait_until(predicate, timeout)


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
    running = StompBroker().start()
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
