"""The broker-wide registry of MQTT sessions, keyed by (vhost, client id).

One `SessionRegistry` per `Broker` (`registry_for`, kept by
`Broker.extension`), shared by every MQTT listener, TCP and WebSocket alike.
It owns the sessions' lifetime: a network connection attaches to a session
after CONNECT (`attach`, which takes over from a connection still attached
[MQTT-3.1.4-3]) and detaches when it ends (`release`); which connection holds
a session is the broker's `ClientIds` of "mqtt", keyed by `client_key`; a
session with no expiry ends with its connection, others end when their
expiry interval runs out (`detached`), or when a clean start replaces them.
Ending a session deletes its queue, leaves its shared subscription groups and
publishes a pending will.

Persistence: a persistent session's state is written to the store with
`put_session` whenever it changes (`save`), and read back by `recover` when
the first listener starts, together with the retained messages; its queue
and messages are the core's durable queue. This is the one module of the
MQTT package that keeps durable records, through the core's
`Broker.session_records` and `Broker.recover_retained`
(`broker.adapter_records`); acknowledgements wait for them through the
connection's `OrderedReplies`, and retained messages are written by the core
(`broker.retained`).

It also holds the broker-wide parts that hang off sessions: the statistics
and `$SYS` topics (`sys_topics`), wills (`wills`) and the session queue limit
(`dead_letters`), all reading the one clock `clock` (wall-clock seconds).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from moorage.broker.broker import Broker
from moorage.broker.client_ids import ClientIds
from moorage.protocols.mqtt.dead_letters import SessionQueueLimit
from moorage.protocols.mqtt.session_state import (
    SESSION_NEVER_EXPIRES,
    SessionState,
    shared_queue_name,
)
from moorage.protocols.mqtt.sys_topics import Statistics, SysTopics
from moorage.protocols.mqtt.wills import Wills
from moorage.storage import StoreError

log = logging.getLogger("moorage.mqtt")

STORE_PROTOCOL = "mqtt"  # the protocol name of our session records and client ids


class SessionOwner(Protocol):
    """The network connection attached to a session."""

    def taken_over(self) -> None:
        """Another connection with the same client id arrived [MQTT-3.1.4-3]."""


def client_key(vhost: str, client_id: str) -> str:
    """A session's key in the broker's `ClientIds`: one client id per vhost.

    Unambiguous because a client id never holds U+0000 [MQTT-1.5.4-2] (the
    codec refuses it).
    """
    return f"{vhost}\x00{client_id}"


class SessionRegistry:
    """Every MQTT session of one broker, and the broker-wide MQTT services."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.sessions: dict[tuple[str, str], SessionState] = {}
        self.connections: ClientIds[SessionOwner] = broker.client_ids(STORE_PROTOCOL)
        self.records = broker.session_records(STORE_PROTOCOL)
        self.shared_members: dict[tuple[str, str], set[SessionState]] = {}  # (vhost, queue)
        self.call_later: Callable[[float, Callable[[], None]], Any] | None = None
        self.clock: Callable[[], float] = time.time
        self.stats = Statistics()
        self.recovered = False
        self.sys = SysTopics(broker, self.sessions, self.stats, self.now, self.connected)
        self.wills = Wills(broker, self.now, self.schedule)
        self.queue_limit = SessionQueueLimit(broker, self.stats)

    def now(self) -> float:
        """Wall-clock seconds, from `clock` (tests may replace it)."""
        return self.clock()

    def schedule(self, delay: float, callback: Callable[[], None]) -> Any:
        if self.call_later is None:
            raise RuntimeError("SessionRegistry has no timer (started outside a listener)")
        return self.call_later(delay, callback)

    # -- which connection holds a session -------------------------------------------------

    def attach(self, vhost: str, client_id: str, connection: SessionOwner) -> None:
        """`connection` holds the client id now; one holding it before is taken over."""
        key = client_key(vhost, client_id)
        previous = self.connections.holder(key)
        if previous is not None and previous is not connection:
            previous.taken_over()  # [MQTT-3.1.4-3]: it leaves first (its will, its core)
        self.connections.claim(key, connection)

    def release(self, state: SessionState, connection: SessionOwner) -> bool:
        """`connection` leaves `state`; False if it no longer held it (taken over)."""
        return self.connections.release(client_key(state.vhost, state.client_id), connection)

    def connected(self, state: SessionState) -> bool:
        """Is a network connection attached to the session?"""
        return self.connections.holder(client_key(state.vhost, state.client_id)) is not None

    # -- session lifetime ----------------------------------------------------------------

    def end_session(self, state: SessionState) -> None:
        """The session is over: drop its queue and shared memberships, send a pending will."""
        if self.sessions.get((state.vhost, state.client_id)) is state:
            del self.sessions[(state.vhost, state.client_id)]
        if state.expiry_timer is not None:
            state.expiry_timer.cancel()
            state.expiry_timer = None
        if state.saved:
            state.saved = False
            self.records.delete(state.vhost, state.client_id)
        vhost = self.broker.find_vhost(state.vhost)
        if vhost is not None:
            for sub in state.subscriptions.values():
                if sub.group is not None:
                    self.leave_group(state, shared_queue_name(sub.group, sub.topic_filter))
            if vhost.find_queue(state.queue_name) is not None:
                vhost.delete_queue(state.queue_name)
        state.clear_subscriptions()
        if state.will is not None:
            self.wills.publish(state)  # the session ended before the will delay [MQTT-3.1.3-9]

    def leave_group(self, state: SessionState, queue: str) -> None:
        members = self.shared_members.get((state.vhost, queue))
        if members is None:
            return
        members.discard(state)
        if not members:
            del self.shared_members[(state.vhost, queue)]
            vhost = self.broker.find_vhost(state.vhost)
            if vhost is not None and vhost.find_queue(queue) is not None:
                vhost.delete_queue(queue)

    def save(self, state: SessionState) -> bool:
        """Write a persistent session's state to the store; True if something was queued."""
        if not state.persistent or self.sessions.get((state.vhost, state.client_id)) is not state:
            return False
        self.records.put(state.vhost, state.client_id, state.encode())
        state.saved = True
        return True

    def detached(self, state: SessionState) -> None:
        """Its connection is gone: expire it now or after its expiry interval."""
        if state.expiry_interval == 0:
            self.end_session(state)
            return
        state.disconnected_at = self.clock()
        with contextlib.suppress(StoreError):  # a closed store at shutdown: nothing to do
            self.save(state)
        if state.expiry_interval != SESSION_NEVER_EXPIRES:
            state.expiry_timer = self.schedule(state.expiry_interval, self._ender(state))

    # -- recovery after a restart ------------------------------------------------------

    async def recover(self) -> None:
        """Read sessions and retained messages back from the store (once per broker).

        A session whose expiry passed while the broker was down (counted from
        when it was left, or from now for one that was connected when the
        broker died) is removed with its queue [MQTT-3.1.2-23].
        """
        if self.recovered:
            return
        self.recovered = True
        now = self.clock()
        for record in await self.records.load():
            try:
                state = SessionState.decode(record.vhost, record.client_id, record.state)
            except (ValueError, KeyError, TypeError) as e:
                log.warning("dropping unreadable MQTT session %r: %s", record.client_id, e)
                self.records.delete(record.vhost, record.client_id)
                continue
            state.saved = True
            self.sessions[(state.vhost, state.client_id)] = state
            for sub in state.subscriptions.values():
                if sub.group is not None:
                    queue = shared_queue_name(sub.group, sub.topic_filter)
                    self.shared_members.setdefault((state.vhost, queue), set()).add(state)
            left = state.disconnected_at if state.disconnected_at is not None else now
            if state.disconnected_at is None:
                state.disconnected_at = now
                self.save(state)
            if state.expiry_interval == SESSION_NEVER_EXPIRES:
                continue
            remaining = left + state.expiry_interval - now
            if remaining <= 0 or self.broker.find_vhost(record.vhost) is None:
                self.end_session(state)
            else:
                state.expiry_timer = self.schedule(remaining, self._ender(state))
        await self.broker.recover_retained()
        for vhost in self.broker.all_vhosts():
            self.queue_limit.watch(vhost.name)
        if self.call_later is not None:
            self.sys.start(self.schedule)

    def _ender(self, state: SessionState) -> Callable[[], None]:
        return lambda: self.end_session(state)

    def close(self) -> None:
        """Stop the $SYS timer and the internal connections (broker shutdown)."""
        self.sys.stop()
        self.queue_limit.close()


def registry_for(broker: Broker) -> SessionRegistry:
    """The one session registry of `broker` (shared by every MQTT listener)."""
    return broker.extension("mqtt.sessions", SessionRegistry)
