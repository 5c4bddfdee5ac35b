"""Tests for broker.exchange_types against RabbitMQ's documented routing behaviour.

Header matching follows rabbitmq-server deps/rabbit/src/rabbit_exchange_type_headers.erl;
topic word rules follow split_topic_key in rabbit_db_topic_exchange.erl.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest

from moorage.broker.exchange_types import (
    EXCHANGE_TYPES,
    DirectExchangeType,
    ExchangeType,
    FanoutExchangeType,
    HeadersExchangeType,
    TopicExchangeType,
    exchange_type,
    freeze_arguments,
)


class Dest:
    """Stands in for a Queue or Exchange: hashable by identity, never looked into."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Dest({self.name!r})"


Q1, Q2, Q3 = Dest("Q1"), Dest("Q2"), Dest("Q3")
ALL_TYPES = sorted(EXCHANGE_TYPES)

# For every type, a binding ("k", ARGS) routes the message ("k", HEADERS):
# direct/topic by key, fanout always, headers because every ARGS table matches HEADERS.
KEY = "k"
HEADERS = {"a": 1}
MATCHING_ARGS: list[dict[str, Any]] = [{}, {"a": 1}, {"x-match": "any", "a": 1, "b": 2}]


def listing(table: ExchangeType) -> set[tuple[object, str, Any]]:
    return {(d, k, freeze_arguments(a)) for d, k, a in table.bindings()}


# --------------------------------------------------------------------------------------
# Registry


def test_registry_names() -> None:
    assert set(EXCHANGE_TYPES) == {"direct", "fanout", "topic", "headers"}
    for name, cls in EXCHANGE_TYPES.items():
        assert cls.name == name


@pytest.mark.parametrize("name", ALL_TYPES)
def test_exchange_type_returns_a_new_empty_table(name: str) -> None:
    first, second = exchange_type(name), exchange_type(name)
    assert first is not second
    assert first.name == name
    assert first.is_empty()
    assert list(first.bindings()) == []
    assert first.route(KEY, HEADERS) == set()


@pytest.mark.parametrize("name", ["x-consistent-hash", "Direct", ""])
def test_unknown_exchange_type_raises_key_error(name: str) -> None:
    with pytest.raises(KeyError):
        exchange_type(name)


# --------------------------------------------------------------------------------------
# Bookkeeping shared by every type


@pytest.mark.parametrize("name", ALL_TYPES)
def test_bind_is_idempotent_and_identity_includes_key_and_arguments(name: str) -> None:
    table = exchange_type(name)
    assert table.bind(Q1, KEY, {})
    assert not table.bind(Q1, KEY, {})
    assert table.bind(Q1, "other", {})
    assert table.bind(Q1, KEY, {"a": 1})
    assert table.bind(Q2, KEY, {})
    assert len(list(table.bindings())) == 4


@pytest.mark.parametrize("name", ALL_TYPES)
def test_arguments_compare_by_value_recursively(name: str) -> None:
    table = exchange_type(name)
    args = {"a": [1, {"b": b"x", "c": None}], "d": {"e": [True, 1.5]}}
    assert table.bind(Q1, KEY, args)
    same = {"d": {"e": [True, 1.5]}, "a": [1, {"c": None, "b": bytearray(b"x")}]}
    assert not table.bind(Q1, KEY, same)
    assert table.unbind(Q1, KEY, same)
    assert table.is_empty()


@pytest.mark.parametrize("name", ALL_TYPES)
def test_arguments_keep_their_type(name: str) -> None:
    table = exchange_type(name)
    for value in (1, "1", b"1", True, 1.0, None, Decimal(1)):
        assert table.bind(Q1, KEY, {"v": value}), value
    assert len(list(table.bindings())) == 7


@pytest.mark.parametrize("name", ALL_TYPES)
def test_unbind_missing_binding_returns_false(name: str) -> None:
    table = exchange_type(name)
    assert not table.unbind(Q1, KEY, {})
    table.bind(Q1, KEY, {"a": 1})
    assert not table.unbind(Q1, KEY, {})
    assert not table.unbind(Q1, KEY, {"a": "1"})
    assert not table.unbind(Q1, "other", {"a": 1})
    assert not table.unbind(Q2, KEY, {"a": 1})
    assert table.unbind(Q1, KEY, {"a": 1})
    assert not table.unbind(Q1, KEY, {"a": 1})
    assert table.is_empty()


@pytest.mark.parametrize("name", ALL_TYPES)
def test_bindings_lists_every_binding_with_read_only_copies(name: str) -> None:
    table = exchange_type(name)
    args: dict[str, Any] = {"a": 1, "nested": {"b": [1]}}
    table.bind(Q1, KEY, args)
    table.bind(Q2, "", {})
    args["a"] = 2
    args["nested"]["b"].append(2)
    listed = {(d, k): a for d, k, a in table.bindings()}
    assert listed == {(Q1, KEY): {"a": 1, "nested": {"b": [1]}}, (Q2, ""): {}}
    with pytest.raises(TypeError):
        listed[(Q1, KEY)]["a"] = 3  # type: ignore[index]


@pytest.mark.parametrize("name", ALL_TYPES)
def test_bindings_may_be_unbound_while_iterating(name: str) -> None:
    table = exchange_type(name)
    for dest in (Q1, Q2, Q3):
        table.bind(dest, KEY, {})
    for bound, key, args in table.bindings():
        assert table.unbind(bound, key, args)
    assert table.is_empty()


@pytest.mark.parametrize("name", ALL_TYPES)
@pytest.mark.parametrize("args", MATCHING_ARGS)
def test_route_unbind_and_is_empty(name: str, args: dict[str, Any]) -> None:
    table = exchange_type(name)
    assert table.is_empty()
    table.bind(Q1, KEY, args)
    assert not table.is_empty()
    assert table.route(KEY, HEADERS) == {Q1}
    table.unbind(Q1, KEY, args)
    assert table.is_empty()
    assert table.route(KEY, HEADERS) == set()


@pytest.mark.parametrize("name", ALL_TYPES)
def test_destination_stays_routed_until_its_last_binding_goes(name: str) -> None:
    table = exchange_type(name)
    for args in MATCHING_ARGS:
        table.bind(Q1, KEY, args)
    for args in MATCHING_ARGS:
        assert table.route(KEY, HEADERS) == {Q1}
        assert table.unbind(Q1, KEY, args)
    assert table.route(KEY, HEADERS) == set()
    assert table.is_empty()


@pytest.mark.parametrize("name", ALL_TYPES)
def test_unbind_all(name: str) -> None:
    table = exchange_type(name)
    for args in MATCHING_ARGS:
        table.bind(Q1, KEY, args)
    table.bind(Q1, "#", {})
    table.bind(Q2, KEY, {})
    table.unbind_all(Q1)
    assert listing(table) == {(Q2, KEY, freeze_arguments({}))}
    assert table.route(KEY, HEADERS) == {Q2}
    table.unbind_all(Q3)  # nothing bound: a no-op
    table.unbind_all(Q1)
    table.unbind_all(Q2)
    assert table.is_empty()
    assert table.route(KEY, HEADERS) == set()
    assert table.bind(Q1, KEY, {})  # a fresh binding after unbind_all


@pytest.mark.parametrize("name", ALL_TYPES)
def test_route_returns_a_fresh_set(name: str) -> None:
    table = exchange_type(name)
    table.bind(Q1, KEY, {})
    routed = table.route(KEY, HEADERS)
    routed.add(Q3)
    routed.discard(Q1)
    assert table.route(KEY, HEADERS) == {Q1}


@pytest.mark.parametrize("name", ALL_TYPES)
def test_destination_appears_once_however_many_bindings_match(name: str) -> None:
    table = exchange_type(name)
    for args in MATCHING_ARGS:
        table.bind(Q1, KEY, args)
    assert table.route(KEY, HEADERS) == {Q1}


class Unhashable:
    __hash__ = None  # type: ignore[assignment]


@pytest.mark.parametrize("name", ALL_TYPES)
@pytest.mark.parametrize("value", [{1, 2}, frozenset(), Unhashable()])
def test_validate_refuses_values_no_field_table_carries(name: str, value: object) -> None:
    with pytest.raises(ValueError, match="unsupported argument value type"):
        exchange_type(name).validate_binding(KEY, {"a": value})


@pytest.mark.parametrize("name", ALL_TYPES)
def test_validate_accepts_field_table_values(name: str) -> None:
    exchange_type(name).validate_binding(
        "a.b", {"s": "x", "i": 1, "f": 1.5, "b": True, "y": b"x", "n": None, "t": {"l": [1]}}
    )


# --------------------------------------------------------------------------------------
# direct and fanout


def test_direct_routes_by_exact_key() -> None:
    table = DirectExchangeType()
    table.bind(Q1, "orange", {})
    table.bind(Q2, "black", {})
    table.bind(Q2, "green", {})
    table.bind(Q3, "black", {})
    table.bind(Q3, "", {})
    assert table.route("orange", None) == {Q1}
    assert table.route("black", None) == {Q2, Q3}
    assert table.route("green", None) == {Q2}
    assert table.route("", None) == {Q3}
    assert table.route("Orange", None) == set()
    assert table.route("orange.x", None) == set()
    assert table.route("*", None) == set()
    assert table.route("#", None) == set()


def test_fanout_ignores_key_and_headers() -> None:
    table = FanoutExchangeType()
    table.bind(Q1, "ignored", {})
    table.bind(Q2, "", {"x-match": "any", "a": 1})
    assert table.route("", None) == {Q1, Q2}
    assert table.route("anything.at.all", {"b": 2}) == {Q1, Q2}
    table.unbind(Q1, "ignored", {})
    assert table.route("ignored", None) == {Q2}


# --------------------------------------------------------------------------------------
# topic


@pytest.fixture
def tutorial_topic() -> TopicExchangeType:
    """RabbitMQ tutorial 5: Q1 gets orange animals, Q2 rabbits and lazy animals."""
    table = TopicExchangeType()
    table.bind(Q1, "*.orange.*", {})
    table.bind(Q2, "*.*.rabbit", {})
    table.bind(Q2, "lazy.#", {})
    return table


@pytest.mark.parametrize(
    ("routing_key", "expected"),
    [
        ("quick.orange.rabbit", {Q1, Q2}),
        ("lazy.orange.elephant", {Q1, Q2}),
        ("quick.orange.fox", {Q1}),
        ("lazy.brown.fox", {Q2}),
        ("lazy.pink.rabbit", {Q2}),
        ("quick.brown.fox", set()),
        ("orange", set()),
        ("quick.orange.new.rabbit", set()),
        ("lazy.orange.new.rabbit", {Q2}),
        ("lazy", {Q2}),
        ("", set()),
    ],
)
def test_topic_tutorial(
    tutorial_topic: TopicExchangeType, routing_key: str, expected: set[Dest]
) -> None:
    assert tutorial_topic.route(routing_key, None) == expected


@pytest.mark.parametrize(
    ("binding_key", "routed", "not_routed"),
    [
        ("#", ["", "a", "a.b.c", ".", "a..b"], []),
        ("a.#.#.b", ["a.b", "a.x.b", "a.x.y.b"], ["a", "b", "a.x", "b.a"]),
        ("a.#.b", ["a.b", "a.x.y.b"], ["a.b.x"]),
        ("a..b", ["a..b"], ["a.b", "a...b"]),
        ("a.*.b", ["a..b", "a.x.b"], ["a.b", "a.x.y.b"]),
        ("", [""], [".", "a"]),
        ("*", ["a", "#", "*"], ["", ".", "a.b"]),
        ("*.*", [".", "a.b"], ["", "a"]),
        ("#.*", ["a", "a.b", "."], [""]),
    ],
)
def test_topic_edge_cases(binding_key: str, routed: list[str], not_routed: list[str]) -> None:
    table = TopicExchangeType()
    table.bind(Q1, binding_key, {})
    for key in routed:
        assert table.route(key, None) == {Q1}, key
    for key in not_routed:
        assert table.route(key, None) == set(), key


def test_topic_empty_routing_key_matches_empty_and_hash_bindings_only() -> None:
    table = TopicExchangeType()
    table.bind(Q1, "", {})
    table.bind(Q2, "#", {})
    table.bind(Q3, "*", {})
    assert table.route("", None) == {Q1, Q2}


def test_topic_unbind_updates_routes_through_the_cache() -> None:
    table = TopicExchangeType()
    table.bind(Q1, "a.*", {})
    table.bind(Q2, "a.#", {"x-anything": 1})
    assert table.route("a.b", None) == {Q1, Q2}
    table.unbind(Q1, "a.*", {})
    assert table.route("a.b", None) == {Q2}
    table.bind(Q3, "a.b", {})
    assert table.route("a.b", None) == {Q2, Q3}
    table.unbind_all(Q2)
    assert table.route("a.b", None) == {Q3}


def test_topic_same_key_and_destination_with_two_argument_tables() -> None:
    table = TopicExchangeType()
    table.bind(Q1, "a.#", {})
    table.bind(Q1, "a.#", {"x": 1})
    table.unbind(Q1, "a.#", {})
    assert table.route("a.b", None) == {Q1}
    table.unbind(Q1, "a.#", {"x": 1})
    assert table.route("a.b", None) == set()


# --------------------------------------------------------------------------------------
# headers

HEADERS_CASES: list[tuple[str, Mapping[str, Any], Mapping[str, Any] | None, bool]] = [
    # all (also the default)
    ("all: every field equal", {"x-match": "all", "a": 1, "b": "x"}, {"a": 1, "b": "x"}, True),
    ("all: extra headers fine", {"x-match": "all", "a": 1}, {"a": 1, "c": 3}, True),
    ("all: one missing", {"x-match": "all", "a": 1, "b": "x"}, {"a": 1}, False),
    ("all: one different", {"x-match": "all", "a": 1, "b": "x"}, {"a": 1, "b": "y"}, False),
    ("default is all", {"a": 1, "b": "x"}, {"a": 1}, False),
    ("default is all, match", {"a": 1, "b": "x"}, {"b": "x", "a": 1}, True),
    ("all, no fields: matches everything", {"x-match": "all"}, {"z": 1}, True),
    ("all, no fields, no headers", {}, None, True),
    ("all, no headers", {"a": 1}, None, False),
    # any
    ("any: one equal", {"x-match": "any", "a": 1, "b": "x"}, {"a": 1}, True),
    ("any: other equal", {"x-match": "any", "a": 1, "b": "x"}, {"a": 2, "b": "x"}, True),
    ("any: none equal", {"x-match": "any", "a": 1, "b": "x"}, {"a": 2, "b": "y"}, False),
    ("any: no headers", {"x-match": "any", "a": 1}, None, False),
    ("any, no fields: matches nothing", {"x-match": "any"}, {"a": 1}, False),
    # x- arguments are ignored unless -with-x
    ("x- ignored by all", {"x-match": "all", "x-foo": "bar", "a": 1}, {"a": 1}, True),
    ("x- ignored by all even if different", {"x-foo": "bar", "a": 1}, {"a": 1, "x-foo": "z"}, True),
    ("x- only: all is vacuous", {"x-match": "all", "x-foo": "bar"}, {}, True),
    ("x- only: any is empty", {"x-match": "any", "x-foo": "bar"}, {"x-foo": "bar"}, False),
    ("all-with-x: x- compared", {"x-match": "all-with-x", "x-foo": "bar", "a": 1}, {"a": 1}, False),
    (
        "all-with-x: x- equal",
        {"x-match": "all-with-x", "x-foo": "bar", "a": 1},
        {"a": 1, "x-foo": "bar"},
        True,
    ),
    ("all-with-x: x-match not compared", {"x-match": "all-with-x"}, {}, True),
    ("any-with-x: x- equal", {"x-match": "any-with-x", "x-foo": "bar"}, {"x-foo": "bar"}, True),
    ("any-with-x: x- different", {"x-match": "any-with-x", "x-foo": "bar"}, {"x-foo": "z"}, False),
    (
        "any-with-x: x-match not compared",
        {"x-match": "any-with-x"},
        {"x-match": "any-with-x"},
        False,
    ),
    # None (AMQP void) asks for presence only
    ("void: present", {"a": None}, {"a": "anything"}, True),
    ("void: present as void", {"a": None}, {"a": None}, True),
    ("void: absent", {"a": None}, {"b": 1}, False),
    ("void in any", {"x-match": "any", "a": None, "b": 1}, {"a": 0}, True),
    ("void header is not a value", {"a": "x"}, {"a": None}, False),
    # types
    ("int is not str", {"a": 1}, {"a": "1"}, False),
    ("str is not int", {"a": "1"}, {"a": 1}, False),
    ("bool is not int", {"a": 1}, {"a": True}, False),
    ("int is not bool", {"a": True}, {"a": 1}, False),
    ("bool equal", {"a": False}, {"a": False}, True),
    ("int equals float, as Erlang ==", {"a": 1}, {"a": 1.0}, True),
    ("decimal is not int", {"a": Decimal(1)}, {"a": 1}, False),
    ("decimal equal", {"a": Decimal("1.50")}, {"a": Decimal("1.50")}, True),
    ("decimal scale matters, as in Erlang", {"a": Decimal("1.5")}, {"a": Decimal("1.50")}, False),
    ("longstr equals same bytes", {"a": "x"}, {"a": b"x"}, True),
    ("bytes equal bytearray", {"a": b"x"}, {"a": bytearray(b"x")}, True),
    ("case matters", {"a": "X"}, {"a": "x"}, False),
    ("nested equal", {"a": {"k": [1, "x"]}}, {"a": {"k": [1, b"x"]}}, True),
    ("nested differ", {"a": {"k": [1, "x"]}}, {"a": {"k": [1, "y"]}}, False),
    ("array order matters", {"a": [1, 2]}, {"a": [2, 1]}, False),
    ("header key case matters", {"a": 1}, {"A": 1}, False),
]


@pytest.mark.parametrize(
    ("arguments", "headers", "expected"),
    [case[1:] for case in HEADERS_CASES],
    ids=[case[0] for case in HEADERS_CASES],
)
def test_headers_matching(
    arguments: Mapping[str, Any], headers: Mapping[str, Any] | None, expected: bool
) -> None:
    table = HeadersExchangeType()
    table.validate_binding("", arguments)
    table.bind(Q1, "", arguments)
    assert table.route("ignored.key", headers) == ({Q1} if expected else set())


def test_headers_route_to_several_destinations() -> None:
    table = HeadersExchangeType()
    table.bind(Q1, "", {"x-match": "all", "format": "pdf", "type": "report"})
    table.bind(Q2, "", {"x-match": "any", "format": "zip", "type": "log"})
    table.bind(Q3, "", {"format": None})
    assert table.route("", {"format": "pdf", "type": "report"}) == {Q1, Q3}
    assert table.route("", {"format": "zip", "type": "report"}) == {Q2, Q3}
    assert table.route("", {"type": "log"}) == {Q2}
    assert table.route("", {}) == set()


def test_headers_routing_key_is_not_part_of_matching_but_of_identity() -> None:
    table = HeadersExchangeType()
    assert table.bind(Q1, "one", {"a": 1})
    assert table.bind(Q1, "two", {"a": 1})
    assert table.route("three", {"a": 1}) == {Q1}
    table.unbind(Q1, "one", {"a": 1})
    assert table.route("", {"a": 1}) == {Q1}
    table.unbind(Q1, "two", {"a": 1})
    assert table.route("", {"a": 1}) == set()


@pytest.mark.parametrize("mode", ["all", "any", "all-with-x", "any-with-x"])
def test_headers_validate_accepts_the_four_modes(mode: str) -> None:
    HeadersExchangeType().validate_binding("", {"x-match": mode, "a": 1})


def test_headers_validate_accepts_missing_x_match() -> None:
    HeadersExchangeType().validate_binding("", {"a": 1})


@pytest.mark.parametrize("mode", ["ALL", "some", "", "all-with-y", "any "])
def test_headers_validate_refuses_unknown_modes(mode: str) -> None:
    with pytest.raises(ValueError, match="Invalid x-match field value"):
        HeadersExchangeType().validate_binding("", {"x-match": mode})


@pytest.mark.parametrize("mode", [1, b"all", None, True, ["all"]])
def test_headers_validate_refuses_non_string_modes(mode: object) -> None:
    with pytest.raises(ValueError, match="Invalid x-match field type"):
        HeadersExchangeType().validate_binding("", {"x-match": mode})


def test_headers_unvalidated_unknown_mode_falls_back_to_all() -> None:
    # RabbitMQ's parse_x_match treats anything else as "all" (bindings from old versions).
    table = HeadersExchangeType()
    table.bind(Q1, "", {"x-match": "bogus", "a": 1, "b": 2})
    table.bind(Q2, "", {"x-match": 7, "a": 1})
    assert table.route("", {"a": 1}) == {Q2}
    assert table.route("", {"a": 1, "b": 2}) == {Q1, Q2}


def test_other_types_do_not_validate_x_match() -> None:
    for cls in (DirectExchangeType, FanoutExchangeType, TopicExchangeType):
        cls().validate_binding("a", {"x-match": "bogus"})
