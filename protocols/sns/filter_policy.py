"""SNS subscription filter policies: parsing, AWS's validation, and matching.

A pure module (no I/O, no core import). A policy is a JSON object whose keys
name message attributes (scope `MessageAttributes`) or paths into a JSON
message body (scope `MessageBody`, where objects may nest). Each leaf key holds
an array of conditions; a message matches when **every** key matches (AND)
and, for a key, **any** condition matches any of the key's values (OR). A
`"$or"` key holds an array of alternative policies, one of which must match
besides the other keys of its object.

Conditions (AWS's "subscription filter policy" operators):

- a string, number, `true`, `false` or `null` literal: exact match (numbers
  compare numerically, so `5` matches an attribute `"5.0"` of type Number);
- `{"prefix": "p"}`, `{"suffix": "s"}`, `{"equals-ignore-case": "x"}`;
- `{"anything-but": X}` with X a literal, an array of literals, or
  `{"prefix": "p"}` / `{"suffix": "s"}`: any *present* value other than X;
- `{"numeric": ["=", 5]}`, `{"numeric": [">", 0, "<=", 150]}`;
- `{"exists": true|false}`: the key is present (or absent);
- `{"cidr": "10.0.0.0/24"}`: an IP address string inside the network.

Values come from a message as follows: an attribute of type `String` is its
string; `Number` is a number; `String.Array` is the elements of the JSON
array it holds (any element may match); `Binary` attributes are never
matched (AWS compares String, String.Array and Number only). In the body, a
JSON array at the key's path offers each of its elements.

Validation follows AWS's published constraints ("Filter policy constraints in
Amazon SNS"): at most 5 keys, at most 150 combinations of values (the product
of the sizes of the arrays of each `$or` branch, summed over branches),
numbers within ±1e9, a policy of at most 256 KiB, and no nested objects in
the `MessageAttributes` scope. A violation raises `FilterPolicyError`, which
the API answers as `InvalidParameter`.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Scope = Literal["MessageAttributes", "MessageBody"]

MAX_KEYS = 5
MAX_COMBINATIONS = 150
MAX_POLICY_BYTES = 256 * 1024
NUMBER_LIMIT = 1e9
_NUMERIC_OPS = {"=", "<", "<=", ">", ">="}
_LOWER_OPS = {">", ">="}
_UPPER_OPS = {"<", "<="}
_OPERATORS = {"prefix", "suffix", "equals-ignore-case", "anything-but", "numeric", "exists", "cidr"}

_ABSENT = object()  # a key the message does not have


class FilterPolicyError(ValueError):
    """The policy is not one AWS accepts; the text says why."""


@dataclass(frozen=True, slots=True)
class FilterPolicy:
    """A validated policy; `matches_attributes` / `matches_body` evaluate it."""

    policy: Mapping[str, Any]
    scope: Scope

    def matches_attributes(self, attributes: Mapping[str, tuple[str, str]]) -> bool:
        """Whether message attributes (name -> (DataType, string value)) match."""
        values: dict[str, list[Any]] = {}
        for name, (data_type, text) in attributes.items():
            found = attribute_values(data_type, text)
            if found is not None:
                values[name] = found
        return _match_object(self.policy, values, flat=True)

    def matches_body(self, body: bytes | str) -> bool:
        """Whether a message body matches; a body that is not a JSON object matches nothing."""
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return False
        if not isinstance(document, dict):
            return False
        return _match_object(self.policy, document, flat=False)


def attribute_values(data_type: str, text: str) -> list[Any] | None:
    """The values a message attribute offers to a policy; None when it offers none."""
    base = data_type.split(".", 1)[0] if not data_type.startswith("String.Array") else "Array"
    if base == "String":
        return [text]
    if base == "Number":
        try:
            return [float(text)]
        except ValueError:
            return None
    if base == "Array":
        try:
            items = json.loads(text)
        except ValueError:
            return None
        return items if isinstance(items, list) else None
    return None  # Binary


def parse_policy(text: str, scope: str = "MessageAttributes") -> FilterPolicy:
    """Parse and validate a FilterPolicy attribute. Raises FilterPolicyError."""
    if scope not in ("MessageAttributes", "MessageBody"):
        raise FilterPolicyError(f"FilterPolicyScope: Invalid value [{scope}]")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_POLICY_BYTES:
        raise FilterPolicyError("FilterPolicy: Filter policy is too large")
    try:
        policy = json.loads(text)
    except ValueError as e:
        raise FilterPolicyError(f"FilterPolicy: failed to parse JSON. {e}") from None
    if not isinstance(policy, dict):
        raise FilterPolicyError("FilterPolicy: Filter policy must be a JSON object")
    branches = _validate_object(policy, flat=scope == "MessageAttributes", path="")
    total = 0
    for keys, combinations in branches:
        if keys > MAX_KEYS:
            raise FilterPolicyError(
                f"FilterPolicy: Filter policy can not have more than {MAX_KEYS} keys"
            )
        total += combinations
    if total > MAX_COMBINATIONS:
        raise FilterPolicyError("FilterPolicy: Filter policy is too complex")
    return FilterPolicy(policy, scope)  # type: ignore[arg-type]


# -- validation ---------------------------------------------------------------------------

Branch = tuple[int, int]  # (leaf keys, combinations of values) of one `$or` expansion


def _validate_object(policy: Mapping[str, Any], *, flat: bool, path: str) -> list[Branch]:
    """Check an object of the policy; returns its branches once `$or` is expanded."""
    if not policy:
        raise FilterPolicyError(f"FilterPolicy: Empty objects are not allowed{_at(path)}")
    branches: list[Branch] = [(0, 1)]
    for key, value in policy.items():
        if key == "$or":
            if not isinstance(value, list) or len(value) < 2:
                raise FilterPolicyError("FilterPolicy: $or must be an array of 2+ objects")
            alternatives: list[Branch] = []
            for item in value:
                if not isinstance(item, dict):
                    raise FilterPolicyError("FilterPolicy: $or must be an array of 2+ objects")
                alternatives += _validate_object(item, flat=flat, path=path)
            key_branches = alternatives
        elif isinstance(value, dict):
            if flat:
                raise FilterPolicyError(
                    "FilterPolicy: Filter policy scope MessageAttributes does not support "
                    "nested filter policy"
                )
            key_branches = _validate_object(value, flat=flat, path=f"{path}{key}.")
        elif isinstance(value, list):
            if not value:
                raise FilterPolicyError(f"FilterPolicy: Empty arrays are not allowed{_at(key)}")
            for condition in value:
                _validate_condition(condition, f"{path}{key}")
            key_branches = [(1, len(value))]
        else:
            raise FilterPolicyError(
                f"FilterPolicy: Match value must be String, number, true, false, or null"
                f"{_at(path + key)}"
            )
        branches = [(k1 + k2, c1 * c2) for k1, c1 in branches for k2, c2 in key_branches]
    return branches


def _at(where: str) -> str:
    return f" (at {where.rstrip('.')})" if where else ""


def _check_number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FilterPolicyError(f"FilterPolicy: Value of {where} must be numeric")
    if not -NUMBER_LIMIT <= value <= NUMBER_LIMIT:
        raise FilterPolicyError(
            f"FilterPolicy: Numeric value must be between -1.0E9 and 1.0E9{_at(where)}"
        )
    return float(value)


def _validate_condition(condition: Any, where: str) -> None:
    if condition is None or isinstance(condition, str | bool):
        return
    if isinstance(condition, int | float):
        _check_number(condition, where)
        return
    if not isinstance(condition, dict) or len(condition) != 1:
        raise FilterPolicyError(
            f"FilterPolicy: Match value must be String, number, true, false, or null{_at(where)}"
        )
    ((operator, operand),) = condition.items()
    if operator not in _OPERATORS:
        raise FilterPolicyError(f"FilterPolicy: Unrecognized match type {operator}{_at(where)}")
    if operator in ("prefix", "suffix", "equals-ignore-case"):
        if not isinstance(operand, str):
            raise FilterPolicyError(f"FilterPolicy: {operator} match pattern must be a string")
    elif operator == "exists":
        if not isinstance(operand, bool):
            raise FilterPolicyError(
                "FilterPolicy: exists match pattern must be either true or false."
            )
    elif operator == "cidr":
        try:
            ipaddress.ip_network(operand, strict=False)
        except (TypeError, ValueError):
            raise FilterPolicyError(
                f"FilterPolicy: Malformed CIDR, one '/' required{_at(where)}"
            ) from None
    elif operator == "numeric":
        _validate_numeric(operand, where)
    else:
        _validate_anything_but(operand, where)


def _validate_numeric(operand: Any, where: str) -> None:
    if not isinstance(operand, list) or len(operand) not in (2, 4):
        raise FilterPolicyError(f"FilterPolicy: Value of numeric must be an array.{_at(where)}")
    ops = operand[0::2]
    for op in ops:
        if op not in _NUMERIC_OPS:
            raise FilterPolicyError(f"FilterPolicy: Unrecognized numeric range operator: {op}")
    numbers = [_check_number(n, where) for n in operand[1::2]]
    if len(ops) == 2:
        if ops[0] not in _LOWER_OPS or ops[1] not in _UPPER_OPS:
            raise FilterPolicyError(
                f"FilterPolicy: Bad numeric range operator: {ops[1]}{_at(where)}"
            )
        if numbers[0] >= numbers[1]:
            raise FilterPolicyError(f"FilterPolicy: Bottom must be less than top{_at(where)}")


def _validate_anything_but(operand: Any, where: str) -> None:
    if isinstance(operand, dict):
        if len(operand) != 1 or next(iter(operand)) not in ("prefix", "suffix"):
            raise FilterPolicyError(f"FilterPolicy: Unsupported anything-but pattern{_at(where)}")
        if not isinstance(next(iter(operand.values())), str):
            raise FilterPolicyError("FilterPolicy: prefix/suffix match pattern must be a string")
        return
    items = operand if isinstance(operand, list) else [operand]
    if not items:
        raise FilterPolicyError(f"FilterPolicy: Empty arrays are not allowed{_at(where)}")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise FilterPolicyError(
                "FilterPolicy: Inside anything but list, start|null|boolean is not supported."
            )
        if not isinstance(item, str):
            _check_number(item, where)


# -- matching -----------------------------------------------------------------------------


def _match_object(policy: Mapping[str, Any], document: Mapping[str, Any], *, flat: bool) -> bool:
    for key, spec in policy.items():
        if key == "$or":
            if not any(_match_object(branch, document, flat=flat) for branch in spec):
                return False
            continue
        present = key in document
        value = document[key] if present else _ABSENT
        if isinstance(spec, dict):
            if not isinstance(value, dict) or not _match_object(spec, value, flat=flat):
                return False
            continue
        values: Any
        if value is _ABSENT:
            values = []
        elif flat:
            values = value  # attributes are already lists of values
        elif isinstance(value, list):
            values = value
        else:
            values = [value]
        if not any(_match_condition(c, values, present) for c in spec):
            return False
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(literal: Any, value: Any) -> bool:
    if _is_number(literal):
        return _is_number(value) and math.isclose(literal, value, rel_tol=0, abs_tol=1e-5)
    if isinstance(literal, bool) or literal is None:
        return value is literal
    return isinstance(value, str) and value == literal


def _match_condition(condition: Any, values: list[Any], present: bool) -> bool:
    if not isinstance(condition, dict):
        return any(_equal(condition, v) for v in values)
    ((operator, operand),) = condition.items()
    if operator == "exists":
        return present is operand
    return any(_match_operator(operator, operand, v) for v in values)


def _match_operator(operator: str, operand: Any, value: Any) -> bool:
    if operator == "prefix":
        return isinstance(value, str) and value.startswith(operand)
    if operator == "suffix":
        return isinstance(value, str) and value.endswith(operand)
    if operator == "equals-ignore-case":
        return isinstance(value, str) and value.casefold() == operand.casefold()
    if operator == "numeric":
        return _is_number(value) and _in_range(operand, float(value))
    if operator == "cidr":
        try:
            return ipaddress.ip_address(value) in ipaddress.ip_network(operand, strict=False)
        except (TypeError, ValueError):
            return False
    # anything-but
    if isinstance(operand, dict):
        ((kind, text),) = operand.items()
        if not isinstance(value, str):
            return True
        return not (value.startswith(text) if kind == "prefix" else value.endswith(text))
    excluded = operand if isinstance(operand, list) else [operand]
    return not any(_equal(item, value) for item in excluded)


def _in_range(operand: list[Any], value: float) -> bool:
    for op, bound in zip(operand[0::2], operand[1::2], strict=True):
        limit = float(bound)
        if op == "=" and not math.isclose(value, limit, rel_tol=0, abs_tol=1e-5):
            return False
        if (op == "<" and not value < limit) or (op == "<=" and not value <= limit):
            return False
        if (op == ">" and not value > limit) or (op == ">=" and not value >= limit):
            return False
    return True
