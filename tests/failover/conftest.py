from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.failover.cluster import Node, Witness


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
