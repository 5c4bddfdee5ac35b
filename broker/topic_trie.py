"""Topic matching for the topic exchange: a word trie with a bounded result cache.

Theory of operation
-------------------
A binding key such as ``a.*.#`` is split on ``.`` into words, exactly as RabbitMQ's
``split_topic_key`` does: the empty string is *zero* words, and every other string is
``str.split(".")`` (so ``a..b`` has an empty middle word and ``.`` is two empty words).
Routing keys are split the same way.  ``*`` matches exactly one word, ``#`` matches zero
or more words; any other word, the empty word included, matches only itself.

Patterns are stored in a trie (nats-io/nats-server ``server/sublist.go``, where a level
holds literal children plus one ``pwc`` and one ``fwc`` pointer).  Each node keeps its
literal children in a dict and its ``*`` and ``#`` children in two separate slots, so a
routing key word that happens to be ``*`` or ``#`` never collides with a wildcard edge.

Matching runs the trie as an NFA instead of recursing the way RabbitMQ's
``trie_match`` does.  The set of live nodes advances one routing key word at a time:

* a literal child or the ``*`` child consumes the word;
* a node reached through a ``#`` edge consumes the word and stays live (``#`` repeats);
* after every step, each live node's ``#`` child is live too (``#`` matching zero words),
  applied until closure, so ``a.#.#.b`` matches ``a.b``.

At the end, every value stored on a live node matches.  The cost is O(words x live
nodes), never exponential, however many ``#`` a pattern holds.

Results are cached per routing key in a bounded LRU dict.  As in sublist.go, a change
only invalidates the entries it can affect: adding or removing a literal pattern drops
that single key; a wildcard pattern drops the cached keys it matches.  Cached results
are frozensets shared between callers, which is why ``match`` returns a frozenset.

Not thread-safe: the broker core runs on one event loop thread.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from itertools import chain
from typing import Generic, TypeVar

__all__ = ["DEFAULT_CACHE_SIZE", "TopicTrie", "split_words", "words_match"]

T = TypeVar("T", bound=Hashable)

#: Default number of routing keys whose results are kept (sublist.go keeps about 1024).
DEFAULT_CACHE_SIZE = 4096

_STAR = "*"
_HASH = "#"


def split_words(key: str) -> list[str]:
    """Split a routing or binding key into words the way RabbitMQ does.

    ``""`` is zero words (rabbit_db_topic_exchange ``split_topic_key(<<>>) -> []``), so
    the empty routing key matches the binding keys ``""`` and ``#`` but not ``*``.
    Everything else splits on every ``.``; empty words are kept.
    """
    return key.split(".") if key else []


def words_match(pattern: list[str], words: list[str]) -> bool:
    """Return whether one split binding key matches one split routing key.

    This is the classic two-pointer glob match with ``#`` as "any run of words" and
    ``*`` as "one word": on a mismatch it backtracks to the most recent ``#`` and lets it
    swallow one more word.  Worst case O(len(pattern) x len(words)), never exponential.
    Used to find the cached routing keys a wildcard pattern change affects.
    """
    p = w = 0
    star_p = -1  # index of the last '#' seen in pattern, -1 if none
    star_w = 0  # routing key index that '#' is currently matched up to
    while w < len(words):
        if p < len(pattern) and pattern[p] != _HASH and pattern[p] in (_STAR, words[w]):
            p += 1
            w += 1
        elif p < len(pattern) and pattern[p] == _HASH:
            star_p, star_w = p, w
            p += 1
        elif star_p >= 0:
            star_w += 1
            p, w = star_p + 1, star_w
        else:
            return False
    while p < len(pattern) and pattern[p] == _HASH:
        p += 1
    return p == len(pattern)


class _Node(Generic[T]):
    """One trie node: the values whose pattern ends here and the edges leaving it."""

    __slots__ = ("hash", "loops", "star", "values", "words")

    def __init__(self, *, loops: bool = False) -> None:
        self.words: dict[str, _Node[T]] = {}
        self.star: _Node[T] | None = None
        self.hash: _Node[T] | None = None
        self.values: set[T] = set()
        # True for a node reached through a '#' edge: it may consume further words.
        self.loops = loops

    def is_empty(self) -> bool:
        """Whether the node holds nothing and can be pruned."""
        return not (self.values or self.words or self.star is not None or self.hash is not None)

    def child(self, word: str) -> _Node[T] | None:
        """Follow the edge for one binding key word (wildcards use their own slot)."""
        if word == _STAR:
            return self.star
        if word == _HASH:
            return self.hash
        return self.words.get(word)

    def add_child(self, word: str) -> _Node[T]:
        """Return the child for a binding key word, creating it if absent."""
        node = self.child(word)
        if node is not None:
            return node
        node = _Node(loops=word == _HASH)
        if word == _STAR:
            self.star = node
        elif word == _HASH:
            self.hash = node
        else:
            self.words[word] = node
        return node

    def drop_child(self, word: str) -> None:
        """Remove the edge for a binding key word (used when pruning empty nodes)."""
        if word == _STAR:
            self.star = None
        elif word == _HASH:
            self.hash = None
        else:
            del self.words[word]


def _with_hash_closure(nodes: set[_Node[T]]) -> set[_Node[T]]:
    """Add every node reachable through ``#`` edges alone: ``#`` may match zero words."""
    pending = [node for node in nodes if node.hash is not None]
    while pending:
        target = pending.pop().hash
        if target is not None and target not in nodes:
            nodes.add(target)
            if target.hash is not None:
                pending.append(target)
    return nodes


class TopicTrie(Generic[T]):
    """Map AMQP topic patterns to values and find the values matching a routing key.

    A value may be stored under many patterns and a pattern may hold many values; the
    pair ``(pattern, value)`` is the unit of ``add`` and ``remove``.  Values must be
    hashable; the topic exchange stores its destinations here.
    """

    __slots__ = ("_cache", "_cache_size", "_count", "_root")

    def __init__(self, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        """Create an empty trie.

        Args:
            cache_size: most routing keys whose match results are remembered; 0 turns
                the cache off (sublist.go offers the same switch for high-churn cases).

        Raises:
            ValueError: if ``cache_size`` is negative.
        """
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self._root: _Node[T] = _Node()
        self._count = 0
        self._cache_size = cache_size
        self._cache: OrderedDict[str, frozenset[T]] = OrderedDict()

    def __len__(self) -> int:
        """Number of distinct ``(pattern, value)`` pairs stored."""
        return self._count

    @property
    def cache_len(self) -> int:
        """Number of routing keys currently cached (for tests and metrics)."""
        return len(self._cache)

    def add(self, pattern: str, value: T) -> bool:
        """Store ``value`` under ``pattern``.

        Returns:
            False if that exact pair was already present (nothing changes), else True.
        """
        node = self._root
        for word in split_words(pattern):
            node = node.add_child(word)
        if value in node.values:
            return False
        node.values.add(value)
        self._count += 1
        self._invalidate(pattern)
        return True

    def remove(self, pattern: str, value: T) -> bool:
        """Remove ``value`` from ``pattern`` and prune the nodes left empty.

        Returns:
            False if the pair was not present (nothing changes), else True.
        """
        path: list[tuple[_Node[T], str]] = []  # (parent, word) for each edge followed
        node: _Node[T] | None = self._root
        for word in split_words(pattern):
            assert node is not None
            parent = node
            node = parent.child(word)
            if node is None:
                return False
            path.append((parent, word))
        assert node is not None
        if value not in node.values:
            return False
        node.values.discard(value)
        self._count -= 1
        # Prune bottom-up, so lookups never walk into dead branches and memory follows
        # the live bindings (MQTT clients subscribe to one-off topics all the time).
        while path and node.is_empty():
            parent, word = path.pop()
            parent.drop_child(word)
            node = parent
        self._invalidate(pattern)
        return True

    def match(self, routing_key: str) -> frozenset[T]:
        """Return every value whose pattern matches ``routing_key``.

        The result is a frozenset that may be shared with the cache and other callers;
        copy it before changing it.  It never reflects a stale state: ``add`` and
        ``remove`` invalidate the cached keys they affect.
        """
        cache = self._cache
        cached = cache.get(routing_key)
        if cached is not None:
            cache.move_to_end(routing_key)
            return cached
        result = self._match_uncached(routing_key)
        if self._cache_size:
            if len(cache) >= self._cache_size:
                cache.popitem(last=False)  # least recently used
            cache[routing_key] = result
        return result

    def _match_uncached(self, routing_key: str) -> frozenset[T]:
        """Walk the trie as an NFA (see the module docstring)."""
        live: set[_Node[T]] = _with_hash_closure({self._root})
        for word in split_words(routing_key):
            step: set[_Node[T]] = set()
            for node in live:
                literal = node.words.get(word)
                if literal is not None:
                    step.add(literal)
                if node.star is not None:
                    step.add(node.star)
                if node.loops:
                    step.add(node)
            if not step:
                return frozenset()
            live = _with_hash_closure(step)
        found = [node.values for node in live if node.values]
        if not found:
            return frozenset()
        if len(found) == 1:
            return frozenset(found[0])
        return frozenset(chain.from_iterable(found))

    def _invalidate(self, pattern: str) -> None:
        """Drop the cached results that a change to ``pattern`` can alter."""
        if not self._cache:
            return
        words = split_words(pattern)
        if _STAR not in words and _HASH not in words:
            # A literal pattern only matches the identical routing key.
            self._cache.pop(pattern, None)
            return
        stale = [key for key in self._cache if words_match(words, split_words(key))]
        for key in stale:
            del self._cache[key]
