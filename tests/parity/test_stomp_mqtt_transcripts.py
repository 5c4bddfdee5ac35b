"""Moorage answers every recorded STOMP and MQTT scenario as the reference brokers did.

Each scenario of `tests/parity/stomp_scenarios.py` and `mqtt_scenarios.py`
runs against one in-process Moorage over real sockets and raw frames; what
comes back (frames, their headers or fields, which side closed) must equal
the committed transcript, recorded from RabbitMQ 3.10's STOMP plugin and
from Mosquitto 2.0 with `python -m tests.parity.stomp_runner record` and
`python -m tests.parity.mqtt_runner record` (see `tests/parity/README.md`).
Where a transcript carries a `moorage` section, Moorage deliberately
differs: it is compared with that section instead, and the difference is
listed with its reason in `docs/stomp-differences.md` or
`docs/mqtt-differences.md`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.parity.mqtt_runner import MQTT_TRANSCRIPTS
from tests.parity.mqtt_scenarios import SCENARIOS as MQTT_SCENARIOS
from tests.parity.stomp_runner import STOMP_TRANSCRIPTS
from tests.parity.stomp_scenarios import SCENARIOS as STOMP_SCENARIOS
from tests.parity.stream_runner import Scenario, Transcripts, diff, in_process_moorage, run

DOCS = Path(__file__).parents[2] / "docs"
PROTOCOLS = {
    "stomp": (STOMP_TRANSCRIPTS, STOMP_SCENARIOS, "RabbitMQ 3.10", DOCS / "stomp-differences.md"),
    "mqtt": (MQTT_TRANSCRIPTS, MQTT_SCENARIOS, "mosquitto 2.0", DOCS / "mqtt-differences.md"),
}
CASES = [(p, s) for p, (_, scenarios, _, _) in PROTOCOLS.items() for s in scenarios]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def ports() -> Iterator[dict[str, int]]:
    """One broker for every scenario (names are unique per scenario, nothing is shared)."""
    with in_process_moorage() as ports:
        yield ports


@pytest.mark.parametrize(("protocol", "scenario"), CASES, ids=[f"{p}-{s.name}" for p, s in CASES])
def test_moorage_answers_as_recorded(
    ports: dict[str, int], protocol: str, scenario: Scenario
) -> None:
    transcripts: Transcripts = PROTOCOLS[protocol][0]
    assert transcripts.path(scenario.name).exists(), "record it: see tests/parity/README.md"
    expected = transcripts.expected_for_moorage(transcripts.load(scenario.name), scenario.ordered)
    events = run(scenario, "127.0.0.1", ports[protocol], transcripts.dialect)
    actual = transcripts.normalise(events, scenario.ordered)
    assert actual == expected, "\n".join(diff(expected, actual))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_transcript_has_a_scenario_and_came_from_the_reference(protocol: str) -> None:
    transcripts, scenarios, reference, _ = PROTOCOLS[protocol]
    names = {s.name for s in scenarios}
    recorded = {p.stem for p in transcripts.folder.glob("*.json")}
    assert recorded == names
    assert len(recorded) >= 40
    for name in recorded:
        assert transcripts.load(name)["recorded_from"].startswith(reference), name


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_deliberate_difference_has_a_reason_and_is_documented(protocol: str) -> None:
    transcripts, scenarios, _, doc_path = PROTOCOLS[protocol]
    doc = doc_path.read_text()
    for scenario in scenarios:
        difference = transcripts.load(scenario.name).get("moorage")
        if difference is not None:
            assert difference.get("reason"), scenario.name
            assert f"`{scenario.name}`" in doc, f"{scenario.name} missing from {doc_path}"
