"""Event-loop choice: uvloop when installed, the standard loop otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def loop_factory(name: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """A factory for `asyncio.Runner`: "auto", "uvloop" or "asyncio"."""
    if name in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop
