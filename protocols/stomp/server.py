"""The STOMP listener: the shared TCP shell (`protocols.tcp`) around `StompConnection`."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from moorage.protocols.stomp.adapter import StompConnection
from moorage.protocols.tcp import TCPListener, listen

if TYPE_CHECKING:
    from moorage.broker.broker import Broker


class StompPlugin:
    """Entry point `moorage.protocols: stomp`."""

    name = "stomp"

    async def start(
        self, broker: Broker, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> TCPListener:
        return await listen(broker, host, port, StompConnection, ssl_context=ssl_context)


plugin = StompPlugin()
