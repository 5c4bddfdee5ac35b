"""systemd's notify protocol, without a dependency: readiness, status, watchdog, stopping.

With `Type=notify` systemd passes `$NOTIFY_SOCKET` (a datagram socket path, or
`@name` in the abstract namespace) and reads `KEY=VALUE` lines from it:
`READY=1` once every listener accepts connections, `STATUS=...` a line for
`systemctl status`, `RELOADING=1` then `READY=1` around a SIGHUP reload,
`STOPPING=1` at shutdown. With `WatchdogSec=` it also passes `$WATCHDOG_USEC`
(and `$WATCHDOG_PID`): the daemon then sends `WATCHDOG=1` from its event loop
at half that interval, so a loop that stops turning gets the service
restarted. Without `$NOTIFY_SOCKET` every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("moorage")


class Notifier:
    """Sends notify messages to the service manager, if there is one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # the abstract namespace
        self.address = address
        self.watchdog_seconds: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_seconds = int(usec) / 1_000_000

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> None:
        """Send `KEY=VALUE` fields in one datagram; a failure is logged, never raised."""
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as e:
            log.warning("cannot notify the service manager at %s: %s", self.address, e)


class Watchdog:
    """Sends `WATCHDOG=1` from the event loop at half systemd's interval, while running."""

    def __init__(self, loop: asyncio.AbstractEventLoop, notifier: Notifier) -> None:
        self.loop = loop
        self.notifier = notifier
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Begin pinging, if the service manager asked for a watchdog."""
        if self.notifier.enabled and self.notifier.watchdog_seconds is not None:
            self._ping()

    def _ping(self) -> None:
        interval = self.notifier.watchdog_seconds
        assert interval is not None
        self.notifier.send("WATCHDOG=1")
        self._handle = self.loop.call_later(interval / 2, self._ping)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
