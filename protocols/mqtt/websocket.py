"""MQTT over WebSocket (entry point `moorage.protocols: mqtt_ws`, default port 15675, path /ws).

The same `MQTTConnection` as the TCP listener, behind the generic WebSocket
shell in `protocols.websocket`. MQTT 5.0 section 6 (3.1.1 section 6 alike):

- the client MUST offer the subprotocol "mqtt" [MQTT-6.0.0-3]; like
  RabbitMQ's Web-MQTT we accept any offered token that starts with "mqtt"
  ("mqtt", "mqttv3.1", "mqttv3.1.1", ...), echo the first one, and refuse an
  upgrade that offers none with 400 and `Connection: close`;
- packets travel in binary messages [MQTT-6.0.0-1]; they need not align with
  message boundaries [MQTT-6.0.0-2], so output is coalesced, and a text
  message is fed to the codec as its UTF-8 bytes (lenient, as RabbitMQ).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING

from moorage.protocols.mqtt.adapter import MQTTConnection
from moorage.protocols.mqtt.deliveries import MAX_PACKET_SIZE
from moorage.protocols.mqtt.registry import registry_for
from moorage.protocols.websocket import (
    Adapter,
    Framing,
    WebSocketConnection,
    WebSocketListener,
    WebSocketPlugin,
)

if TYPE_CHECKING:
    from moorage.broker.broker import Broker

SUBPROTOCOL_PREFIX = "mqtt"


class MQTTWebSocketPlugin(WebSocketPlugin):
    """Entry point `moorage.protocols: mqtt_ws`."""

    name = "mqtt_ws"
    default_port = 15675
    subprotocols = ("mqtt", "mqttv3.1", "mqttv3.1.1")  # for messages; any "mqtt*" is accepted
    require_subprotocol = True  # [MQTT-6.0.0-3]
    framing = Framing.BINARY

    def select_subprotocol(self, offered: Iterable[str]) -> str | None:
        for token in offered:
            if token.startswith(SUBPROTOCOL_PREFIX):
                return token
        return None

    def max_message_size(self, broker: Broker) -> int:
        # the adapter's own Maximum Packet Size (see MQTTConnection.__init__)
        return min(MAX_PACKET_SIZE, broker.limits.max_message_size + 65536)

    def make_adapter(self, broker: Broker, shell: WebSocketConnection, now: float) -> Adapter:
        return MQTTConnection(broker, shell, now)

    async def start(
        self, broker: Broker, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> WebSocketListener:
        registry = registry_for(broker)
        registry.call_later = broker.clock.call_later
        registry.clock = broker.clock.wall
        await registry.recover()  # persistent sessions and retained messages (once)
        return await super().start(broker, host, port, ssl_context)


plugin = MQTTWebSocketPlugin()

__all__ = ["MQTTWebSocketPlugin", "plugin"]
