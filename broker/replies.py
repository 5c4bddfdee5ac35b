"""Replies that must wait for the store, sent in the order the client asked for them.

Theory of operation. A protocol reply that promises durability — a publisher
confirm, an MQTT PUBACK/PUBREC/PUBCOMP, a STOMP RECEIPT, a durable declare-ok
or tx.commit-ok — may go out only once the store has written what it promises.
Replies on one connection (AMQP: one channel) must also keep their order: a
reply that needs nothing from the store still waits behind an earlier one that
does, or the client would see them swapped.

`OrderedReplies` keeps both rules for one such stream of replies. Each call to
`send` either runs the reply at once (nothing ahead of it waits and it needs
nothing from the store) or registers it with the store's `when_durable`, which
calls back in registration order. Either way a reply runs after every reply
asked for before it. The adapter says what the reply needs:

- `stored=True`: this request queued a write (a persistent message went to a
  durable queue, a session change was saved): always wait.
- `durable=True`: the reply promises that everything queued so far is on disk
  (a declare-ok of a durable entity, a tx.commit-ok): wait while the store has
  pending writes.
- `removals=False`: the reply promises the messages are safe, not that acks
  queued before it are written (confirms, PUBACK/PUBREC and a SEND's RECEIPT;
  see `Store.when_durable`), so the store's ack window can hold those acks.

The reply callback receives None, or the store's error when the write failed;
it must check itself whether its connection or channel is still open (a reply
may run after the client left). Adapters never touch the store directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

Reply = Callable[[BaseException | None], None]


class Durability(Protocol):
    """The part of the store a reply waits on (`moorage.storage.Store` has it)."""

    def when_durable(self, callback: Reply, *, removals: bool = True) -> None: ...

    @property
    def pending(self) -> bool: ...


class OrderedReplies:
    """One ordered stream of replies (a connection's or a channel's)."""

    __slots__ = ("_store", "_waiting")

    def __init__(self, store: Durability) -> None:
        self._store = store
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """How many replies are waiting for the store (0: the next may go at once)."""
        return self._waiting

    def must_wait(self, *, stored: bool = False, durable: bool = False) -> bool:
        """Whether a reply with these needs would wait (for adapters' pre-encoded fast paths)."""
        return bool(self._waiting or stored or (durable and self._store.pending))

    def send(
        self,
        reply: Reply,
        *,
        stored: bool = False,
        durable: bool = False,
        removals: bool = True,
    ) -> None:
        """Run `reply(None)` now, or `reply(error_or_None)` once the store has what it promises.

        Args:
            reply: sends the protocol's answer; called exactly once.
            stored: the request itself queued a write.
            durable: the reply promises every write queued so far.
            removals: False when the reply need not wait for queued acks.

        Never raises from the store's side; an exception raised by `reply`
        itself propagates (it is a bug in the adapter).
        """
        if not self.must_wait(stored=stored, durable=durable):
            reply(None)
            return
        self._waiting += 1

        def done(error: BaseException | None) -> None:
            self._waiting -= 1
            reply(error)

        self._store.when_durable(done, removals=removals)
