from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.failover.cluster import Node, Witness

LOG_TAIL = 20_000  # characters of each process's log shown with a failure


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """A failed test shows the end of every node's and witness's log (`<name>.log` in its
    `tmp_path`): the processes run apart, and their logs say why a pair did not sync."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if not report.failed or not isinstance(tmp_path, Path):
        return
    for log in sorted(tmp_path.glob("*.log")):
        text = log.read_text(errors="replace")
        report.sections.append((f"{report.when}: {log.name}", text[-LOG_TAIL:]))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Callable[..., tuple[Node, Node, Witness | None]]]:
    """`cluster(witness=False)`: two nodes (not started) and, if asked, a started witness.

    Every process is killed at teardown."""
    made: list[Node | Witness] = []

    def make(witness: bool = False, **node_options: Any) -> tuple[Node, Node, Witness | None]:
        a = Node(tmp_path, "a", **node_options)
        b = Node(tmp_path, "b", **node_options)
        made.extend((a, b))
        w = None
        if witness:
            w = Witness(tmp_path).start()
            made.append(w)
        return a, b, w

    yield make
    for process in made:
        process.kill()
