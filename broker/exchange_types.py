"""Routing logic of the exchange types: direct, fanout, topic and headers.

Theory of operation
-------------------
Each exchange owns one routing table, an instance of a class registered in
``EXCHANGE_TYPES``.  As in RabbitMQ's ``rabbit_exchange_type`` behaviour, a type is a small
plug-in: ``validate_binding`` is asked before a binding is stored, ``bind``, ``unbind`` and
``unbind_all`` change the table, and ``route`` answers which destinations a message goes
to.  The classes know nothing of protocols, storage, queues or I/O; destinations are
opaque hashable objects (the core passes its Queue and Exchange objects, hashed by
identity) and no method ever looks inside them.

Binding identity is ``(destination, routing_key, arguments)``.  Arguments compare by value
*and* type, as AMQP field tables do: ``1``, ``1.0``, ``True``, ``"1"`` and ``b"1"`` are five
different argument values, so binding with each gives five bindings.  ``freeze_arguments``
turns an argument table into the hashable part of that identity.

Direct, fanout and topic routing ignores arguments, so two bindings that differ only by
arguments route the same way.  Those types keep a reference count per routing entry and
change their routing structure only on the first bind and the last unbind of an entry.
The headers type matches each binding's arguments separately, as RabbitMQ does.

Not thread-safe: the broker core calls these from its single event loop thread.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Iterator, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any, ClassVar, Final, Protocol, TypeAlias, cast

from moorage.broker.topic_trie import TopicTrie

__all__ = [
    "EXCHANGE_TYPES",
    "Destination",
    "DirectExchangeType",
    "ExchangeType",
    "FanoutExchangeType",
    "HeadersExchangeType",
    "TopicExchangeType",
    "exchange_type",
    "freeze_arguments",
]

Destination: TypeAlias = Hashable
"""A queue or exchange; hashable by identity, never inspected here."""

FrozenArguments: TypeAlias = frozenset[tuple[str, Hashable]]
"""Hashable, order-independent form of an argument table (see ``freeze_arguments``)."""

_BindingId: TypeAlias = tuple[Destination, str, FrozenArguments]


class ExchangeType(Protocol):
    """The interface the broker core uses for every exchange type."""

    name: ClassVar[str]
    routes_by_key: ClassVar[bool]
    """Does ``route`` depend on the routing key alone (never on headers)? Such routes
    may be cached per routing key until a binding changes (``broker.vhost_routing``)."""

    def validate_binding(self, routing_key: str, arguments: Mapping[str, Any]) -> None:
        """Raise ValueError (its text goes to the client) if the binding is not valid."""
        ...

    def bind(
        self, destination: Destination, routing_key: str, arguments: Mapping[str, Any]
    ) -> bool:
        """Add a binding; False if that exact binding already existed."""
        ...

    def unbind(
        self, destination: Destination, routing_key: str, arguments: Mapping[str, Any]
    ) -> bool:
        """Remove a binding; False if it did not exist."""
        ...

    def unbind_all(self, destination: Destination) -> None:
        """Remove every binding to ``destination`` (it was deleted)."""
        ...

    def route(self, routing_key: str, headers: Mapping[str, Any] | None) -> set[Destination]:
        """Return a new set of the destinations a message goes to."""
        ...

    def bindings(self) -> Iterator[tuple[Destination, str, Mapping[str, Any]]]:
        """Yield every binding as (destination, routing_key, arguments)."""
        ...

    def is_empty(self) -> bool:
        """Whether no binding is left (auto-delete exchanges go away then)."""
        ...


# --------------------------------------------------------------------------------------
# Argument tables


class _Tag:
    """Private marker that tags containers, so no user value can collide with them."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return f"<{self._name}>"


_TABLE: Final = _Tag("table")
_ARRAY: Final = _Tag("array")
_BOOL: Final = _Tag("bool")
_DECIMAL: Final = _Tag("decimal")


def _freeze(value: Any) -> Hashable:
    """Make an argument value hashable, keeping its type so 1, 1.0, True and "1" differ.

    Raises:
        TypeError: for a value no AMQP field table can carry (e.g. a set or an object
            that is not hashable).
    """
    if isinstance(value, Mapping):
        return (_TABLE, frozenset((key, _freeze(item)) for key, item in value.items()))
    if isinstance(value, list | tuple):
        return (_ARRAY, tuple(_freeze(item) for item in value))
    if isinstance(value, bytearray | memoryview):
        return (bytes, bytes(value))
    if isinstance(value, Decimal):
        return (Decimal, value.as_tuple())  # AMQP keeps the scale: 1.5 and 1.50 differ
    if isinstance(value, set | frozenset):
        raise TypeError(f"unsupported argument value type {type(value).__name__}")
    try:
        hash(value)
    except TypeError:
        raise TypeError(f"unsupported argument value type {type(value).__name__}") from None
    return (type(value), value)


def freeze_arguments(arguments: Mapping[str, Any]) -> FrozenArguments:
    """Return the hashable, order-independent identity of an argument table.

    Nested tables and arrays are frozen recursively.  Values keep their Python type,
    the way AMQP field values keep their type tag, so ``{"a": 1}`` and ``{"a": "1"}`` and
    ``{"a": True}`` are different arguments.

    Raises:
        TypeError: if a value cannot appear in an AMQP field table.
    """
    return frozenset((key, _freeze(value)) for key, value in arguments.items())


# --------------------------------------------------------------------------------------
# Shared bookkeeping


class _BindingTable:
    """Binding identity, listing and per-destination index shared by every type.

    Subclasses keep their own routing structure up to date in ``_added`` and
    ``_removed``, which are called exactly once per binding that really appears or
    disappears.
    """

    name: ClassVar[str]

    __slots__ = ("_bindings", "_by_destination")

    def __init__(self) -> None:
        # Stored arguments are read-only deep copies: the caller's dict may change later.
        self._bindings: dict[_BindingId, Mapping[str, Any]] = {}
        self._by_destination: dict[Destination, set[_BindingId]] = {}

    def __len__(self) -> int:
        """Number of bindings."""
        return len(self._bindings)

    def validate_binding(self, routing_key: str, arguments: Mapping[str, Any]) -> None:
        """Check that the arguments can be stored and compared.

        Raises:
            ValueError: if an argument value has a type no field table can carry.
        """
        try:
            freeze_arguments(arguments)
        except TypeError as exc:
            raise ValueError(str(exc)) from None

    def bind(
        self, destination: Destination, routing_key: str, arguments: Mapping[str, Any]
    ) -> bool:
        """Add the binding ``(destination, routing_key, arguments)``.

        Call ``validate_binding`` first; this method trusts its input.

        Returns:
            False if that exact binding already existed (binding is idempotent, as
            ``queue.bind`` is in AMQP 0-9-1), else True.

        Raises:
            TypeError: if an argument value cannot be frozen (a bug: validate first).
        """
        binding = (destination, routing_key, freeze_arguments(arguments))
        if binding in self._bindings:
            return False
        stored: Mapping[str, Any] = MappingProxyType(copy.deepcopy(dict(arguments)))
        self._added(binding, stored)
        self._bindings[binding] = stored
        self._by_destination.setdefault(destination, set()).add(binding)
        return True

    def unbind(
        self, destination: Destination, routing_key: str, arguments: Mapping[str, Any]
    ) -> bool:
        """Remove one binding; return False if it did not exist.

        Raises:
            TypeError: if an argument value cannot be frozen (such a binding cannot
                exist; a bug in the caller).
        """
        binding = (destination, routing_key, freeze_arguments(arguments))
        if self._bindings.pop(binding, None) is None:
            return False
        siblings = self._by_destination[destination]
        siblings.discard(binding)
        if not siblings:
            del self._by_destination[destination]
        self._removed(binding)
        return True

    def unbind_all(self, destination: Destination) -> None:
        """Remove every binding to ``destination``; a no-op if there is none."""
        for binding in self._by_destination.pop(destination, ()):
            del self._bindings[binding]
            self._removed(binding)

    def bindings(self) -> Iterator[tuple[Destination, str, Mapping[str, Any]]]:
        """Yield ``(destination, routing_key, arguments)`` for every binding.

        Iterates over a snapshot, so the caller may unbind while iterating.  The
        argument mappings are read-only.
        """
        for (destination, routing_key, _), arguments in list(self._bindings.items()):
            yield destination, routing_key, arguments

    def is_empty(self) -> bool:
        """Whether no binding is left."""
        return not self._bindings

    def _added(self, binding: _BindingId, arguments: Mapping[str, Any]) -> None:
        """Hook: ``binding`` is new.  May raise to refuse it; nothing is stored then."""
        raise NotImplementedError

    def _removed(self, binding: _BindingId) -> None:
        """Hook: ``binding`` is gone."""
        raise NotImplementedError


def _increment(counts: dict[Destination, int], destination: Destination) -> None:
    """Count one more binding behind a routing entry."""
    counts[destination] = counts.get(destination, 0) + 1


def _decrement(counts: dict[Destination, int], destination: Destination) -> bool:
    """Count one binding less; return True when the entry has no binding left."""
    left = counts[destination] - 1
    if left:
        counts[destination] = left
        return False
    del counts[destination]
    return True


# --------------------------------------------------------------------------------------
# direct, fanout, topic


class DirectExchangeType(_BindingTable):
    """Route to the destinations bound with exactly the message's routing key.

    A dict from routing key to destinations makes ``route`` a single lookup.
    """

    name: ClassVar[str] = "direct"
    routes_by_key: ClassVar[bool] = True

    __slots__ = ("_routes",)

    def __init__(self) -> None:
        super().__init__()
        # routing key -> destination -> number of bindings (they may differ by arguments)
        self._routes: dict[str, dict[Destination, int]] = {}

    def route(self, routing_key: str, headers: Mapping[str, Any] | None) -> set[Destination]:
        """Return a new set of the destinations bound with ``routing_key``."""
        counts = self._routes.get(routing_key)
        return set(counts) if counts else set()

    def _added(self, binding: _BindingId, arguments: Mapping[str, Any]) -> None:
        destination, routing_key, _ = binding
        _increment(self._routes.setdefault(routing_key, {}), destination)

    def _removed(self, binding: _BindingId) -> None:
        destination, routing_key, _ = binding
        counts = self._routes[routing_key]
        if _decrement(counts, destination) and not counts:
            del self._routes[routing_key]


class FanoutExchangeType(_BindingTable):
    """Route to every bound destination, whatever the routing key and headers."""

    name: ClassVar[str] = "fanout"
    routes_by_key: ClassVar[bool] = True

    __slots__ = ("_destinations",)

    def __init__(self) -> None:
        super().__init__()
        # destination -> number of bindings (several keys or argument tables may bind it)
        self._destinations: dict[Destination, int] = {}

    def route(self, routing_key: str, headers: Mapping[str, Any] | None) -> set[Destination]:
        """Return a new set of every bound destination."""
        return set(self._destinations)

    def _added(self, binding: _BindingId, arguments: Mapping[str, Any]) -> None:
        _increment(self._destinations, binding[0])

    def _removed(self, binding: _BindingId) -> None:
        _decrement(self._destinations, binding[0])


class TopicExchangeType(_BindingTable):
    """Route by dot-separated pattern: ``*`` is one word, ``#`` zero or more words.

    Matching goes through a ``TopicTrie`` with a bounded cache (see broker/topic_trie.py
    for the word rules, including empty words and the empty routing key).  Every
    binding key is legal, as in RabbitMQ.
    """

    name: ClassVar[str] = "topic"
    routes_by_key: ClassVar[bool] = True

    __slots__ = ("_refs", "_trie")

    def __init__(self) -> None:
        super().__init__()
        self._trie: TopicTrie[Destination] = TopicTrie()
        # (binding key, destination) -> number of bindings, which may differ by arguments
        self._refs: dict[tuple[str, Destination], int] = {}

    def route(self, routing_key: str, headers: Mapping[str, Any] | None) -> set[Destination]:
        """Return a new set of the destinations whose binding key matches."""
        return set(self._trie.match(routing_key))

    def _added(self, binding: _BindingId, arguments: Mapping[str, Any]) -> None:
        destination, routing_key, _ = binding
        entry = (routing_key, destination)
        count = self._refs.get(entry, 0)
        if count == 0:
            self._trie.add(routing_key, destination)
        self._refs[entry] = count + 1

    def _removed(self, binding: _BindingId) -> None:
        destination, routing_key, _ = binding
        entry = (routing_key, destination)
        count = self._refs[entry] - 1
        if count:
            self._refs[entry] = count
        else:
            del self._refs[entry]
            self._trie.remove(routing_key, destination)


# --------------------------------------------------------------------------------------
# headers

X_MATCH: Final = "x-match"
"""Binding argument choosing how the other arguments match."""

_X_MATCH_MODES: Final = {
    # mode -> (any instead of all, compare x- arguments too)
    "all": (False, False),
    "any": (True, False),
    "all-with-x": (False, True),
    "any-with-x": (True, True),
}

_MISSING: Final = _Tag("missing")
_PRESENT: Final = _Tag("present")


def _comparable(value: Any) -> Hashable:
    """Map a field value onto what RabbitMQ's ``PV == DV`` compares in headers_match.

    Erlang's ``==`` compares the values of field table entries without their type tags:
    ``1 == 1.0`` holds, a longstr and a bytearray with the same bytes are equal binaries,
    but the atom ``true`` is not the integer 1, a decimal is not an integer, and
    decimals of different scale (1.5 and 1.50) differ.  So str
    becomes UTF-8 bytes, bytes-likes become bytes, bool and Decimal are tagged, and
    tables and arrays are compared element by element.
    """
    if isinstance(value, bool):
        return (_BOOL, value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, Decimal):
        return (_DECIMAL, value.as_tuple())  # Erlang compares {Scale, Unscaled} tuples
    if isinstance(value, Mapping):
        return (_TABLE, frozenset((key, _comparable(item)) for key, item in value.items()))
    if isinstance(value, list | tuple):
        return (_ARRAY, tuple(_comparable(item) for item in value))
    return cast(Hashable, value)  # None, int, float, datetime: as decoded from the wire


class _HeadersMatcher:
    """One headers binding, compiled: which keys to look at and what to expect."""

    __slots__ = ("fields", "match_any")

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        mode = arguments.get(X_MATCH, "all")
        # Unknown modes fall back to "all" like parse_x_match's legacy clause; bindings
        # that went through validate_binding never have one.
        self.match_any, with_x = (
            _X_MATCH_MODES.get(mode, (False, False)) if isinstance(mode, str) else (False, False)
        )
        # x-match itself is never compared; other x- keys only in the -with-x modes.
        self.fields: tuple[tuple[str, Any], ...] = tuple(
            (key, _PRESENT if value is None else _comparable(value))
            for key, value in arguments.items()
            if key != X_MATCH and (with_x or not key.startswith("x-"))
        )

    def matches(self, lookup: _HeaderLookup) -> bool:
        """Apply RabbitMQ's headers_match to one message.

        all: every field is present and equal (vacuously true with no fields);
        any: at least one field is present and equal (false with no fields).  A binding
        value of None (AMQP void) asks only that the header be present.
        """
        if self.match_any:
            for key, expected in self.fields:
                actual = lookup.get(key)
                if actual is not _MISSING and (expected is _PRESENT or actual == expected):
                    return True
            return False
        for key, expected in self.fields:
            actual = lookup.get(key)
            if actual is _MISSING or (expected is not _PRESENT and actual != expected):
                return False
        return True


class _HeaderLookup:
    """The message headers, converted with ``_comparable`` lazily and only once each.

    Many bindings usually test the same few keys; big headers the bindings never name
    are never converted.
    """

    __slots__ = ("_converted", "_headers")

    def __init__(self, headers: Mapping[str, Any]) -> None:
        self._headers = headers
        self._converted: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        """Return the comparable header value, or ``_MISSING``."""
        try:
            return self._converted[key]
        except KeyError:
            pass
        value = _comparable(self._headers[key]) if key in self._headers else _MISSING
        self._converted[key] = value
        return value


class HeadersExchangeType(_BindingTable):
    """Route by matching message headers against each binding's arguments.

    Semantics of rabbitmq-server ``rabbit_exchange_type_headers.erl``: ``x-match`` is
    ``all`` (the default), ``any``, ``all-with-x`` or ``any-with-x``; argument keys
    starting with ``x-`` are ignored unless a -with-x mode is chosen; a None argument
    matches on the header's presence alone.  The routing key is ignored.  Like
    RabbitMQ, ``route`` tests every binding: there is no index for this.
    """

    name: ClassVar[str] = "headers"
    routes_by_key: ClassVar[bool] = False

    __slots__ = ("_matchers",)

    def __init__(self) -> None:
        super().__init__()
        self._matchers: dict[_BindingId, _HeadersMatcher] = {}

    def validate_binding(self, routing_key: str, arguments: Mapping[str, Any]) -> None:
        """Check ``x-match`` like RabbitMQ's validate_binding, then the value types.

        Raises:
            ValueError: for an x-match that is not a string or not one of the four modes,
                or for an argument value of an unsupported type.
        """
        if X_MATCH in arguments:
            mode = arguments[X_MATCH]
            if not isinstance(mode, str):
                raise ValueError(
                    f"Invalid x-match field type {type(mode).__name__} (value {mode!r}); "
                    "expected longstr"
                )
            if mode not in _X_MATCH_MODES:
                raise ValueError(
                    f"Invalid x-match field value {mode!r}; "
                    "expected all, any, all-with-x, or any-with-x"
                )
        super().validate_binding(routing_key, arguments)

    def route(self, routing_key: str, headers: Mapping[str, Any] | None) -> set[Destination]:
        """Return a new set of the destinations with at least one matching binding."""
        result: set[Destination] = set()
        if not self._matchers:
            return result
        lookup = _HeaderLookup(headers if headers is not None else {})
        for (destination, _, _), matcher in self._matchers.items():
            if destination not in result and matcher.matches(lookup):
                result.add(destination)
        return result

    def _added(self, binding: _BindingId, arguments: Mapping[str, Any]) -> None:
        self._matchers[binding] = _HeadersMatcher(arguments)

    def _removed(self, binding: _BindingId) -> None:
        del self._matchers[binding]


# --------------------------------------------------------------------------------------
# Registry

EXCHANGE_TYPES: dict[str, type[ExchangeType]] = {
    DirectExchangeType.name: DirectExchangeType,
    FanoutExchangeType.name: FanoutExchangeType,
    TopicExchangeType.name: TopicExchangeType,
    HeadersExchangeType.name: HeadersExchangeType,
}
"""Exchange types by name, as clients give them in ``exchange.declare``."""


def exchange_type(name: str) -> ExchangeType:
    """Return a new, empty routing table for the exchange type ``name``.

    Raises:
        KeyError: if no type has that name (the core answers 503 COMMAND_INVALID
            "unknown exchange type").
    """
    return EXCHANGE_TYPES[name]()
