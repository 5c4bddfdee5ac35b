"""The AMQP 0-9-1 listener: the shared TCP shell (`protocols.tcp`) around `AMQPConnection`."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from moorage.protocols.amqp091.adapter import AMQPConnection
from moorage.protocols.tcp import TCPListener, listen

if TYPE_CHECKING:
    from moorage.broker.broker import Broker


class AMQPPlugin:
    """Entry point `moorage.protocols: amqp`."""

    name = "amqp"

    async def start(
        self, broker: Broker, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> TCPListener:
        return await listen(broker, host, port, AMQPConnection, ssl_context=ssl_context)


plugin = AMQPPlugin()
