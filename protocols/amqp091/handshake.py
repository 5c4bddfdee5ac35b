"""What the AMQP 0-9-1 handshake says (spec 2.2.4), without the connection it happens on.

`AMQPConnection` (`adapter`) runs the handshake; this module owns its
vocabulary: the server properties connection.start announces (product,
version and RabbitMQ's capability flags), the one connection.start every
client gets, the smallest frame_max a client may tune to, and how a
start-ok response turns into a user name and password for each SASL
mechanism offered.
"""

from __future__ import annotations

import functools
import platform
from typing import Any

from pamqp import commands

from moorage.broker import __version__
from moorage.broker.errors import AccessRefused

FRAME_MIN_SIZE = 4096  # spec 4.2.3 (frame-min-size): the least frame_max a client may ask for


def server_properties(cluster_name: str = "moorage") -> dict[str, Any]:
    """What connection.start announces: product, version and RabbitMQ's capability flags."""
    return {
        "product": "Moorage",
        "version": __version__,
        "platform": f"Python {platform.python_version()}",
        "cluster_name": cluster_name,
        "copyright": "The Moorage authors",
        "information": "Licensed under the Apache License 2.0",
        "capabilities": {
            "publisher_confirms": True,
            "exchange_exchange_bindings": True,
            "basic.nack": True,
            "consumer_cancel_notify": True,
            "connection.blocked": True,
            "authentication_failure_close": True,
            "per_consumer_qos": True,
        },
    }


@functools.cache
def start_method(external: bool = False) -> commands.Connection.Start:
    """connection.start, the same for every client (the codec keeps its bytes); `EXTERNAL`
    is offered to a client that presented a verified certificate (`broker.auth_certs`)."""
    mechanisms = "EXTERNAL PLAIN AMQPLAIN" if external else "PLAIN AMQPLAIN"
    return commands.Connection.Start(
        server_properties=server_properties(), mechanisms=mechanisms, locales="en_US"
    )


def credentials(mechanism: str, response: str | bytes) -> tuple[str | None, str]:
    """Username and password from a PLAIN, AMQPLAIN or ANONYMOUS start-ok response.

    A user name of None means the client gave no credentials: the ANONYMOUS
    mechanism (RFC 4505, which RabbitMQ 4 offers) or a PLAIN response with an
    empty user name and password. The core's anonymous rule then decides.

    Raises:
        AccessRefused: a malformed response or a mechanism we do not offer.
    """
    raw = response.encode() if isinstance(response, str) else bytes(response)
    if mechanism == "ANONYMOUS":
        return None, ""
    if mechanism == "PLAIN":
        parts = raw.split(b"\x00")
        if len(parts) != 3:
            raise AccessRefused("malformed PLAIN response")
        if parts[1] == parts[2] == b"":
            return None, ""
        return parts[1].decode(errors="replace"), parts[2].decode(errors="replace")
    if mechanism == "AMQPLAIN":
        from pamqp import decode

        try:
            _, table = decode.field_table(len(raw).to_bytes(4, "big") + raw)
        except (ValueError, KeyError, IndexError) as e:
            raise AccessRefused("malformed AMQPLAIN response") from e
        return str(table.get("LOGIN", "")), str(table.get("PASSWORD", ""))
    raise AccessRefused(f"unsupported authentication mechanism '{mechanism}'")
