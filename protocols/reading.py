"""Read pacing shared by the TCP shells: fairness between sockets and publisher flow control.

After handling one read, a shell calls `ReadPacer.after_read`. Three things
may pause reading from its socket:

- the store lags behind (`broker.flow.blocked`, see `broker/flow.py`): reading
  resumes once everything handed to the store is on disk;
- a resource alarm is set (memory, `broker.memory`, or disk, `broker.disk`)
  and this connection has published: reading resumes when every alarm has
  cleared. Connections that only
  consume are never paused for memory, so their acks keep draining queues;
- the read was large (`FAIR_READ_SIZE` or more), so more is probably waiting:
  reading resumes on the next loop tick, after every other ready socket has
  been read. Without this, uvloop reads a busy socket up to 32 times in a row
  and a flooding publisher starves consumers of their acks.

- the adapter waits for an answer (a login or a permission check a backend
  has not answered, `Adapter.waiting`): it handles no input meanwhile, so
  nothing more is read until `answered`. A client cannot pile up bytes in
  the broker's buffers while it is made to wait.

While paused by flow control (`held`) the peer's silence is the broker's
doing: the shell tells its adapter so that heartbeat and keep-alive
timeouts do not close a client that is only waiting to be read.
"""

from __future__ import annotations

import asyncio

from moorage.broker.flow import WriteFlow

FAIR_READ_SIZE = 32 * 1024


class ReadPacer:
    """Pauses and resumes one transport's reading for fairness and flow control."""

    __slots__ = ("awaiting", "flow", "held", "loop", "publisher", "transport")

    def __init__(
        self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, flow: WriteFlow
    ) -> None:
        self.transport = transport
        self.loop = loop
        self.flow = flow
        self.held = False  # paused by flow control (store lag or a resource alarm)
        self.awaiting = False  # paused while the adapter waits for an answer
        self.publisher = False  # as of the last read: an alarm holds it when reading resumes

    def after_read(self, read_size: int, publisher: bool, waiting: bool = False) -> None:
        """Pause reading after a read when flow control or fairness asks for it, or
        while the adapter waits for an answer (`waiting`; `answered` resumes)."""
        transport = self.transport
        if transport.is_closing():
            return
        self.publisher = publisher
        if waiting:
            transport.pause_reading()
            self.awaiting = True
            return
        flow = self.flow
        if flow.blocked:
            transport.pause_reading()
            self.held = True
            flow.on_resume(self._resume)
        elif publisher and flow.publishers_blocked:
            transport.pause_reading()
            self.held = True
            flow.on_alarms_clear(self._resume)
        elif read_size >= FAIR_READ_SIZE:
            transport.pause_reading()
            self.loop.call_soon(self._resume)

    def answered(self) -> None:
        """The adapter's answer came: read again, unless flow control holds the socket."""
        if self.awaiting:
            self.awaiting = False
            if not self.held and not self.transport.is_closing():
                self.transport.resume_reading()

    def _resume(self) -> None:
        flow = self.flow
        if self.publisher and flow.publishers_blocked and not self.transport.is_closing():
            # an alarm was set while the store lagged or the read was put off: a
            # publisher stays unread until it clears (no second read slips in)
            self.held = True
            self.transport.pause_reading()
            flow.on_alarms_clear(self._resume)
            return
        self.held = False
        if not self.transport.is_closing():
            self.transport.resume_reading()
