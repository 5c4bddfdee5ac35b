"""A node of a replicated pair: its role, and the moves between roles.

Theory of operation
-------------------
The daemon hands a node with `[replication] role` to `FailoverNode`, which
owns the replication port (`port.py`) and one of two roles:

PRIMARY: a `SQLiteStore` whose batches a `ReplicationSource` ships to the
standby, with every `when_durable` callback held by a `ReplicationGate`
until the standby acknowledged its batch. Every `heartbeat` the node
reports to the witness (epoch, address, gate mode) and looks at the gate:
when no standby has been in sync for `standby_timeout` seconds it asks the
witness for leave to confirm alone (ALONE), and without that leave (the
witness refuses or cannot be reached) it fails confirms (FENCED): a primary
that lost both standby and witness confirms nothing that could be lost.
With no witness configured it goes ALONE (promotion is then manual). A
witness answer "stale" (a newer epoch exists) makes it step down: it stops
serving and follows the new primary as a standby.

STANDBY: a placeholder broker whose every login is refused with
`NotServing` (each protocol's "go elsewhere", naming the primary's client
addresses learnt from WELCOME), and a `Replica` that keeps the store file a
copy of the primary's. When the primary is lost, the node asks the witness
for promotion every `heartbeat`; the witness grants it only after the
primary's lease ran out, with a new epoch. Without a witness promotion is
manual (`moorage promote`), unless `promote_without_witness` accepts the
risk.

A node that starts as primary while its witness cannot be reached refuses
clients (as a standby does) until the witness accepts its report or a
standby catches up with it: until then nobody has vouched that no newer
primary exists.

Promotion: stop the replica (closing the file), store the new epoch durably,
close the refusing listeners, open the store as primary (the usual
recovery) and listen on the same ports. Start-up as primary first asks the
witness and the peer whether a newer epoch exists, and if so starts as a
standby of its holder instead: a node with an older epoch never serves.

Ordering rules: the epoch is durable before the node serves in it; a node
serves clients only as PRIMARY; role changes run one at a time (`_switch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from moorage.broker.failover.epoch import EpochFile
from moorage.broker.failover.port import ReplicationPort
from moorage.storage import MemoryStore, Store
from moorage.storage.replication.gate import GateMode, ReplicationGate
from moorage.storage.replication.link import request
from moorage.storage.replication.replica import Replica
from moorage.storage.replication.source import ReplicationSource
from moorage.storage.sqlite import SQLiteStore

if TYPE_CHECKING:
    from moorage.broker.broker import Broker
    from moorage.broker.config import Config

__all__ = ["FailoverNode", "NodeStartError", "Role"]

log = logging.getLogger("moorage.failover")

WITNESS_TIMEOUT = 1.0
"""Seconds to wait for the witness's answer (it is one small request)."""


class NodeStartError(Exception):
    """The node cannot start; the message is the one-line reason."""


class Role(enum.Enum):
    STARTING = "starting"
    PRIMARY = "primary"
    STANDBY = "standby"
    SWITCHING = "switching"
    STOPPED = "stopped"


class ServingDaemon(Protocol):
    """What the node needs of the daemon (`broker.daemon.Daemon`)."""

    config: Config
    broker: Broker | None
    ports: dict[str, int]

    def make_broker(self, store: Store) -> Broker: ...
    async def serve_broker(self, broker: Broker) -> None: ...
    async def stop_serving(self) -> None: ...


class FailoverNode:
    """One node of a replicated pair inside the daemon (module docs)."""

    def __init__(self, daemon: ServingDaemon) -> None:
        self.daemon = daemon
        self.settings = daemon.config.replication
        self.data_dir = daemon.config.data_dir
        self.epochs = EpochFile(self.data_dir)
        host = self.settings.advertise or daemon.config.bind
        self.host = host
        self.node = f"{host}:{self.settings.port}"
        self.role = Role.STARTING
        self.peer = self.settings.peer
        self.store: SQLiteStore | None = None
        self.gate: ReplicationGate | None = None
        self.source: ReplicationSource | None = None
        self.replica: Replica | None = None
        self.witness_view: dict[str, Any] = {}
        self.witness_reachable: bool | None = None
        self.primary_lost_at: float | None = None
        self.waiting_since = 0.0
        self.promotions = 0
        self.port = ReplicationPort(self)
        self._loop_task: asyncio.Task[None] | None = None
        self._switching: asyncio.Lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    @property
    def serving_epoch(self) -> int | None:
        """The epoch this node serves in as primary; None otherwise."""
        return self.epochs.epoch if self.role is Role.PRIMARY else None

    @property
    def role_name(self) -> str:
        return self.role.value

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Take the configured role, or standby when a newer epoch exists elsewhere.

        Raises NodeStartError (or the daemon's StartupError).
        """
        try:
            epoch = self.epochs.load()
        except ValueError as e:
            raise NodeStartError(str(e)) from e
        try:
            await self.port.start(self.daemon.config.bind, self.settings.port)
        except OSError as e:
            raise NodeStartError(
                f"cannot listen for replication on {self.daemon.config.bind}:"
                f"{self.settings.port}: {e.strerror or e}"
            ) from e
        if self.settings.role == "standby":
            await self._become_standby(self.settings.peer)
            return
        newer = await self._newer_primary(epoch)
        if newer:
            log.warning("failover: a newer primary exists at %s; starting as its standby", newer)
            await self._become_standby(newer)
        else:
            # Unless the witness (if any) answered, nobody has vouched that no
            # newer primary exists: clients wait until someone does.
            vouched = not self.settings.witness or bool(self.witness_reachable)
            await self._become_primary(max(epoch, 1), vouched=vouched)

    async def stop(self) -> None:
        self.role = Role.STOPPED
        await self._cancel_loop()
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.source is not None:
            self.source.close()
        if self.replica is not None:
            await self.replica.stop()
            self.replica = None
        self.port.close()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _cancel_loop(self) -> None:
        task, self._loop_task = self._loop_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- asking around -----------------------------------------------------------

    async def ask_witness(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """The witness's answer, or None when there is none or it cannot be reached."""
        if not self.settings.witness:
            return None
        try:
            answer = await request(self.settings.witness, message, WITNESS_TIMEOUT)
        except (OSError, TimeoutError, ConnectionError, ValueError) as e:
            if self.witness_reachable is not False:
                log.warning("failover: witness %s unreachable: %s", self.settings.witness, e)
            self.witness_reachable = False
            return None
        except Exception as e:  # noqa: BLE001 - a malformed answer is an unreachable witness
            log.warning("failover: witness %s answered badly: %s", self.settings.witness, e)
            self.witness_reachable = False
            return None
        if self.witness_reachable is False:
            log.warning("failover: witness %s reachable again", self.settings.witness)
        self.witness_reachable = True
        return answer

    async def _newer_primary(self, epoch: int) -> str | None:
        """The replication address of a primary with a newer epoch than `epoch`, if any."""
        answer = await self.ask_witness({"op": "status"})
        holder = answer.get("holder") if answer else None
        if answer and holder and holder != self.node and int(answer["epoch"]) >= max(epoch, 1):
            return str(answer.get("address") or holder)
        if self.peer:
            try:
                status = await request(self.peer, {"op": "status"}, WITNESS_TIMEOUT)
            except Exception:  # noqa: BLE001 - an unreachable peer is no newer primary
                return None
            if status.get("role") == "primary" and int(status.get("epoch", 0)) >= max(epoch, 1):
                return self.peer
        return None

    # -- primary -------------------------------------------------------------------

    def client_addresses(self) -> dict[str, str]:
        return {name: f"{self.host}:{port}" for name, port in sorted(self.daemon.ports.items())}

    async def _become_primary(self, epoch: int, *, vouched: bool = True) -> None:
        if epoch != self.epochs.epoch:
            await asyncio.to_thread(self.epochs.store, epoch)
        config = self.daemon.config
        store = SQLiteStore(
            config.data_dir / "moorage.db",
            durability=config.storage.durability,
            ack_window=config.storage.ack_window,
        )
        gate = ReplicationGate(self.loop, GateMode.WAITING)
        source = ReplicationSource(
            store,
            gate,
            epoch=epoch,
            welcome={"node": self.node},
            heartbeat=self.settings.heartbeat,
            peer_timeout=self.settings.peer_timeout,
        )
        source.on_in_sync = self._on_in_sync
        source.on_standby_lost = self._on_standby_lost
        self.store, self.gate, self.source = store, gate, source
        broker = self.daemon.make_broker(store)
        broker.failover_status = self.status
        if not vouched:
            broker.refusal = ("this node waits for its witness to confirm it is the primary", {})
        await self.daemon.serve_broker(broker)
        source.welcome["clients"] = self.client_addresses()
        self.waiting_since = self.loop.time()
        self.role = Role.PRIMARY
        log.warning("failover: serving as primary in epoch %d", epoch)
        self._loop_task = self.loop.create_task(self._primary_loop())

    def _on_in_sync(self) -> None:
        if self.gate is not None and self.role is Role.PRIMARY:
            self.gate.set_mode(GateMode.SYNC, "standby in sync")
            self._vouched()  # a standby follows this epoch: none is newer

    def _vouched(self) -> None:
        """Serve clients: the witness or a standby confirmed that no newer primary exists."""
        broker = self.daemon.broker
        if broker is not None and broker.refusal is not None and self.role is Role.PRIMARY:
            broker.refusal = None
            log.warning("failover: confirmed as primary in epoch %d; serving", self.epochs.epoch)

    def _on_standby_lost(self, reason: str) -> None:
        gate = self.gate
        if gate is not None and gate.mode is GateMode.SYNC:
            gate.set_mode(GateMode.WAITING, f"standby lost: {reason}")
            self.waiting_since = self.loop.time()

    async def _primary_loop(self) -> None:
        """Report to the witness; decide between ALONE and FENCED once the standby is gone."""
        while self.role is Role.PRIMARY:
            gate, epoch = self.gate, self.epochs.epoch
            assert gate is not None
            answer = await self.ask_witness(
                {
                    "op": "report",
                    "node": self.node,
                    "epoch": epoch,
                    "address": self.node,
                    "mode": gate.mode.value,
                }
            )
            if answer is not None:
                self.witness_view = answer
                if answer.get("stale"):
                    self._step_down(answer)
                    return
                if answer.get("ok"):
                    self._vouched()
            overdue = self.loop.time() - self.waiting_since >= self.settings.standby_timeout
            if gate.mode in (GateMode.WAITING, GateMode.FENCED) and overdue:
                await self._go_alone(gate, epoch)
                if self.role is not Role.PRIMARY:
                    return
            await asyncio.sleep(self.settings.heartbeat)

    async def _go_alone(self, gate: ReplicationGate, epoch: int) -> None:
        if not self.settings.witness:
            gate.set_mode(GateMode.ALONE, "no standby; no witness configured")
            return
        answer = await self.ask_witness(
            {"op": "alone", "node": self.node, "epoch": epoch, "address": self.node}
        )
        if gate.mode not in (GateMode.WAITING, GateMode.FENCED):
            return  # the standby came back meanwhile
        if answer is not None and answer.get("ok"):
            gate.set_mode(GateMode.ALONE, "no standby; the witness agrees")
        elif answer is not None and answer.get("stale"):
            self._step_down(answer)
        else:
            gate.set_mode(GateMode.FENCED, "lost both the standby and the witness")

    def _step_down(self, answer: dict[str, Any]) -> None:
        address = str(answer.get("address") or answer.get("holder") or self.peer)
        log.error(
            "failover: epoch %s is held by %s; this primary (epoch %d) steps down",
            answer.get("epoch"),
            address,
            self.epochs.epoch,
        )
        if self.gate is not None:
            self.gate.set_mode(GateMode.FENCED, "a newer primary exists")
        self.role = Role.SWITCHING
        self.spawn(self._switch(self._step_down_to(address)))

    async def _step_down_to(self, address: str) -> None:
        if self.source is not None:
            self.source.close()
        await self.daemon.stop_serving()
        self.store = self.gate = self.source = None
        await self._become_standby(address)

    # -- standby -------------------------------------------------------------------

    async def _become_standby(self, primary: str) -> None:
        self.peer = primary
        broker = self.daemon.make_broker(MemoryStore())
        broker.refusal = (f"this node is a standby; the primary is {primary}", {})
        broker.failover_status = self.status
        await self.daemon.serve_broker(broker)
        replica = Replica(
            self.data_dir / "moorage.db",
            primary,
            node=self.node,
            epoch=lambda: self.epochs.epoch,
            durability=self.daemon.config.storage.durability,
            peer_timeout=self.settings.peer_timeout,
        )
        replica.on_welcome = self._on_welcome
        replica.on_installed = self._on_installed
        replica.on_primary_lost = self._on_primary_lost
        self.replica = replica
        self.primary_lost_at = None
        self.role = Role.STANDBY
        log.warning("failover: standby of %s (epoch %d)", primary, self.epochs.epoch)
        replica.start()
        self._loop_task = self.loop.create_task(self._standby_loop())

    def _on_welcome(self, welcome: dict[str, Any]) -> bool:
        epoch = int(welcome.get("epoch", 0))
        if epoch < self.epochs.epoch:
            log.error(
                "failover: %s offers epoch %d, older than ours (%d): not following it",
                self.peer,
                epoch,
                self.epochs.epoch,
            )
            return False
        clients = welcome.get("clients")
        if isinstance(clients, dict) and self.daemon.broker is not None:
            where = ", ".join(f"{name} {address}" for name, address in clients.items())
            self.daemon.broker.refusal = (
                f"this node is a standby; the primary serves {where}",
                {str(k): str(v) for k, v in clients.items()},
            )
        return True

    def _on_installed(self, epoch: int) -> None:
        if epoch != self.epochs.epoch:
            self.epochs.store(epoch)  # a few fsyncs; before the snapshot is acknowledged
        self.primary_lost_at = None

    def _on_primary_lost(self) -> None:
        self.primary_lost_at = self.loop.time()

    async def _standby_loop(self) -> None:
        """Ask for promotion while the primary is lost (with a witness, or if allowed)."""
        while self.role is Role.STANDBY:
            lost_at = self.primary_lost_at
            if lost_at is not None:
                if self.settings.witness:
                    answer = await self.ask_witness(
                        {
                            "op": "promote",
                            "node": self.node,
                            "epoch": self.epochs.epoch,
                            "address": self.node,
                        }
                    )
                    if answer is not None:
                        self.witness_view = answer
                    if answer is not None and answer.get("ok") and self.role is Role.STANDBY:
                        self.role = Role.SWITCHING
                        self.spawn(self._switch(self._promote_to(int(answer["epoch"]))))
                        return
                elif self.settings.promote_without_witness and (
                    self.loop.time() - lost_at >= self.settings.peer_timeout
                ):
                    self.role = Role.SWITCHING
                    self.spawn(self._switch(self._promote_to(self.epochs.epoch + 1)))
                    return
            await asyncio.sleep(self.settings.heartbeat)

    async def promote(self, *, force: bool) -> dict[str, Any]:
        """The operator's `moorage promote`: the answer to send back."""
        if self.role is Role.PRIMARY:
            return {"ok": True, "role": "primary", "epoch": self.epochs.epoch}
        if self.role is not Role.STANDBY:
            return {"ok": False, "reason": f"node is {self.role.value}"}
        epoch = self.epochs.epoch + 1
        if self.settings.witness and not force:
            answer = await self.ask_witness(
                {
                    "op": "promote",
                    "node": self.node,
                    "epoch": self.epochs.epoch,
                    "address": self.node,
                }
            )
            if answer is None or not answer.get("ok"):
                reason = "witness unreachable" if answer is None else answer.get("reason")
                return {"ok": False, "reason": f"the witness refuses: {reason} (--force overrides)"}
            epoch = int(answer["epoch"])
        if self.role is not Role.STANDBY:
            return {"ok": False, "reason": f"node is {self.role.value}"}
        self.role = Role.SWITCHING
        await self._switch(self._promote_to(epoch))
        return {
            "ok": self.role is Role.PRIMARY,
            "role": self.role.value,
            "epoch": self.epochs.epoch,
        }

    async def _promote_to(self, epoch: int) -> None:
        log.warning("failover: promoting this node to primary in epoch %d", epoch)
        await self._cancel_loop()
        if self.replica is not None:
            await self.replica.stop()
            self.replica = None
        await asyncio.to_thread(self.epochs.store, epoch)  # durable before serving
        await self.daemon.stop_serving()
        self.promotions += 1
        await self._become_primary(epoch)

    async def _switch(self, change: Coroutine[Any, Any, None]) -> None:
        """Run one role change at a time; a failure is logged and leaves the node stopped."""
        async with self._switching:
            await self._cancel_loop()
            try:
                await change
            except Exception:
                log.exception("failover: role change failed; this node serves nothing")
                self.role = Role.STOPPED

    # -- status ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Role, epoch, replication lag and the witness's view, for operators."""
        status: dict[str, Any] = {
            "role": self.role.value,
            "node": self.node,
            "epoch": self.epochs.epoch,
            "peer": self.peer,
            "witness": self.settings.witness or None,
            "witness_reachable": self.witness_reachable,
            "witness_view": self.witness_view,
            "promotions": self.promotions,
        }
        if self.gate is not None and self.source is not None:
            status.update(
                confirms=self.gate.mode.value,
                standby=self.source.standby_node if self.source.link is not None else None,
                standby_in_sync=self.source.in_sync,
                committed_batches=self.gate.last,
                acknowledged_batches=self.gate.acked,
                lag_batches=self.gate.lag,
                lag_seconds=round(self.gate.lag_seconds, 3),
                waiting_confirms=self.gate.waiting,
                snapshots_sent=self.source.snapshots,
            )
        if self.replica is not None:
            status.update(
                following=self.replica.following,
                applied_batches=self.replica.applied,
                snapshots_received=self.replica.snapshots,
            )
        return status
