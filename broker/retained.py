"""Retained messages of one virtual host: one message per topic, found by topic pattern.

Theory of operation
-------------------
A retained message is the last message published to a topic with "keep this
for later subscribers" (MQTT's RETAIN flag). Each `VirtualHost` owns one
`RetainedMessages`; a protocol adapter decides what to retain and what a
subscriber receives, the core keeps the messages, writes them to the store
and finds them.

Every message is kept under its *topic*, the name the store keys it by
(`Store.put_retained`), and filed in a word tree by its routing key, split
into words the way the topic exchange splits them (`topic_trie.split_words`).
A lookup takes a binding key pattern (`*` one word, `#` zero or more words,
the topic exchange's grammar) and walks only the branches the pattern can
match, as nats-io/nats-server's `sublist.go` does for subscriptions: a literal
word follows one edge, `*` tries each child of the node it is on, `#` takes
the subtree below it (all of which matches). So a SUBSCRIBE costs the nodes on
the paths to its matches, never a pass over every retained topic;
`last_visits` counts the nodes the latest lookup examined, so tests can hold
that promise without measuring time.

`hidden_prefix` is MQTT's `$` rule [MQTT-4.7.2-1]: a pattern that starts with
a wildcard does not match a topic whose first word starts with `$`.

Results come back in retention order (a topic keeps its place when its message
is replaced), the order subscribers have always received them in.

Persistence: `put` writes the body once through the vhost (`store_body`, the
same write a queue entry uses) and points the topic at it with
`put_retained`; `clear` and expiry call `delete_retained`. Both return or
report whether the store was written, so the caller can hold its
acknowledgement until `when_durable` [DESIGN.md, Durability]. `restore` files
a message read back from the store without writing it again.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from moorage.broker.message import EXPIRES_AT_ANNOTATION, Message
from moorage.broker.topic_trie import split_words
from moorage.storage import Store

__all__ = ["RetainedMessage", "RetainedMessages", "RetainedOwner"]

_STAR = "*"
_HASH = "#"


class RetainedOwner(Protocol):
    """What retained messages need from their virtual host."""

    @property
    def name(self) -> str:
        """The vhost's name (the store keys retained messages by vhost and topic)."""
        ...

    @property
    def store(self) -> Store:
        """The broker's store."""
        ...

    def store_body(self, message: Message) -> int:
        """Write the message body once; its id in the store."""
        ...


@dataclass(slots=True)
class RetainedMessage:
    """One topic's retained message."""

    topic: str
    message: Message
    store_id: int = 0  # its body in the store (0: kept in memory only, e.g. $SYS)
    order: int = 0  # when the topic was first retained: results keep this order


class _Level:
    """One node of the word tree: the messages retained at this routing key, and the next words.

    A routing key normally belongs to one topic (MQTT's topic <-> routing key
    mapping is one to one); entries are keyed by topic all the same.
    """

    __slots__ = ("children", "entries")

    def __init__(self) -> None:
        self.children: dict[str, _Level] = {}
        self.entries: dict[str, RetainedMessage] = {}


class RetainedMessages:
    """A virtual host's retained messages, one per topic, matched through a word tree."""

    def __init__(self, owner: RetainedOwner) -> None:
        self._owner = owner
        self._by_topic: dict[str, RetainedMessage] = {}
        self._root = _Level()
        self._order = itertools.count()
        #: Tree nodes the latest `match` examined (its cost; for tests and metrics).
        self.last_visits = 0

    def __len__(self) -> int:
        return len(self._by_topic)

    def get(self, topic: str) -> RetainedMessage | None:
        """The message retained for `topic`, or None."""
        return self._by_topic.get(topic)

    def put(self, topic: str, message: Message, *, persist: bool = True) -> bool:
        """Retain `message` for `topic`, replacing what was there; an empty body clears it.

        The message is filed under its routing key. Unless `persist` is False
        its body is written to the store and the topic pointed at it.

        Returns:
            True when something was queued to the store (a reply that promises
            the message is safe must wait for `when_durable`).
        """
        if not message.body:
            return self.clear(topic)
        old = self._by_topic.get(topic)
        if old is not None:
            self._unfile(old)
            order = old.order
        else:
            order = next(self._order)
        entry = RetainedMessage(topic, message, order=order)
        self._by_topic[topic] = entry
        self._file(entry)
        if not persist:
            return False
        entry.store_id = self._owner.store_body(message.copy())
        self._owner.store.put_retained(self._owner.name, topic, entry.store_id)
        return True

    def restore(self, topic: str, message: Message, store_id: int) -> None:
        """File a retained message read back from the store (nothing is written)."""
        old = self._by_topic.get(topic)
        if old is not None:
            self._unfile(old)
        entry = RetainedMessage(
            topic, message, store_id, old.order if old is not None else next(self._order)
        )
        self._by_topic[topic] = entry
        self._file(entry)

    def clear(self, topic: str) -> bool:
        """Forget `topic`'s retained message; True when the store was asked to forget it too."""
        old = self._by_topic.pop(topic, None)
        if old is None:
            return False
        self._unfile(old)
        if old.store_id:
            self._owner.store.delete_retained(self._owner.name, topic)
            return True
        return False

    def match(
        self, pattern: str, now: float, *, hidden_prefix: str | None = None
    ) -> list[RetainedMessage]:
        """The retained messages whose routing key matches the binding key `pattern`.

        A message whose absolute expiry (`EXPIRES_AT_ANNOTATION`) is not after
        `now` (wall-clock seconds) is dropped here, from memory and store,
        instead of being returned. With `hidden_prefix`, a pattern starting
        with a wildcard skips first words starting with it (MQTT's `$` rule).

        Returns:
            The live matches in retention order.
        """
        found: list[RetainedMessage] = []
        self.last_visits = 0
        self._walk(self._root, split_words(pattern), 0, hidden_prefix, found, set())
        live = []
        for entry in found:
            expires_at = entry.message.annotations.get(EXPIRES_AT_ANNOTATION)
            if isinstance(expires_at, int | float) and expires_at <= now:
                self.clear(entry.topic)
                continue
            live.append(entry)
        live.sort(key=_retention_order)
        return live

    def __iter__(self) -> Iterator[RetainedMessage]:
        """Every retained message (a snapshot: the caller may change the set meanwhile)."""
        return iter(list(self._by_topic.values()))

    # -- the word tree ---------------------------------------------------------------

    def _file(self, entry: RetainedMessage) -> None:
        node = self._root
        for word in split_words(entry.message.routing_key):
            child = node.children.get(word)
            if child is None:
                child = node.children[word] = _Level()
            node = child
        node.entries[entry.topic] = entry

    def _unfile(self, entry: RetainedMessage) -> None:
        path: list[tuple[_Level, str]] = []
        node = self._root
        for word in split_words(entry.message.routing_key):
            child = node.children.get(word)
            if child is None:
                return
            path.append((node, word))
            node = child
        if node.entries.get(entry.topic) is entry:
            del node.entries[entry.topic]
        # prune the branch it leaves empty, so lookups never walk dead ends
        while path and not node.entries and not node.children:
            parent, word = path.pop()
            del parent.children[word]
            node = parent

    def _walk(
        self,
        node: _Level,
        words: list[str],
        i: int,
        hidden_prefix: str | None,
        found: list[RetainedMessage],
        seen: set[tuple[int, int]],
    ) -> None:
        """Collect the entries under `node` that `words[i:]` matches (each state once)."""
        state = (id(node), i)
        if state in seen:
            return
        seen.add(state)
        self.last_visits += 1
        if i == len(words):
            found.extend(node.entries.values())
            return
        word = words[i]
        hide = hidden_prefix if i == 0 and node is self._root else None
        if word == _HASH:
            self._walk(node, words, i + 1, hidden_prefix, found, seen)  # zero words
            for name, child in node.children.items():
                if hide is None or not name.startswith(hide):
                    self._walk(child, words, i, hidden_prefix, found, seen)  # one more
        elif word == _STAR:
            for name, child in node.children.items():
                if hide is None or not name.startswith(hide):
                    self._walk(child, words, i + 1, hidden_prefix, found, seen)
        else:
            literal = node.children.get(word)
            if literal is not None:
                self._walk(literal, words, i + 1, hidden_prefix, found, seen)


def _retention_order(entry: RetainedMessage) -> int:
    return entry.order
