"""Dependencies flow one way: protocols -> broker -> storage (DESIGN.md).

The core never imports an adapter or the benchmark at module level (the CLI
may load `bench` lazily inside a function), and storage imports neither.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"broker": {"protocols", "bench"}, "storage": {"broker", "protocols", "bench"}}


def module_level_imports(path: Path) -> set[str]:
    """Top-level package names imported at module level (not inside functions)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks count too
            for child in ast.walk(node):
                if isinstance(child, ast.ImportFrom) and child.module and not child.level:
                    names.add(child.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_upwards(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(module_level_imports(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
