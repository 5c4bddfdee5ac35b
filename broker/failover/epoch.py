"""The node's epoch, kept durably in `failover.json` beside the store.

Every promotion raises the epoch; a node refuses to serve with an epoch
older than one it has seen (see `node.py`). The file is replaced atomically
(write a temporary file, fsync it, rename it, fsync the folder), so a crash
leaves either the old or the new epoch, never a torn file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["EpochFile"]

FILE_NAME = "failover.json"


class EpochFile:
    """Load and durably store a node's epoch (module docs)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / FILE_NAME
        self.epoch = 0

    def load(self) -> int:
        """The stored epoch (0 when there is none). Raises ValueError on a corrupt file."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            self.epoch = 0
            return 0
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.path}: unreadable epoch file: {e}") from e
        epoch = data.get("epoch") if isinstance(data, dict) else None
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"{self.path}: no valid epoch in it")
        self.epoch = epoch
        return epoch

    def store(self, epoch: int) -> None:
        """Make `epoch` durable before returning (blocking: a few small fsyncs)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("w") as f:
            json.dump({"epoch": epoch}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.epoch = epoch
