"""``moorage bench``: one front end over the AMQP, MQTT and STOMP benchmarks.

    moorage bench amqp  [options]        # bench/amqp_bench.py
    moorage bench mqtt  [options]        # bench/mqtt_bench.py
    moorage bench stomp [options]        # bench/stomp_bench.py
    moorage bench conn  [options]        # idle-connection memory and connect rate
    moorage bench paging [options]       # the 1,000,000-message durable queue check
    moorage bench sqs [options]          # SQS through boto3 and raw HTTP, beside moto
    moorage bench --protocol mqtt ...    # the same as ``moorage bench mqtt ...``

Every throughput subcommand also takes ``--compare HOST:PORT``: after measuring the
first broker (``--spawn``, or ``--host/--port``) it runs the same scenario against the
second one, back to back, and prints both rows and the ratio first/second.

Each protocol is two modules: ``<name>_options.py`` (the command line, light to
import, so that ``--help`` and bad flags are answered at once) and
``<name>_bench.py`` (the client and the run), imported once the flags are valid.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from dataclasses import asdict
from types import ModuleType
from typing import Any

from moorage.bench.errors import BenchError, UsageError
from moorage.bench.loopback import require_loopback
from moorage.bench.results import (
    Result,
    compare_table,
    delivery_ratio,
    format_self_test,
    format_table,
)

PROTOCOLS = ("amqp", "mqtt", "stomp")
COMMANDS = (*PROTOCOLS, "conn", "paging", "sqs")


def _options_module(name: str) -> ModuleType:
    """``<name>_options``: Options, build_parser, options_from."""
    return importlib.import_module(f"moorage.bench.{name}_options")


def _bench_module(name: str) -> ModuleType:
    """``<name>_bench``: self_test, run, run_spawned."""
    return importlib.import_module(f"moorage.bench.{name}_bench")


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


def run_protocol(name: str, argv: list[str]) -> int:
    """Parse, run one or two measurements, print; exit status like the AMQP tool."""
    options = _options_module(name)
    parser = options.build_parser()
    parser.prog = f"moorage bench {name}"
    parser.add_argument(
        "--compare",
        type=_address,
        metavar="HOST:PORT",
        help="also run the scenario against this broker and print both and the ratio",
    )
    parser.add_argument(
        "--compare-name", metavar="NAME", help="label of the --compare broker in the output"
    )
    args = parser.parse_args(argv)
    try:
        opts = options.options_from(args)
        module = _bench_module(name)
        if args.self_test:
            report = module.self_test(opts.count or 100_000, opts)
            print(json.dumps(report) if opts.json else format_self_test(report))
            return 0
        second_opts = None
        if args.compare:
            second_opts = dataclasses.replace(opts, host=args.compare[0], port=args.compare[1])
            require_loopback(second_opts.host)
        if args.spawn:
            first = module.run_spawned(opts, args.loop, args.spawn_store)
        else:
            first = module.run(opts, args.loop)
        results = [first]
        if second_opts is not None:
            second = module.run(second_opts, args.loop)
            if args.compare_name:
                second.broker = args.compare_name
            results.append(second)
    except BenchError as e:
        print(f"moorage bench {name}: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except KeyboardInterrupt:
        return 130
    _print(results, opts.json)
    return 0 if all(r.complete for r in results) else 1


def _print(results: list[Result], as_json: bool) -> None:
    if as_json:
        doc: dict[str, Any] = {"results": [asdict(r) for r in results]}
        if len(results) == 2 and results[1].delivered_per_s:
            doc["ratio"] = round(delivery_ratio(results[0], results[1]), 3)
        print(json.dumps(doc if len(results) > 1 else doc["results"][0]))
        return
    for r in results:
        print(format_table(r))
    if len(results) == 2:
        print(compare_table(*results))


def main(argv: list[str] | None = None) -> int:
    """``moorage bench ...``; see the module docstring."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--protocol" in argv and (not argv or argv[0] not in COMMANDS):
        i = argv.index("--protocol")
        if i + 1 >= len(argv) or argv[i + 1] not in PROTOCOLS:
            print("moorage bench: --protocol takes amqp, mqtt or stomp", file=sys.stderr)
            return 2
        name = argv[i + 1]
        argv = [name, *argv[:i], *argv[i + 2 :]]
    if not argv or argv[0] not in COMMANDS:
        if argv and argv[0] in ("-h", "--help"):
            print(__doc__)
            return 0
        print(
            "usage: moorage bench {amqp,mqtt,stomp,conn,paging,sqs} [options] "
            "(or --protocol amqp|mqtt|stomp); --help on each",
            file=sys.stderr,
        )
        return 2
    name, rest = argv[0], argv[1:]
    if name in PROTOCOLS:
        return run_protocol(name, rest)
    if name == "conn":
        from moorage.bench import conn_bench

        return conn_bench.main(rest)
    if name == "sqs":
        from moorage.bench import sqs_bench

        return sqs_bench.main(rest)
    from moorage.bench import paging_bench

    return paging_bench.main(rest)
