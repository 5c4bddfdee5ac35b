"""Where adapters import `ClientConnection` from; the class lives in `broker.broker`.

A connection is made by `Broker.connect` and removes itself from
`Broker.connections` on close, so it is defined beside the broker: keeping it
here, importing the broker while the broker imports it, was an import cycle.
"""

from __future__ import annotations

from moorage.broker.broker import ClientConnection

__all__ = ["ClientConnection"]
