"""The protocol-neutral selector: ActiveMQ's SQL-92 subset with three-valued logic."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moorage.broker.selector import Selector, SelectorError

HEADERS: dict[str, Any] = {
    "color": "red",
    "size": "10",
    "weight": 2.5,
    "count": 3,
    "flag": True,
    "name": "a_b%c",
    "JMSType": "order",
}


def match(text: str, headers: dict[str, Any] | None = None) -> bool:
    values = HEADERS if headers is None else headers
    return Selector(text).matches(values.get)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("color = 'red'", True),
        ("color <> 'red'", False),
        ("size > 3", True),  # numeric text compares as a number
        ("size >= 10 AND size <= 10", True),
        ("weight < 3", True),
        ("count * 2 + 1 = 7", True),
        ("count / 2 = 1", True),
        ("-count < 0", True),
        ("(count - 1) * 2 = 4", True),
        ("flag = TRUE", True),
        ("flag", True),
        ("NOT flag", False),
        ("color = 'red' OR missing = 1", True),
        ("color = 'blue' OR missing = 1", False),  # FALSE OR UNKNOWN
        ("NOT (missing = 1)", False),  # NOT UNKNOWN is UNKNOWN
        ("missing IS NULL", True),
        ("color IS NOT NULL", True),
        ("color IN ('green', 'red')", True),
        ("color NOT IN ('green', 'red')", False),
        ("missing NOT IN ('x')", False),
        ("size BETWEEN 5 AND 15", True),
        ("size NOT BETWEEN 5 AND 15", False),
        ("color LIKE 'r%'", True),
        ("color LIKE 'r_d'", True),
        ("color LIKE 'r_'", False),
        ("color NOT LIKE '%e%'", False),
        ("name LIKE 'a\\_b\\%c' ESCAPE '\\'", True),
        ("name LIKE 'a!_b%' ESCAPE '!'", True),
        ("JMSType = 'order' and color = 'red'", True),
        ("color = 'it''s'", False),
        ("count = 3.0", True),
        ("count / 0 = 1", False),
        ("color > 5", False),  # unrelated types: UNKNOWN
        ("1 = 1", True),
    ],
)
def test_evaluate(text: str, expected: bool) -> None:
    assert match(text) is expected


@pytest.mark.parametrize(
    "text",
    ["", "color =", "color = 'red", "(a = 1", "a = 1)", "a NOT 5", "a IN ()", "a LIKE 5", "a ! b",
     "a LIKE 'x' ESCAPE 'ab'"],
)  # fmt: skip
def test_invalid(text: str) -> None:
    with pytest.raises(SelectorError):
        Selector(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_garbage_raises_only_selector_error(text: str) -> None:
    try:
        selector = Selector(text)
    except SelectorError:
        return
    selector.evaluate(HEADERS.get)
