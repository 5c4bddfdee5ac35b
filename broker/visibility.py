"""Pull-based receiving: visibility timeouts, receipts and long polls (SQS's ReceiveMessage).

Theory of operation
-------------------
A `PullReceiver` lets clients that poll (rather than hold a subscription)
take messages from one queue. A received entry leaves the queue's ready part
exactly as a `basic.get` does (so FIFO groups, expiry and paging behave the
same), and waits *in flight* for its visibility timeout:

- `delete(seq, receive)` settles it (the store forgets it);
- the timeout firing puts it back in the queue (`Queue.requeue`, in seq
  order, its delivery count kept), where it is received again — or, past the
  receiver's `redrive` limit, moves to the dead-letter queue with an
  `x-death` entry (reason `delivery_limit`), so `VirtualHost.redrive` can
  bring it back;
- `change_visibility` re-arms the timer (0: visible now).

Each receive raises the entry's delivery count (written to the store with
`mark_delivered`, so it survives a restart) and gives a *receipt* `(seq,
receive)`: the entry's seq and its delivery count at that receive. Only the
latest receipt of an entry that is still in flight acts; an older one is
stale (SQS: "the request succeeds, but the message might not be deleted").

Long polls: while some `receive_wait` call waits, the receiver is a consumer
of the queue (a `Consumer` whose session is this receiver) with credit for
what the waiters still want, so a publish reaches a waiter through the
queue's normal dispatch and wakes it; when no one waits, the consumer is
removed. A waiter returns as soon as something arrived (what one dispatch
run delivers is gathered first), or empty at its deadline.

Counting: an in-flight entry is one of its queue's unacknowledged messages
(`Queue.unacked`, what the management API shows as `messages_unacknowledged`
and SQS as `ApproximateNumberOfMessagesNotVisible`), as a delivery a session
waits to see acked is. `_hold` counts it as it enters `in_flight`; `_release`
uncounts it on every way out: delete, the timeout (back to the queue or on to
the dead-letter queue), a visibility changed to 0, purge, and the receiver
closing with its queue.

In-flight entries are not written as such: after a restart they are ready
again with their delivery counts (the visibility ends early, never late), and
no longer counted as unacknowledged.
Time comes from the broker's clock; timers are armed on it.

Rooms: this module owns in-flight entries and waiters; the SQS adapter owns
receipt handles' encoding and the API's rules.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from moorage.broker.clock import Clock, Timer
from moorage.broker.dead_letter import dead_lettered_copy
from moorage.broker.entry import QueueEntry
from moorage.broker.errors import BrokerError
from moorage.broker.queue import Consumer, Queue

_consumer_ids = itertools.count(1)

FIRST_RECEIVED_LIMIT = 100_000
"""First-receive times kept per queue; past it the oldest are forgotten (the value is
approximate by name, and entries that leave through another protocol are never seen)."""

Receipt = tuple[int, int]
"""(entry seq, its delivery count at that receive)."""


class NotInFlight(Exception):
    """The receipt names no message in flight (deleted, visible again, or received since)."""


@dataclass(slots=True)
class Received:
    """One message handed out by a receive."""

    entry: QueueEntry
    receipt: Receipt
    first_received: float  # wall-clock seconds of the entry's first receive (approximate)


@dataclass(slots=True)
class _InFlight:
    entry: QueueEntry
    receive: int
    timer: Timer


@dataclass(slots=True)
class _Waiter:
    wanted: int
    visibility: float
    future: asyncio.Future[list[Received]]
    got: list[Received] = field(default_factory=list)


class PullReceiver:
    """Receiving from one queue by polling. Get one with `PullReceivers.of(queue)`."""

    def __init__(self, queue: Queue, clock: Clock) -> None:
        self.queue = queue
        self.clock = clock
        self.in_flight: dict[int, _InFlight] = {}
        self.first_received: dict[int, float] = {}
        # (max receives, dead-letter queue name) or None: set by the API layer
        self.redrive: Callable[[], tuple[int, str] | None] = lambda: None
        self._waiters: list[_Waiter] = []
        self._consumer: Consumer | None = None
        self.closed = False

    # -- receiving ------------------------------------------------------------------

    def receive(self, max_count: int, visibility: float) -> list[Received]:
        """Take up to `max_count` ready entries now, invisible for `visibility` seconds."""
        got: list[Received] = []
        queue = self.queue
        while len(got) < max_count and not queue.deleted:
            entry = queue.get()
            if entry is None:
                break
            received = self._take(entry, visibility)
            if received is not None:
                got.append(received)
        return got

    async def receive_wait(self, max_count: int, visibility: float, wait: float) -> list[Received]:
        """`receive`, waiting up to `wait` seconds for a first message (long polling).

        Entries paged out to the store are read back first, so a long queue
        never looks empty to a poller.
        """
        got = self.receive(max_count, visibility)
        while not got and self.queue.tail and not self.queue.deleted:
            reading = self.queue.reading_back()
            if reading is None:
                break
            await reading
            got = self.receive(max_count, visibility)
        if got or wait <= 0 or self.queue.deleted:
            return got
        future: asyncio.Future[list[Received]] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(max_count, visibility, future)
        self._waiters.append(waiter)
        timer = self.clock.call_later(wait, lambda: self._finish(waiter))
        try:
            self._subscribe()
            return await future
        finally:
            timer.cancel()
            self._finish(waiter)

    def _finish(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if not waiter.future.done():
            waiter.future.set_result(waiter.got)
        if not self._waiters:
            self._unsubscribe()

    def _subscribe(self) -> None:
        if self._consumer is None:
            consumer = Consumer(
                f"amq.pull-{next(_consumer_ids)}", self.queue, self, no_ack=False, prefetch=0
            )
            self._consumer = consumer
            self.queue.add_consumer(consumer)
        self.queue.dispatch()

    def _unsubscribe(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None and not self.queue.deleted:
            self.queue.remove_consumer(consumer)

    # ConsumingSession: the queue's dispatch calls these while someone waits.

    def can_deliver(self) -> bool:
        return any(len(w.got) < w.wanted for w in self._waiters)

    def deliver(self, consumer: Consumer, entry: QueueEntry) -> None:
        for waiter in self._waiters:
            if len(waiter.got) < waiter.wanted:
                break
        else:  # pragma: no cover - the queue checked can_deliver first
            self.queue.requeue([entry])
            return
        received = self._take(entry, waiter.visibility)
        if received is None:
            return
        if not waiter.got:
            # let the rest of this dispatch run fill the batch, then answer
            asyncio.get_running_loop().call_soon(self._finish, waiter)
        waiter.got.append(received)

    def consumer_cancelled(self, consumer: Consumer, error: BrokerError | None) -> None:
        """The queue was deleted: every waiter answers with what it has."""
        self._consumer = None
        for waiter in list(self._waiters):
            self._finish(waiter)

    def _take(self, entry: QueueEntry, visibility: float) -> Received | None:
        """Make a just-taken entry in flight; None when it went to the dead-letter queue."""
        queue = self.queue
        redrive = self.redrive()
        if redrive is not None and entry.delivery_count >= redrive[0]:
            self._dead_letter(entry, redrive[1])
            return None
        entry.delivery_count += 1
        if entry.persisted:
            queue.vhost.broker.store.mark_delivered(
                queue.vhost.name, queue.name, entry.seq, entry.delivery_count
            )
        seq = entry.seq
        first = self.first_received.setdefault(seq, self.clock.wall())
        if len(self.first_received) > FIRST_RECEIVED_LIMIT:
            del self.first_received[next(iter(self.first_received))]
        timer = self.clock.call_later(visibility, lambda: self._expire(seq))
        self._hold(_InFlight(entry, entry.delivery_count, timer))
        return Received(entry, (seq, entry.delivery_count), first)

    # -- what is in flight ------------------------------------------------------------

    def _hold(self, held: _InFlight) -> None:
        """Put an entry in flight: one more of its queue's unacknowledged messages."""
        if held.entry.seq in self.in_flight:  # pragma: no cover - in flight is not ready
            self._release(held.entry.seq)
        self.in_flight[held.entry.seq] = held
        self.queue.unacked += 1

    def _release(self, seq: int) -> _InFlight | None:
        """Take an entry out of flight (every way out passes here): its timer stops and
        it no longer counts as unacknowledged. None when it was not in flight."""
        held = self.in_flight.pop(seq, None)
        if held is not None:
            held.timer.cancel()
            self.queue.unacked -= 1
        return held

    # -- settling -------------------------------------------------------------------

    def _current(self, receipt: Receipt) -> _InFlight | None:
        held = self.in_flight.get(receipt[0])
        return held if held is not None and held.receive == receipt[1] else None

    def delete(self, receipt: Receipt) -> bool:
        """Settle the entry of a current receipt; False (nothing done) for a stale one."""
        held = self._current(receipt)
        if held is None:
            return False
        self._release(receipt[0])
        self.first_received.pop(receipt[0], None)
        self.queue.settle(held.entry)
        self.queue.dispatch()  # a FIFO group may send its next message now
        return True

    def change_visibility(self, receipt: Receipt, timeout: float) -> None:
        """Make an in-flight entry visible `timeout` seconds from now (0: at once).

        Raises NotInFlight for a receipt that is not the entry's latest, or an
        entry no longer in flight.
        """
        held = self._current(receipt)
        if held is None:
            raise NotInFlight(f"message {receipt[0]} is not in flight")
        held.timer.cancel()
        seq = receipt[0]
        if timeout <= 0:
            self._expire(seq)
        else:
            held.timer = self.clock.call_later(timeout, lambda: self._expire(seq))

    def _expire(self, seq: int) -> None:
        held = self._release(seq)
        if held is None or self.queue.deleted:
            return
        redrive = self.redrive()
        if redrive is not None and held.entry.delivery_count >= redrive[0]:
            self._dead_letter(held.entry, redrive[1])
            return
        self.queue.requeue([held.entry])

    def _dead_letter(self, entry: QueueEntry, target_name: str) -> None:
        """Move an entry received too often to the dead-letter queue (with `x-death`)."""
        queue = self.queue
        target = queue.vhost.queues.get(target_name)
        self.first_received.pop(entry.seq, None)
        if target is not None and target is not queue:
            copy = dead_lettered_copy(entry.message, queue.name, "delivery_limit", target_name)
            copy.exchange = ""
            target.publish(copy)  # queued first: a crash in between duplicates, never loses
        queue.settle(entry)
        queue.dispatch()

    def purge(self) -> int:
        """Settle every in-flight entry (SQS's PurgeQueue deletes those too); how many."""
        count = len(self.in_flight)
        for seq in list(self.in_flight):
            held = self._release(seq)
            assert held is not None
            self.queue.settle(held.entry)
        self.first_received.clear()
        return count

    def wake(self) -> None:
        """Answer every waiter now with what it has (the broker is shutting down)."""
        for waiter in list(self._waiters):
            self._finish(waiter)

    def close(self) -> None:
        """Forget the in-flight entries (their queue is gone) and answer the waiters."""
        self.closed = True
        for seq in list(self.in_flight):
            self._release(seq)
        for waiter in list(self._waiters):
            self._finish(waiter)


class PullReceivers:
    """The receivers of one broker, one per queue, made on first use."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._receivers: dict[tuple[str, str], PullReceiver] = {}

    def of(self, queue: Queue) -> PullReceiver:
        """The receiver of `queue` (a queue deleted and declared again gets a new one)."""
        key = (queue.vhost.name, queue.name)
        receiver = self._receivers.get(key)
        if receiver is None or receiver.queue is not queue:
            if receiver is not None:
                receiver.close()
            receiver = self._receivers[key] = PullReceiver(queue, self.clock)
        return receiver

    def find(self, vhost: str, name: str) -> PullReceiver | None:
        """The receiver of a queue, if one was made (for counts; makes none)."""
        receiver = self._receivers.get((vhost, name))
        if receiver is not None and receiver.queue.deleted:
            receiver.close()
            del self._receivers[(vhost, name)]
            return None
        return receiver

    def wake_all(self) -> None:
        """End every long poll now (shutdown): each answers with what it has."""
        for receiver in list(self._receivers.values()):
            receiver.wake()

    def forget(self, vhost: str, name: str) -> None:
        """A queue was deleted: drop its receiver."""
        receiver = self._receivers.pop((vhost, name), None)
        if receiver is not None:
            receiver.close()
