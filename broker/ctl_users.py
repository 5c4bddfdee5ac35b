"""`moorage user|permissions|topic-permissions`: users and permissions from a shell.

rabbitmqctl's verbs over the management API (`broker.ctl.Api`):

    moorage user add NAME [PASSWORD] [--tags a,b]   (no PASSWORD: read a line from stdin)
    moorage user passwd NAME [PASSWORD]
    moorage user tags NAME [TAG ...]                (none: clear the tags)
    moorage user delete NAME
    moorage user list
    moorage permissions set USER CONFIGURE WRITE READ      (on --vhost, default /)
    moorage permissions clear USER
    moorage topic-permissions set USER EXCHANGE WRITE READ
    moorage topic-permissions clear USER [EXCHANGE]

A password read from stdin stays out of the process list and shell history.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any, Protocol

COMMANDS = frozenset({"user", "permissions", "topic-permissions"})


class _Api(Protocol):
    def call(self, method: str, path: str, body: Any = None) -> Any: ...


def add_parsers(commands: Any) -> None:
    """Add the user and permission subcommands to `moorage`'s subparsers."""
    user = commands.add_parser("user", help="add, change, delete and list users")
    verbs = user.add_subparsers(dest="verb", required=True)
    add = verbs.add_parser("add", help="create a user (or replace its password and tags)")
    add.add_argument("name")
    add.add_argument("new_password", nargs="?", help="omit to read it from standard input")
    add.add_argument("--tags", default="", help="comma-separated, e.g. administrator")
    passwd = verbs.add_parser("passwd", help="change a user's password")
    passwd.add_argument("name")
    passwd.add_argument("new_password", nargs="?", help="omit to read it from standard input")
    tags = verbs.add_parser("tags", help="set a user's tags (none: clear them)")
    tags.add_argument("name")
    tags.add_argument("tags", nargs="*")
    delete = verbs.add_parser("delete", help="delete a user")
    delete.add_argument("name")
    verbs.add_parser("list", help="list users and their tags")

    permissions = commands.add_parser("permissions", help="set or clear a user's permissions")
    verbs = permissions.add_subparsers(dest="verb", required=True)
    set_ = verbs.add_parser("set", help="configure/write/read patterns on --vhost")
    set_.add_argument("name")
    for key in ("configure", "write", "read"):
        set_.add_argument(key)
    clear = verbs.add_parser("clear", help="take the user's permissions on --vhost away")
    clear.add_argument("name")

    topics = commands.add_parser("topic-permissions", help="set or clear topic permissions")
    verbs = topics.add_subparsers(dest="verb", required=True)
    set_ = verbs.add_parser("set", help="write/read routing-key patterns on an exchange")
    set_.add_argument("name")
    set_.add_argument("exchange")
    set_.add_argument("write")
    set_.add_argument("read")
    clear = verbs.add_parser("clear", help="every exchange's, or one exchange's")
    clear.add_argument("name")
    clear.add_argument("exchange", nargs="?")


def _password(args: argparse.Namespace) -> str:
    if args.new_password is not None:
        return str(args.new_password)
    return sys.stdin.readline().rstrip("\r\n")


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def run(args: argparse.Namespace, api: _Api, out: Any) -> None:
    """Carry out one user or permission command (errors come from `api` as CtlError)."""
    vhost = _q(args.vhost)
    if args.command == "user":
        path = f"/users/{_q(args.name)}" if args.verb != "list" else "/users"
        if args.verb == "add":
            tags = [t for t in args.tags.split(",") if t]
            api.call("PUT", path, {"password": _password(args), "tags": tags})
            print(f"user '{args.name}' added", file=out)
        elif args.verb == "passwd":
            current = api.call("GET", path)
            api.call("PUT", path, {"password": _password(args), "tags": current.get("tags", [])})
            print(f"password of '{args.name}' changed", file=out)
        elif args.verb == "tags":
            api.call("GET", path)  # 404 for an unknown user rather than creating one
            api.call("PUT", path, {"tags": args.tags})
            print(f"tags of '{args.name}' set", file=out)
        elif args.verb == "delete":
            api.call("DELETE", path)
            print(f"user '{args.name}' deleted", file=out)
        else:
            users = api.call("GET", path)
            if args.json:
                print(json.dumps(users, indent=1), file=out)
            for user in users if not args.json else []:
                print(f"{user['name']}  [{', '.join(user['tags'])}]", file=out)
    elif args.command == "permissions":
        path = f"/permissions/{vhost}/{_q(args.name)}"
        if args.verb == "set":
            body = {"configure": args.configure, "write": args.write, "read": args.read}
            api.call("PUT", path, body)
            print(f"permissions of '{args.name}' on '{args.vhost}' set", file=out)
        else:
            api.call("DELETE", path)
            print(f"permissions of '{args.name}' on '{args.vhost}' cleared", file=out)
    else:
        path = f"/topic-permissions/{vhost}/{_q(args.name)}"
        if args.verb == "set":
            body = {"exchange": args.exchange, "write": args.write, "read": args.read}
            api.call("PUT", path, body)
            print(f"topic permissions of '{args.name}' on '{args.exchange}' set", file=out)
        else:
            query = f"?exchange={_q(args.exchange)}" if args.exchange else ""
            api.call("DELETE", path + query)
            print(f"topic permissions of '{args.name}' cleared", file=out)
