"""The command line of failover: `serve`'s replication flags, `moorage witness`,
`moorage promote` and `moorage failover-status` (docs/failover.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from typing import Any

from moorage.broker.config import Config, ConfigError
from moorage.broker.failover.witness import WitnessState, serve_witness
from moorage.storage.replication.link import request

__all__ = ["COMMANDS", "add_commands", "add_serve_flags", "apply_serve_flags", "run"]

COMMANDS = ("witness", "promote", "failover-status")

log = logging.getLogger("moorage.witness")


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """`moorage serve`'s flags for a node of a replicated pair."""
    parser.add_argument("--role", choices=["primary", "standby"], help="replicated pair role")
    parser.add_argument("--replication-port", type=int, metavar="N", help="replication port")
    parser.add_argument(
        "--primary", metavar="HOST:PORT", help="the other node's replication address"
    )
    parser.add_argument("--witness", metavar="HOST:PORT", help="the witness's address")


def apply_serve_flags(config: Config, args: argparse.Namespace) -> None:
    """Lay the replication flags over `[replication]`. Raises ConfigError."""
    r = config.replication
    if args.role is not None:
        r.role = args.role
    if args.replication_port is not None:
        r.port = args.replication_port
    if args.primary is not None:
        r.peer = args.primary
    if args.witness is not None:
        r.witness = args.witness
    config.check_replication()


def add_commands(commands: Any) -> None:
    w = commands.add_parser("witness", help="run a failover witness (no data)")
    w.add_argument("--bind", default="127.0.0.1", metavar="ADDR", help="address to listen on")
    w.add_argument("--port", type=int, required=True, metavar="N", help="port to listen on")
    w.add_argument(
        "--lease",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="primary silence before a standby may be promoted (default 2)",
    )
    for name, text in (
        ("promote", "promote a standby to primary"),
        ("failover-status", "role, epoch and replication lag of a node"),
    ):
        p = commands.add_parser(name, help=text)
        p.add_argument("--host", default="127.0.0.1", help="the node's host")
        p.add_argument(
            "--replication-port", type=int, required=True, metavar="N", help="its replication port"
        )
        p.add_argument("--timeout", type=float, default=30.0, help=argparse.SUPPRESS)
        if name == "promote":
            p.add_argument(
                "--force", action="store_true", help="promote without the witness's agreement"
            )


def run(args: argparse.Namespace) -> int:
    if args.command == "witness":
        return _witness(args)
    address = f"{args.host}:{args.replication_port}"
    message: dict[str, Any] = {"op": "status"}
    if args.command == "promote":
        message = {"op": "promote", "force": args.force}
    try:
        answer = asyncio.run(request(address, message, args.timeout))
    except Exception as e:  # noqa: BLE001 - reported in one line
        print(f"moorage: {address}: {e or type(e).__name__}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2, sort_keys=True))
    return 0 if answer.get("ok") else 1


def _witness(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        asyncio.run(_run_witness(args.bind, args.port, args.lease))
    except OSError as e:
        print(
            f"moorage: cannot listen on {args.bind}:{args.port}: {e.strerror or e}", file=sys.stderr
        )
        return 1
    except ConfigError as e:  # pragma: no cover - no configuration yet
        print(f"moorage: {e}", file=sys.stderr)
        return 2
    return 0


async def _run_witness(host: str, port: int, lease: float) -> None:
    server = await serve_witness(host, port, WitnessState(lease=lease))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sockname = server.sockets[0].getsockname()
    log.info("witness accepting connections on %s:%d", sockname[0], sockname[1])
    try:
        await stop.wait()
    finally:
        server.close()
