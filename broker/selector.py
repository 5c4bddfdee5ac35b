"""Message selectors: ActiveMQ's (JMS 1.1, section 3.8) SQL-92 subset, protocol-neutral.

Theory of operation
-------------------
`Selector(text)` tokenises and parses the expression once (recursive
descent, grammar below) into a tree of small closures; `matches(lookup)`
evaluates it against one message, where `lookup(identifier)` returns the
value of a header or JMS field, or None when the message has none. Nothing
here knows about any protocol: queues evaluate selectors as consumer filters
(`Session.consume(..., filter=...)`), and `message_lookup` gives the JMS view
of a core `Message` that every adapter can start from.

Grammar (JMS 1.1 3.8.1.1, precedence from low to high)::

    expr       = and-expr { OR and-expr }
    and-expr   = not-expr { AND not-expr }
    not-expr   = NOT not-expr | predicate
    predicate  = sum [ cmp-op sum
                     | [NOT] BETWEEN sum AND sum
                     | [NOT] IN "(" literal { "," literal } ")"
                     | [NOT] LIKE string [ ESCAPE string ]
                     | IS [NOT] NULL ]
    sum        = product { ("+" | "-") product }
    product    = unary { ("*" | "/") unary }
    unary      = ("+" | "-") unary | primary
    primary    = literal | identifier | "(" expr ")"
    literal    = 'string' ('' escapes a quote) | integer | decimal | TRUE | FALSE

Evaluation uses SQL's three-valued logic (JMS 3.8.1.2): a missing
identifier is NULL (None here), comparisons and arithmetic with NULL give
UNKNOWN (None), `AND`/`OR`/`NOT` follow the SQL truth tables, and a message
matches only when the whole expression is TRUE. Values compared with
numbers may be numeric strings (STOMP headers are text), which are
converted; comparing values of unrelated types is UNKNOWN.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moorage.broker.message import Message

__all__ = ["Selector", "SelectorError", "message_lookup"]

Lookup = Callable[[str], Any]
Node = Callable[[Lookup], Any]

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^']|'')*')
      | (?P<number>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?[lLfFdD]?)
      | (?P<ident>[A-Za-z_$][A-Za-z0-9_$.]*)
      | (?P<op><>|<=|>=|=|<|>|\+|-|\*|/|\(|\)|,)
    )""",
    re.VERBOSE,
)
_KEYWORDS = frozenset(
    {"AND", "OR", "NOT", "BETWEEN", "IN", "LIKE", "ESCAPE", "IS", "NULL", "TRUE", "FALSE"}
)
MAX_SELECTOR_LENGTH = 4096
PERSISTENT = 2  # delivery mode (broker.message.PERSISTENT)


class SelectorError(ValueError):
    """The selector text is not a valid expression; the message says where."""


def _tokens(text: str) -> list[tuple[str, Any]]:
    tokens: list[tuple[str, Any]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise SelectorError(f"unexpected character at position {pos}: {text[pos : pos + 10]!r}")
        pos = m.end()
        kind = m.lastgroup
        value = m.group(kind or "")
        if kind == "string":
            tokens.append(("lit", value[1:-1].replace("''", "'")))
        elif kind == "number":
            tokens.append(("lit", _number(value)))
        elif kind == "ident":
            upper = value.upper()
            if upper in ("TRUE", "FALSE"):
                tokens.append(("lit", upper == "TRUE"))
            elif upper in _KEYWORDS:
                tokens.append(("kw", upper))
            else:
                tokens.append(("id", value))
        else:
            tokens.append(("op", value))
    tokens.append(("end", None))
    return tokens


def _number(text: str) -> int | float:
    text = text.rstrip("lLfFdD")
    if re.fullmatch(r"\d+", text):
        return int(text)
    return float(text)


def _to_number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except InvalidOperation:
            return None
        if not d.is_finite():
            return None
        return int(d) if d == d.to_integral_value() and "." not in value else float(d)
    return None


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return {"true": True, "false": False}.get(value.lower())
    return None


def _compare(op: str, a: Any, b: Any) -> bool | None:
    """SQL comparison with UNKNOWN (None) for NULLs and unrelated types."""
    if a is None or b is None:
        return None
    if isinstance(a, bytes):
        a = a.decode("utf-8", errors="replace")
    if isinstance(b, bytes):
        b = b.decode("utf-8", errors="replace")
    if isinstance(a, bool) or isinstance(b, bool):
        a, b = _as_bool(a), _as_bool(b)
        if a is None or b is None or op not in ("=", "<>"):
            return None
    elif not (isinstance(a, str) and isinstance(b, str)):
        a, b = _to_number(a), _to_number(b)
        if a is None or b is None:
            return None
    return bool(_ORDER[op](a, b))


def _arith(op: str, a: Any, b: Any) -> Any:
    a, b = _to_number(a), _to_number(b)
    if a is None or b is None:
        return None
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        return None
    return a / b if isinstance(a, float) or isinstance(b, float) else a // b


def _like_pattern(pattern: str, escape: str | None) -> re.Pattern[str]:
    if escape is not None and len(escape) != 1:
        raise SelectorError("ESCAPE must be a single character")
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if escape is not None and c == escape:
            if i + 1 >= len(pattern):
                raise SelectorError("LIKE pattern ends with its escape character")
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> tuple[str, Any]:
        return self.tokens[self.pos]

    def next(self) -> tuple[str, Any]:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def accept(self, kind: str, value: Any = None) -> bool:
        k, v = self.peek()
        if k == kind and (value is None or v == value):
            self.pos += 1
            return True
        return False

    def expect(self, kind: str, value: Any = None) -> Any:
        k, v = self.next()
        if k != kind or (value is not None and v != value):
            raise SelectorError(f"expected {value or kind} but found {v!r} (token {self.pos})")
        return v

    def parse(self) -> Node:
        node = self.expr()
        if self.peek()[0] != "end":
            raise SelectorError(f"unexpected {self.peek()[1]!r} (token {self.pos + 1})")
        return node

    def expr(self) -> Node:
        node = self.and_expr()
        while self.accept("kw", "OR"):
            left, right = node, self.and_expr()
            node = _or(left, right)
        return node

    def and_expr(self) -> Node:
        node = self.not_expr()
        while self.accept("kw", "AND"):
            left, right = node, self.not_expr()
            node = _and(left, right)
        return node

    def not_expr(self) -> Node:
        if self.accept("kw", "NOT"):
            inner = self.not_expr()
            return lambda m: None if (v := inner(m)) is None else not v
        return self.predicate()

    def predicate(self) -> Node:  # noqa: C901 - one branch per predicate form
        left = self.sum()
        kind, value = self.peek()
        if kind == "op" and value in ("=", "<>", "<", "<=", ">", ">="):
            self.next()
            right = self.sum()
            op = value
            return lambda m: _compare(op, left(m), right(m))
        if kind == "kw" and value == "IS":
            self.next()
            negate = self.accept("kw", "NOT")
            self.expect("kw", "NULL")
            if negate:
                return lambda m: left(m) is not None
            return lambda m: left(m) is None
        negate = False
        if kind == "kw" and value == "NOT":
            self.next()
            negate = True
            kind, value = self.peek()
        if kind == "kw" and value == "BETWEEN":
            self.next()
            low = self.sum()
            self.expect("kw", "AND")
            high = self.sum()
            node = _and(
                lambda m: _compare(">=", left(m), low(m)),
                lambda m: _compare("<=", left(m), high(m)),
            )
        elif kind == "kw" and value == "IN":
            self.next()
            self.expect("op", "(")
            items = [self.expect("lit")]
            while self.accept("op", ","):
                items.append(self.expect("lit"))
            self.expect("op", ")")

            def node(m: Lookup) -> bool | None:
                v = left(m)
                if v is None:
                    return None
                return any(_compare("=", v, item) for item in items)

        elif kind == "kw" and value == "LIKE":
            self.next()
            pattern = self.expect("lit")
            escape = self.expect("lit") if self.accept("kw", "ESCAPE") else None
            if not isinstance(pattern, str) or not (escape is None or isinstance(escape, str)):
                raise SelectorError("LIKE needs a string pattern")
            regex = _like_pattern(pattern, escape)

            def node(m: Lookup) -> bool | None:
                v = left(m)
                if not isinstance(v, str):
                    return None
                return regex.fullmatch(v) is not None

        else:
            if negate:
                raise SelectorError(f"expected BETWEEN, IN or LIKE after NOT (token {self.pos})")
            return left
        if negate:
            inner = node
            return lambda m: None if (v := inner(m)) is None else not v
        return node

    def sum(self) -> Node:
        node = self.product()
        while True:
            kind, value = self.peek()
            if kind == "op" and value in ("+", "-"):
                self.next()
                node = _binary(value, node, self.product())
            else:
                return node

    def product(self) -> Node:
        node = self.unary()
        while True:
            kind, value = self.peek()
            if kind == "op" and value in ("*", "/"):
                self.next()
                node = _binary(value, node, self.unary())
            else:
                return node

    def unary(self) -> Node:
        if self.accept("op", "-"):
            inner = self.unary()
            return lambda m: _arith("-", 0, inner(m))
        if self.accept("op", "+"):
            inner = self.unary()
            return lambda m: _arith("+", 0, inner(m))
        return self.primary()

    def primary(self) -> Node:
        kind, value = self.next()
        if kind == "lit":
            return lambda m: value
        if kind == "id":
            return lambda m: m(value)
        if kind == "op" and value == "(":
            node = self.expr()
            self.expect("op", ")")
            return node
        raise SelectorError(f"unexpected {value!r} (token {self.pos})")


def _binary(op: str, left: Node, right: Node) -> Node:
    return lambda m: _arith(op, left(m), right(m))


def _and(left: Node, right: Node) -> Node:
    def node(m: Lookup) -> bool | None:
        a = left(m)
        if a is False:
            return False
        b = right(m)
        if b is False:
            return False
        if a is None or b is None:
            return None
        return bool(a) and bool(b)

    return node


def _or(left: Node, right: Node) -> Node:
    def node(m: Lookup) -> bool | None:
        a = left(m)
        if a is True:
            return True
        b = right(m)
        if b is True:
            return True
        if a is None or b is None:
            return None
        return bool(a) or bool(b)

    return node


class Selector:
    """A compiled selector. Raises SelectorError for invalid text."""

    def __init__(self, text: str) -> None:
        if len(text) > MAX_SELECTOR_LENGTH:
            raise SelectorError(f"selector longer than {MAX_SELECTOR_LENGTH} characters")
        self.text = text
        self._root = _Parser(text).parse()

    def __repr__(self) -> str:
        return f"Selector({self.text!r})"

    def evaluate(self, lookup: Lookup) -> Any:
        """The expression's value: True, False or None (UNKNOWN), or a number/string."""
        return self._root(lookup)

    def matches(self, lookup: Lookup) -> bool:
        """True only when the expression evaluates to TRUE for this message."""
        return self._root(lookup) is True


def message_lookup(message: Message, fallback: Lookup | None = None) -> Lookup:
    """Identifier lookup over a core message: JMS header fields, then message headers.

    JMS names (JMS 1.1 3.8.1.1): `JMSCorrelationID`, `JMSType`, `JMSMessageID`,
    `JMSPriority`, `JMSDeliveryMode` (`PERSISTENT` / `NON_PERSISTENT`),
    `JMSReplyTo`, `JMSTimestamp` (ms), `JMSExpiration`. Any other name is a
    message header; `fallback` (a protocol's own names for properties, such as
    STOMP's `content-type`) is asked last. Returns None for a missing name.
    """
    p = message.properties
    headers = p.headers or {}
    jms: dict[str, Callable[[], Any]] = {
        "JMSCorrelationID": lambda: p.correlation_id,
        "JMSType": lambda: p.message_type,
        "JMSMessageID": lambda: p.message_id,
        "JMSPriority": lambda: p.priority,
        "JMSDeliveryMode": lambda: (
            "PERSISTENT" if p.delivery_mode == PERSISTENT else "NON_PERSISTENT"
        ),
        "JMSReplyTo": lambda: p.reply_to,
        "JMSTimestamp": lambda: (
            None if p.timestamp is None else int(p.timestamp.timestamp() * 1000)
        ),
        "JMSExpiration": lambda: p.expiration,
    }

    def lookup(name: str) -> Any:
        field = jms.get(name)
        if field is not None:
            return field()
        if name in headers:
            return headers[name]
        return fallback(name) if fallback is not None else None

    return lookup
