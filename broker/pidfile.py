"""The daemon's pid file, `<data dir>/moorage.pid`: how `moorage reload` finds the broker.

`moorage serve` writes its process id there once every listener is up and
removes the file when it stops (only if the file still names it: a second
broker started on the same directory must not lose the first one's file).
`moorage reload` reads it, checks that the process is alive and is a
Moorage (its command line names `moorage`, so a pid reused by another
program after a crash is never signalled), and sends SIGHUP. Under systemd,
`systemctl reload moorage` does the same through the unit's `ExecReload`.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

PID_FILE = "moorage.pid"


class PidFileError(Exception):
    """No running broker could be found from the pid file; the text says why."""


def write(data_dir: Path) -> Path | None:
    """Write this process's id into `data_dir` (created if missing); None if it cannot
    be written (the broker runs on; only `moorage reload` needs the file)."""
    path = data_dir / PID_FILE
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".pid.tmp")
        partial.write_text(f"{os.getpid()}\n")
        partial.replace(path)
    except OSError:
        return None
    return path


def remove(path: Path) -> None:
    """Remove the pid file if it still names this process."""
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()


def running_pid(data_dir: Path) -> int:
    """The pid of the broker serving `data_dir`. Raises PidFileError."""
    path = data_dir / PID_FILE
    try:
        pid = int(path.read_text().strip())
    except FileNotFoundError:
        raise PidFileError(f"no {path}: is a broker running on {data_dir}?") from None
    except (OSError, ValueError) as e:
        raise PidFileError(f"{path} is unreadable: {e}") from None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise PidFileError(f"{path} names process {pid}, which is not running") from None
    except PermissionError:
        pass  # alive, another user's: the SIGHUP will say so
    cmdline = Path(f"/proc/{pid}/cmdline")
    with contextlib.suppress(OSError):
        if b"moorage" not in cmdline.read_bytes():
            raise PidFileError(f"{path} names process {pid}, which is not a Moorage broker")
    return pid


def reload(data_dir: Path) -> int:
    """Send SIGHUP to the broker serving `data_dir`; its pid. Raises PidFileError."""
    pid = running_pid(data_dir)
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        raise PidFileError(f"cannot signal process {pid}: {e.strerror or e}") from None
    return pid
