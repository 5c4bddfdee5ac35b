"""Moorage answers every recorded AMQP scenario as RabbitMQ 3.10 did.

Each scenario of `tests/parity/amqp_scenarios.py` runs against an in-process
Moorage over real sockets and raw frames; what comes back (methods, reply
codes, scope, which side closed) must equal the committed transcript that
was recorded from a live RabbitMQ with `python -m tests.parity.amqp_runner
record` (see `tests/parity/README.md`). Where a transcript carries a
`moorage` section, Moorage deliberately differs: it is compared with that
section instead, and the difference is listed in `docs/amqp-differences.md`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import RunningBroker, make_config, make_user
from tests.parity.amqp_runner import (
    TRANSCRIPTS,
    diff,
    expected_for_moorage,
    load,
    normalise,
    run,
    transcript_path,
)
from tests.parity.amqp_scenarios import NOPERM_USER, PARITY_PERMISSIONS, PARITY_USER, SCENARIOS

DIFFERENCES_DOC = Path(__file__).parents[2] / "docs" / "amqp-differences.md"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def moorage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    """One broker for every scenario (each cleans up what it declares)."""
    config = make_config(
        tmp_path_factory.mktemp("parity"),
        make_user(*PARITY_USER, {"/": PARITY_PERMISSIONS}),
        make_user(*NOPERM_USER),
    )
    running = RunningBroker(config).start()
    yield running
    running.stop()
    assert not running.errors, running.errors


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_moorage_answers_as_recorded(moorage: RunningBroker, scenario: object) -> None:
    from tests.parity.amqp_runner import Scenario

    assert isinstance(scenario, Scenario)
    assert transcript_path(scenario.name).exists(), "record it: see tests/parity/README.md"
    expected = expected_for_moorage(load(scenario.name))
    actual = normalise(run(scenario, "127.0.0.1", moorage.port))
    assert actual == expected, "\n".join(diff(expected, actual))


def test_every_transcript_has_a_scenario_and_came_from_rabbitmq() -> None:
    names = {s.name for s in SCENARIOS}
    recorded = {p.stem for p in TRANSCRIPTS.glob("*.json")}
    assert recorded == names
    assert len(recorded) >= 150
    for name in recorded:
        assert load(name)["recorded_from"].startswith("RabbitMQ 3.10"), name


def test_every_deliberate_difference_has_a_reason_and_is_documented() -> None:
    doc = DIFFERENCES_DOC.read_text()
    for scenario in SCENARIOS:
        difference = load(scenario.name).get("moorage")
        if difference is not None:
            assert difference.get("reason"), scenario.name
            assert f"`{scenario.name}`" in doc, f"{scenario.name} missing from {DIFFERENCES_DOC}"
