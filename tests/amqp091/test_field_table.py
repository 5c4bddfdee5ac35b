"""Field tables with doubles: pamqp's bytes without floats, exact values with them."""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import decode, encode

from moorage.field_table import field_table, has_float

# hypothesis runs hundreds of examples: CPU time that a loaded machine stretches far
# past the suite's 60 s default (a bound for a hung test, not a speed to meet)
pytestmark = pytest.mark.timeout(600)

_names = st.text(max_size=20)
_scalars = (
    st.text(max_size=20)
    | st.integers(-(2**63), 2**63 - 1)
    | st.booleans()
    | st.none()
    | st.builds(lambda s: datetime.fromtimestamp(s, tz=UTC), st.integers(0, 2**31))
)
_floats = st.floats(allow_nan=False)


def values(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_names, inner, max_size=3),
        max_leaves=8,
    )


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_names, values(_scalars), max_size=4))
def test_a_table_without_floats_is_pamqps(table: dict[str, Any]) -> None:
    assert not has_float(table)
    assert field_table(table) == encode.field_table(table)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_names, values(_scalars | _floats), max_size=4))
def test_every_value_comes_back_exactly(table: dict[str, Any]) -> None:
    data = field_table(table)
    used, back = decode.field_table(data)
    assert used == len(data)
    assert _comparable(back) == _comparable(table)


def test_a_float_is_a_double_anywhere_in_the_table() -> None:
    table = {"top": 0.1, "nested": {"inner": [1.5, 2, "x", 0.1]}}
    data = field_table(table)
    assert b"top" + b"d" + struct.pack(">d", 0.1) in data
    assert decode.field_table(data)[1] == table  # pamqp's own `f` would give 0.10000000149
    assert decode.field_table(encode.field_table(table))[1]["top"] != 0.1
    assert math.isinf(decode.field_table(field_table({"i": math.inf}))[1]["i"])


def _comparable(value: Any) -> Any:
    """pamqp decodes text as str and byte arrays as bytearray: compare like with like."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value
