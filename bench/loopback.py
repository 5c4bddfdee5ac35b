"""Where and how the benchmark clients run: loopback only, on one event loop.

A load generator must not flood a network by accident, so every tool refuses a
host that is not a loopback address (`require_loopback`); `free_port` finds a
port for a spawned broker; `new_loop` picks the clients' event loop (uvloop
when installed).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from moorage.bench.errors import BenchError, UsageError

if TYPE_CHECKING:
    import asyncio

__all__ = ["free_port", "new_loop", "require_loopback"]


def require_loopback(host: str) -> None:
    """Refuse any host that resolves to a non-loopback address (see module docstring)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as e:
        raise BenchError(f"cannot resolve {host!r}: {e}") from e
    for info in infos:
        address = str(info[4][0]).split("%")[0]
        if not ipaddress.ip_address(address).is_loopback:
            raise UsageError(
                f"{host!r} is not a loopback address; this tool only talks to loopback"
            )


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_loop(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The client's loop factory: uvloop for "auto" when installed (and for "uvloop")."""
    import asyncio  # here: the command line imports this module and needs no loop

    if name in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise
        else:
            return uvloop.new_event_loop  # type: ignore[no-any-return]
    return asyncio.new_event_loop
