"""Brute-force slowdown: repeated login failures from one address wait longer each time.

Every refused login from an address counts one more consecutive failure
for that address (the host, without the port: an attacker opens a new
connection per attempt), and its refusal is held back for

    delay(n) = min(max_delay, step * n)        n = consecutive failures

seconds before the client hears it: 0.2 s, 0.4 s, ... up to 10 s with the
defaults (`auth.failed_login_delay`, `auth.failed_login_max_delay`). A
successful login from the address resets it, and so do `forget_after`
seconds without a failure. Other addresses are not affected: a client on
127.0.0.2 logs in at once while 127.0.0.1 is being slowed down.

The delay is a function of the broker's clock, so it is unit-testable with
a `ManualClock`. The protocol shells apply it by holding the refusal (and
the close after it) and not reading from the client meanwhile; nothing
blocks the event loop. At most `MAX_TRACKED` addresses are remembered (the
oldest are forgotten first), so a flood of addresses cannot grow memory.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

from moorage.broker.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("moorage.auth")

MAX_TRACKED = 10_000


@dataclass(slots=True)
class _Failures:
    count: int
    last: float


def host_of(peer: str) -> str:
    """The address part of a "host:port" peer ("[::1]:5" and "::1:5" alike)."""
    host, sep, port = peer.rpartition(":")
    if not sep or not port.isdigit():
        return peer
    return host.strip("[]")


class LoginGuard:
    """Consecutive login failures per address, and the delay they earn."""

    def __init__(
        self,
        clock: Clock = SYSTEM_CLOCK,
        *,
        step: float = 0.2,
        max_delay: float = 10.0,
        forget_after: float = 600.0,
    ) -> None:
        self.clock = clock
        self.step = step  # 0 turns the slowdown off
        self.max_delay = max_delay
        self.forget_after = forget_after
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def delay(self, failures: int) -> float:
        """Seconds a refusal waits after `failures` consecutive failures."""
        if failures <= 0 or self.step <= 0:
            return 0.0
        return min(self.max_delay, self.step * failures)

    def failures(self, peer: str) -> int:
        """Consecutive failures of the peer's address that still count."""
        entry = self._failures.get(host_of(peer))
        if entry is None or self.clock.monotonic() - entry.last > self.forget_after:
            return 0
        return entry.count

    def failed(self, peer: str, who: str, reason: str) -> float:
        """Count a refused login from `peer`; the delay its refusal must wait (logged)."""
        host = host_of(peer)
        count = self.failures(peer) + 1
        self._failures[host] = _Failures(count, self.clock.monotonic())
        self._failures.move_to_end(host)
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)
        wait = self.delay(count)
        log.warning(
            "login refused for %r from %s (failure %d in a row, answered after %.1f s): %s",
            who,
            peer,
            count,
            wait,
            reason,
        )
        return wait

    def succeeded(self, peer: str) -> None:
        """A successful login resets its address."""
        if self._failures:
            self._failures.pop(host_of(peer), None)
