"""Helpers for the integration tests: an in-process broker on its own thread, a raw client.

`RunningBroker` is the AMQP tests' view of the public embedding API
(`moorage.broker.embedded.EmbeddedBroker` on a background thread with its own
event loop), so blocking clients (pika's BlockingConnection, kombu) can be
used from the test thread while asyncio clients (aio-pika) run on the test's
loop. Anything that touches core state goes through `RunningBroker.call`,
which runs on the broker's loop thread.

`RawClient` speaks AMQP 0-9-1 over a plain blocking socket with pamqp frames,
for the tests that must send what no well-behaved client library would.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from pamqp import body as pamqp_body
from pamqp import commands, frame, header, heartbeat
from pamqp.base import Frame

from moorage.broker.auth import User
from moorage.broker.clock import SYSTEM_CLOCK, Clock
from moorage.broker.config import Config
from moorage.broker.daemon import Daemon
from moorage.broker.embedded import (
    CALL_TIMEOUT,
    EmbeddedBroker,
    embedded_config,
    free_port,
    make_user,
)

__all__ = ["RunningBroker", "free_port", "make_config", "make_user"]

T = TypeVar("T")


def make_config(
    data_dir: Path, *extra_users: User, vhosts: tuple[str, ...] = ("/",), **limits: Any
) -> Config:
    """An AMQP listener on a free loopback port, memory storage, guest plus `extra_users`."""
    return embedded_config(data_dir=data_dir, users=extra_users, vhosts=vhosts, limits=limits)


class RunningBroker:
    """An `EmbeddedBroker` on a background thread, with the AMQP tests' shortcuts.

    `config` is used as it is (see `make_config`); without one the broker
    gets the embedded defaults (an AMQP listener, memory store, guest).
    """

    def __init__(
        self, config: Config | None = None, loop_name: str = "asyncio", clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.embedded = EmbeddedBroker(config, loop=loop_name, clock=clock)

    @property
    def clock(self) -> Clock:
        """The broker's clock (a ManualClock in the timer tests)."""
        return self.embedded.clock

    def start(self) -> RunningBroker:
        """Start and wait until it listens; raises the daemon's StartupError."""
        self.embedded.start()
        return self

    def stop(self) -> None:
        """Shut down cleanly and join the thread (idempotent); loop errors land in `errors`."""
        self.embedded.stop()

    # -- the embedded broker's state ------------------------------------------------------

    @property
    def config(self) -> Config:
        return self.embedded.config

    @property
    def daemon(self) -> Daemon:
        return self.embedded.daemon

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self.embedded.loop

    @property
    def errors(self) -> list[str]:
        return self.embedded.errors

    @property
    def core(self) -> Any:
        """The `Broker` (only touch it through `call`)."""
        return self.embedded.core

    # -- access -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self.embedded.ports.get("amqp", 0)

    @property
    def url(self) -> str:
        return self.embedded.amqp_url

    def url_for(self, user: str, password: str, vhost: str = "/") -> str:
        return self.embedded.url("amqp", user=user, password=password, vhost=vhost)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = CALL_TIMEOUT) -> T:
        """Run `fn(*args)` on the broker's loop thread and return its result."""
        return self.embedded.call(fn, *args, timeout=timeout)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT) -> T:
        """Run a coroutine on the broker's loop and return its result."""
        return self.embedded.run(coro, timeout)

    def queue_exists(self, name: str, vhost: str = "/") -> bool:
        return self.call(lambda: name in self.core.vhosts[vhost].queues)

    def ready_count(self, name: str, vhost: str = "/") -> int:
        """Messages ready in a queue (not counting unacked deliveries)."""
        return self.call(lambda: len(self.core.vhosts[vhost].queues[name].ready))

    def consumer_count(self, name: str, vhost: str = "/") -> int:
        return self.call(lambda: len(self.core.vhosts[vhost].queues[name].consumers))

    def connection_count(self) -> int:
        return self.call(lambda: len(self.core.connections))

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
        """Poll a condition on broker state (each check runs on the loop thread)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.call(predicate):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll a condition from the test's thread (HTTP, a client's state: not on the
    broker's loop, which must stay free to answer) within a generous bound."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# -- a raw AMQP client ---------------------------------------------------------------------

_FRAME_HEADER = struct.Struct(">BHI")


class Closed(Exception):
    """The server closed the socket."""


class RawClient:
    """AMQP 0-9-1 over a blocking socket; frames are pamqp objects."""

    def __init__(self, port: int, timeout: float = 5.0, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.tune: commands.Connection.Tune | None = None

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, channel: int, value: Frame) -> None:
        self.send(frame.marshal(value, channel))

    def _recv(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise Closed("server closed the connection")
        self.buf += data

    def read_raw(self) -> bytes:
        """Everything the server sends until it closes the socket."""
        while True:
            try:
                self._recv()
            except (Closed, ConnectionResetError):
                data, self.buf = self.buf, b""
                return data

    def read_frame(self) -> tuple[int, Any]:
        """The next frame as (channel, pamqp frame). Raises Closed at EOF."""
        while True:
            if self.buf.startswith(b"AMQP") and len(self.buf) >= 8:
                raw, self.buf = self.buf[:8], self.buf[8:]
                return 0, raw
            if len(self.buf) >= 7:
                _, _, size = _FRAME_HEADER.unpack_from(self.buf)
                total = 7 + size + 1
                if len(self.buf) >= total:
                    raw, self.buf = self.buf[:total], self.buf[total:]
                    _, channel, value = frame.unmarshal(raw)
                    return channel, value
            self._recv()

    def expect(self, kind: type[Any], *, skip_heartbeats: bool = True) -> Any:
        """The next frame, which must be a `kind` (heartbeats skipped)."""
        while True:
            _channel, value = self.read_frame()
            if skip_heartbeats and isinstance(value, heartbeat.Heartbeat):
                continue
            assert isinstance(value, kind), f"expected {kind.__name__}, got {value!r}"
            return value

    def handshake(
        self,
        *,
        heartbeat_interval: int = 0,
        frame_max: int | None = None,
        channel_max: int | None = None,
        user: str = "guest",
        password: str = "guest",
        vhost: str = "/",
    ) -> None:
        """Protocol header, start/start-ok, tune/tune-ok, open/open-ok."""
        self.send(header.ProtocolHeader().marshal())
        self.expect(commands.Connection.Start)
        self.send_frame(
            0,
            commands.Connection.StartOk(
                client_properties={
                    "product": "moorage-raw-test",
                    "capabilities": {"authentication_failure_close": True},
                },
                mechanism="PLAIN",
                response=f"\0{user}\0{password}",
            ),
        )
        tune = self.tune = self.expect(commands.Connection.Tune)
        self.send_frame(
            0,
            commands.Connection.TuneOk(
                channel_max=tune.channel_max if channel_max is None else channel_max,
                frame_max=tune.frame_max if frame_max is None else frame_max,
                heartbeat=heartbeat_interval,
            ),
        )
        self.send_frame(0, commands.Connection.Open(virtual_host=vhost))
        self.expect(commands.Connection.OpenOk)

    def read_content(self) -> bytes:
        """The content header and body frames that follow a deliver/get-ok/return."""
        content_header = self.expect(header.ContentHeader)
        body = b""
        while len(body) < content_header.body_size:
            body += self.expect(pamqp_body.ContentBody).value
        return body

    def open_channel(self, number: int) -> None:
        self.send_frame(number, commands.Channel.Open())
        self.expect(commands.Channel.OpenOk)

    def wait_closed(self) -> list[Any]:
        """Frames received until the server closes the socket."""
        frames = []
        while True:
            try:
                frames.append(self.read_frame()[1])
            except (Closed, ConnectionResetError):
                return frames


# -- pika (blocking) ------------------------------------------------------------------------


def pump_until(connection: Any, predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Drive a pika BlockingConnection's I/O until `predicate()` holds or time is up."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        connection.process_data_events(time_limit=0.02)
    return True


class Inbox:
    """A pika BlockingChannel consumer callback that records deliveries.

    `wait(n)` drives the connection's I/O until `n` messages arrived (or the
    timeout passed); `sync(channel)` makes a round trip so that every delivery
    the broker sent before it has been dispatched to the callback.
    """

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.messages: list[tuple[Any, Any, bytes]] = []

    def __call__(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self.messages.append((method, properties, body))

    @property
    def bodies(self) -> list[bytes]:
        return [body for _, _, body in self.messages]

    def wait(self, n: int, timeout: float = 3.0) -> bool:
        return pump_until(self.connection, lambda: len(self.messages) >= n, timeout)

    def sync(self, channel: Any) -> None:
        channel.exchange_declare("amq.direct", passive=True)  # a synchronous no-op
        self.connection.process_data_events(time_limit=0)
