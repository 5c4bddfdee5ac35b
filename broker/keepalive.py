"""Keep-alive bookkeeping for one connection, both ways, sans-IO: AMQP heartbeats,
MQTT Keep Alive and STOMP heart-beats are the same three rules.

1. Before the handshake completes, the client has `handshake_timeout` seconds
   (AMQP's handshake timeout, MQTT's CONNECT timeout, STOMP's CONNECT deadline).
2. After it, a peer silent for `recv_timeout` seconds is gone: AMQP closes
   after two missed heartbeats (`2 * heartbeat`), MQTT after one and a half
   Keep Alive periods ([MQTT-3.1.2-24]), STOMP after its negotiated interval
   times a tolerance. 0 means silence is never fatal.
3. When we sent nothing for `send_interval` seconds we send a heartbeat
   (AMQP and STOMP send at half the negotiated interval). 0 means never.

The object has no clock and no timer. The adapter reports what happened —
`received(now)` for any bytes from the peer (also while flow control holds
the peer, so that our own silence in reading is not counted against it) and
`sent()` for anything written — and the shell calls `poll(now)` when
`deadline()` comes; `poll` says what to do. Time is always an argument, so
tests drive it with plain numbers.
"""

from __future__ import annotations

import enum
import math


class Due(enum.Enum):
    """What `KeepAlive.poll` asks the adapter to do."""

    NOTHING = "nothing"
    HEARTBEAT = "heartbeat"  # send the protocol's heartbeat frame
    PEER_SILENT = "peer-silent"  # close: the peer missed its heartbeats / keep-alive
    HANDSHAKE_TIMEOUT = "handshake-timeout"  # close: no handshake in time


class KeepAlive:
    """Liveness of one connection; every time is a monotonic reading passed in."""

    __slots__ = (
        "_handshake_until",
        "_next_beat",
        "_recv_timeout",
        "_send_interval",
        "_sent",
        "last_received",
    )

    def __init__(self, now: float, handshake_timeout: float) -> None:
        self.last_received = now
        self._handshake_until: float | None = now + handshake_timeout
        self._recv_timeout = 0.0
        self._send_interval = 0.0
        self._next_beat = math.inf
        self._sent = False

    def start(self, now: float, *, recv_timeout: float, send_interval: float) -> None:
        """The handshake is done: watch the peer and keep it fed with these intervals."""
        self._handshake_until = None
        self.last_received = now
        self._recv_timeout = max(recv_timeout, 0.0)
        self._send_interval = max(send_interval, 0.0)
        self._next_beat = now + self._send_interval if self._send_interval else math.inf
        self._sent = False

    @property
    def recv_timeout(self) -> float:
        """Seconds of silence after which the peer is gone (0: never)."""
        return self._recv_timeout

    def received(self, now: float) -> None:
        """Bytes came from the peer (or the peer is held by our flow control)."""
        self.last_received = now

    def sent(self) -> None:
        """We wrote something: no heartbeat is needed for this interval."""
        self._sent = True

    def deadline(self) -> float:
        """When `poll` must run next (monotonic seconds; inf: never)."""
        if self._handshake_until is not None:
            return self._handshake_until
        due = self._next_beat
        if self._recv_timeout:
            due = min(due, self.last_received + self._recv_timeout)
        return due

    def poll(self, now: float) -> Due:
        """What is due at `now`; call it at or after `deadline()` (earlier is harmless)."""
        if self._handshake_until is not None:
            return Due.HANDSHAKE_TIMEOUT if now >= self._handshake_until else Due.NOTHING
        if self._recv_timeout and now >= self.last_received + self._recv_timeout:
            return Due.PEER_SILENT
        if now < self._next_beat:
            return Due.NOTHING
        beat = not self._sent
        self._sent = False
        self._next_beat = now + self._send_interval
        return Due.HEARTBEAT if beat else Due.NOTHING
