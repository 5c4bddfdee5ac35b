"""Timer tests without sleeping: a broker on a `ManualClock`, and a fake shell for adapters.

Two ways to test time-dependent behaviour at exact instants, instantly:

- `clocked_core()`: an in-process `Broker` (memory store) whose clock is a
  `ManualClock`, with `CoreClient`s that open sessions and record deliveries
  through the core API. TTL, queue expiry, ack timeouts, delayed delivery and
  retention are checked by advancing the clock and looking at what happened.
- `AdapterHarness`: any protocol's adapter (AMQP, MQTT, STOMP) behind a fake
  shell instead of a socket, as `protocols.tcp.TCPShell` would run it: bytes
  in with `now = clock.monotonic()`, everything the adapter sent collected,
  and its one timer armed on the manual clock at `next_deadline()`. Keep-alive,
  heart-beat and handshake timeouts fire when the test advances the clock.
  The test speaks the protocol with the client side of its codec (or
  pamqp for AMQP, plain frames for STOMP).

For a broker on a real socket with a manual clock, pass `clock=` to the
`start_broker` fixture and advance it on the loop thread
(`running.call(clock.advance, seconds)`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from moorage.broker.auth import UserDirectory
from moorage.broker.broker import Broker
from moorage.broker.clock import ManualClock, Timer
from moorage.broker.config import Limits, default_guest
from moorage.broker.connection import ClientConnection
from moorage.broker.errors import BrokerError
from moorage.broker.message import Message, Properties
from moorage.broker.session import Session
from moorage.storage import Store


async def settle(rounds: int = 5) -> None:
    """Let the loop run what timer callbacks handed to it (tasks, call_soon)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def until(predicate: Callable[[], bool], bound: float = 60.0) -> None:
    """Wait on the real loop for a condition (store round trips); fails after a generous bound."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {bound}s")
        await asyncio.sleep(0.001)


class RecordingSink:
    """A `DeliverySink` keeping (consumer tag, delivery tag, redelivered, message) per delivery."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, int, bool, Message]] = []
        self.returns: list[tuple[Message, int, str]] = []
        self.cancels: list[tuple[str, BrokerError | None]] = []
        self.closed_with: list[BrokerError] = []

    def deliver(
        self, consumer_tag: str, delivery_tag: int, redelivered: bool, message: Message
    ) -> None:
        self.deliveries.append((consumer_tag, delivery_tag, redelivered, message))

    def returned(self, message: Message, reply_code: int, reply_text: str) -> None:
        self.returns.append((message, reply_code, reply_text))

    def cancelled(self, consumer_tag: str, error: BrokerError | None) -> None:
        self.cancels.append((consumer_tag, error))

    def closed_by_broker(self, error: BrokerError) -> None:
        self.closed_with.append(error)

    @property
    def bodies(self) -> list[bytes]:
        return [message.body for _c, _d, _r, message in self.deliveries]


def message(body: bytes, routing_key: str = "", **properties: Any) -> Message:
    """A message for `Session.publish`, with `Properties(**properties)`."""
    return Message("", routing_key, Properties(**properties), body)


class CoreClient:
    """One client of the core API: a connection, one session and what it was given."""

    def __init__(self, broker: Broker, vhost: str = "/") -> None:
        user = broker.users.users["guest"]
        self.connection: ClientConnection = broker.connect(
            vhost, user, protocol="test", peer="harness"
        )
        self.sink = RecordingSink()
        self.session: Session = self.connection.open_session(self.sink)

    def close(self) -> None:
        self.connection.close()


async def remember_guest(broker: Broker) -> None:
    """Check guest's password once and remember it for good (a started `broker`).

    An adapter's login whose password the credential cache does not know is
    answered later, once the check has run off the event loop
    (tests/security/test_login_off_loop.py); with guest's remembered, the
    sans-socket tests' logins as guest are answered inside `data_received`,
    as those tests (which are about other things) expect.
    """
    broker.users.cache_ttl = math.inf
    await broker.login("guest", "guest", from_loopback=True)


@asynccontextmanager
async def clocked_core(
    *, store: Store | None = None, limits: Limits | None = None, retention: float = 0.0
) -> AsyncIterator[tuple[Broker, ManualClock]]:
    """A started `Broker` on a fresh `ManualClock`; stopped on exit."""
    clock = ManualClock()
    users = UserDirectory([default_guest()])
    broker = Broker(store=store, users=users, limits=limits, retention=retention, clock=clock)
    await broker.start()
    await remember_guest(broker)
    try:
        yield broker, clock
    finally:
        await broker.stop()


class FakeShell:
    """The `protocols.tcp.Shell` an adapter writes through, without a socket."""

    def __init__(self, peer: str = "127.0.0.1:50000", from_loopback: bool = True) -> None:
        self.peer = peer
        self.from_loopback = from_loopback
        self.written = bytearray()
        self.closed = False

    def send(self, data: bytes) -> None:
        if not self.closed:
            self.written += data

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        """What the adapter sent since the last `take`."""
        data = bytes(self.written)
        self.written.clear()
        return data


class AdapterHarness:
    """Runs one adapter the way `TCPShell` does, on a manual clock.

    `factory` is a protocol's adapter factory, `(broker, shell, now) -> adapter`
    (for example `MQTTConnection`). `feed` hands bytes over, `advance` moves the
    clock (firing the adapter's timer when due), `take` returns what it sent.
    """

    def __init__(
        self, broker: Broker, clock: ManualClock, factory: Callable[[Broker, Any, float], Any]
    ) -> None:
        self.broker = broker
        self.clock = clock
        self.shell = FakeShell()
        self.adapter = factory(broker, self.shell, clock.monotonic())
        self._timer: Timer | None = None
        self._timer_when = float("inf")
        self._arm()

    def feed(self, data: bytes) -> None:
        self.adapter.data_received(data, self.clock.monotonic())
        if self.adapter.next_deadline() != self._timer_when:
            self._arm()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def take(self) -> bytes:
        return self.shell.take()

    @property
    def closed(self) -> bool:
        return bool(self.shell.closed or self.adapter.closed)

    def lose_connection(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.adapter.connection_lost()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_when = self.adapter.next_deadline()
        if self._timer_when != float("inf") and not self.shell.closed:
            self._timer = self.clock.call_at(self._timer_when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.shell.closed:
            return
        self.adapter.handle_timer(self.clock.monotonic())
        self._arm()
