"""Filter policies, table-driven from AWS's documented examples ("Amazon SNS example
filter policies", "String value matching", "Numeric value matching", "Key matching",
"Filter policy constraints"). Pure: no broker, no event loop."""

from __future__ import annotations

import json
from typing import Any

import pytest

from moorage.protocols.sns.filter_policy import FilterPolicyError, parse_policy

# The transaction of AWS's "example filter policies" page, as message attributes...
ATTRIBUTES = {
    "customer_interests": ("String.Array", '["soccer", "rugby", "hockey"]'),
    "store": ("String", "example_corp"),
    "event": ("String", "order_placed"),
    "price_usd": ("Number", "210.75"),
}
# ... and as a message body.
BODY = {
    "customer_interests": ["soccer", "rugby", "hockey"],
    "store": "example_corp",
    "event": "order_placed",
    "price_usd": 210.75,
}

# (policy, matches the example transaction)
CASES: list[tuple[dict[str, Any], bool]] = [
    # AWS's example policy: accepts the transaction
    (
        {
            "store": ["example_corp"],
            "event": [{"anything-but": "order_cancelled"}],
            "customer_interests": ["rugby", "football", "baseball"],
            "price_usd": [{"numeric": [">=", 100]}],
        },
        True,
    ),
    ({"store": ["example_corp"]}, True),
    ({"store": ["other_corp"]}, False),
    ({"store": ["Example_Corp"]}, False),  # case-sensitive
    ({"store": [{"equals-ignore-case": "EXAMPLE_CORP"}]}, True),
    ({"event": [{"prefix": "order-"}]}, False),
    ({"event": [{"prefix": "order_"}]}, True),
    ({"event": [{"suffix": "_placed"}]}, True),
    ({"event": [{"suffix": "_cancelled"}]}, False),
    ({"event": [{"anything-but": ["order_cancelled", "order_placed"]}]}, False),
    ({"event": [{"anything-but": {"prefix": "order"}}]}, False),
    ({"event": [{"anything-but": {"prefix": "return"}}]}, True),
    ({"event": [{"anything-but": {"suffix": "placed"}}]}, False),
    # String.Array: any element may match
    ({"customer_interests": ["rugby"]}, True),
    ({"customer_interests": ["cricket"]}, False),
    ({"customer_interests": [{"prefix": "hock"}]}, True),
    # numeric
    ({"price_usd": [210.75]}, True),
    ({"price_usd": [{"numeric": ["=", 210.75]}]}, True),
    ({"price_usd": [{"numeric": [">", 0, "<=", 150]}]}, False),
    ({"price_usd": [{"numeric": [">", 200, "<", 300]}]}, True),
    ({"price_usd": [{"numeric": ["<", 210.75]}]}, False),
    ({"price_usd": [{"numeric": ["<=", 210.75]}]}, True),
    ({"price_usd": [{"anything-but": [100, 500]}]}, True),
    ({"price_usd": [{"anything-but": [210.75]}]}, False),
    ({"store": [{"numeric": [">", 0]}]}, False),  # a string is not a number
    # exists
    ({"store": [{"exists": True}]}, True),
    ({"store": [{"exists": False}]}, False),
    ({"encrypted": [{"exists": False}]}, True),
    ({"encrypted": [{"exists": True}]}, False),
    ({"encrypted": [{"anything-but": "x"}]}, False),  # anything-but needs the key present
    # AND across keys, OR within a key
    ({"store": ["example_corp"], "event": ["order_cancelled"]}, False),
    ({"event": ["order_cancelled", "order_placed"]}, True),
    # $or
    ({"$or": [{"store": ["other_corp"]}, {"event": ["order_placed"]}]}, True),
    ({"$or": [{"store": ["other_corp"]}, {"event": ["order_cancelled"]}]}, False),
    (
        {
            "store": ["example_corp"],
            "$or": [{"price_usd": [{"numeric": [">", 500]}]}, {"event": ["order_placed"]}],
        },
        True,
    ),
]


@pytest.mark.parametrize(("policy", "expected"), CASES)
def test_message_attributes_scope(policy: dict[str, Any], expected: bool) -> None:
    parsed = parse_policy(json.dumps(policy), "MessageAttributes")
    assert parsed.matches_attributes(ATTRIBUTES) is expected


@pytest.mark.parametrize(("policy", "expected"), CASES)
def test_message_body_scope_gives_the_same_answers(policy: dict[str, Any], expected: bool) -> None:
    parsed = parse_policy(json.dumps(policy), "MessageBody")
    assert parsed.matches_body(json.dumps(BODY)) is expected


NESTED_BODY = {
    "order": {"status": "shipped", "lines": 3, "address": {"country": "NO"}},
    "ip": "10.0.0.7",
}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"order": {"status": ["shipped"]}}, True),
        ({"order": {"status": ["pending"]}}, False),
        ({"order": {"address": {"country": ["NO", "SE"]}}}, True),
        ({"order": {"address": {"country": [{"anything-but": "NO"}]}}}, False),
        ({"order": {"lines": [{"numeric": [">", 2]}]}}, True),
        ({"order": {"missing": [{"exists": False}]}}, True),
        ({"ip": [{"cidr": "10.0.0.0/24"}]}, True),
        ({"ip": [{"cidr": "10.0.1.0/24"}]}, False),
        ({"$or": [{"order": {"status": ["pending"]}}, {"ip": [{"prefix": "10."}]}]}, True),
    ],
)
def test_nested_keys_in_message_body_scope(policy: dict[str, Any], expected: bool) -> None:
    assert (
        parse_policy(json.dumps(policy), "MessageBody").matches_body(json.dumps(NESTED_BODY))
        is expected
    )


def test_a_body_that_is_not_a_json_object_matches_nothing() -> None:
    policy = parse_policy('{"a": [{"exists": false}]}', "MessageBody")
    assert policy.matches_body(b"plain text") is False
    assert policy.matches_body(b"[1, 2]") is False


def test_binary_attributes_are_never_matched() -> None:
    policy = parse_policy('{"blob": [{"exists": true}]}')
    assert policy.matches_attributes({"blob": ("Binary", "AAEC")}) is False


def test_numbers_compare_numerically() -> None:
    policy = parse_policy('{"n": [5]}')
    assert policy.matches_attributes({"n": ("Number", "5.0")})
    assert policy.matches_attributes({"n": ("Number", "5e0")})
    assert not policy.matches_attributes({"n": ("String", "5")})


INVALID = [
    "not json",
    "[]",
    "{}",
    '{"a": "string, not an array"}',
    '{"a": []}',
    '{"a": [{"prefix": 5}]}',
    '{"a": [{"unknown-operator": "x"}]}',
    '{"a": [{"numeric": [">", "5"]}]}',
    '{"a": [{"numeric": ["<", 5, ">", 1]}]}',  # upper bound first
    '{"a": [{"numeric": [">", 10, "<", 5]}]}',  # empty range
    '{"a": [{"numeric": ["=", 2000000000]}]}',  # beyond 1e9
    '{"a": [{"exists": "yes"}]}',
    '{"a": [{"cidr": "not-a-network"}]}',
    '{"a": [{"anything-but": []}]}',
    '{"a": [{"anything-but": {"contains": "x"}}]}',
    '{"a": [{"prefix": "x", "suffix": "y"}]}',
    '{"a": [["nested array"]]}',
    '{"$or": [{"a": ["x"]}]}',  # $or needs two alternatives
    '{"k1": ["a"], "k2": ["a"], "k3": ["a"], "k4": ["a"], "k5": ["a"], "k6": ["a"]}',  # > 5 keys
]


@pytest.mark.parametrize("text", INVALID)
def test_invalid_policies_are_refused(text: str) -> None:
    with pytest.raises(FilterPolicyError):
        parse_policy(text, "MessageBody")


def test_nested_policies_are_refused_in_the_attributes_scope() -> None:
    with pytest.raises(FilterPolicyError, match="does not support nested"):
        parse_policy('{"order": {"status": ["shipped"]}}', "MessageAttributes")


def test_combinations_are_limited_to_150() -> None:
    # 10 * 10 * 2 = 200 combinations: over AWS's limit of 150
    policy = {
        "a": [str(i) for i in range(10)],
        "b": [str(i) for i in range(10)],
        "c": ["x", "y"],
    }
    with pytest.raises(FilterPolicyError, match="too complex"):
        parse_policy(json.dumps(policy))
    policy["c"] = ["x"]  # 100: accepted
    parse_policy(json.dumps(policy))


def test_oversized_policy_is_refused() -> None:
    with pytest.raises(FilterPolicyError, match="too large"):
        parse_policy(json.dumps({"a": ["x" * (256 * 1024)]}))


def test_unknown_scope_is_refused() -> None:
    with pytest.raises(FilterPolicyError):
        parse_policy('{"a": ["x"]}', "Headers")
