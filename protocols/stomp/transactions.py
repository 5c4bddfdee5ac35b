"""STOMP transactions (1.2 "BEGIN", "COMMIT", "ABORT"): named action lists, applied at COMMIT.

The adapter buffers, one action list per transaction name. SEND and ACK/NACK
inside a transaction are validated at once (destination, headers,
message-id) and their actions applied in order at COMMIT; ABORT, DISCONNECT
and connection loss discard them. The core's tx_* calls are not used
because they allow one transaction per session while STOMP allows several
concurrent named ones, and acks must go through the session that holds the
deliveries. A COMMIT's publishes run in one loop tick, so the store's group
commit writes them in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable

from moorage.broker.auth_users import PermissionPending
from moorage.protocols.stomp.codec import Frame, ProtocolError

# An action: applies one SEND, ACK or NACK; True when it wrote to the store.
Action = Callable[[], bool]


class Transactions:
    """The open transactions of one connection, by name."""

    def __init__(self) -> None:
        self._open: dict[str, list[Action]] = {}
        self._stored: dict[str, bool] = {}  # a COMMIT that waits: did it store yet?

    def of(self, frame: Frame) -> list[Action] | None:
        """The action list of the frame's `transaction`, None outside one.

        Raises ProtocolError for a transaction that was not begun.
        """
        name = frame.get("transaction")
        if name is None:
            return None
        actions = self._open.get(name)
        if actions is None:
            raise ProtocolError("unknown transaction", f"Transaction '{name}' was not begun.")
        return actions

    def begin(self, name: str) -> None:
        """BEGIN: open transaction `name` (ProtocolError if it is open)."""
        if name in self._open:
            raise ProtocolError("transaction already begun", f"Transaction '{name}' is open.")
        self._open[name] = []

    def commit(self, frame: Frame) -> bool:
        """COMMIT: apply the frame's transaction's actions in order; True if one stored.

        An action that raises PermissionPending (an authorisation backend's answer
        is awaited, `broker.auth_users`) stops the COMMIT there: the actions applied
        are gone, the others stay, and the COMMIT handled again goes on from it.
        """
        actions = self.of(frame)
        assert actions is not None  # the codec requires `transaction`
        name = frame.get("transaction") or ""
        stored = self._stored.pop(name, False)
        done = 0
        try:
            for action in actions:
                stored |= action()
                done += 1
        except PermissionPending:
            del actions[:done]
            self._stored[name] = stored
            raise
        del self._open[name]
        return stored

    def abort(self, frame: Frame) -> None:
        """ABORT: discard the frame's transaction."""
        self.of(frame)
        del self._open[frame.get("transaction") or ""]
        self._stored.pop(frame.get("transaction") or "", None)

    def clear(self) -> None:
        """DISCONNECT or connection loss: every open transaction is discarded."""
        self._open.clear()
        self._stored.clear()
