"""The `moorage` command line: `moorage serve` runs the broker; `moorage bench` measures one;
the management commands (`list`, `declare`, `status`, ...) live in `broker.ctl`."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys

from moorage.broker import __version__, ctl, logs
from moorage.broker.config import DEFAULT_PORTS, Config, ConfigError
from moorage.broker.daemon import StartupError, serve
from moorage.broker.failover import cli as failover
from moorage.broker.loop import loop_factory
from moorage.broker.shared_storage import LeaseLost

EXIT_LEASE_LOST = 3
"""`moorage serve` lost its shared-storage lease and stopped (systemd restarts it)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moorage",
        description="Moorage message broker",
        epilog="Managing a running broker: moorage [--host H --port P --user U --password P] "
        "{list,status,declare,delete,purge,publish,get,export,import,backup,close} ... "
        "(moorage list --help); moorage restore FILE --data-dir DIR; moorage reload.",
    )
    parser.add_argument("--version", action="version", version=f"moorage {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("serve", help="run the broker in the foreground")
    s.add_argument("--config", metavar="FILE", help="TOML configuration file")
    s.add_argument("--data-dir", metavar="DIR", help="where durable state is kept")
    s.add_argument("--bind", metavar="ADDR", help="address every listener binds to")
    for name in DEFAULT_PORTS:
        flag = name.replace("_", "-")
        s.add_argument(f"--{flag}-port", type=int, metavar="N", help=f"{flag} port (0 disables)")
    s.add_argument("--tls-cert", metavar="FILE", help="server certificate chain (PEM)")
    s.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    s.add_argument("--tls-ca", metavar="FILE", help="CA bundle for client certificates (PEM)")
    s.add_argument(
        "--shared-storage",
        action="store_true",
        help="share the data directory with another broker: the lock holder serves, "
        "the other waits (storage.mode = 'shared', docs/failover.md)",
    )
    s.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="log verbosity"
    )
    s.add_argument(
        "--log-format", choices=logs.LOG_FORMATS, help="text (default) or json: one object a line"
    )
    s.add_argument(
        "--loop", choices=["auto", "uvloop", "asyncio"], default="auto", help=argparse.SUPPRESS
    )
    failover.add_serve_flags(s)
    failover.add_commands(commands)
    b = commands.add_parser(
        "bench", help="throughput/latency benchmark (bench/README.md)", add_help=False
    )
    b.add_argument("args", nargs=argparse.REMAINDER, help="see `moorage bench --help`")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    if _management_command(argv):
        return ctl.main(argv)
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command in failover.COMMANDS:
        return failover.run(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


def _management_command(argv: list[str]) -> bool:
    """Whether argv is a management command (its options may come before the command)."""
    return any(arg in ctl.COMMANDS for arg in argv) and argv[:1] != ["serve"]


def _bench(argv: list[str]) -> int:
    """`moorage bench ...`: the tool lives in the `bench` package, imported only here."""
    try:
        # By name, so that neither the core nor its type check depends on the tool.
        tool = importlib.import_module("moorage.bench.cli")
    except ImportError as e:
        print(f"moorage: the benchmark tool is not installed ({e})", file=sys.stderr)
        return 2
    status: int = tool.main(argv)
    return status


def _reread(args: argparse.Namespace) -> Config:
    """The configuration file with the command line's overrides on top. Raises ConfigError."""
    config = Config.load(args.config)
    config.apply_overrides(
        data_dir=args.data_dir,
        bind=args.bind,
        ports={name: getattr(args, f"{name}_port") for name in DEFAULT_PORTS},
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
    )
    if args.shared_storage:
        config.storage.mode = "shared"
        config.storage.check_mode()
    failover.apply_serve_flags(config, args)
    return config


def _serve(args: argparse.Namespace) -> int:
    try:
        config = _reread(args)
    except ConfigError as e:
        print(f"moorage: {e}", file=sys.stderr)
        return 2
    logs.configure(args.log_level or config.log_level, args.log_format or config.log_format)
    try:
        with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
            runner.run(serve(config, reload=lambda: _reread(args)))
    except StartupError as e:
        print(f"moorage: {e}", file=sys.stderr)
        return 1
    except LeaseLost as e:  # shared storage: another broker may hold the store now
        print(f"moorage: {e}", file=sys.stderr)
        return EXIT_LEASE_LOST
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
