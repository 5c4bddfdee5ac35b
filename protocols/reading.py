"""Read pacing shared by the TCP shells: fairness between sockets and publisher flow control.

After handling one read, a shell calls `pace_reading`. Two things may pause
reading from its socket:

- the store lags behind (`broker.flow.blocked`, see `broker/flow.py`): reading
  resumes once everything handed to the store is on disk;
- the read was large (`FAIR_READ_SIZE` or more), so more is probably waiting:
  reading resumes on the next loop tick, after every other ready socket has
  been read. Without this, uvloop reads a busy socket up to 32 times in a row
  and a flooding publisher starves consumers of their acks.
"""

from __future__ import annotations

import asyncio

from broker.flow import WriteFlow

FAIR_READ_SIZE = 32 * 1024


def pace_reading(
    transport: asyncio.Transport,
    loop: asyncio.AbstractEventLoop,
    flow: WriteFlow,
    read_size: int,
) -> None:
    """Pause `transport` after a read when flow control or fairness asks for it."""
    if transport.is_closing():
        return

    def resume() -> None:
        if not transport.is_closing():
            transport.resume_reading()

    if flow.blocked:
        transport.pause_reading()
        flow.on_resume(resume)
    elif read_size >= FAIR_READ_SIZE:
        transport.pause_reading()
        loop.call_soon(resume)
