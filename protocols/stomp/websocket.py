"""STOMP over WebSocket (entry point `moorage.protocols: stomp_ws`, default port 15674, path /ws).

The same `StompConnection` as the TCP listener, behind the generic WebSocket
shell in `protocols.websocket`, as RabbitMQ's Web-STOMP and stomp.js use it:

- subprotocols "v10.stomp", "v11.stomp", "v12.stomp" (what stomp.js
  offers); the highest offered is echoed. The STOMP version itself is still
  negotiated by CONNECT's `accept-version`.
- A client that offers no subprotocol is accepted (RabbitMQ does, and so do
  clients such as stomp.py's `WSStompConnection` that send none). A client
  that offers only unknown ones is refused with 400 and `Connection: close`
  (RFC 6455 4.1: it would have to fail a connection that echoes none).
- Each STOMP frame (and each heart-beat EOL) is one WebSocket message: a text
  message, or a binary one when the frame is not valid UTF-8 (a binary
  body). Incoming text and binary messages are both accepted, and a frame
  may span messages or share one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from moorage.protocols.stomp.adapter import MAX_HEADER_SIZE, StompConnection
from moorage.protocols.websocket import Adapter, Framing, WebSocketConnection, WebSocketPlugin

if TYPE_CHECKING:
    from moorage.broker.broker import Broker

FRAME_OVERHEAD = 1024  # command line, blank line, NULL and EOLs around headers and body


class StompWebSocketPlugin(WebSocketPlugin):
    """Entry point `moorage.protocols: stomp_ws`."""

    name = "stomp_ws"
    default_port = 15674
    subprotocols = ("v12.stomp", "v11.stomp", "v10.stomp")  # best first
    require_subprotocol = False
    framing = Framing.TEXT

    def select_subprotocol(self, offered: Iterable[str]) -> str | None:
        tokens = set(offered)
        for known in self.subprotocols:
            if known in tokens:
                return known
        return None

    def max_message_size(self, broker: Broker) -> int:
        # the largest frame the adapter accepts once connected (body + headers)
        return broker.limits.max_message_size + MAX_HEADER_SIZE + FRAME_OVERHEAD

    def make_adapter(self, broker: Broker, shell: WebSocketConnection, now: float) -> Adapter:
        return StompConnection(broker, shell, now)


plugin = StompWebSocketPlugin()

__all__ = ["StompWebSocketPlugin", "plugin"]
