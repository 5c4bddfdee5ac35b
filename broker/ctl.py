"""`moorage list|declare|delete|purge|publish|get|export|import|status`: the management
API from a shell (`user`, `permissions` and `topic-permissions` are in
`broker.ctl_users`; `close`, `restore` and `reload` in `broker.ctl_ops`).

The API commands are plain HTTP calls to a running broker's management listener
(`--host`, `--port`, `--user`, `--password`, `--vhost`; the user and password
can also come from `MOORAGE_USER` / `MOORAGE_PASSWORD`), printing a table or,
with `--json`, the API's JSON. They need nothing but the standard library.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from moorage.broker import ctl_ops, ctl_users

LISTS = {
    "queues": ("queues", ["vhost", "name", "messages", "messages_ready", "consumers", "durable"]),
    "exchanges": ("exchanges", ["vhost", "name", "type", "durable", "auto_delete"]),
    "bindings": ("bindings", ["vhost", "source", "destination", "routing_key"]),
    "connections": ("connections", ["name", "protocol", "user", "vhost", "channels"]),
    "channels": ("channels", ["name", "user", "consumer_count", "messages_unacknowledged"]),
    "consumers": ("consumers", ["queue.name", "consumer_tag", "ack_required", "prefetch_count"]),
    "vhosts": ("vhosts", ["name", "messages"]),
    "users": ("users", ["name", "tags"]),
    "permissions": ("permissions", ["user", "vhost", "configure", "write", "read"]),
}
COMMANDS = (
    frozenset(
        {
            "list",
            "declare",
            "delete",
            "purge",
            "publish",
            "get",
            "export",
            "import",
            "status",
            "backup",
        }
    )
    | ctl_users.COMMANDS
)
COMMANDS |= ctl_ops.COMMANDS


class CtlError(Exception):
    """A failed call: printed as one line, exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moorage", description="Manage a running Moorage broker")
    p.add_argument("--host", default="127.0.0.1", help="management listener host")
    p.add_argument("--port", type=int, default=15672, help="management listener port (15672)")
    p.add_argument("--user", default=os.environ.get("MOORAGE_USER", "guest"))
    p.add_argument("--password", default=os.environ.get("MOORAGE_PASSWORD", "guest"))
    p.add_argument("--vhost", default="/", help="virtual host (default /)")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    commands = p.add_subparsers(dest="command", required=True)
    ls = commands.add_parser("list", help="list queues, exchanges, bindings, connections, ...")
    ls.add_argument("what", choices=sorted(LISTS))
    commands.add_parser("status", help="node overview: version, totals, alarms")
    declare = commands.add_parser("declare", help="declare a queue or an exchange")
    declare.add_argument("kind", choices=["queue", "exchange"])
    declare.add_argument("name")
    declare.add_argument("--type", default="direct", help="exchange type (default direct)")
    declare.add_argument("--transient", action="store_true", help="not durable")
    declare.add_argument("--auto-delete", action="store_true")
    declare.add_argument("--argument", action="append", default=[], metavar="KEY=JSON")
    delete = commands.add_parser("delete", help="delete a queue or an exchange")
    delete.add_argument("kind", choices=["queue", "exchange"])
    delete.add_argument("name")
    purge = commands.add_parser("purge", help="drop a queue's ready messages")
    purge.add_argument("kind", choices=["queue"])
    purge.add_argument("name")
    publish = commands.add_parser("publish", help="publish one message")
    publish.add_argument("--exchange", default="amq.default")
    publish.add_argument("--routing-key", required=True)
    publish.add_argument("payload")
    get = commands.add_parser("get", help="fetch messages from a queue")
    get.add_argument("queue")
    get.add_argument("--count", type=int, default=1)
    get.add_argument("--ack", action="store_true", help="remove them (default: requeue)")
    export = commands.add_parser("export", help="write definitions (RabbitMQ's format)")
    export.add_argument("file", help="- for standard output")
    load = commands.add_parser("import", help="load definitions (RabbitMQ's format)")
    load.add_argument("file", help="- for standard input")
    backup = commands.add_parser("backup", help="copy the running store (a SQLite file)")
    backup.add_argument("file", help="where to write it (must not exist)")
    ctl_users.add_parsers(commands)
    ctl_ops.add_commands(commands)
    return p


class Api:
    """The management API of one broker, over urllib."""

    def __init__(self, host: str, port: int, user: str, password: str) -> None:
        self.base = f"http://{host}:{port}/api"
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def download(
        self, path: str, destination: Path, progress: ctl_ops.ProgressBar | None = None
    ) -> int:
        """GET `path` into a new file; its size. Raises CtlError (nothing is left behind)."""
        request = urllib.request.Request(self.base + path)  # noqa: S310
        request.add_header("Authorization", self.auth)
        try:
            with (
                urllib.request.urlopen(request, timeout=600) as response,  # noqa: S310
                destination.open("xb") as out,
            ):
                size = 0
                total = int(response.headers.get("Content-Length") or 0)
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    size += len(chunk)
                    if progress is not None:
                        progress.update(size, total)
        except FileExistsError:
            raise CtlError(f"{destination} exists; not overwriting it") from None
        except urllib.error.HTTPError as e:
            destination.unlink(missing_ok=True)
            with e:
                raise CtlError(f"GET {path}: {e.code} {_reason(e.read())}") from None
        except OSError as e:
            destination.unlink(missing_ok=True)
            raise CtlError(f"cannot reach {self.base}: {e}") from None
        return size

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        accept: tuple[int, ...] = (),
        headers: dict[str, str] | None = None,
    ) -> Any:
        """The JSON answer of one API call; an error status outside `accept` raises CtlError."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)  # noqa: S310
        request.add_header("Authorization", self.auth)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                payload = response.read()
        except urllib.error.HTTPError as e:
            with e:
                if e.code in accept:
                    return json.loads(e.read() or b"null")
                raise CtlError(f"{method} {path}: {e.code} {_reason(e.read())}") from None
        except OSError as e:
            raise CtlError(f"cannot reach {self.base}: {e}") from None
        return json.loads(payload) if payload else None


def _reason(body: bytes) -> str:
    """The `reason` of the API's JSON error body, else the body as text."""
    text = body.decode("utf-8", "replace")
    try:
        return str(json.loads(text).get("reason", text))
    except (ValueError, AttributeError):
        return text


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _field(item: dict[str, Any], dotted: str) -> Any:
    value: Any = item
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def format_table(items: list[dict[str, Any]], columns: list[str]) -> str:
    """Items as an aligned text table with a header line (lists print as a,b)."""

    def cell(value: Any) -> str:
        if isinstance(value, list):
            return ",".join(map(str, value))
        return "" if value is None else str(value)

    rows = [columns] + [[cell(_field(i, c)) for c in columns] for i in items]
    widths = [max(len(r[k]) for r in rows) for k in range(len(columns))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _arguments(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise CtlError(f"--argument {pair!r}: expected KEY=JSON")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw  # a bare string
    return out


def run(args: argparse.Namespace, out: Any = None) -> None:  # noqa: C901 - a branch a command
    """Carry out one API command, printing to `out` (standard output by default, looked up
    at the call). Raises CtlError."""
    if out is None:
        out = sys.stdout
    api = Api(args.host, args.port, args.user, args.password)
    vhost = _quote(args.vhost)
    if args.command in ctl_users.COMMANDS:
        ctl_users.run(args, api, out)
    elif args.command in ctl_ops.COMMANDS:
        try:
            ctl_ops.run(api, args, out)
        except ctl_ops.CommandFailed as e:
            raise CtlError(str(e)) from None
    elif args.command == "list":
        path, columns = LISTS[args.what]
        items = api.call("GET", "/" + path)
        print(json.dumps(items, indent=1) if args.json else format_table(items, columns), file=out)
    elif args.command == "status":
        overview = api.call("GET", "/overview")
        # 503 is the health check's answer while an alarm is in effect
        alarms = api.call("GET", "/health/checks/alarms", accept=(503,))
        if args.json:
            print(json.dumps({"overview": overview, "alarms": alarms}, indent=1), file=out)
            return
        totals = overview.get("object_totals", {})
        queued = overview.get("queue_totals", {})
        print(f"{overview.get('product_name')} {overview.get('product_version')}", file=out)
        for key in ("connections", "channels", "consumers", "queues", "exchanges"):
            print(f"{key}: {totals.get(key, 0)}", file=out)
        print(f"messages: {queued.get('messages', 0)}", file=out)
        print(f"alarms: {', '.join(alarms.get('alarms', [])) or 'none'}", file=out)
        failover = overview.get("failover")
        if isinstance(failover, dict):  # a failover node (docs/failover.md)
            print(_failover_line(failover), file=out)
    elif args.command == "declare":
        body: dict[str, Any] = {
            "durable": not args.transient,
            "auto_delete": args.auto_delete,
            "arguments": _arguments(args.argument),
        }
        if args.kind == "exchange":
            body["type"] = args.type
        api.call("PUT", f"/{args.kind}s/{vhost}/{_quote(args.name)}", body)
        print(f"{args.kind} declared", file=out)
    elif args.command == "delete":
        api.call("DELETE", f"/{args.kind}s/{vhost}/{_quote(args.name)}")
        print(f"{args.kind} deleted", file=out)
    elif args.command == "purge":
        api.call("DELETE", f"/queues/{vhost}/{_quote(args.name)}/contents")
        print("queue purged", file=out)
    elif args.command == "publish":
        answer = api.call(
            "POST",
            f"/exchanges/{vhost}/{_quote(args.exchange)}/publish",
            {"routing_key": args.routing_key, "payload": args.payload, "properties": {}},
        )
        print("routed" if answer.get("routed") else "not routed", file=out)
    elif args.command == "get":
        ackmode = "ack_requeue_false" if args.ack else "ack_requeue_true"
        body = {"count": args.count, "ackmode": ackmode, "encoding": "auto"}
        messages = api.call("POST", f"/queues/{vhost}/{_quote(args.queue)}/get", body)
        columns = ["routing_key", "redelivered", "payload_bytes", "payload"]
        text = json.dumps(messages, indent=1) if args.json else format_table(messages, columns)
        print(text, file=out)
    elif args.command == "export":
        definitions = json.dumps(api.call("GET", "/definitions"), indent=1)
        if args.file == "-":
            print(definitions, file=out)
        else:
            Path(args.file).write_text(definitions + "\n")
    elif args.command == "import":
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        try:
            definitions = json.loads(text)
        except ValueError as e:
            raise CtlError(f"{args.file}: not JSON ({e})") from None
        api.call("POST", "/definitions", definitions)
        print("definitions imported", file=out)
    elif args.command == "backup":
        bar = ctl_ops.progress_bar(out, "backing up")
        try:
            size = api.download("/backup", Path(args.file), bar)
        finally:
            if bar is not None:
                bar.finish()
        print(f"backed up {size} bytes to {args.file}", file=out)


def _failover_line(failover: dict[str, Any]) -> str:
    """`moorage status`'s line for a failover node: role, epoch, then lag and witness (a
    replicated pair) or the lease (shared storage)."""
    parts = [f"failover: {failover.get('role')}, epoch {failover.get('epoch')}"]
    if failover.get("mode") == "shared-storage":
        parts.append(
            f"shared storage, lease {failover.get('lease_seconds')} s "
            f"({failover.get('lease_remaining')} s left), node {failover.get('node')}"
        )
    if "confirms" in failover:
        parts.append(
            f"confirms {failover['confirms']}, standby {failover.get('standby') or 'none'}, "
            f"lag {failover.get('lag_batches')} batches ({failover.get('lag_seconds')} s)"
        )
    witness = failover.get("witness")
    if witness:
        reachable = failover.get("witness_reachable")
        seen = "not asked yet" if reachable is None else "reachable" if reachable else "unreachable"
        parts.append(f"witness {witness} {seen}")
    return "; ".join(parts)


def main(argv: list[str]) -> int:
    """Entry for `moorage <command>` (see `moorage --help`); returns the exit status."""
    try:
        run(build_parser().parse_args(argv))
    except CtlError as e:
        print(f"moorage: {e}", file=sys.stderr)
        return 1
    return 0
