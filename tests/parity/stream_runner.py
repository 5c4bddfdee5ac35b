"""Scripted exchanges of raw frames over one TCP stream, for STOMP and MQTT parity.

Theory of operation
-------------------
A scenario is data: a list of steps that open sockets, send bytes and read
what the broker answers. The protocol-specific part is a `Dialect`: it cuts
the byte stream into frames (`parse`), says which answer a sent frame waits
for (`replies`), names what was sent for the transcript (`describe`), masks
what the broker makes up (`normalise`) and says goodbye at the end
(`goodbye`). Everything else — sockets, reading, transcripts on disk, the
`record`/`diff`/`mark` command line — is shared here, in the shape of
`tests/parity/amqp_runner.py`.

When to stop reading is never a matter of time: a sent frame that has an
answer (a STOMP frame with a `receipt` header, CONNECT, an MQTT SUBSCRIBE,
PINGREQ, a QoS 1 PUBLISH...) reads until that answer, an error frame or the
end of the socket; anything the broker sends on its own (a MESSAGE, an MQTT
PUBLISH to a subscriber) is awaited with an explicit `Expect(n)`; a broker
that closes on its own (a keep-alive timeout) is awaited with `ExpectClose`.
A missing answer shows up as a `timeout` event after `READ_TIMEOUT` seconds,
so a difference costs time but never hangs.

Events, in order, as JSON-ready dicts::

    {"conn": 0, "send": "SUBSCRIBE", "frame": "SUBSCRIBE\\nid:1\\n..."}   what we sent
    {"conn": 0, "recv": "RECEIPT", "headers": {"receipt-id": "r1"}}      what came back
    {"conn": 0, "closed_by": "server"}                                  the socket ended
"""

from __future__ import annotations

import contextlib
import difflib
import json
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

READ_TIMEOUT = 5.0  # seconds a step may wait for an answer before it records a timeout
# The packet size limit of the reference brokers (Mosquitto's `max_packet_size`) and of
# the Moorage the transcripts are replayed against (`limits.max_message_size` plus the
# 64 KiB Moorage allows MQTT for topic and properties).
PACKET_LIMIT = 1024 * 1024

Event = dict[str, Any]


# -- steps ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Open:
    """Open TCP connection `conn` (no protocol handshake: that is a `Send`)."""

    conn: int = 0


@dataclass(frozen=True)
class Send:
    """Send bytes (or bytes made from what this connection received so far).

    `wait`: the kinds of answer to read up to; None asks the dialect (the
    frame's own answer), an empty tuple reads nothing.
    """

    data: bytes | Callable[[ConnectionState], bytes]
    conn: int = 0
    wait: tuple[str, ...] | None = None
    note: str = ""


@dataclass(frozen=True)
class Expect:
    """Wait for `count` deliveries (frames the broker sends on its own), counting those
    already read while an earlier step waited for its answer: the transcript keeps the
    order they came in, the step only makes sure they came."""

    count: int = 1
    conn: int = 0


@dataclass(frozen=True)
class ExpectClose:
    """Read (and record) frames until the broker closes the socket.

    `within`: how long to wait for that, when the close is the broker's own timer
    (a keep-alive) rather than an answer: Mosquitto checks keep-alives every few
    seconds, not to the millisecond, so those scenarios give it room.
    """

    conn: int = 0
    within: float = READ_TIMEOUT


@dataclass(frozen=True)
class ExpectHeartbeat:
    """Read until the broker sends a heart-beat (STOMP EOL), recording other frames."""

    conn: int = 0


@dataclass(frozen=True)
class Hangup:
    """Close connection `conn`'s socket without a goodbye."""

    conn: int = 0


Step = Open | Send | Expect | ExpectClose | ExpectHeartbeat | Hangup


@dataclass(frozen=True)
class Scenario:
    """A named list of steps; `queues`: to delete before and after (over AMQP).

    Answers that arrive together (between two sent frames) are compared as a
    set per kind: a RECEIPT and a MESSAGE racing each other may come in either
    order, MESSAGEs keep theirs. `ordered` compares the exact order, for the
    scenarios about it (a SUBSCRIBE's RECEIPT before its first MESSAGE).
    """

    name: str
    doc: str
    steps: tuple[Step, ...]
    queues: tuple[str, ...] = ()
    ordered: bool = False  # compare the order of answers that arrive together


@dataclass
class ConnectionState:
    """What a connection has seen, for steps whose bytes depend on it (MQTT packet ids)."""

    memory: dict[str, Any] = field(default_factory=dict)


class Dialect(Protocol):
    """The protocol-specific half of a runner."""

    name: str
    error_kinds: frozenset[str]  # frames after which a broker usually closes
    delivery_kinds: frozenset[str]  # frames a broker sends on its own (counted for `Expect`)

    def parse(self, buffer: bytes, state: ConnectionState) -> tuple[Event | None, int] | None:
        """One frame off the front of `buffer`: (event, bytes used); the event is None for a
        heart-beat. None when more bytes are needed."""
        ...

    def describe(self, data: bytes, state: ConnectionState) -> Event:
        """What a sent frame is, for the transcript (and what it tells of the connection,
        such as the protocol version a CONNECT asks for)."""
        ...

    def replies(self, data: bytes) -> tuple[str, ...]:
        """The kinds of answer the frame in `data` waits for (empty: none)."""
        ...

    def observe(self, event: Event, state: ConnectionState) -> None:
        """Remember what later steps may need (packet ids) from a received frame."""
        ...

    def goodbye(self) -> tuple[bytes, tuple[str, ...]] | None:
        """What ends a connection cleanly at the end of a scenario, and its answer."""
        ...

    def normalise(self, event: Event) -> Event | None:
        """The compared form of an event (made-up values masked); None leaves it out."""
        ...


# -- running ----------------------------------------------------------------------------------


class _Connection:
    def __init__(self, host: str, port: int, conn: int, events: list[Event], dialect: Dialect):
        self.sock = socket.create_connection((host, port), timeout=READ_TIMEOUT)
        self.conn = conn
        self.events = events
        self.dialect = dialect
        self.buffer = b""
        self.open = True
        self.state = ConnectionState()
        self.unclaimed = 0  # deliveries read while waiting for something else

    def record(self, event: Event) -> None:
        self.events.append({"conn": self.conn, **event})

    def ended(self, by: str) -> None:
        if self.open:
            self.open = False
            self.record({"closed_by": by})
            with contextlib.suppress(OSError):
                self.sock.close()

    def transmit(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
        except OSError:
            self.ended("server")
            return False
        return True

    def read(self, *, heartbeat: bool = False) -> Event | None:
        """The next frame (recorded); None at the end of the socket or a timeout.

        Heart-beats are skipped unless `heartbeat`, when one is recorded and returned.
        """
        while self.open:
            parsed = self.dialect.parse(self.buffer, self.state)
            if parsed is not None:
                event, used = parsed
                self.buffer = self.buffer[used:]
                if event is None:
                    if heartbeat:
                        self.record({"recv": "heart-beat"})
                        return {"recv": "heart-beat"}
                    continue
                self.dialect.observe(event, self.state)
                self.record(event)
                if event["recv"] in self.dialect.delivery_kinds:
                    self.unclaimed += 1
                return event
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                self.record({"timeout": True})
                return None
            except OSError:
                data = b""
            if not data:
                if self.buffer:
                    self.record({"recv": "truncated", "hex": self.buffer.hex()})
                    self.buffer = b""
                self.ended("server")
                return None
            self.buffer += data
        return None

    def read_until(self, kinds: Sequence[str]) -> None:
        """Read until a frame of `kinds`, an error frame, the end of the socket or a timeout."""
        stop = set(kinds) | self.dialect.error_kinds
        while (event := self.read()) is not None:
            if event["recv"] in stop:
                return

    def close_at_end(self) -> None:
        if not self.open:
            return
        goodbye = self.dialect.goodbye()
        if goodbye is not None:
            data, answer = goodbye
            self.record(self.dialect.describe(data, self.state))
            if not self.transmit(data):
                return
            if answer:
                self.read_until(answer)
        # After a goodbye the broker hangs up; record that (or what else it sent).
        while self.open and self.read() is not None:
            pass


def run(scenario: Scenario, host: str, port: int, dialect: Dialect) -> list[Event]:
    """Drive a broker through `scenario`; the events it produced, in order."""
    events: list[Event] = []
    conns: dict[int, _Connection] = {}
    try:
        for step in scenario.steps:
            if isinstance(step, Open):
                conns[step.conn] = _Connection(host, port, step.conn, events, dialect)
                continue
            c = conns[step.conn]
            if not c.open:
                events.append({"conn": step.conn, "skipped": type(step).__name__})
                continue
            _perform(c, step)
    finally:
        for c in conns.values():
            with contextlib.suppress(OSError):
                c.close_at_end()
    return events


def _perform(c: _Connection, step: Step) -> None:
    if isinstance(step, Send):
        data = step.data(c.state) if callable(step.data) else step.data
        sent = c.dialect.describe(data, c.state)
        if callable(step.data):
            sent["uses_received"] = True  # holds ids the broker made up: not compared
        if step.note:
            sent["note"] = step.note
        c.record(sent)
        if not c.transmit(data):
            return
        wait = c.dialect.replies(data) if step.wait is None else step.wait
        if wait:
            c.read_until(wait)
    elif isinstance(step, Expect):
        while c.unclaimed < step.count and c.read() is not None:
            pass
        c.unclaimed = max(0, c.unclaimed - step.count)
    elif isinstance(step, ExpectClose):
        c.sock.settimeout(step.within)
        while c.open and c.read() is not None:
            pass
        if c.open:
            c.sock.settimeout(READ_TIMEOUT)
    elif isinstance(step, ExpectHeartbeat):
        while (event := c.read(heartbeat=True)) is not None and event["recv"] != "heart-beat":
            pass
    elif isinstance(step, Hangup):
        c.record({"closed_by": "client"})
        c.open = False
        c.sock.close()


# -- transcripts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transcripts:
    """The transcript folder of one protocol and the reference broker CI compares with."""

    folder: Path
    dialect: Dialect

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def load(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.path(name).read_text())
        return data

    def normalise(self, events: list[Event], ordered: bool = False) -> list[Event]:
        """What is compared: made-up values masked, texts for people left out, and
        (unless `ordered`) each run of answers sorted stably by `_arrival_group`."""
        out: list[Event] = []
        run_start = 0
        for event in events:
            if event.get("uses_received"):
                event = {k: v for k, v in event.items() if k != "frame"}
            compared = self.dialect.normalise(event) if "recv" in event else event
            if compared is None:
                continue
            if "recv" not in compared:
                run_start = len(out) + 1
            out.append(compared)
            if not ordered and "recv" in compared:
                out[run_start:] = sorted(out[run_start:], key=_arrival_group)
        return out

    def expected_for_moorage(
        self, transcript: dict[str, Any], ordered: bool = False
    ) -> list[Event]:
        """The reference broker's events, or Moorage's where a difference is marked."""
        difference = transcript.get("moorage")
        events = difference["events"] if difference else transcript["events"]
        return self.normalise(events, ordered)

    def write(self, scenario: Scenario, events: list[Event], broker: str, key: str) -> None:
        """Store `events` under `key` ("events": the compared reference; else a second one)."""
        path = self.path(scenario.name)
        data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        data["scenario"] = scenario.name
        data["doc"] = scenario.doc
        if key == "events":
            data["recorded_from"] = broker
            data["events"] = events
        else:
            data.setdefault("also_recorded", {})[key] = {"broker": broker, "events": events}
        ordered = {k: data[k] for k in ("scenario", "doc", "recorded_from", "events") if k in data}
        ordered.update({k: v for k, v in data.items() if k not in ordered})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(ordered, indent=1) + "\n")

    def mark(self, scenario: Scenario, events: list[Event], reason: str) -> None:
        """Mark a deliberate difference: Moorage's `events` and why, beside the reference."""
        data = self.load(scenario.name)
        data["moorage"] = {"reason": reason, "events": events}
        self.path(scenario.name).write_text(json.dumps(data, indent=1) + "\n")


def _arrival_group(event: Event) -> tuple[int, str, str]:
    """What answers that arrive together are sorted by: connection, kind and (STOMP) the
    subscription: two subscriptions' MESSAGEs have no order between them, one's do."""
    headers = event.get("headers") or {}
    return event["conn"], event["recv"], str(headers.get("subscription", ""))


def diff(expected: list[Event], actual: list[Event]) -> Iterator[str]:
    """Lines of a readable diff of two normalised event lists."""
    yield from difflib.unified_diff(
        [json.dumps(e, sort_keys=True) for e in expected],
        [json.dumps(e, sort_keys=True) for e in actual],
        "transcript",
        "broker",
        lineterm="",
    )


SENT_SHOWN = 512  # octets of a sent frame a transcript shows (an oversized one is cut)


def printable(data: bytes, limit: int | None = None) -> str:
    """Bytes as text for a transcript: readable ASCII, escapes for the rest; with a
    `limit`, longer data is cut there and its length told."""
    if limit is not None and len(data) > limit:
        return printable(data[:limit]) + f"... ({len(data)} octets)"
    return data.decode("utf-8", errors="backslashreplace").replace("\0", "^@")


def shown_hex(data: bytes) -> str:
    """Sent bytes as hex for a transcript, cut after `SENT_SHOWN` octets."""
    if len(data) > SENT_SHOWN:
        return data[:SENT_SHOWN].hex() + f"... ({len(data)} octets)"
    return data.hex()


# -- the command line ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Runner:
    """One protocol's runner: its scenarios, transcripts and how to reach each broker.

    `references`: the brokers a recording may come from, by short name, with a
    function that tells whether a server version string is that broker; the
    first one is the one CI compares with (its events are the transcript's
    `events`), the others are kept under `also_recorded` for people to read.
    `moorage`: a context manager yielding an in-process Moorage's port.
    `version`: asks a broker at (host, port) for its name and version.
    """

    prog: str
    transcripts: Transcripts
    scenarios: Sequence[Scenario]
    references: tuple[str, ...]
    moorage: Callable[[], contextlib.AbstractContextManager[int]]
    version: Callable[[str, int], str]


def command_line(runner: Runner, argv: list[str] | None = None) -> int:
    """record: write transcripts from a reference broker; diff: compare, write nothing;
    mark: store the in-process Moorage's answers as a deliberate difference with --reason."""
    import argparse

    parser = argparse.ArgumentParser(prog=runner.prog)
    parser.add_argument("command", choices=["record", "diff", "mark"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--as",
        dest="reference",
        choices=runner.references,
        default=runner.references[0],
        help=f"which reference broker answers on --port (compared in CI: {runner.references[0]})",
    )
    parser.add_argument("--moorage", action="store_true", help="run an in-process Moorage")
    parser.add_argument("--only", nargs="*", default=None, help="scenario names")
    parser.add_argument("--reason", default="", help="why Moorage differs (mark)")
    parser.add_argument(
        "--amqp-port",
        type=int,
        default=0,
        help="the reference broker's AMQP port: delete each scenario's queues before and after",
    )
    args = parser.parse_args(argv)
    if args.command == "mark" and not (args.moorage and args.only and args.reason):
        parser.error("mark needs --moorage, --only and --reason")
    if args.command == "record" and args.moorage:
        parser.error("record writes a reference broker's answers: not with --moorage")
    if not args.moorage and not args.port:
        parser.error("--port of the reference broker (or --moorage)")
    main_reference = args.reference == runner.references[0]
    t = runner.transcripts
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(runner.moorage()) if args.moorage else args.port
        broker = runner.version(args.host, port)
        changed = 0
        for sc in runner.scenarios:
            if args.only and sc.name not in args.only:
                continue
            _clean(args.host, args.amqp_port, sc)
            events = run(sc, args.host, port, t.dialect)
            _clean(args.host, args.amqp_port, sc)
            if args.command == "mark":
                t.mark(sc, events, args.reason)
                continue
            old = t.load(sc.name) if t.path(sc.name).exists() else {}
            if args.moorage:
                expected = t.expected_for_moorage(old, sc.ordered) if old else []
            elif main_reference:
                expected = t.normalise(old.get("events", []), sc.ordered)
            else:
                also = old.get("also_recorded", {}).get(args.reference, {})
                expected = t.normalise(also.get("events", []), sc.ordered)
            lines = list(diff(expected, t.normalise(events, sc.ordered)))
            if lines:
                changed += 1
                print(f"== {sc.name}")
                print("\n".join(lines))
            if args.command == "record":
                t.write(sc, events, broker, "events" if main_reference else args.reference)
    print(f"{broker}: {changed} transcript(s) differ")
    return 1 if changed and args.command == "diff" else 0


def _clean(host: str, amqp_port: int, scenario: Scenario) -> None:
    """Delete a scenario's queues over AMQP (durable `/queue/` queues outlive a recording)."""
    if amqp_port and scenario.queues:
        from tests.parity.amqp_runner import _clean as clean_over_amqp

        clean_over_amqp(host, amqp_port, set(scenario.queues), set())


@contextlib.contextmanager
def in_process_moorage() -> Iterator[dict[str, int]]:
    """The Moorage transcripts are replayed against: AMQP, STOMP and MQTT listeners on
    loopback, memory store, guest only, the `PACKET_LIMIT`; yields its ports by name."""
    import tempfile

    from moorage.broker.embedded import EmbeddedBroker, embedded_config

    with tempfile.TemporaryDirectory() as data_dir:
        config = embedded_config(
            protocols=("amqp", "stomp", "mqtt"),
            data_dir=data_dir,
            limits={"max_message_size": PACKET_LIMIT - 65536},
        )
        with EmbeddedBroker(config) as broker:
            yield broker.ports
