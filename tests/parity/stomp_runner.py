"""STOMP parity: raw frames against a broker, answers recorded as normalised frames.

The STOMP half of `stream_runner`: it cuts the byte stream into frames with
an independent little parser (command, headers as sent, body by
`content-length` or up to the NUL), says which answer a sent frame waits for
(CONNECTED for CONNECT/STOMP, the RECEIPT a `receipt` header asks for; an
ERROR always ends the wait), and masks what each broker makes up:
`server`, `session`, `message-id`, the 1.2 `ack` id, `timestamp`; ERROR
`message` headers and bodies are human texts, kept in the transcript and
left out of the comparison (like AMQP reply texts).

The transcripts' `events` come from RabbitMQ 3.10's STOMP plugin, the
reference CI compares Moorage with: its destinations (`/queue/`, `/topic/`,
`/exchange/`, `/amq/queue/`) are Moorage's. ActiveMQ 5.17's answers to the
same frames are kept beside them under `also_recorded.activemq`, for
people migrating from it (see `docs/stomp-differences.md`).

    python -m tests.parity.stomp_runner record --port 61613 --amqp-port 5672
    python -m tests.parity.stomp_runner record --port 61613 --as activemq
    python -m tests.parity.stomp_runner diff --moorage
"""

from __future__ import annotations

import contextlib
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.parity.stream_runner import (
    READ_TIMEOUT,
    SENT_SHOWN,
    ConnectionState,
    Event,
    Runner,
    Transcripts,
    command_line,
    printable,
)
from tests.parity.stream_runner import in_process_moorage as stream_moorage

TRANSCRIPTS = Path(__file__).parent / "transcripts" / "stomp"

# Headers whose values the broker makes up: compared as present, not by value.
MADE_UP = frozenset({"server", "session", "message-id", "timestamp"})
# Texts for people: the ERROR's `message` header (compared as present) and body.
ERROR_TEXTS = frozenset({"message"})
# Deliberate differences in every transcript (docs/stomp-differences.md, "Everywhere"):
# RabbitMQ copies a SEND's frame-level `receipt` and `transaction` headers onto the
# MESSAGE, and puts `version` on every ERROR; Moorage does neither, and names the frame
# that caused an ERROR with `receipt-id`, as STOMP 1.2 says it should. An ERROR's
# `content-length` is the length of its text.
NOT_COMPARED = {
    "MESSAGE": frozenset({"receipt", "transaction"}),
    "ERROR": frozenset({"version", "receipt-id", "content-length"}),
}


_SERVER_NAMED = re.compile(r"\bamq\.gen-[A-Za-z0-9_\-.]+")


def frame(command: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    """A STOMP frame as bytes: headers written as given (no escaping: the caller's bytes)."""
    lines = [command, *(f"{k}:{v}" for k, v in (headers or {}).items())]
    return ("\n".join(lines) + "\n\n").encode() + body + b"\0"


class StompDialect:
    """STOMP frames for `stream_runner`."""

    name = "stomp"
    error_kinds = frozenset({"ERROR"})
    delivery_kinds = frozenset({"MESSAGE"})

    def parse(
        self, buffer: bytes, state: ConnectionState | None = None
    ) -> tuple[Event | None, int] | None:
        if buffer.startswith(b"\r\n"):
            return None, 2
        if buffer.startswith(b"\n"):
            return None, 1
        end = buffer.find(b"\n\n")
        crlf = buffer.find(b"\r\n\r\n")
        if crlf != -1 and (end == -1 or crlf < end):
            end, gap = crlf, 4
        else:
            gap = 2
        if end == -1:
            return None
        head = buffer[:end].decode("utf-8", errors="backslashreplace").replace("\r", "")
        command, *lines = head.split("\n")
        headers: dict[str, str] = {}
        repeated: list[list[str]] = []
        for line in lines:
            key, _, value = line.partition(":")
            if key in headers:
                repeated.append([key, value])
            else:
                headers[key] = value
        start = end + gap
        length = headers.get("content-length")
        if length is not None and length.isdigit():
            stop = start + int(length)
            if len(buffer) < stop + 1:
                return None
        else:
            stop = buffer.find(b"\0", start)
            if stop == -1:
                return None
        event: Event = {"recv": command, "headers": headers}
        if repeated:
            event["repeated"] = repeated
        event["body"] = printable(buffer[start:stop])
        if buffer[stop : stop + 1] != b"\0":
            event["no_nul"] = True
        return event, stop + 1

    def describe(self, data: bytes, state: ConnectionState | None = None) -> Event:
        command = data.split(b"\n", 1)[0][:40].decode("utf-8", errors="backslashreplace")
        return {"send": command or "(empty)", "frame": printable(data, SENT_SHOWN)}

    def replies(self, data: bytes) -> tuple[str, ...]:
        parsed = self.parse(data)
        if parsed is None or parsed[0] is None:
            return ()
        event = parsed[0]
        if event["recv"] in ("CONNECT", "STOMP"):
            return ("CONNECTED",)
        if "receipt" in event["headers"]:
            return ("RECEIPT",)
        return ()

    def observe(self, event: Event, state: ConnectionState) -> None:
        if event["recv"] == "MESSAGE":
            headers = event["headers"]
            state.memory["ack"] = headers.get("ack", headers.get("message-id", ""))
            state.memory.setdefault("acks", []).append(state.memory["ack"])

    def goodbye(self) -> tuple[bytes, tuple[str, ...]]:
        return frame("DISCONNECT", {"receipt": "bye"}), ("RECEIPT",)

    def normalise(self, event: Event) -> Event | None:
        if "headers" not in event:  # a heart-beat, or bytes left when the socket ended
            return event
        dropped = NOT_COMPARED.get(event["recv"], frozenset())
        headers = {k: v for k, v in event["headers"].items() if k not in dropped}
        for key in MADE_UP & headers.keys():
            headers[key] = "*"
        for key, value in headers.items():  # server-named queues (temporary queues)
            headers[key] = _SERVER_NAMED.sub("amq.gen-*", value)
        if event["recv"] == "MESSAGE" and "ack" in headers:
            headers["ack"] = "*"
        out: Event = {k: v for k, v in event.items() if k not in ("headers", "body")}
        if event["recv"] == "ERROR":
            for key in ERROR_TEXTS & headers.keys():
                headers[key] = "*"
            out["headers"] = headers
            return out
        out["headers"] = headers
        out["body"] = event["body"]
        return out


def last_ack(state: ConnectionState) -> str:
    """The ack id (1.2) or message-id (1.0, 1.1) of the last MESSAGE on this connection."""
    return str(state.memory.get("ack", ""))


def ack_of(index: int, state: ConnectionState) -> str:
    """The ack id of the `index`-th MESSAGE received on this connection."""
    acks: list[str] = state.memory.get("acks", [])
    return acks[index] if index < len(acks) else ""


def server_version(host: str, port: int) -> str:
    """Name and version from a CONNECTED frame's `server` header."""
    with contextlib.closing(socket.create_connection((host, port), timeout=READ_TIMEOUT)) as sock:
        sock.sendall(
            frame(
                "CONNECT",
                {"accept-version": "1.2", "host": "/", "login": "guest", "passcode": "guest"},
            )
        )
        buf = b""
        while b"\0" not in buf:
            data = sock.recv(65536)
            if not data:
                break
            buf += data
    for line in buf.decode(errors="replace").split("\n"):
        if line.startswith("server:"):
            return line.removeprefix("server:").replace("/", " ")
    return "unknown"


@contextlib.contextmanager
def in_process_moorage() -> Iterator[int]:
    """An in-process Moorage (`stream_runner.in_process_moorage`); yields its STOMP port."""
    with stream_moorage() as ports:
        yield ports["stomp"]


def runner() -> Runner:
    from tests.parity.stomp_scenarios import SCENARIOS

    return Runner(
        prog="python -m tests.parity.stomp_runner",
        transcripts=STOMP_TRANSCRIPTS,
        scenarios=SCENARIOS,
        references=("rabbitmq", "activemq"),
        moorage=in_process_moorage,
        version=server_version,
    )


STOMP_TRANSCRIPTS = Transcripts(TRANSCRIPTS, StompDialect())


def main(argv: list[str] | None = None) -> int:
    return command_line(runner(), argv)


if __name__ == "__main__":
    from tests.parity import stomp_runner

    sys.exit(stomp_runner.main())
