"""The witness: a data-less third vote that decides who may confirm alone.

Theory of operation
-------------------
The witness holds four facts: the highest epoch it knows (`epoch`), the node
that holds it (`holder`, a replication address), whether that primary is
confirming *alone* (without a standby in sync), and when it last heard from
it. It answers REQUESTs on its port (`codec.FrameType.REQUEST`, JSON):

- ``report`` (the primary, every heartbeat: node, epoch, address, mode):
  a newer epoch is adopted; the holder's report refreshes its lease and
  sets `alone` from its mode; an older epoch, or the same epoch from another
  node, is answered ``stale`` with the holder's address, and that node steps
  down.
- ``alone`` (the primary lost its standby): granted only to the holder of
  the current epoch; from then on the standby cannot be promoted, because it
  lacks what the primary confirms alone.
- ``promote`` (a standby lost its primary): granted only when the candidate
  follows the current epoch, is not the holder, the holder is not confirming
  alone, and the holder has been silent for `lease` seconds. The witness
  then raises the epoch and records the candidate as holder, so the old
  primary's next report or ``alone`` is refused: two nodes never confirm in
  the same epoch.
- ``status``: the facts above.

Each grant is decided here, one request at a time, so a primary's ``alone``
and a standby's ``promote`` for the same epoch cannot both succeed. A
witness that restarts knows nothing: for its first `2 * lease` seconds it
only listens (reports are adopted, the highest epoch wins, but neither
``alone`` nor ``promote`` is granted), so a primary that was cut off while
the witness was down cannot get leave to confirm alone before the newer
primary has reported; and it grants no promotion until a primary has
reported to it (a restarted witness cannot vouch for a standby).

`WitnessState` is the pure rule set (time is a parameter); `serve_witness`
puts it on a TCP port.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from moorage.storage.replication.codec import FrameType, decode_json, encode_json
from moorage.storage.replication.link import FrameLink

__all__ = ["WitnessState", "serve_witness"]

log = logging.getLogger("moorage.witness")


@dataclass(slots=True)
class WitnessState:
    """The witness's rules (module docs). `lease`: seconds of primary silence before
    a standby may be promoted."""

    lease: float = 2.0
    epoch: int = 0
    holder: str | None = None
    holder_address: str = ""
    alone: bool = False
    last_seen: float = 0.0
    promotions: int = 0
    started: float | None = None
    """When the first request arrived: the grace period runs from there."""

    def handle(self, request: dict[str, Any], now: float) -> dict[str, Any]:
        """The answer to one request."""
        op = request.get("op")
        node = str(request.get("node", ""))
        epoch = request.get("epoch", -1)
        if not isinstance(epoch, int):
            return {"ok": False, "error": "epoch must be an integer"}
        if self.started is None:
            self.started = now
        listening = now - self.started < 2 * self.lease
        if listening and op in ("alone", "promote"):
            return {"ok": False, "reason": "the witness has just started; listening first"}
        if op == "status":
            return {"ok": True, **self.view(now)}
        if op == "report":
            return self._report(node, epoch, str(request.get("address", node)), request, now)
        if op == "alone":
            if self.holder is None and epoch >= self.epoch:
                self._adopt(node, epoch, str(request.get("address", node)), now)
            if node == self.holder and epoch == self.epoch:
                if not self.alone:
                    log.warning("witness: %s confirms alone in epoch %d", node, epoch)
                self.alone = True
                self.last_seen = now
                return {"ok": True, "epoch": self.epoch}
            return self._stale()
        if op == "promote":
            return self._promote(node, epoch, str(request.get("address", node)), now)
        return {"ok": False, "error": f"unknown op {op!r}"}

    def view(self, now: float) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "holder": self.holder,
            "address": self.holder_address,
            "alone": self.alone,
            "silent_for": round(now - self.last_seen, 3) if self.holder else None,
            "promotions": self.promotions,
        }

    def _adopt(self, node: str, epoch: int, address: str, now: float) -> None:
        if node != self.holder or epoch != self.epoch:
            log.warning("witness: epoch %d held by %s", epoch, node)
        self.epoch, self.holder, self.holder_address = epoch, node, address
        self.last_seen = now

    def _stale(self) -> dict[str, Any]:
        return {
            "ok": False,
            "stale": True,
            "epoch": self.epoch,
            "holder": self.holder,
            "address": self.holder_address,
        }

    def _report(
        self, node: str, epoch: int, address: str, request: dict[str, Any], now: float
    ) -> dict[str, Any]:
        if epoch > self.epoch or (self.holder is None and epoch >= self.epoch):
            self._adopt(node, epoch, address, now)
        if node != self.holder or epoch != self.epoch:
            return self._stale()
        self.last_seen = now
        self.holder_address = address
        self.alone = request.get("mode") == "alone"
        return {"ok": True, "epoch": self.epoch}

    def _promote(self, node: str, epoch: int, address: str, now: float) -> dict[str, Any]:
        if self.holder is None:
            return {"ok": False, "reason": "the witness has not heard from a primary"}
        if node == self.holder:
            return {"ok": True, "epoch": self.epoch}  # already promoted (an answer was lost)
        if epoch != self.epoch:
            return {"ok": False, "reason": f"candidate follows epoch {epoch}, not {self.epoch}"}
        if self.alone:
            return {"ok": False, "reason": f"{self.holder} confirms alone; the candidate lacks it"}
        if now - self.last_seen < self.lease:
            return {"ok": False, "reason": f"{self.holder} was heard from recently"}
        self.promotions += 1
        self._adopt(node, epoch + 1, address, now)
        log.warning("witness: promoted %s to epoch %d", node, self.epoch)
        return {"ok": True, "epoch": self.epoch}


async def serve_witness(host: str, port: int, state: WitnessState) -> asyncio.Server:
    """Answer witness REQUESTs on host:port (each a RESPONSE); anything else closes."""
    loop = asyncio.get_running_loop()

    def on_frame(link: FrameLink, kind: FrameType, payload: bytes) -> None:
        if kind is not FrameType.REQUEST:
            log.warning("witness: closing %s: unexpected %s", link.peer, kind.name)
            link.close()
            return
        answer = state.handle(decode_json(payload), loop.time())
        link.send(encode_json(FrameType.RESPONSE, answer))

    return await loop.create_server(lambda: FrameLink(on_frame), host, port)
