"""Exchanges: a named router of one type, and the exchanges every vhost has.

An `Exchange` holds its type plug-in (`broker.exchange_types`), which keeps
its bindings and answers `route`; the vhost (`broker.vhost`) declares,
deletes and binds exchanges and routes through them (`broker.vhost_routing`).

An `x-delayed-message` exchange routes with the table of its
`x-delayed-type`; `delayed` tells the vhost to hold a message with a positive
`x-delay` header first (`broker.delayed`).
"""

from __future__ import annotations

from typing import Any

from moorage.broker.exchange_types import ExchangeType, exchange_type
from moorage.broker.stats import MessageStats

STANDARD_EXCHANGES: tuple[tuple[str, str], ...] = (
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
)

DELAYED_EXCHANGE_TYPE = "x-delayed-message"


class Exchange:
    """An exchange: a named router of one type. Hashable by identity."""

    __slots__ = (
        "arguments",
        "auto_delete",
        "delayed",
        "durable",
        "internal",
        "name",
        "router",
        "stats",
        "type_name",
    )

    def __init__(
        self,
        name: str,
        type_name: str,
        *,
        durable: bool,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.type_name = type_name
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments = arguments or {}
        self.delayed = type_name == DELAYED_EXCHANGE_TYPE
        if self.delayed:
            type_name = str(self.arguments.get("x-delayed-type", ""))
        self.router: ExchangeType = exchange_type(type_name)
        self.stats = MessageStats()  # publish_in, publish_out (`broker.stats`)

    def __repr__(self) -> str:
        return f"<Exchange {self.name!r} {self.type_name}>"

    @property
    def alternate(self) -> str | None:
        value = self.arguments.get("alternate-exchange")
        return str(value) if value else None
