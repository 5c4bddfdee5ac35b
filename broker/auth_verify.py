"""Password checks off the event loop: a small pool of threads, one check per credential.

Theory of operation
-------------------
A scrypt check (`auth_hashing`, N = 2^14, r = 8) takes tens of milliseconds
of CPU and 16 MiB. Run on the event loop, each login with a password the
credential cache does not know yet stalls every client for that long, and
a reconnect storm after a failover (a thousand clients of one user, all
missing the cache before the first check is done) stalls it for about a
minute. `hashlib.scrypt` releases the GIL, so the check runs on a worker
thread while the loop keeps serving the other clients:

- `check` is the work done on the thread: the password against the stored
  hash, and, when the hash is not scrypt with the current parameters, a new
  scrypt hash of the password (the upgrade), so that no hashing is left
  for the loop. It touches no shared state.
- `Verifier.verified(key, work, settle)` runs `work` on the pool and then
  `settle(outcome)` on the loop thread (the user directory's cache update
  and the upgrade's write to the store happen there, as everything that
  changes the directory does). Logins that ask for the same `key` (user,
  stored hash, keyed digest of the password) while its check runs wait for
  that one check: one scrypt answers them all, and `settle` runs once.
- The pool has `VERIFY_WORKERS` threads, which bounds the memory scrypt
  takes (16 MiB each) and the cores it takes from the loop; more checks
  wait in the pool's queue. It is made at the first check and shut down by
  `close` (the broker's stop); a later check makes a new one.

A waiter that is cancelled (its client's login abandoned at the broker's
stop) does not cancel the shared check; `close` cancels them all.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from moorage.broker.auth_hashing import hash_password, needs_upgrade

Verify = Callable[[str, str, str], bool]
"""`(password, stored hash, hashing algorithm) -> whether they match`: `verify_password`."""

VERIFY_WORKERS = max(2, min(4, os.cpu_count() or 1))
"""Threads that check passwords: one per core, at least 2 (one slow check, say of an
imported hash with a large N, does not hold every other login) and at most 4 (64 MiB
of scrypt at once). Concurrent checks of one credential share one check anyway."""


class Outcome(NamedTuple):
    """What a check found: whether the password matches, and its upgraded hash if any."""

    matches: bool
    upgraded: str | None = None  # a scrypt hash of the password, when the stored one is not


def check(verify: Verify, password: str, stored: str, algorithm: str) -> Outcome:
    """Check `password` against a stored hash; on a worker thread (no shared state).

    Hashes the password again with scrypt when it matches a hash that
    `needs_upgrade`. Raises nothing for bad stored data (no match).
    """
    if not verify(password, stored, algorithm):
        return Outcome(False)
    return Outcome(True, hash_password(password) if needs_upgrade(stored, algorithm) else None)


class Verifier:
    """Runs password checks on a bounded thread pool, one at a time per key."""

    def __init__(self, workers: int = VERIFY_WORKERS) -> None:
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._running: dict[Hashable, asyncio.Task[bool]] = {}

    @property
    def running(self) -> int:
        """Checks started and not settled yet (each may answer several logins)."""
        return len(self._running)

    async def verified(
        self, key: Hashable, work: Callable[[], Outcome], settle: Callable[[Outcome], bool]
    ) -> bool:
        """`settle(work())`: `work` on a worker thread, `settle` on the loop thread.

        While a check of `key` runs, a call with the same key waits for it
        instead of starting another (and gets the same answer). Raises what
        `work` or `settle` raise; CancelledError when `close` cancels the check.
        """
        shared = self._running.get(key)
        if shared is None:
            shared = asyncio.get_running_loop().create_task(self._run(key, work, settle))
            self._running[key] = shared
        return await asyncio.shield(shared)

    async def _run(
        self, key: Hashable, work: Callable[[], Outcome], settle: Callable[[Outcome], bool]
    ) -> bool:
        try:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="moorage-verify")
            outcome = await asyncio.get_running_loop().run_in_executor(self._pool, work)
            return settle(outcome)
        finally:
            # after `settle`: a login that starts from now on finds the cache updated
            self._running.pop(key, None)

    def close(self) -> None:
        """Cancel the checks in progress and shut the pool down (without waiting for a
        thread that is inside scrypt: it finishes on its own and its answer is dropped)."""
        for task in list(self._running.values()):
            task.cancel()
        self._running.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
