"""Run a broker inside another program: on its event loop, or on a thread of its own.

`EmbeddedBroker` is the daemon (`moorage.broker.daemon.Daemon`: the same
store, recovery, plug-in discovery and listeners as `moorage serve`) with
three things a test suite or an application needs on top:

- **Free ports.** `embedded_config` asks for the listeners by protocol name
  (the `moorage.protocols` entry points: "amqp", "mqtt", "stomp", "mqtt_ws",
  "stomp_ws") and gives each a free loopback port; the resulting `urls` are
  what clients connect to, e.g. `amqp://guest:guest@127.0.0.1:PORT/%2F`.
  Such a port is free when chosen and bound a moment later, so a start that
  loses the port to another process is retried with new ones.
- **Two ways to run.** `async with EmbeddedBroker() as broker:` runs it on
  the caller's running loop (`astart`/`astop`); `with EmbeddedBroker() as
  broker:` runs it on a loop of its own in a background thread (`start`/
  `stop`), for blocking clients such as pika's BlockingConnection. From
  another thread, `call` and `run` execute a function or a coroutine on the
  broker's loop, where the core's state may be touched.
- **Errors surfaced.** While the broker runs, every exception its loop
  reports (the loop's exception handler, and anything asyncio logs at ERROR
  from the loop's thread) is kept in `errors`. Leaving a `with`/`async with`
  block raises `EmbeddedBrokerError` listing them, so a failure inside a
  broker callback fails the test that embeds it instead of scrolling by.

Stopping is the daemon's own shutdown: listeners close, every client gets its
protocol's close (AMQP `connection.close` 320, a WebSocket close, ...), the
store is flushed and closed, and a temporary data directory is removed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

from moorage.broker.auth import Permission, User, hash_password
from moorage.broker.broker import Broker
from moorage.broker.clock import SYSTEM_CLOCK, Clock
from moorage.broker.config import Config, default_guest
from moorage.broker.daemon import Daemon, StartupError
from moorage.broker.loop import loop_factory

__all__ = [
    "DEFAULT_PROTOCOLS",
    "EmbeddedBroker",
    "EmbeddedBrokerError",
    "embedded_config",
    "free_port",
    "free_ports",
    "make_user",
]

_T = TypeVar("_T")

DEFAULT_PROTOCOLS = ("amqp",)
LOOPBACK = "127.0.0.1"
# Bounds for what must happen, not speeds: a loaded machine (one core, another
# busy) may take many seconds to start a broker or to reach a call on its loop.
START_TIMEOUT = 60.0  # seconds the background thread may take to open the store and listen
CALL_TIMEOUT = 60.0  # seconds `call` and `run` wait for the broker's loop
STOP_TIMEOUT = 60.0  # more than the daemon's own SHUTDOWN_GRACE for clients to leave
PORT_ATTEMPTS = 3  # starts tried when a chosen free port was taken before it was bound

_URL_FORMS = {
    "amqp": "amqp://{credentials}@{host}:{port}/{vhost}",
    "mqtt": "mqtt://{credentials}@{host}:{port}",
    "stomp": "stomp://{credentials}@{host}:{port}",
    "mqtt_ws": "ws://{host}:{port}/ws",
    "stomp_ws": "ws://{host}:{port}/ws",
}


class EmbeddedBrokerError(Exception):
    """The broker's event loop reported errors while it ran; the message lists them."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("broker loop reported errors:\n" + "\n".join(errors))
        self.errors = errors


_handed_out: deque[int] = deque(maxlen=256)
"""The ports `free_ports` gave lately: a port that is free again is not given twice in a row
(several listeners asked for one at a time could otherwise get the same one)."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on `host` that was free a moment ago (bind to port 0, read it back)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` different TCP ports on `host` that were free a moment ago, none of them
    handed out lately: the sockets are held until all are bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        for _ in range(count + len(_handed_out) + 16):  # bounded: the kernel moves on
            if len(ports) == count:
                break
            s = held.enter_context(socket.socket(family))
            s.bind((host, 0))
            port = int(s.getsockname()[1])
            if port not in _handed_out:
                ports.append(port)
        if len(ports) < count:
            raise OSError(f"no {count} free ports on {host}")
        _handed_out.extend(ports)
        return ports


def make_user(
    name: str,
    password: str,
    permissions: Mapping[str, Permission | tuple[str, str, str]] | None = None,
    tags: Iterable[str] = (),
) -> User:
    """A broker user; `permissions` maps a vhost to a Permission or (configure, write, read).

    Without permissions the user may log in but do nothing; `{"/": (".*", ".*", ".*")}`
    grants everything on the default vhost.
    """
    perms = {
        vhost: p if isinstance(p, Permission) else Permission(*p)
        for vhost, p in (permissions or {}).items()
    }
    return User(name, hash_password(password), tuple(tags), perms)


def embedded_config(
    *,
    protocols: Iterable[str] = DEFAULT_PROTOCOLS,
    storage: str = "memory",
    data_dir: str | Path | None = None,
    users: Iterable[User] = (),
    vhosts: Iterable[str] = ("/",),
    limits: Mapping[str, Any] | None = None,
    bind: str = LOOPBACK,
) -> Config:
    """A `Config` for an embedded broker: the listeners of `protocols` on free ports.

    Every other listener is off. The users are RabbitMQ's guest/guest (all
    permissions on `/`, loopback only) plus `users`; `limits` sets fields of
    `moorage.broker.config.Limits` by name (the memory alarm counts queued
    messages, `memory_calculation_strategy = "queued"`, as the process is
    not the broker's alone). `storage` is "memory" or
    "sqlite"; a SQLite store without a `data_dir` gets a temporary directory
    from `EmbeddedBroker`. Raises ValueError for an unknown storage or limit.
    """
    if storage not in ("memory", "sqlite"):
        raise ValueError(f"storage must be 'memory' or 'sqlite', not {storage!r}")
    config = Config()
    config.bind = bind
    config.storage.backend = storage
    if data_dir is not None:
        config.data_dir = Path(data_dir)
    config.ports = dict.fromkeys(config.ports, 0)
    names = list(protocols)
    for name, port in zip(names, free_ports(len(names), bind), strict=True):
        config.ports[name] = port
    config.vhosts = list(vhosts)
    config.users = [default_guest(), *users]
    # The process's RSS is the host program's too: an embedded broker counts
    # its queued messages instead (broker.memory), unless `limits` says "rss".
    config.limits.memory_calculation_strategy = "queued"
    for key, value in (limits or {}).items():
        if not hasattr(config.limits, key):
            raise ValueError(f"no limit named {key!r}")
        setattr(config.limits, key, value)
    return config


class _LoopErrors:
    """Collects what one event loop reports: its exception handler and asyncio's ERROR logs."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id: int | None = None
        self._previous_handler: Any = None
        self._records: list[logging.LogRecord] = []
        self._log_handler = _ThreadLogHandler(self)

    def install(self, loop: asyncio.AbstractEventLoop, thread_id: int) -> None:
        """Start collecting on `loop`, whose thread is `thread_id`."""
        self._loop, self._thread_id = loop, thread_id
        self._previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._exception_handler)
        logging.getLogger("asyncio").addHandler(self._log_handler)

    def uninstall(self) -> None:
        """Stop collecting; log records not already seen by the handler join `errors`."""
        logging.getLogger("asyncio").removeHandler(self._log_handler)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.set_exception_handler(self._previous_handler)
        self._loop = None
        for record in self._records:
            message = record.getMessage()
            # the exception handler already noted what the default handler then logged
            if not any(e.startswith(message) for e in self.errors):
                self.errors.append(message)
        self._records.clear()

    def record(self, record: logging.LogRecord) -> None:
        if self._loop is not None and record.thread == self._thread_id:
            self._records.append(record)

    def _exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.errors.append(f"{context.get('message')}: {context.get('exception')!r}")
        if self._previous_handler is not None:
            self._previous_handler(loop, context)
        else:
            loop.default_exception_handler(context)


class _ThreadLogHandler(logging.Handler):
    def __init__(self, errors: _LoopErrors) -> None:
        super().__init__(level=logging.ERROR)
        self._errors = errors

    def emit(self, record: logging.LogRecord) -> None:
        self._errors.record(record)


def _finish_leftover_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks still pending on a stopped loop and let each finish, as
    `asyncio.run` does at its end: an HTTP request handler whose connection was
    just closed may not have run its last step yet. Left pending, such a task is
    destroyed later by the garbage collector, on whatever thread runs it then
    (another broker's, whose loop would report it)."""
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


class EmbeddedBroker:
    """A broker inside this process: `async with` on the running loop, `with` on its own thread.

    Either pass a complete `config` (used as it is: its ports, users, data
    directory) or the settings of `embedded_config`; `loop` ("asyncio",
    "uvloop" or "auto") chooses the background thread's loop. One instance
    runs once: start, use, stop.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        protocols: Iterable[str] | None = None,
        storage: str | None = None,
        data_dir: str | Path | None = None,
        users: Iterable[User] | None = None,
        vhosts: Iterable[str] | None = None,
        limits: Mapping[str, Any] | None = None,
        loop: str = "asyncio",
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        settings = (protocols, storage, data_dir, users, vhosts, limits)
        self._requested: tuple[str, ...] = ()  # listeners asked for by name, on chosen ports
        self._wants_temporary = False  # a SQLite store without a data_dir: made at start
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        if config is None:
            self._requested = tuple(DEFAULT_PROTOCOLS if protocols is None else protocols)
            config = embedded_config(
                protocols=self._requested,
                storage=storage or "memory",
                data_dir=data_dir,
                users=users or (),
                vhosts=vhosts or ("/",),
                limits=limits,
            )
            self._wants_temporary = config.storage.backend == "sqlite" and data_dir is None
        elif any(setting is not None for setting in settings):
            raise TypeError("pass either a Config or embedded_config settings, not both")
        self.config = config
        self.loop_name = loop
        self.clock = clock  # the broker's time (broker.clock): a ManualClock in tests
        self.daemon = Daemon(config, clock=clock)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_errors = _LoopErrors()
        self._thread: threading.Thread | None = None
        self._loop_thread_id: int | None = None
        self._started = False
        self._stopped = False

    # -- on the caller's loop --------------------------------------------------------------

    async def astart(self) -> Self:
        """Start on the running loop. Raises StartupError with a one-line reason."""
        self._claim_start()
        self.loop = asyncio.get_running_loop()
        self._loop_thread_id = threading.get_ident()
        self._loop_errors.install(self.loop, self._loop_thread_id)
        try:
            await self._start_daemon()
        except BaseException:
            self._loop_errors.uninstall()
            self._cleanup()
            raise
        return self

    async def astop(self) -> None:
        """Stop on the running loop (idempotent); loop errors are left in `errors`."""
        if self._thread is not None:
            raise RuntimeError("this broker runs on its own thread: use stop()")
        if self._stopped or not self._started:
            return
        self._stopped = True
        try:
            await self.daemon.stop()
        finally:
            self._loop_errors.uninstall()
            self._cleanup()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.astop()
        self._raise_errors(exc)

    # -- on a thread of its own --------------------------------------------------------------

    def start(self) -> Self:
        """Start on a background thread with its own loop; return once it listens.

        Raises StartupError (the daemon's reason) or TimeoutError.
        """
        self._claim_start()
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run_thread, args=(ready, failure), name="moorage-embedded", daemon=True
        )
        self._thread.start()
        if not ready.wait(START_TIMEOUT):
            raise TimeoutError(f"broker did not start within {START_TIMEOUT} s")
        if failure:
            self._thread.join(STOP_TIMEOUT)
            raise failure[0]
        return self

    def stop(self) -> None:
        """Shut down, stop the loop and join its thread (idempotent); errors go to `errors`."""
        if self._thread is None:
            if self._started and not self._stopped:
                raise RuntimeError("this broker runs on the caller's loop: use await astop()")
            return
        if self._stopped:
            return
        self._stopped = True
        loop = self.loop
        if self._thread.is_alive() and loop is not None:
            try:
                self.run(self.daemon.stop(), timeout=STOP_TIMEOUT)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                self._thread.join(STOP_TIMEOUT)
                if self._thread.is_alive():
                    self._loop_errors.errors.append("broker loop thread did not stop")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self._raise_errors(exc)

    def _run_thread(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = loop_factory(self.loop_name)()
        self.loop = loop
        self._loop_thread_id = threading.get_ident()
        asyncio.set_event_loop(loop)
        self._loop_errors.install(loop, self._loop_thread_id)
        try:
            try:
                loop.run_until_complete(self._start_daemon())
            except BaseException as e:  # noqa: BLE001 - raised again by start() in the caller
                failure.append(e)
                return
            finally:
                ready.set()
            loop.run_forever()
        except BaseException as e:  # noqa: BLE001 - the thread's end: reported in `errors`
            self._loop_errors.errors.append(f"broker loop thread raised {e!r}")
        finally:
            with contextlib.suppress(Exception):
                _finish_leftover_tasks(loop)
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            self._loop_errors.uninstall()
            loop.close()
            self._cleanup()

    # -- access ------------------------------------------------------------------------------

    @property
    def errors(self) -> list[str]:
        """What the broker's loop reported while it ran (complete once stopped)."""
        return self._loop_errors.errors

    @property
    def core(self) -> Broker:
        """The running core (touch it only on the broker's loop: `call`). Raises RuntimeError."""
        if self.daemon.broker is None:
            raise RuntimeError("the broker is not running")
        return self.daemon.broker

    @property
    def host(self) -> str:
        """The address clients connect to (loopback when listening on every address)."""
        bind = self.config.bind
        if bind in ("", "0.0.0.0"):  # noqa: S104 - the wildcard is what is being tested for
            return LOOPBACK
        return "::1" if bind == "::" else bind

    @property
    def ports(self) -> dict[str, int]:
        """The listening port of each running listener, by protocol name."""
        return dict(self.daemon.ports)

    def url(
        self,
        protocol: str = "amqp",
        *,
        user: str = "guest",
        password: str = "guest",  # noqa: S107 - RabbitMQ's well-known default user
        vhost: str = "/",
    ) -> str:
        """Where a client of `protocol` connects, with these credentials (and AMQP vhost).

        Raises KeyError when that listener is not running.
        """
        port = self.daemon.ports.get(protocol)
        if port is None:
            raise KeyError(f"no {protocol} listener is running (running: {sorted(self.ports)})")
        form = _URL_FORMS.get(protocol, "{protocol}://{host}:{port}")
        host = f"[{self.host}]" if ":" in self.host else self.host
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return form.format(
            protocol=protocol,
            credentials=credentials,
            host=host,
            port=port,
            vhost=quote(vhost, safe=""),
        )

    @property
    def urls(self) -> dict[str, str]:
        """The guest's URL of every running listener, by protocol name."""
        return {name: self.url(name) for name in self.daemon.ports}

    @property
    def amqp_url(self) -> str:
        return self.url("amqp")

    @property
    def mqtt_url(self) -> str:
        return self.url("mqtt")

    @property
    def stomp_url(self) -> str:
        return self.url("stomp")

    def call(self, fn: Callable[..., _T], *args: Any, timeout: float = CALL_TIMEOUT) -> _T:
        """`fn(*args)` on the broker's loop thread (directly when already there); its result."""
        loop = self._running_loop()
        if self._on_loop_thread():
            return fn(*args)
        result: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                result.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - raised again in the calling thread
                result.set_exception(e)

        loop.call_soon_threadsafe(run)
        return result.result(timeout)

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float = CALL_TIMEOUT) -> _T:
        """Run a coroutine on the broker's loop from another thread; its result."""
        loop = self._running_loop()
        if self._on_loop_thread():
            coro.close()
            raise RuntimeError("already on the broker's loop: await the coroutine instead")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    # -- internals ------------------------------------------------------------------------------

    def _claim_start(self) -> None:
        if self._started:
            raise RuntimeError("an EmbeddedBroker starts once; make a new one")
        self._started = True
        if self._wants_temporary:
            self._temporary = tempfile.TemporaryDirectory(prefix="moorage-")
            self.config.data_dir = Path(self._temporary.name)

    async def _start_daemon(self) -> None:
        """`Daemon.start`, with new free ports when a chosen one was taken meanwhile."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                await self.daemon.start()
                break
            except StartupError as e:
                lost_a_port = isinstance(e.__cause__, OSError) and self._requested
                if not lost_a_port or attempt == PORT_ATTEMPTS:
                    raise
                fresh = free_ports(len(self._requested), self.config.bind)
                for name, port in zip(self._requested, fresh, strict=True):
                    self.config.ports[name] = port
                self.daemon = Daemon(self.config, clock=self.clock)
        missing = [name for name in self._requested if name not in self.daemon.ports]
        if missing:
            await self.daemon.stop()
            raise StartupError(f"no protocol plug-in named {', '.join(map(repr, missing))}")

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self.loop is None or self.loop.is_closed():
            raise RuntimeError("the broker is not running")
        return self.loop

    def _on_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread_id

    def _raise_errors(self, exc: BaseException | None) -> None:
        if self.errors and exc is None:
            raise EmbeddedBrokerError(list(self.errors))

    def _cleanup(self) -> None:
        if self._temporary is not None:
            self._temporary.cleanup()
            self._temporary = None
