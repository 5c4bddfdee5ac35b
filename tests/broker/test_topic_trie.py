"""Tests for broker.topic_trie: RabbitMQ topic semantics, pruning and the result cache.

The property tests compare the trie with a deliberately naive recursive matcher that
works on word lists, so the NFA walk and the cache invalidation are checked against
the definition rather than against themselves.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from moorage.broker.topic_trie import TopicTrie, split_words, words_match

# hypothesis runs hundreds of examples: CPU time that a loaded machine stretches far
# past the suite's 60 s default (a bound for a hung test, not a speed to meet)
pytestmark = pytest.mark.timeout(600)


def split(key: str) -> list[str]:
    """RabbitMQ's split_topic_key: "" is zero words, otherwise split on every dot."""
    return key.split(".") if key else []


def reference_match(pattern: list[str], words: list[str]) -> bool:
    """Straight from the definition: '*' is one word, '#' is zero or more words."""
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(reference_match(rest, words[i:]) for i in range(len(words) + 1))
    return bool(words) and head in ("*", words[0]) and reference_match(rest, words[1:])


def reference_values(pairs: set[tuple[str, int]], routing_key: str) -> set[int]:
    return {
        value for pattern, value in pairs if reference_match(split(pattern), split(routing_key))
    }


# Small alphabets make collisions (shared prefixes, duplicate pairs, cache hits) common.
# Routing keys may contain '*' and '#' words too: there they are plain words.
KEY_WORDS = ["a", "b", "", "*", "#"]
PATTERN_WORDS = ["a", "b", "", "*", "#"]
routing_keys = st.lists(st.sampled_from(KEY_WORDS), max_size=6).map(".".join)
patterns = st.lists(st.sampled_from(PATTERN_WORDS), max_size=5).map(".".join)
values = st.integers(min_value=0, max_value=3)


# --------------------------------------------------------------------------------------
# Table tests


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("", []),
        ("a", ["a"]),
        ("a.b", ["a", "b"]),
        ("a..b", ["a", "", "b"]),
        (".", ["", ""]),
        ("a.", ["a", ""]),
        (".a", ["", "a"]),
    ],
)
def test_split_words_follows_rabbitmq(key: str, words: list[str]) -> None:
    assert split_words(key) == words


MATCH_CASES = [
    # (binding key, routing key, matches)
    # RabbitMQ tutorial 5
    ("*.orange.*", "quick.orange.rabbit", True),
    ("*.*.rabbit", "quick.orange.rabbit", True),
    ("*.orange.*", "lazy.orange.elephant", True),
    ("lazy.#", "lazy.orange.elephant", True),
    ("*.orange.*", "quick.orange.fox", True),
    ("*.*.rabbit", "quick.orange.fox", False),
    ("lazy.#", "lazy.brown.fox", True),
    ("*.orange.*", "quick.brown.fox", False),
    ("lazy.#", "quick.brown.fox", False),
    ("*.orange.*", "orange", False),
    ("*.orange.*", "quick.orange.new.rabbit", False),
    ("*.*.rabbit", "quick.orange.new.rabbit", False),
    ("lazy.#", "lazy.orange.new.rabbit", True),
    ("lazy.#", "lazy", True),
    # '#' alone matches everything, the empty routing key included
    ("#", "", True),
    ("#", "a", True),
    ("#", "a.b.c", True),
    ("#", ".", True),
    # '#' in the middle, several '#'
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.x.y", False),
    ("a.#.#.b", "a.b", True),
    ("a.#.#.b", "a.x.y.z.b", True),
    ("a.#.#.b", "a", False),
    ("a.#.#.b", "b.a", False),
    ("#.#", "", True),
    ("#.a.#", "a", True),
    ("#.a.#", "x.a.y", True),
    ("#.a.#", "x.y", False),
    ("#.a", "a", True),
    ("#.a", "x.y.a", True),
    ("#.a", "a.x", False),
    # '*' is exactly one word
    ("*", "a", True),
    ("*", "a.b", False),
    ("*", "", False),
    ("*", ".", False),
    ("*.*", ".", True),
    ("a.*.#", "a", False),
    ("a.*.#", "a.b", True),
    ("a.*.#", "a.b.c.d", True),
    ("#.*", "", False),
    ("#.*", "a.b", True),
    # empty words are ordinary words
    ("a..b", "a..b", True),
    ("a..b", "a.b", False),
    ("a.*.b", "a..b", True),
    ("a.", "a.", True),
    ("a.", "a", False),
    ("a.#", "a.", True),
    # the empty routing key is zero words
    ("", "", True),
    ("", ".", False),
    ("", "a", False),
    # a routing key word '*' or '#' is literal; only wildcards in the binding key match it
    ("a.*", "a.#", True),
    ("a.b", "a.*", False),
    # literal words
    ("a.b", "a.b", True),
    ("a.b", "a.b.c", False),
    ("a.b.c", "a.b", False),
]


@pytest.mark.parametrize(("pattern", "key", "expected"), MATCH_CASES)
def test_match_table(pattern: str, key: str, expected: bool) -> None:
    trie: TopicTrie[str] = TopicTrie()
    assert trie.add(pattern, "q")
    assert trie.match(key) == ({"q"} if expected else set())
    assert words_match(split_words(pattern), split_words(key)) is expected
    assert reference_match(split(pattern), split(key)) is expected


def test_tutorial_routing_to_several_values() -> None:
    trie: TopicTrie[str] = TopicTrie()
    trie.add("*.orange.*", "Q1")
    trie.add("*.*.rabbit", "Q2")
    trie.add("lazy.#", "Q2")
    assert trie.match("quick.orange.rabbit") == {"Q1", "Q2"}
    assert trie.match("lazy.orange.elephant") == {"Q1", "Q2"}
    assert trie.match("lazy.pink.rabbit") == {"Q2"}
    assert trie.match("quick.brown.fox") == set()


def test_add_and_remove_report_changes_and_len_counts_pairs() -> None:
    trie: TopicTrie[str] = TopicTrie()
    assert trie.add("a.*", "q1")
    assert not trie.add("a.*", "q1")
    assert trie.add("a.*", "q2")
    assert trie.add("a.#", "q1")
    assert len(trie) == 3
    assert not trie.remove("a.*", "q3")
    assert not trie.remove("a.b", "q1")
    assert not trie.remove("x.y.z", "q1")
    assert trie.remove("a.*", "q1")
    assert not trie.remove("a.*", "q1")
    assert len(trie) == 2
    assert trie.match("a.b") == {"q1", "q2"}


def test_remove_prunes_every_empty_node() -> None:
    trie: TopicTrie[int] = TopicTrie()
    keys = ["a.b.c", "a.*.#", "#", "a..b", "", "*.#.x", "a.b"]
    for value, key in enumerate(keys):
        trie.add(key, value)
    trie.add("a.b.c", 99)
    for value, key in enumerate(keys):
        assert trie.remove(key, value)
    assert trie.match("a.b.c") == {99}
    assert trie.remove("a.b.c", 99)
    assert len(trie) == 0
    assert trie._root.is_empty()


def test_removing_a_prefix_pattern_keeps_the_longer_one() -> None:
    trie: TopicTrie[str] = TopicTrie()
    trie.add("a", "short")
    trie.add("a.b", "long")
    assert trie.remove("a", "short")
    assert trie.match("a.b") == {"long"}
    assert trie.match("a") == set()


def test_match_returns_frozenset() -> None:
    trie: TopicTrie[str] = TopicTrie()
    trie.add("a", "q")
    assert isinstance(trie.match("a"), frozenset)
    assert isinstance(trie.match("zzz"), frozenset)


@pytest.mark.timeout(60)  # a matcher that backtracks exponentially would take years, not 60 s
def test_many_hashes_do_not_explode() -> None:
    trie: TopicTrie[str] = TopicTrie(cache_size=0)
    trie.add(".".join(["#"] * 12 + ["x"]), "q")
    trie.add(".".join(["#", "a"] * 8 + ["#", "y"]), "r")
    key = ".".join(["a"] * 60)
    assert trie.match(key) == set()
    assert trie.match(key + ".x") == {"q"}
    assert trie.match(key + ".y") == {"r"}
    assert (
        words_match(split_words(".".join(["#", "a"] * 8 + ["#", "y"])), split_words(key)) is False
    )


# --------------------------------------------------------------------------------------
# Cache


def test_cache_is_bounded() -> None:
    trie: TopicTrie[str] = TopicTrie(cache_size=4)
    trie.add("#", "q")
    for i in range(20):
        assert trie.match(f"k{i}") == {"q"}
        assert trie.cache_len <= 4
    assert trie.cache_len == 4


def test_cache_keeps_recently_used_keys() -> None:
    trie: TopicTrie[str] = TopicTrie(cache_size=2)
    trie.add("#", "q")
    trie.match("hot")
    trie.match("cold")
    trie.match("hot")  # now most recently used
    trie.match("new")  # evicts "cold"
    assert set(trie._cache) == {"hot", "new"}


def test_cache_can_be_disabled() -> None:
    trie: TopicTrie[str] = TopicTrie(cache_size=0)
    trie.add("a", "q")
    assert trie.match("a") == {"q"}
    assert trie.cache_len == 0


def test_negative_cache_size_is_refused() -> None:
    with pytest.raises(ValueError, match="cache_size"):
        TopicTrie(cache_size=-1)


def test_cache_is_invalidated_by_add_and_remove() -> None:
    trie: TopicTrie[str] = TopicTrie()
    assert trie.match("a.b") == set()
    trie.add("a.b", "literal")
    assert trie.match("a.b") == {"literal"}
    trie.add("a.*", "star")
    assert trie.match("a.b") == {"literal", "star"}
    trie.add("#", "hash")
    assert trie.match("a.b") == {"literal", "star", "hash"}
    trie.remove("a.b", "literal")
    assert trie.match("a.b") == {"star", "hash"}
    trie.remove("#", "hash")
    assert trie.match("a.b") == {"star"}
    trie.remove("a.*", "star")
    assert trie.match("a.b") == set()


def test_wildcard_change_keeps_unaffected_cache_entries() -> None:
    trie: TopicTrie[str] = TopicTrie()
    trie.add("x.*", "q")
    trie.match("x.1")
    trie.match("y.1")
    trie.add("y.#", "r")
    assert set(trie._cache) == {"x.1"}


# --------------------------------------------------------------------------------------
# Properties


@settings(max_examples=300)
@given(patterns, routing_keys)
def test_words_match_agrees_with_reference(pattern: str, key: str) -> None:
    assert words_match(split_words(pattern), split_words(key)) is reference_match(
        split(pattern), split(key)
    )


@settings(max_examples=200)
@given(
    pairs=st.lists(st.tuples(patterns, values), max_size=12),
    keys=st.lists(routing_keys, min_size=1, max_size=8),
    data=st.data(),
)
def test_trie_agrees_with_reference_after_adds_and_removals(
    pairs: list[tuple[str, int]], keys: list[str], data: st.DataObject
) -> None:
    trie: TopicTrie[int] = TopicTrie(cache_size=3)
    model: set[tuple[str, int]] = set()
    for pattern, value in pairs:
        assert trie.add(pattern, value) is ((pattern, value) not in model)
        model.add((pattern, value))
    assert len(trie) == len(model)
    for key in keys:
        assert trie.match(key) == reference_values(model, key)

    removed = data.draw(
        st.lists(st.sampled_from(pairs), max_size=len(pairs)) if pairs else st.just([])
    )
    for pattern, value in removed:
        assert trie.remove(pattern, value) is ((pattern, value) in model)
        model.discard((pattern, value))
        for key in keys:  # the cache must follow every single change
            assert trie.match(key) == reference_values(model, key)
    assert len(trie) == len(model)


class TrieMachine(RuleBasedStateMachine):
    """Random interleavings of add, remove and match against a set of pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.model: set[tuple[str, int]] = set()
        self.trie: TopicTrie[int] = TopicTrie()

    @initialize(cache_size=st.sampled_from([0, 1, 3, 4096]))
    def make_trie(self, cache_size: int) -> None:
        self.trie = TopicTrie(cache_size=cache_size)

    @rule(pattern=patterns, value=values)
    def add(self, pattern: str, value: int) -> None:
        assert self.trie.add(pattern, value) is ((pattern, value) not in self.model)
        self.model.add((pattern, value))

    @rule(pattern=patterns, value=values)
    def remove_any(self, pattern: str, value: int) -> None:
        assert self.trie.remove(pattern, value) is ((pattern, value) in self.model)
        self.model.discard((pattern, value))

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def remove_existing(self, data: st.DataObject) -> None:
        pattern, value = data.draw(st.sampled_from(sorted(self.model)))
        assert self.trie.remove(pattern, value)
        self.model.discard((pattern, value))

    @rule(key=routing_keys)
    def match(self, key: str) -> None:
        assert self.trie.match(key) == reference_values(self.model, key)

    @invariant()
    def counts_agree(self) -> None:
        assert len(self.trie) == len(self.model)
        if not self.model:
            assert self.trie._root.is_empty()


TrieMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30)
TestTrieMachine = TrieMachine.TestCase
