"""The registry through which the daemon finds protocol adapters.

A protocol package exposes a `ProtocolPlugin` under the entry-point group
`moorage.protocols`; the daemon starts the listeners the configuration asks
for without importing any adapter by name.
"""

from __future__ import annotations

import asyncio
import ssl
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from moorage.broker.broker import Broker

ENTRY_POINT_GROUP = "moorage.protocols"


class Listener(Protocol):
    """A running listener: its server and a way to close its connections politely."""

    server: asyncio.base_events.Server

    def shutdown_connections(self, reason: str) -> None:
        """Tell every client the broker is going away (protocol's own close frame)."""

    def connection_count(self) -> int: ...


class ProtocolPlugin(Protocol):
    """What each protocol package provides to the daemon."""

    name: str  # the key in [listeners] and in --<name>-port

    async def start(
        self, broker: Broker, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> Listener:
        """Listen on host:port. Raises OSError when the address cannot be bound."""
        ...


def discover() -> dict[str, ProtocolPlugin]:
    """Every installed protocol plug-in, by name."""
    plugins: dict[str, ProtocolPlugin] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        plugin = ep.load()
        plugins[plugin.name] = plugin
    return plugins
