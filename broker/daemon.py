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
from typing import TYPE_CHECKING

from moorage.broker import logs, pidfile
from moorage.broker.auth_backends import load_backends
from moorage.broker.broker import Broker
from moorage.broker.clock import SYSTEM_CLOCK, Clock
from moorage.broker.config import Config, ConfigError
from moorage.broker.descriptors import log_open_files_limit, raise_open_files_limit
from moorage.broker.disk import limit_bytes as disk_limit_bytes
from moorage.broker.listeners import Listener, discover
from moorage.broker.mounts import UnsafeFileSystem
from moorage.broker.shared_storage import LeaseLost, SharedStorage
from moorage.broker.systemd import Notifier, Watchdog
from moorage.broker.tls import TLS_LISTENERS, TLSError, load_certificate, server_context
from moorage.storage import MemoryStore, Store, StoreError

if TYPE_CHECKING:
    from moorage.broker.failover.node import FailoverNode

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


def make_store(config: Config, guard: Callable[[], None] | None = None) -> Store:
    """The store the configuration asks for, in its data directory.

    `guard` runs inside every write transaction and refuses it by raising
    (shared storage: `SharedStorage.check`)."""
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
        guard=guard,
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
        self.failover: FailoverNode | None = None  # a node of a replicated pair

    async def start(self) -> None:
        """Open the store, recover, and listen. Raises StartupError with a one-line reason.

        A node of a replicated pair (`[replication] role`) starts through its
        `broker.failover.FailoverNode`, which calls `serve_broker` for the role
        it takes and again whenever the role changes.
        """
        config = self.config
        if config.replication.role:
            from moorage.broker.failover.node import FailoverNode, NodeStartError

            self.failover = FailoverNode(self)
            try:
                await self.failover.start()
            except NodeStartError as e:
                await self.stop()
                raise StartupError(str(e)) from e
            except StartupError:
                await self.stop()
                raise
            return
        store = self.store if self.store is not None else make_store(config)
        await self.serve_broker(self.make_broker(store))

    def make_broker(self, store: Store) -> Broker:
        """A broker on `store` with this configuration's users, vhosts, limits and
        login rules. Raises StartupError (an unusable authentication backend)."""
        config = self.config
        broker = Broker(
            store=store,
            users=config.user_directory(),
            vhosts=config.vhosts,
            limits=config.limits,
            retention=config.storage.retention,
            clock=self.clock,
            disk_free_limit=disk_limit_bytes(
                config.storage.disk_free_limit, config.storage.disk_free_limit_relative
            ),
            resource_limits=config.resource_limits(),
        )
        broker.login_guard.step = config.failed_login_delay
        broker.login_guard.max_delay = config.failed_login_max_delay
        broker.cert_login_from = config.ssl_cert_login_from
        if config.auth_backends != ["internal"]:
            try:
                broker.auth_chain = load_backends(
                    broker, config.auth_backends, config.auth_settings
                )
            except ValueError as e:
                raise StartupError(str(e)) from None
        return broker

    async def serve_broker(self, broker: Broker) -> None:
        """Start `broker` (open its store, recover) and open every listener on it.

        Listeners that were open before (a failover node changing its role)
        reopen on the ports they had. Raises StartupError.
        """
        config = self.config
        try:
            await broker.start()
        except StoreError as e:
            raise StartupError(str(e)) from e
        self.broker = broker
        previous_ports, self.ports = self.ports, broker.ports
        # plug-ins read their own sections (e.g. `[sns]`) from the broker's configuration
        broker.extension("config", lambda _broker: config)
        plugins = discover()
        try:
            if config.tls.configured and self.tls_context is None:
                try:
                    self.tls_context = server_context(config.tls)
                except TLSError as e:
                    raise StartupError(str(e)) from e
            for name, configured_port in config.ports.items():
                port = previous_ports.get(name, configured_port)
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
        """Apply what can change while running: the file's users when they changed since
        they were last applied (`UserDirectory.reconfigure`: users of the file are
        created or replaced, others kept), the loopback-only and anonymous rules, the
        log level, and the TLS certificate and key (new handshakes get them;
        connections keep theirs). Listeners, storage and limits need a restart.
        Connected clients keep their sessions; every check from now on uses the new
        permissions.
        Raises ConfigError (then nothing changed) when the new certificate is unusable."""
        if self.tls_context is not None:
            try:
                load_certificate(self.tls_context, config.tls)
            except TLSError as e:
                raise ConfigError(str(e)) from None
            self.config.tls = config.tls
        applied = False
        if self.broker is not None:
            self.broker.login_guard.step = config.failed_login_delay
            self.broker.login_guard.max_delay = config.failed_login_max_delay
            self.broker.cert_login_from = config.ssl_cert_login_from
            applied = self.broker.users.reconfigure(
                config.users, config.users_seed, config.loopback_users, config.anonymous_user
            )
        logging.getLogger().setLevel(config.log_level.upper())
        self.config.users = config.users
        self.config.users_seed = config.users_seed
        log.warning(
            "configuration reloaded: %s",
            f"{len(config.users)} users applied" if applied else "users unchanged in the file",
        )

    async def stop(self) -> None:
        """Close listeners, ask clients to disconnect, wait a little, close the store."""
        if self.failover is not None:
            failover, self.failover = self.failover, None
            await failover.stop()
        await self.stop_serving()

    async def stop_serving(self) -> None:
        """`stop` for the current broker only (a failover node changing its role)."""
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
    watchdog = Watchdog(loop, notifier)
    shared: SharedStorage | None = None
    if config.storage.mode == "shared":
        shared = await _wait_for_shared_storage(daemon, stop, notifier, watchdog)
        if shared is None:
            return  # stopped while waiting
    open_files = raise_open_files_limit()
    try:
        await daemon.start()
    except BaseException:
        watchdog.cancel()
        if shared is not None:
            shared.close()
        raise
    tune_gc()
    log_open_files_limit(open_files)
    if shared is not None and daemon.broker is not None:
        daemon.broker.failover_status = shared.status  # the role, for operators
    pid_path = pidfile.write(config.data_dir)  # for `moorage reload` (broker.pidfile)
    if on_ready is not None:
        on_ready(daemon)
    log.info("moorage ready")
    listening = ", ".join(f"{name} {port}" for name, port in sorted(daemon.ports.items()))
    notifier.send("READY=1", f"STATUS=accepting connections: {listening}")
    if shared is None:
        watchdog.start()
    try:
        await _until_stopped(stop, shared)
    finally:
        log.info("shutting down")
        notifier.send("STOPPING=1", "STATUS=shutting down")
        watchdog.cancel()
        await _stop_daemon(daemon, shared)
        if pid_path is not None:
            pidfile.remove(pid_path)
        log.info("stopped")
    if shared is not None and shared.lost.is_set():
        raise LeaseLost(f"shared-storage lease lost: {shared.lease_lost_reason()}")


# -- shared storage (broker.shared_storage, docs/failover.md) --------------------------


async def _wait_for_shared_storage(
    daemon: Daemon, stop: asyncio.Event, notifier: Notifier, watchdog: Watchdog
) -> SharedStorage | None:
    """Wait for the shared-storage lock and take over; None when stopped meanwhile.

    A waiting broker is up (a standby, like an ActiveMQ slave: READY=1, the
    watchdog pinged) but opens neither the store nor a listener until it
    takes over. Raises StartupError (network file system, unusable lock file).
    """
    config = daemon.config
    shared = SharedStorage(
        config.data_dir, lease=config.storage.lease, poll=config.storage.lock_poll
    )
    notifier.send("READY=1", "STATUS=waiting for the shared-storage lock")
    watchdog.start()
    try:
        shared.check_file_system()
        # Import every plug-in and the store now: a takeover must not spend
        # its first lease on imports that block the loop (and its renewals).
        discover()
        daemon.store = make_store(config, guard=shared.check)
        if await shared.acquire_unless(stop):
            return shared
    except (UnsafeFileSystem, OSError) as e:
        watchdog.cancel()
        raise StartupError(str(e)) from e
    watchdog.cancel()
    return None


async def _until_stopped(stop: asyncio.Event, shared: SharedStorage | None) -> None:
    """Until SIGTERM/SIGINT, or until the shared-storage lease is lost."""
    if shared is None:
        await stop.wait()
        return
    waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(shared.lost.wait())}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


async def _stop_daemon(daemon: Daemon, shared: SharedStorage | None) -> None:
    """`daemon.stop()`, then the lease released; after a lost lease, the lock dropped only."""
    if shared is None:
        await daemon.stop()
    elif shared.lost.is_set():
        # The store refuses every write now (its guard): what it could not
        # write was never confirmed, and is not written by the closing flush.
        with suppress(StoreError):
            await daemon.stop()
        shared.close()
    else:
        await daemon.stop()
        await shared.release()


def _reload(daemon: Daemon, read: Callable[[], Config], notifier: Notifier) -> None:
    """SIGHUP: re-read the configuration; a bad file is logged and changes nothing."""
    notifier.send("RELOADING=1")
    try:
        daemon.reload(read())
    except ConfigError as e:
        log.error("configuration not reloaded: %s", e)
    notifier.send("READY=1", "STATUS=configuration reloaded")


__all__ = ["ConfigError", "Daemon", "LeaseLost", "StartupError", "serve"]
