"""The composition root: builds the store and the broker, starts listeners, handles signals.

This is the only module that knows about every part: configuration,
storage implementation and the protocol plug-ins (found through entry
points, so no adapter is imported by name).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl
from collections.abc import Callable
from contextlib import suppress

from moorage.broker import logs, pidfile
from moorage.broker.broker import Broker
from moorage.broker.clock import SYSTEM_CLOCK, Clock
from moorage.broker.config import Config, ConfigError
from moorage.broker.listeners import Listener, discover
from moorage.broker.systemd import Notifier, Watchdog
from moorage.broker.tls import TLS_LISTENERS, TLSError, load_certificate, server_context
from moorage.storage import MemoryStore, Store, StoreError

log = logging.getLogger("moorage")

SHUTDOWN_GRACE = 5.0  # seconds clients get to answer connection.close

# Every queued message is a few container objects (Message, Properties,
# QueueEntry, dicts) that CPython's cyclic collector scans again and again
# while they wait in a queue; with the default threshold (700) it ran every
# few hundred messages and took a quarter of the broker's time under load.
# Reference counting frees nearly all of the broker's garbage anyway, so the
# young generation is collected every 50,000 allocations instead (measured:
# 1.3x AMQP transient and 1.1-1.3x MQTT QoS 1 deliveries, in one run each).
GC_THRESHOLDS = (50_000, 20, 100)


class StartupError(Exception):
    """The daemon cannot start; the message is the one-line reason."""


def make_store(config: Config) -> Store:
    """The store the configuration asks for, in its data directory."""
    if config.storage.backend == "memory":
        return MemoryStore()
    from moorage.storage.sqlite import SQLiteStore

    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StartupError(f"cannot create data directory {config.data_dir}: {e.strerror}") from e
    return SQLiteStore(
        config.data_dir / "moorage.db",
        durability=config.storage.durability,
        ack_window=config.storage.ack_window,
    )


class Daemon:
    """A running broker with its listeners. `start()`, then `stop()`."""

    def __init__(
        self, config: Config, store: Store | None = None, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock  # the broker's timers and the protocol shells read it
        self.broker: Broker | None = None
        self.listeners: dict[str, Listener] = {}
        self.ports: dict[str, int] = {}
        self.tls_context: ssl.SSLContext | None = None

    async def start(self) -> None:
        """Open the store, recover, and listen. Raises StartupError with a one-line reason."""
        config = self.config
        store = self.store if self.store is not None else make_store(config)
        broker = Broker(
            store=store,
            users=config.user_directory(),
            vhosts=config.vhosts,
            limits=config.limits,
            retention=config.storage.retention,
            clock=self.clock,
        )
        try:
            await broker.start()
        except StoreError as e:
            raise StartupError(str(e)) from e
        self.broker = broker
        self.ports = broker.ports
        plugins = discover()
        try:
            if config.tls.configured:
                try:
                    self.tls_context = server_context(config.tls)
                except TLSError as e:
                    raise StartupError(str(e)) from e
            for name, port in config.ports.items():
                tls = name in TLS_LISTENERS
                plugin = plugins.get(TLS_LISTENERS.get(name, name))
                if plugin is None or port == 0:
                    continue
                context = self.tls_context if tls else None
                if tls and context is None:  # never a TLS port served in plain text
                    raise StartupError(f"the {name} listener needs tls.cert and tls.key")
                try:
                    listener = await plugin.start(broker, config.bind, port, context)
                except OSError as e:
                    raise StartupError(
                        f"cannot listen for {name} on {config.bind}:{port}: {e.strerror or e}"
                    ) from e
                self.listeners[name] = listener
                sockname = listener.server.sockets[0].getsockname()
                self.ports[name] = sockname[1]
                log.info(
                    "%s listener accepting connections on %s:%d", name, sockname[0], sockname[1]
                )
        except StartupError:
            await self.stop()
            raise
        counts = statistics(self)
        logs.event(
            "store.opened",
            f"store {broker.store_location or '(memory)'} opened: {counts['queues']} queues, "
            f"{counts['messages']} messages recovered",
            location=str(broker.store_location or "memory"),
            queues=counts["queues"],
            messages=counts["messages"],
        )

    def reload(self, config: Config) -> None:
        """Apply what can change while running: users, their permissions and tags, the
        loopback-only and anonymous rules, the log level, and the TLS certificate and key
        (new handshakes get them; connections keep theirs). Listeners, storage and
        limits need a restart. Connected clients keep their sessions; every check
        from now on uses the new users (a removed user's connections stay open, as a
        RabbitMQ user deleted while connected does until its connections close).
        Raises ConfigError (then nothing changed) when the new certificate is unusable."""
        if self.tls_context is not None:
            try:
                load_certificate(self.tls_context, config.tls)
            except TLSError as e:
                raise ConfigError(str(e)) from None
            self.config.tls = config.tls
        if self.broker is not None:
            self.broker.users = config.user_directory()
        logging.getLogger().setLevel(config.log_level.upper())
        self.config.users = config.users
        log.warning("configuration reloaded: %d users", len(config.users))

    async def stop(self) -> None:
        """Close listeners, ask clients to disconnect, wait a little, close the store."""
        for listener in self.listeners.values():
            listener.server.close()
        for listener in self.listeners.values():
            listener.shutdown_connections("shutdown")
        deadline = asyncio.get_running_loop().time() + SHUTDOWN_GRACE
        while any(lst.connection_count() for lst in self.listeners.values()):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.02)
        for listener in self.listeners.values():
            with suppress(Exception):
                listener.server.close()
                await asyncio.wait_for(listener.server.wait_closed(), 1.0)
        self.listeners.clear()
        if self.broker is not None:
            await self.broker.stop()
            self.broker = None


def statistics(daemon: Daemon) -> dict[str, int]:
    """Counters of a running daemon: clients, queues, messages and store work."""
    stats: dict[str, int] = {}
    broker = daemon.broker
    if broker is not None:
        queues = [q for v in broker.vhosts.values() for q in v.queues.values()]
        stats["connections"] = len(broker.connections)
        stats["queues"] = len(queues)
        stats["messages"] = sum(q.message_count for q in queues)
        store_stats = getattr(broker.store, "stats", None)
        for name in ("batches", "fsyncs", "messages_written", "ops_cancelled", "expired"):
            value = getattr(store_stats, name, None)
            if isinstance(value, int):
                stats[f"store_{name}"] = value
    return stats


def format_statistics(daemon: Daemon) -> str:
    """`name=value` pairs of `statistics`, one line."""
    return " ".join(f"{k}={v}" for k, v in statistics(daemon).items())


def tune_gc() -> None:
    """Collect cycles less often (`GC_THRESHOLDS`) and never rescan what start-up made.

    Process-wide, so only `serve` (the daemon's own process) calls it.
    """
    gc.collect()
    gc.freeze()  # modules, configuration, listeners: alive until exit
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(
    config: Config,
    on_ready: Callable[[Daemon], None] | None = None,
    reload: Callable[[], Config] | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then shut down cleanly.

    `reload` re-reads the configuration on SIGHUP (see `Daemon.reload`). The
    service manager hears of readiness, reloads and shutdown (`broker.systemd`).
    """
    daemon = Daemon(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    notifier = Notifier()
    # Handlers go in before the listeners open: a client (or `moorage bench
    # --spawn`) may signal as soon as a port answers, and SIGUSR1's default
    # action would end the process.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Operators (and `moorage bench --spawn`) ask for a snapshot with SIGUSR1. It
    # is logged at WARNING so that it shows at every log level.
    loop.add_signal_handler(
        signal.SIGUSR1, lambda: log.warning("statistics: %s", format_statistics(daemon))
    )
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload(daemon, reload, notifier))
    await daemon.start()
    tune_gc()
    pid_path = pidfile.write(config.data_dir)  # for `moorage reload` (broker.pidfile)
    if on_ready is not None:
        on_ready(daemon)
    log.info("moorage ready")
    listening = ", ".join(f"{name} {port}" for name, port in sorted(daemon.ports.items()))
    notifier.send("READY=1", f"STATUS=accepting connections: {listening}")
    watchdog = Watchdog(loop, notifier)
    watchdog.start()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        notifier.send("STOPPING=1", "STATUS=shutting down")
        watchdog.cancel()
        await daemon.stop()
        if pid_path is not None:
            pidfile.remove(pid_path)
        log.info("stopped")


def _reload(daemon: Daemon, read: Callable[[], Config], notifier: Notifier) -> None:
    """SIGHUP: re-read the configuration; a bad file is logged and changes nothing."""
    notifier.send("RELOADING=1")
    try:
        daemon.reload(read())
    except ConfigError as e:
        log.error("configuration not reloaded: %s", e)
    notifier.send("READY=1", "STATUS=configuration reloaded")


__all__ = ["ConfigError", "Daemon", "StartupError", "serve"]
