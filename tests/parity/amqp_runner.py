"""Run AMQP 0-9-1 scenarios against a broker and record what it answers.

Theory of operation
-------------------
A scenario (`tests/parity/amqp_scenarios.py`) is data: a list of steps, each
sending raw frames (pamqp methods, content, or bytes) on one of several
connections. The runner drives a broker through them with blocking sockets
and writes down every frame the broker sends back, in order, as JSON-ready
events::

    {"conn": 0, "send": "Queue.Declare", "ch": 1, "args": {...}}    what we sent
    {"conn": 0, "ch": 1, "recv": "Channel.Close", "reply_code": 404, ...}
    {"conn": 0, "closed_by": "server"}                            the socket ended

When to stop reading is never a matter of time: after a synchronous method
the runner reads until that method's reply, a `channel.close` on its
channel, a `connection.close` or the end of the socket; asynchronous
deliveries, returns and confirms are awaited with an explicit `Expect(n)`
step. The runner answers a server's `channel.close` and `connection.close`
with close-ok at once, as every client library does, so "channel reuse after
a server-side close" is the next step of a scenario. At the end it closes
each connection that is still open (recording the close-ok).

Names the server makes up (`amq.gen-...`, `amq.ctag-...`) and the
human-readable reply texts are kept in the transcript; comparisons mask the
made-up names and compare reply codes, class and method ids, scope (channel
or connection) and which side closed, but not reply texts (`COMPARED_OUT`).

Every queue and exchange a scenario declares is deleted before and after it
runs, so recording against a long-lived RabbitMQ is repeatable.

Recording (see `tests/parity/README.md`)::

    python -m tests.parity.amqp_runner record --port 5672 [--only NAME ...]
    python -m tests.parity.amqp_runner diff --port 5672     # compare, write nothing
    python -m tests.parity.amqp_runner diff --moorage       # an in-process Moorage
    python -m tests.parity.amqp_runner mark --moorage --only NAME --reason "..."
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import socket
import struct
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pamqp import body as pamqp_body
from pamqp import commands, frame, heartbeat
from pamqp import header as pamqp_header
from pamqp.base import Frame

from tests.helpers import Closed, RawClient

TRANSCRIPTS = Path(__file__).parent / "transcripts" / "amqp"
READ_TIMEOUT = 10.0  # seconds a step may wait for an answer before it records a timeout

# Fields of received methods that are recorded but not compared.
COMPARED_OUT = frozenset(
    {"text", "server_properties", "mechanisms", "locales", "known_hosts", "channel_id"}
)

_MADE_UP = re.compile(r"\bamq\.(gen|ctag)-[A-Za-z0-9_\-.]+")


# -- steps ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Connect:
    """Open connection `conn` (handshake, then channel 1 unless `channel` is 0)."""

    conn: int = 0
    channel_max: int | None = None
    frame_max: int | None = None
    user: str = "guest"
    password: str = "guest"
    vhost: str = "/"
    channel: int = 1
    record_handshake: bool = False


@dataclass(frozen=True)
class Send:
    """Send one method frame; wait for its reply if it is synchronous."""

    ch: int
    method: Frame
    conn: int = 0
    wait: bool = True


@dataclass(frozen=True)
class Publish:
    """basic.publish with its content header and body frames (`frame_size`: body octets
    per body frame, default one frame)."""

    ch: int
    exchange: str = ""
    routing_key: str = ""
    body: bytes = b"m"
    properties: commands.Basic.Properties = field(default_factory=commands.Basic.Properties)
    mandatory: bool = False
    immediate: bool = False
    conn: int = 0
    frame_size: int = 0
    body_size: int | None = None  # declared size in the header, when it must lie


@dataclass(frozen=True)
class Raw:
    """Send bytes as they are (a malformed frame); `wait` for the server's answer."""

    data: bytes
    conn: int = 0
    note: str = ""
    wait: bool = True


@dataclass(frozen=True)
class Expect:
    """Read `count` methods (with their content) that arrive on their own."""

    count: int = 1
    conn: int = 0


@dataclass(frozen=True)
class Hangup:
    """Close connection `conn`'s socket without a connection.close."""

    conn: int = 0


Step = Connect | Send | Publish | Raw | Expect | Hangup


@dataclass(frozen=True)
class Scenario:
    name: str
    doc: str
    steps: tuple[Step, ...]

    def declared(self) -> tuple[set[str], set[str]]:
        """(queues, exchanges) this scenario may create: cleaned before and after."""
        queues: set[str] = set()
        exchanges: set[str] = set()
        for step in self.steps:
            if isinstance(step, Send):
                m = step.method
                if isinstance(m, commands.Queue.Declare) and m.queue:
                    queues.add(m.queue)
                elif isinstance(m, commands.Exchange.Declare) and m.exchange:
                    exchanges.add(m.exchange)
        return queues, exchanges


def scenario(name: str, doc: str, *steps: Step, connect: Connect | None = None) -> Scenario:
    """A scenario that starts with connection 0 and channel 1 open (or `connect`)."""
    return Scenario(name, doc, (connect or Connect(), *steps))


# -- running ----------------------------------------------------------------------------------


def _value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {str(k): _value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_value(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _fields(method: Frame) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in method:
        if key == "ticket" or key.startswith("_"):
            continue
        if key == "server_properties":  # only what names the broker, not the machine
            value = {k: value[k] for k in ("product", "version") if k in value}
        out["text" if key == "reply_text" else key] = _value(value)
    return out


class _Connection:
    def __init__(self, host: str, port: int, conn: int, events: list[dict[str, Any]]) -> None:
        self.client = RawClient(port, timeout=READ_TIMEOUT, host=host)
        self.conn = conn
        self.events = events
        self.open = True
        self.closing = False  # we answered a connection.close; the server hangs up next

    def send(self, channel: int, value: Frame) -> None:
        self.client.send_frame(channel, value)

    def _record(self, event: dict[str, Any]) -> None:
        self.events.append({"conn": self.conn, **event})

    def read(self) -> tuple[int, Frame] | None:
        """Next method (content attached to deliver/get-ok/return); None at EOF/timeout."""
        while True:
            try:
                channel, value = self.client.read_frame()
            except (Closed, ConnectionResetError, BrokenPipeError):
                self._ended("server")
                return None
            except TimeoutError:
                self._record({"timeout": True})
                return None
            if isinstance(value, heartbeat.Heartbeat):
                continue
            if isinstance(value, pamqp_header.ContentHeader | pamqp_body.ContentBody):
                self._record({"ch": channel, "recv": type(value).__name__})
                continue
            event: dict[str, Any] = {"ch": channel, "recv": value.name, **_fields(value)}
            if isinstance(
                value, commands.Basic.Deliver | commands.Basic.GetOk | commands.Basic.Return
            ):
                event["body"] = self._content()
            self._record(event)
            if isinstance(value, commands.Channel.Close):
                self.send(channel, commands.Channel.CloseOk())
            elif isinstance(value, commands.Connection.Close):
                self.send(0, commands.Connection.CloseOk())
                self.closing = True
            return channel, value

    def _content(self) -> str | None:
        try:
            content_header = self.client.expect(pamqp_header.ContentHeader)
            body = b""
            while len(body) < content_header.body_size:
                body += self.client.expect(pamqp_body.ContentBody).value
        except (Closed, TimeoutError, AssertionError):
            return None
        return body.decode(errors="replace")

    def _ended(self, by: str) -> None:
        if self.open:
            self.open = False
            self._record({"closed_by": by})
            self.client.close()

    def wait_reply(self, channel: int, replies: Iterable[str]) -> None:
        """Read until a reply in `replies` on `channel`, a close, or the end."""
        wanted = set(replies)
        while self.open:
            got = self.read()
            if got is None:
                return
            number, value = got
            if isinstance(value, commands.Connection.Close):
                self.drain()
                return
            if number == channel and (
                value.name in wanted or isinstance(value, commands.Channel.Close)
            ):
                return

    def drain(self) -> None:
        """After answering connection.close: read until the server hangs up."""
        while self.open and self.read() is not None:
            pass

    def handshake(self, step: Connect) -> None:
        record = step.record_handshake
        self.client.send(pamqp_header.ProtocolHeader().marshal())
        start = self._expect(commands.Connection.Start, record)
        if start is None:
            return
        self.send(
            0,
            commands.Connection.StartOk(
                client_properties={
                    "product": "moorage-parity-runner",
                    "capabilities": {
                        "authentication_failure_close": True,
                        "consumer_cancel_notify": True,
                        "publisher_confirms": True,
                        "basic.nack": True,
                        "connection.blocked": True,
                    },
                },
                mechanism="PLAIN",
                response=f"\0{step.user}\0{step.password}",
            ),
        )
        tune = self._expect(commands.Connection.Tune, record)
        if not isinstance(tune, commands.Connection.Tune):
            return
        tune_ok = commands.Connection.TuneOk(
            channel_max=tune.channel_max if step.channel_max is None else step.channel_max,
            frame_max=tune.frame_max if step.frame_max is None else step.frame_max,
            heartbeat=0,
        )
        if record:
            self._record({"send": tune_ok.name, "ch": 0, "args": _fields(tune_ok)})
        self.send(0, tune_ok)
        self.send(0, commands.Connection.Open(virtual_host=step.vhost))
        if self._expect(commands.Connection.OpenOk, record) is None:
            return
        if step.channel:
            self.send(step.channel, commands.Channel.Open())
            self._expect(commands.Channel.OpenOk, record)

    def _expect(self, kind: type[Frame], record: bool) -> Frame | None:
        """The next method if it is a `kind`; anything else is recorded and ends the handshake."""
        mark = len(self.events)
        got = self.read()
        if got is None:
            return None
        value = got[1]
        if isinstance(value, kind):
            if not record:
                del self.events[mark:]
            return value
        if isinstance(value, commands.Connection.Close):
            self.drain()
        return None

    def close(self) -> None:
        """End of the scenario: connection.close if the connection is still open."""
        if not self.open:
            return
        if self.closing:
            self.drain()
            return
        close = commands.Connection.Close(200, "bye", 0, 0)
        self._record({"send": close.name, "ch": 0})
        self.send(0, close)
        self.client_closed()

    def client_closed(self) -> None:
        """We sent connection.close: after close-ok, the client hangs up (spec 2.2.4)."""
        self.wait_reply(0, ["Connection.CloseOk"])
        if self.open:
            self._ended("client")


def run(scenario_: Scenario, host: str, port: int) -> list[dict[str, Any]]:
    """Drive a broker through `scenario_`; the events it produced, in order."""
    events: list[dict[str, Any]] = []
    conns: dict[int, _Connection] = {}
    queues, exchanges = scenario_.declared()
    _clean(host, port, queues, exchanges)
    try:
        for step in scenario_.steps:
            if isinstance(step, Connect):
                conns[step.conn] = _Connection(host, port, step.conn, events)
                conns[step.conn].handshake(step)
                continue
            c = conns[step.conn]
            if not c.open:
                events.append({"conn": step.conn, "skipped": type(step).__name__})
                continue
            _perform(c, step)
    finally:
        for c in conns.values():
            with contextlib.suppress(OSError):
                c.close()
        _clean(host, port, queues, exchanges)
    return events


def _perform(c: _Connection, step: Step) -> None:
    """Carry out one step other than Connect on connection `c`."""
    if isinstance(step, Send):
        _send(c, step)
    elif isinstance(step, Publish):
        _publish(c, step)
    elif isinstance(step, Raw):
        _raw(c, step)
    elif isinstance(step, Expect):
        for _ in range(step.count):
            if c.read() is None:
                break
    elif isinstance(step, Hangup):
        c._record({"closed_by": "client"})
        c.open = False
        c.client.close()


def _transmit(c: _Connection, data: bytes) -> bool:
    """Send bytes; False (and the end recorded) when the server already hung up."""
    try:
        c.client.send(data)
    except OSError:
        c._ended("server")
        return False
    return True


def _send(c: _Connection, step: Send) -> None:
    m = step.method
    c._record({"send": m.name, "ch": step.ch, "args": _fields(m)})
    if not _transmit(c, frame.marshal(m, step.ch)):
        return
    if isinstance(m, commands.Connection.Close):
        c.client_closed()
    elif step.wait and m.synchronous and not getattr(m, "nowait", False):
        c.wait_reply(step.ch, m.valid_responses)


def _publish(c: _Connection, step: Publish) -> None:
    body = step.body
    size = len(body) if step.body_size is None else step.body_size
    method = commands.Basic.Publish(
        exchange=step.exchange,
        routing_key=step.routing_key,
        mandatory=step.mandatory,
        immediate=step.immediate,
    )
    args = _fields(method) | {"body_octets": len(body)}
    if step.frame_size:
        args["frame_size"] = step.frame_size
    c._record({"send": method.name, "ch": step.ch, "args": args})
    data = frame.marshal(method, step.ch) + frame.marshal(
        pamqp_header.ContentHeader(0, size, step.properties), step.ch
    )
    chunk = step.frame_size or max(len(body), 1)
    for at in range(0, len(body), chunk):
        data += frame.marshal(pamqp_body.ContentBody(body[at : at + chunk]), step.ch)
    _transmit(c, data)


def _raw(c: _Connection, step: Raw) -> None:
    c._record({"send": "raw", "note": step.note, "hex": step.data.hex()})
    if not _transmit(c, step.data) or not step.wait:
        return
    while c.open and (got := c.read()) is not None:
        if isinstance(got[1], commands.Connection.Close):
            c.drain()
            return
        if isinstance(got[1], commands.Channel.Close):
            return


def _clean(host: str, port: int, queues: set[str], exchanges: set[str]) -> None:
    """Delete what a scenario may leave behind (durable entities survive on RabbitMQ)."""
    if not queues and not exchanges:
        return
    events: list[dict[str, Any]] = []
    c = _Connection(host, port, 0, events)
    c.handshake(Connect())
    for name in sorted(queues):
        if not name.startswith("amq."):
            _perform(c, Send(1, commands.Queue.Delete(queue=name)))
    for name in sorted(exchanges):
        if name and not name.startswith("amq."):
            _perform(c, Send(1, commands.Exchange.Delete(exchange=name)))
    c.close()


# -- transcripts ------------------------------------------------------------------------------


def normalise(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What is compared: made-up names masked, reply texts and server details left out."""
    out = []
    for event in events:
        text = json.dumps({k: v for k, v in event.items() if k not in COMPARED_OUT})
        out.append(json.loads(_MADE_UP.sub(lambda m: f"amq.{m.group(1)}-*", text)))
    return out


def transcript_path(name: str) -> Path:
    return TRANSCRIPTS / f"{name}.json"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(transcript_path(name).read_text())
    return data


def expected_for_moorage(transcript: dict[str, Any]) -> list[dict[str, Any]]:
    """RabbitMQ's events, or Moorage's where the transcript marks a deliberate difference."""
    difference = transcript.get("moorage")
    return normalise(difference["events"] if difference else transcript["events"])


def write(scenario_: Scenario, events: list[dict[str, Any]], broker: str) -> None:
    """Write a transcript, keeping the deliberate-difference section of the old one."""
    path = transcript_path(scenario_.name)
    old = json.loads(path.read_text()) if path.exists() else {}
    data: dict[str, Any] = {
        "scenario": scenario_.name,
        "doc": scenario_.doc,
        "recorded_from": broker,
        "events": events,
    }
    if "moorage" in old:
        data["moorage"] = old["moorage"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")


def diff(expected: list[dict[str, Any]], actual: list[dict[str, Any]]) -> Iterator[str]:
    """Lines of a readable diff of two normalised event lists."""
    import difflib

    yield from difflib.unified_diff(
        [json.dumps(e, sort_keys=True) for e in expected],
        [json.dumps(e, sort_keys=True) for e in actual],
        "transcript",
        "broker",
        lineterm="",
    )


def _server_version(host: str, port: int) -> str:
    with contextlib.closing(socket.create_connection((host, port), timeout=READ_TIMEOUT)) as sock:
        sock.sendall(pamqp_header.ProtocolHeader().marshal())
        buf = b""
        while len(buf) < 7 or len(buf) < 8 + struct.unpack_from(">I", buf, 3)[0]:
            data = sock.recv(65536)
            if not data:
                break
            buf += data
        _, _, start = frame.unmarshal(buf)
    props = start.server_properties
    return f"{_value(props.get('product'))} {_value(props.get('version'))}"


def mark(scenario_: Scenario, events: list[dict[str, Any]], reason: str) -> None:
    """Mark a deliberate difference: Moorage's `events` and why, kept beside RabbitMQ's."""
    path = transcript_path(scenario_.name)
    data = json.loads(path.read_text())
    data["moorage"] = {"reason": reason, "events": events}
    path.write_text(json.dumps(data, indent=1) + "\n")


@contextlib.contextmanager
def _in_process_moorage() -> Iterator[int]:
    """An in-process Moorage with the scenarios' users; yields its AMQP port."""
    import tempfile

    from tests.helpers import RunningBroker, make_config, make_user
    from tests.parity.amqp_scenarios import NOPERM_USER, PARITY_PERMISSIONS, PARITY_USER

    with tempfile.TemporaryDirectory() as data_dir:
        config = make_config(
            Path(data_dir),
            make_user(*PARITY_USER, {"/": PARITY_PERMISSIONS}),
            make_user(*NOPERM_USER),
        )
        running = RunningBroker(config).start()
        try:
            yield running.port
        finally:
            running.stop()


def main(argv: list[str] | None = None) -> int:
    """record: write transcripts from the broker; diff: compare with them, write nothing;
    mark: store the broker's (Moorage's) answers as a deliberate difference with --reason."""
    from tests.parity.amqp_scenarios import SCENARIOS

    parser = argparse.ArgumentParser(prog="python -m tests.parity.amqp_runner")
    parser.add_argument("command", choices=["record", "diff", "mark"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5672)
    parser.add_argument("--moorage", action="store_true", help="run an in-process Moorage")
    parser.add_argument("--only", nargs="*", default=None, help="scenario names")
    parser.add_argument("--reason", default="", help="why Moorage differs (mark)")
    args = parser.parse_args(argv)
    if args.command == "mark" and not (args.moorage and args.only and args.reason):
        parser.error("mark needs --moorage, --only and --reason")
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(_in_process_moorage()) if args.moorage else args.port
        broker = _server_version(args.host, port)
        changed = 0
        for sc in SCENARIOS:
            if args.only and sc.name not in args.only:
                continue
            events = run(sc, args.host, port)
            if args.command == "mark":
                mark(sc, events, args.reason)
                continue
            old = load(sc.name) if transcript_path(sc.name).exists() else {"events": []}
            expected = expected_for_moorage(old) if args.moorage else normalise(old["events"])
            lines = list(diff(expected, normalise(events)))
            if lines:
                changed += 1
                print(f"== {sc.name}")
                print("\n".join(lines))
            if args.command == "record":
                if args.moorage:
                    parser.error("record writes RabbitMQ's answers: not with --moorage")
                write(sc, events, broker)
    print(f"{broker}: {changed} transcript(s) differ")
    return 1 if changed and args.command == "diff" else 0


if __name__ == "__main__":
    # Run the imported module's main, so the scenarios' step classes are this module's.
    from tests.parity import amqp_runner

    sys.exit(amqp_runner.main())
