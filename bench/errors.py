"""The errors every benchmark raises: one line for the operator, and an exit status.

`BenchError` ends a run (exit status 1); `UsageError` means the flags make no
runnable benchmark (exit status 2, like argparse); `ServerClosed` is a broker
that closed the connection or channel, or a socket that dropped.
"""

from __future__ import annotations

__all__ = ["BenchError", "ServerClosed", "UsageError"]


class BenchError(Exception):
    """The benchmark cannot go on; the message is one line for the operator."""


class UsageError(BenchError):
    """The flags do not make a runnable benchmark (exit status 2, like argparse)."""


class ServerClosed(BenchError):
    """The broker closed the connection or channel, or the socket dropped."""
