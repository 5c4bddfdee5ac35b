"""The MQTT listener: the shared TCP shell (`protocols.tcp`) around `MQTTConnection`.

The broker-wide `SessionRegistry` gets the broker clock's `call_later` for session
expiry and will delays, and recovers stored sessions and retained messages,
the first time a listener starts.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from moorage.protocols.mqtt.adapter import MQTTConnection
from moorage.protocols.mqtt.registry import registry_for
from moorage.protocols.tcp import TCPListener, listen

if TYPE_CHECKING:
    from moorage.broker.broker import Broker


class MQTTPlugin:
    """Entry point `moorage.protocols: mqtt` (default port 1883)."""

    name = "mqtt"
    default_port = 1883

    async def start(
        self, broker: Broker, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> TCPListener:
        registry = registry_for(broker)
        registry.call_later = broker.clock.call_later
        registry.clock = broker.clock.wall
        await registry.recover()  # persistent sessions and retained messages (once)
        return await listen(
            broker, host, port, MQTTConnection, ssl_context=ssl_context, on_shutdown=registry.close
        )


plugin = MQTTPlugin()
