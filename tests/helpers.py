"""Helpers for the integration tests: an in-process broker on its own thread, a raw client.

`RunningBroker` runs a `Daemon` on a background thread with its own event
loop, so blocking clients (pika's BlockingConnection, kombu) can be used from
the test thread while asyncio clients (aio-pika) run on the test's loop.
Anything that touches core state goes through `RunningBroker.call`, which runs
on the broker's loop thread.

`RawClient` speaks AMQP 0-9-1 over a plain blocking socket with pamqp frames,
for the tests that must send what no well-behaved client library would.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from pamqp import body as pamqp_body
from pamqp import commands, frame, header, heartbeat
from pamqp.base import Frame

from moorage.broker.auth import Permission, User, hash_password
from moorage.broker.clock import SYSTEM_CLOCK, Clock
from moorage.broker.config import Config, default_guest
from moorage.broker.daemon import Daemon
from moorage.broker.loop import loop_factory

T = TypeVar("T")

# Bounds for what must happen, not speeds: a loaded machine (one core, another
# busy) may take many seconds to start a broker or to reach a call on its loop.
START_TIMEOUT = 60.0
CALL_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (bind to port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_user(
    name: str,
    password: str,
    permissions: Mapping[str, Permission | tuple[str, str, str]] | None = None,
    tags: tuple[str, ...] = (),
) -> User:
    """A broker user; permissions map a vhost to a Permission or (configure, write, read)."""
    perms = {
        vhost: p if isinstance(p, Permission) else Permission(*p)
        for vhost, p in (permissions or {}).items()
    }
    return User(name, hash_password(password), tags, perms)


def make_config(
    data_dir: Path, *extra_users: User, vhosts: tuple[str, ...] = ("/",), **limits: Any
) -> Config:
    """`Config()` defaults on free loopback ports, memory storage, guest plus `extra_users`."""
    config = Config()
    config.data_dir = data_dir
    config.storage.backend = "memory"
    config.bind = "127.0.0.1"
    config.ports = dict.fromkeys(config.ports, 0)
    config.ports["amqp"] = free_port()
    config.vhosts = list(vhosts)
    config.users = [default_guest(), *extra_users]
    for key, value in limits.items():
        setattr(config.limits, key, value)
    return config


class _LoopErrorHandler(logging.Handler):
    """Collects asyncio error records emitted from one thread (the broker's loop)."""

    def __init__(self, thread_id: Callable[[], int | None]) -> None:
        super().__init__(level=logging.ERROR)
        self._thread_id = thread_id
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self._thread_id():
            self.records.append(record)


class RunningBroker:
    """A `Daemon` running on a background thread; `start()` then `stop()`."""

    def __init__(
        self, config: Config, loop_name: str = "asyncio", clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.config = config
        self.loop_name = loop_name
        self.clock = clock
        self.daemon = Daemon(config, clock=clock)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name=f"moorage-{loop_name}", daemon=True)
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._log_handler = _LoopErrorHandler(lambda: self._thread.ident)
        self.stopped = False

    # -- lifetime ---------------------------------------------------------------------

    def _exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        self.errors.append(f"{context.get('message')}: {exc!r}")
        loop.default_exception_handler(context)

    def _run(self) -> None:
        loop = loop_factory(self.loop_name)()
        self.loop = loop
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(self._exception_handler)
        try:
            try:
                loop.run_until_complete(self.daemon.start())
            except BaseException as e:
                self._start_error = e
                return
            finally:
                self._ready.set()
            loop.run_forever()
        except BaseException as e:
            self.errors.append(f"broker loop thread raised {e!r}")
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def start(self) -> RunningBroker:
        logging.getLogger("asyncio").addHandler(self._log_handler)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise RuntimeError("broker did not start in time")
        if self._start_error is not None:
            raise RuntimeError(f"broker failed to start: {self._start_error!r}")
        self.port = self.daemon.ports["amqp"]
        return self

    def stop(self) -> None:
        """Run `daemon.stop()` on the loop, stop the loop and join the thread."""
        if self.stopped:
            return
        self.stopped = True
        try:
            if self._thread.is_alive() and self.loop is not None:
                self.run(self.daemon.stop(), timeout=STOP_TIMEOUT)
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(STOP_TIMEOUT)
                if self._thread.is_alive():
                    self.errors.append("broker loop thread did not stop")
        finally:
            logging.getLogger("asyncio").removeHandler(self._log_handler)
        for record in self._log_handler.records:
            message = record.getMessage()
            # the exception handler already noted what the default handler then logged
            if not any(e.startswith(message) for e in self.errors):
                self.errors.append(message)

    # -- access -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def url_for(self, user: str, password: str, vhost: str = "/") -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = CALL_TIMEOUT) -> T:
        """Run `fn(*args)` on the broker's loop thread and return its result."""
        assert self.loop is not None
        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                result.set_result(fn(*args))
            except BaseException as e:
                result.set_exception(e)

        self.loop.call_soon_threadsafe(run)
        return result.result(timeout)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT) -> T:
        """Run a coroutine on the broker's loop and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def core(self) -> Any:
        """The `Broker` (only touch it through `call`)."""
        return self.daemon.broker

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


# -- a raw AMQP client ---------------------------------------------------------------------

_FRAME_HEADER = struct.Struct(">BHI")


class Closed(Exception):
    """The server closed the socket."""


class RawClient:
    """AMQP 0-9-1 over a blocking socket; frames are pamqp objects."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
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
        user: str = "guest",
        password: str = "guest",  # noqa: S107 - RabbitMQ's well-known default
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
                channel_max=tune.channel_max,
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
