"""Destination parsing and the MESSAGE destination of a routed message."""

from __future__ import annotations

import pytest

from moorage.protocols.stomp.codec import ProtocolError
from moorage.protocols.stomp.destinations import (
    Destination,
    Kind,
    destination_of,
    parse_destination,
)


@pytest.mark.parametrize(
    ("text", "parsed", "target"),
    [
        ("/queue/a", Destination(Kind.QUEUE, "a"), ("", "a")),
        ("/queue/a%2Fb", Destination(Kind.QUEUE, "a/b"), ("", "a/b")),
        ("/topic/a.b", Destination(Kind.TOPIC, "", "a.b"), ("amq.topic", "a.b")),
        ("/topic/a/b", Destination(Kind.TOPIC, "", "a/b"), ("amq.topic", "a/b")),
        ("/exchange/x/k.1", Destination(Kind.EXCHANGE, "x", "k.1"), ("x", "k.1")),
        ("/exchange/x", Destination(Kind.EXCHANGE, "x", ""), ("x", "")),
        ("/amq/queue/q", Destination(Kind.AMQ_QUEUE, "q"), ("", "q")),
        ("/reply-queue/amq.gen-1", Destination(Kind.REPLY_QUEUE, "amq.gen-1"), ("", "amq.gen-1")),
        ("/temp-queue/t", Destination(Kind.TEMP_QUEUE, "t"), ("", "t")),
    ],
)
def test_parse(text: str, parsed: Destination, target: tuple[str, str]) -> None:
    assert parse_destination(text) == parsed
    assert parsed.publish_target() == target


@pytest.mark.parametrize("text", [None, "", "queue/a", "/queue/", "/queue/a/b", "/exchange/"])
def test_invalid(text: str | None) -> None:
    with pytest.raises(ProtocolError):
        parse_destination(text)


def test_activemq_wildcard_becomes_hash() -> None:
    assert parse_destination("/topic/a.>").binding_key() == "a.#"
    assert parse_destination("/topic/a.*.c").binding_key() == "a.*.c"


def test_destination_of() -> None:
    assert destination_of("", "q") == "/queue/q"
    assert destination_of("amq.topic", "a.b") == "/topic/a.b"
    assert destination_of("x", "k") == "/exchange/x/k"
