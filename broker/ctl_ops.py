"""`moorage close connection NAME`, `moorage restore FILE --data-dir DIR`, `moorage reload`,
and the progress bar that `backup` and `restore` draw on a terminal.

Kept beside `broker.ctl` (which owns the API client, the parser's shared
options and the other commands): `ctl` adds these subcommands with
`add_commands` and hands them to `run`.

- `close connection NAME` is the management API's `DELETE /api/connections/NAME`
  (`--reason` is RabbitMQ's `X-Reason` header).
- `restore` works on files with no broker running: it vets the backup and copies
  it into an empty data directory (`storage.sqlite.restore`).
- `reload` finds the broker of a data directory through its pid file
  (`broker.pidfile`) and sends it SIGHUP, as `systemctl reload` does.
"""

from __future__ import annotations

import argparse
import urllib.parse
from pathlib import Path
from typing import IO, Any, Protocol

from moorage.broker import pidfile
from moorage.broker.config import Config, ConfigError

COMMANDS = frozenset({"close", "restore", "reload"})


class CommandFailed(Exception):
    """A failed command: printed as one line by `broker.ctl`, exit status 1."""


class ApiCaller(Protocol):
    """The part of `broker.ctl.Api` these commands use."""

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        accept: tuple[int, ...] = (),
        headers: dict[str, str] | None = None,
    ) -> Any: ...


def add_commands(commands: Any) -> None:
    """Add the subcommands to `broker.ctl`'s subparsers."""
    close = commands.add_parser("close", help="close a client connection (its protocol's close)")
    close.add_argument("kind", choices=["connection"])
    close.add_argument("name", help="the connection's name, as `moorage list connections` shows")
    close.add_argument("--reason", default=None, help="told to the client (X-Reason)")
    restore = commands.add_parser("restore", help="put a backup into an empty data directory")
    restore.add_argument("file", help="a file made by `moorage backup`")
    restore.add_argument("--data-dir", required=True, metavar="DIR", help="empty or missing")
    reload = commands.add_parser("reload", help="make the running broker re-read its config")
    reload.add_argument("--data-dir", metavar="DIR", help="the broker's data directory")
    reload.add_argument("--config", metavar="FILE", help="or its configuration file")


class ProgressBar:
    """`[#####.....]  42%  12.0/28.5 MiB` redrawn in place on a terminal; silent elsewhere."""

    WIDTH = 30

    def __init__(self, out: IO[str], label: str) -> None:
        self.out = out
        self.label = label
        self.shown = False

    def update(self, done: int, total: int, unit: int = 1) -> None:
        """Draw `done` of `total` (in units of `unit` bytes)."""
        if total <= 0:
            return
        share = min(1.0, done / total)
        filled = int(share * self.WIDTH)
        mib = unit / (1 << 20)
        text = (
            f"\r{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {share:4.0%}"
            f"  {done * mib:.1f}/{total * mib:.1f} MiB"
        )
        self.out.write(text)
        self.out.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            self.out.write("\n")
            self.out.flush()


def progress_bar(out: IO[str], label: str) -> ProgressBar | None:
    """A progress bar on `out` when it is a terminal, else None (scripts get one line)."""
    isatty = getattr(out, "isatty", None)
    return ProgressBar(out, label) if isatty is not None and isatty() else None


def run(api: ApiCaller, args: argparse.Namespace, out: IO[str]) -> None:
    """Carry out one of `COMMANDS`, printing to `out`. Raises CommandFailed."""
    if args.command == "close":
        name = urllib.parse.quote(args.name, safe="")
        headers = {"X-Reason": args.reason} if args.reason else None
        api.call("DELETE", f"/connections/{name}", headers=headers)
        print("connection closed", file=out)
    elif args.command == "restore":
        _restore(Path(args.file), Path(args.data_dir), out)
    elif args.command == "reload":
        data_dir = _data_dir(args)
        try:
            pid = pidfile.reload(data_dir)
        except pidfile.PidFileError as e:
            raise CommandFailed(str(e)) from None
        print(f"sent SIGHUP to the broker (pid {pid}); it logs what it reloaded", file=out)


def _restore(source: Path, data_dir: Path, out: IO[str]) -> None:
    # The SQLite store is imported here only: the other commands never need it.
    from moorage.storage import StoreError
    from moorage.storage.sqlite.restore import restore

    bar = progress_bar(out, "restoring")
    page_size = 4096

    def step(done: int, total: int) -> None:
        if bar is not None:
            bar.update(done, total, page_size)

    try:
        page_size = _page_size(source)
        path = restore(source, data_dir, step)
    except StoreError as e:
        raise CommandFailed(str(e)) from None
    finally:
        if bar is not None:
            bar.finish()
    print(f"restored {source} into {path}; start the broker with --data-dir {data_dir}", file=out)


def _page_size(path: Path) -> int:
    """The page size recorded in a SQLite file's header (bytes 16-17), for the bar's MiB."""
    try:
        with path.open("rb") as f:
            header = f.read(18)
    except OSError:
        return 4096
    if len(header) < 18:
        return 4096
    size = int.from_bytes(header[16:18], "big")
    return 65536 if size == 1 else size or 4096


def _data_dir(args: argparse.Namespace) -> Path:
    if args.data_dir:
        return Path(args.data_dir).expanduser()
    try:
        return Config.load(args.config).data_dir
    except ConfigError as e:
        raise CommandFailed(str(e)) from None
