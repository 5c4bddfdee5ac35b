"""The broker: vhosts, users, connections and the store, with no protocol in sight.

Adapters log a client in with `begin_login` (`broker.logins`), attach it to a vhost with
`connect`, and then work through the `Session`s of the `ClientConnection`.

This is the top of the core's imports: the modules below it reach the broker
and a connection only through narrow interfaces (`services.BrokerServices`,
`retention.SweptBroker`, `session.SessionOwner`, `queue.QueueOwner`) that
`Broker` and `ClientConnection` satisfy, so no module of `broker/` imports
this one (tests/test_layering.py checks that there is no cycle).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

from moorage.broker import logs
from moorage.broker.adapter_records import SessionRecords, recover_retained
from moorage.broker.arguments import QueueOptions, parse_queue_arguments
from moorage.broker.auth import User, UserDirectory
from moorage.broker.auth_backends import AuthBackend
from moorage.broker.auth_guard import LoginGuard
from moorage.broker.client_ids import ClientIds
from moorage.broker.clock import SYSTEM_CLOCK, Clock
from moorage.broker.config import Limits
from moorage.broker.descriptors import DescriptorGuard
from moorage.broker.disk import DiskMonitor
from moorage.broker.errors import NotAllowed, PreconditionFailed
from moorage.broker.flow import WriteFlow
from moorage.broker.limits import ResourceLimits
from moorage.broker.logins import BrokerLogins
from moorage.broker.memory import MemoryMonitor, queued_bytes, watermark_bytes
from moorage.broker.queue import Queue
from moorage.broker.replies import OrderedReplies
from moorage.broker.retention import RetentionSweeper
from moorage.broker.serialization import decode_arguments
from moorage.broker.session import DeliverySink, Session
from moorage.broker.stats import MessageStats, RateSampler
from moorage.broker.vhost import HIDDEN_QUEUE_PREFIX, Exchange, VirtualHost
from moorage.storage import MemoryStore, Store, Topology

T = TypeVar("T")

_connection_ids = itertools.count(1)


class Broker(BrokerLogins):
    """Protocol-neutral broker state. Start with `await start()`, end with `await stop()`.

    Clients log in through `begin_login` (`broker.logins`)."""

    def __init__(
        self,
        *,
        store: Store | None = None,
        users: UserDirectory | None = None,
        vhosts: Iterable[str] = ("/",),
        limits: Limits | None = None,
        retention: float = 0.0,
        clock: Clock = SYSTEM_CLOCK,
        disk_free_limit: int = 0,
        resource_limits: ResourceLimits | None = None,
    ) -> None:
        self.clock = clock  # every timer of the core reads and arms this (broker.clock)
        self.store: Store = store if store is not None else MemoryStore()
        self.users = users if users is not None else UserDirectory()
        self.login_guard = LoginGuard(clock)  # brute-force slowdown per client address
        self.cert_login_from = "distinguished_name"  # auth.ssl_cert_login_from
        # the authentication chain (`broker.auth_backends`); None: the store alone
        self.auth_chain: list[AuthBackend] | None = None
        self._logins: set[asyncio.Task[User]] = set()
        self.limits = limits or Limits()
        self.flow = WriteFlow(self.store, self.limits.store_backlog)
        self.retention = retention  # seconds a message may stay queued; 0 = forever
        self.sweeper = RetentionSweeper(self, clock=clock)
        self.memory = MemoryMonitor(
            watermark_bytes(self.limits.memory_high_watermark),
            self.flow,
            self.queued_memory,
            clock,
            self.limits.memory_calculation_strategy,
            getattr(self.store, "release_memory", None),  # SQLiteStore's page cache
        )
        # per-vhost and per-user limits (broker.limits)
        self.resource_limits = resource_limits or ResourceLimits()
        # client sockets are refused before the descriptors run out (broker.descriptors)
        self.descriptors = DescriptorGuard(self.limits.file_descriptor_reserve)
        # the disk alarm watches the store's folder (none for the memory store)
        location = self.store.location
        self.disk: DiskMonitor | None = (
            DiskMonitor(location, disk_free_limit, self.flow, clock)
            if location is not None and disk_free_limit > 0
            else None
        )
        self.vhosts: dict[str, VirtualHost] = {}
        self.connections: set[ClientConnection] = set()
        # listener name -> bound port, filled by whoever starts listeners (the daemon)
        self.ports: dict[str, int] = {}
        self._client_ids: dict[str, ClientIds[Any]] = {}
        self._extensions: dict[str, Any] = {}
        self._configured_vhosts = list(vhosts)
        self._message_ids = itertools.count(1).__next__
        self.failover_status: Callable[[], dict[str, Any]] | None = None
        """Set on a node of a replicated pair (`broker.failover`): its role, epoch,
        replication lag and witness view, for the management API and metrics."""
        self.refusal: tuple[str, dict[str, str]] | None = None
        """Set on a node that serves no client (a standby, `broker.failover`): (why, where
        to go instead, by protocol). Every login is then refused with `NotServing`."""
        # message counters (`broker.stats`): what closed connections counted, and the
        # totals (closed + live sessions) refreshed when read
        self.closed_stats = MessageStats()
        self._totals = MessageStats()
        self.rates = RateSampler(self, clock=clock)

    async def start(self) -> None:
        """Open the store and rebuild the durable topology it holds."""
        await self.store.open()
        await self.users.open(self.store, self.clock)
        topology = await self.store.load_topology()
        self._restore(topology)
        await self._recover_messages()
        for name in self._configured_vhosts:
            if name not in self.vhosts:
                self.add_vhost(name)
        self._message_ids = itertools.count(await self.store.max_message_id() + 1).__next__
        self.sweeper.start()
        self.memory.start()
        if self.disk is not None:
            self.disk.start()
        self.rates.start()

    async def stop(self) -> None:
        """Close every connection's core state and close the store."""
        for task in list(self._logins):
            task.cancel()
        self.users.close()  # the password checks' threads (`broker.auth_verify`)
        for backend in self.auth_chain or ():
            await backend.close()
        await self.sweeper.stop()
        await self.memory.stop()
        if self.disk is not None:
            await self.disk.stop()
        await self.rates.stop()
        for connection in list(self.connections):
            connection.close()
        for vhost in self.vhosts.values():
            for scheduler in vhost.delay_schedulers.values():
                scheduler.close(delete=False)
            for queue in vhost.queues.values():
                if queue.delays is not None:
                    queue.delays.close(delete=False)
        await self.store.close()

    def next_message_id(self) -> int:
        return self._message_ids()

    def queued_memory(self) -> int:
        """Bytes held by the messages queued in every queue, or delivered and not acked
        yet (an estimate, see `broker.memory`)."""
        queues = (vhost.queues.values() for vhost in self.vhosts.values())
        return self.memory.unacked_bytes + queued_bytes(queues)

    def message_totals(self) -> MessageStats:
        """The broker's message counters: every session's, live or closed (`broker.stats`)."""
        # one sum over every session, not one per connection and then a sum of those:
        # the management overview and /metrics ask for this on every poll
        parts = [self.closed_stats]
        for connection in self.connections:
            parts.append(connection.closed_stats)
            parts.extend(session.stats for session in connection.sessions)
        totals = self._totals
        totals.set_sum(parts)
        return totals

    def all_message_stats(self) -> Iterator[MessageStats]:
        """Every counted object's stats, aggregates refreshed (for `stats.RateSampler`)."""
        yield self.message_totals()
        for vhost in self.vhosts.values():
            for queue in vhost.queues.values():
                yield queue.stats
            for exchange in vhost.exchanges.values():
                yield exchange.stats
        for connection in list(self.connections):
            yield connection.message_totals()
            for session in connection.sessions:
                yield session.stats

    # -- vhosts ---------------------------------------------------------------------

    def add_vhost(self, name: str) -> VirtualHost:
        vhost = self.vhosts.get(name)
        if vhost is None:
            vhost = self.vhosts[name] = VirtualHost(self, name)
            self.store.put_vhost(name)
        return vhost

    def find_vhost(self, name: str) -> VirtualHost | None:
        """The vhost `name`, or None."""
        return self.vhosts.get(name)

    def all_vhosts(self) -> list[VirtualHost]:
        """Every vhost (a copy: safe to keep iterating while vhosts come and go)."""
        return list(self.vhosts.values())

    def session_records(self, protocol: str) -> SessionRecords:
        """`protocol`'s durable records in the store (`broker.adapter_records`)."""
        return SessionRecords(self.store, protocol)

    async def recover_retained(self) -> None:
        """Read the stored retained messages back into their vhosts (`broker.adapter_records`)."""
        await recover_retained(self.store, {n: v.retained for n, v in self.vhosts.items()})

    def _restore(self, topology: Topology) -> None:
        for name in topology.vhosts:
            self.vhosts[name] = VirtualHost(self, name)
        for x in topology.exchanges:
            vhost = self.vhosts[x.vhost]
            if x.name not in vhost.exchanges:
                vhost.exchanges[x.name] = Exchange(
                    x.name,
                    x.type,
                    durable=True,
                    auto_delete=x.auto_delete,
                    internal=x.internal,
                    arguments=decode_arguments(x.arguments),
                )
        for q in topology.queues:
            if q.name.startswith(HIDDEN_QUEUE_PREFIX):
                continue  # the core's own store queues (delayed messages, dedup ids)
            vhost = self.vhosts[q.vhost]
            arguments = decode_arguments(q.arguments)
            try:
                options = parse_queue_arguments(arguments, queue=q.name, vhost=q.vhost)
            except PreconditionFailed:
                options = QueueOptions()  # stored before validation existed: keep it plain
            vhost.queues[q.name] = Queue(
                vhost,
                q.name,
                durable=True,
                exclusive_owner=None,
                auto_delete=q.auto_delete,
                arguments=arguments,
                options=options,
            )
        for b in topology.bindings:
            vhost = self.vhosts[b.vhost]
            source = vhost.exchanges.get(b.source)
            dest: Any = (vhost.queues if b.destination_kind == "queue" else vhost.exchanges).get(
                b.destination
            )
            if source is None or dest is None:
                continue
            args = decode_arguments(b.arguments)
            source.router.bind(dest, b.routing_key, args)
            if b.destination_kind == "queue":
                dest.sources.add(source)
        for vhost in self.vhosts.values():
            vhost.routes.clear()  # the tables changed behind the vhosts' backs

    async def _recover_messages(self) -> None:
        """Give every stored queue its entries back, reading only a first batch of each."""
        for vhost in self.vhosts.values():
            for queue in vhost.queues.values():
                count, _size, max_seq = await self.store.queue_stats(vhost.name, queue.name)
                queue.recover(count, max_seq)
                await queue.preload()
            for exchange in list(vhost.exchanges.values()):
                if exchange.delayed and exchange.durable:
                    await vhost.delay_scheduler(exchange).recover()

    # -- clients --------------------------------------------------------------------

    def ordered_replies(self) -> OrderedReplies:
        """A new ordered stream of replies that wait for the store (`broker.replies`)."""
        return OrderedReplies(self.store)

    @property
    def store_location(self) -> Path | None:
        """The folder the store keeps its files in (None: nothing on disk)."""
        return self.store.location

    async def backup(self, destination: Path) -> int:
        """A consistent copy of the running store at `destination`; its size. Raises StoreError."""
        return await self.store.backup(destination)

    def client_ids(self, protocol: str) -> ClientIds[Any]:
        """The one client-id registry of `protocol` on this broker (`broker.client_ids`)."""
        registry = self._client_ids.get(protocol)
        if registry is None:
            registry = self._client_ids[protocol] = ClientIds()
        return registry

    def extension(self, name: str, factory: Callable[[Broker], T]) -> T:
        """The one object `name` an adapter keeps per broker, made by `factory` on first use.

        For broker-wide protocol state (the MQTT session registry), so that it
        lives and dies with its broker instead of in a module-level global.
        """
        found = self._extensions.get(name)
        if found is None:
            found = self._extensions[name] = factory(self)
        return cast(T, found)

    def close_connection(self, connection_id: int, reason: str) -> bool:
        """Force one client connection closed (`ClientConnection.force_close`); False if
        no connection has that id."""
        for connection in self.connections:
            if connection.id == connection_id:
                connection.force_close(reason)
                return True
        return False

    def connect(
        self,
        vhost_name: str,
        user: User,
        *,
        protocol: str,
        peer: str,
        client_properties: dict[str, Any] | None = None,
        client: bool = True,
    ) -> ClientConnection:
        """Attach an authenticated client to a vhost. Raises NotAllowed.

        For a user that a backend authorises (`User.authz`) the vhost check
        may raise PermissionPending (`broker.auth_users`): nothing is done
        yet, and the adapter calls again once it is answered.

        `client=False` is the broker's own work done as a user (an MQTT will, a
        management API action): not a client connection, so outside the vhost
        and user limits (`broker.limits`) and not counted by them.
        """
        vhost = self.vhosts.get(vhost_name)
        try:
            if vhost is None or not self.users.may_open(user, vhost_name):
                raise NotAllowed(f"access to vhost '{vhost_name}' refused for user '{user.name}'")
            limit = self.limits.max_connections
            if limit and len(self.connections) >= limit:
                raise NotAllowed(
                    f"access to vhost '{vhost_name}' refused for user '{user.name}': "
                    f"connection limit ({limit}) is reached"
                )
            if client:
                self.resource_limits.check_connection(
                    vhost_name, user.name, (c for c in self.connections if c.client)
                )
        except NotAllowed as e:
            logs.event(
                "connection.refused",
                f"connection from {peer} refused: {e.text}",
                level=logging.WARNING,
                peer=peer,
                protocol=protocol,
                user=user.name,
                vhost=vhost_name,
                reason=e.text,
            )
            raise
        connection = ClientConnection(
            self, vhost, user, protocol=protocol, peer=peer, client_properties=client_properties
        )
        connection.client = client
        self.connections.add(connection)
        connection.log_event("connection.opened", "opened")
        return connection


class ClientConnection:
    """Owns a connection's sessions and exclusive queues; closing it releases both."""

    def __init__(
        self,
        broker: Broker,
        vhost: VirtualHost,
        user: User,
        *,
        protocol: str,
        peer: str,
        client_properties: dict[str, Any] | None = None,
    ) -> None:
        self.id = next(_connection_ids)
        self.broker = broker
        self.vhost = vhost
        self.user = user
        self.protocol = protocol
        self.peer = peer
        self.client_properties = client_properties or {}
        self.sessions: set[Session] = set()
        self.exclusive_queues: list[Queue] = []
        self.closed = False
        self.published = False  # the memory alarm pauses only connections that publish
        self.client = True  # False: the broker's own (outside vhost and user limits)
        self.closed_stats = MessageStats()  # what its closed sessions counted
        self._totals = MessageStats()
        # The adapter's protocol close for `force_close` (AMQP connection.close 320,
        # MQTT DISCONNECT 0x98, STOMP ERROR), set once the client is connected.
        self.closer: Callable[[str], None] | None = None
        self.close_reason = "closed"  # logged with `connection.closed`

    def ordered_replies(self) -> OrderedReplies:
        """A new ordered stream of replies that wait for the store (`broker.replies`)."""
        return self.broker.ordered_replies()

    def open_session(self, sink: DeliverySink) -> Session:
        """A new session whose deliveries go to `sink`."""
        session = Session(self, sink)
        self.sessions.add(session)
        return session

    def close_session(self, session: Session) -> None:
        """Close one session: its consumers end, its unacked messages are requeued."""
        session.close()
        if session in self.sessions:
            self.sessions.discard(session)
            self.closed_stats.add(session.stats)

    def close(self) -> None:
        """Close every session, then delete the exclusive queues. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for session in list(self.sessions):
            self.close_session(session)
        for queue in list(self.exclusive_queues):
            if not queue.deleted:
                self.vhost.delete_queue(queue.name)
        self.exclusive_queues.clear()
        self.broker.connections.discard(self)
        self.broker.closed_stats.add(self.closed_stats)
        self.log_event("connection.closed", self.close_reason, reason=self.close_reason)

    def log_event(self, name: str, what: str, **fields: Any) -> None:
        """Log one of this connection's events with its id, peer, protocol, user and vhost
        (`broker.logs`); the broker's own and the management API's connections only at
        debug level (one a request)."""
        quiet = self.peer == "internal" or self.protocol == "http"
        logs.event(
            name,
            f"{self.protocol} connection {self.id} from {self.peer} {what}",
            level=logging.DEBUG if quiet else logging.INFO,
            connection=self.id,
            peer=self.peer,
            protocol=self.protocol,
            user=self.user.name,
            vhost=self.vhost.name,
            **fields,
        )

    def force_close(self, reason: str) -> None:
        """Close at an operator's request (the management API's DELETE): the adapter
        sends its protocol's close carrying `reason`, then releases the connection as
        when the client leaves. Without an adapter hook, only the core state closes."""
        if self.closed:
            return
        self.close_reason = f"closed by an operator: {reason}"
        if self.closer is not None:
            self.closer(reason)
        if not self.closed:
            self.close()

    def message_totals(self) -> MessageStats:
        """This connection's message counters: its sessions', live or closed."""
        totals = self._totals
        totals.set_sum([self.closed_stats, *(s.stats for s in self.sessions)])
        return totals
