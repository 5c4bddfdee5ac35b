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


def _layer(module: str) -> str:
    """The part of Moorage a dotted module name belongs to: `moorage.broker.x` -> `broker`."""
    parts = module.split(".")
    return parts[1] if parts[0] == "moorage" and len(parts) > 1 else parts[0]


def module_level_imports(path: Path) -> set[str]:
    """Layers imported at module level (not inside functions): `broker`, `protocols`, ..."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {_layer(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(_layer(node.module))
        elif isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks count too
            for child in ast.walk(node):
                if isinstance(child, ast.ImportFrom) and child.module and not child.level:
                    names.add(_layer(child.module))
    return names


def all_imports(path: Path) -> set[str]:
    """Every module name imported anywhere in the file, functions included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_everything_imports_through_the_moorage_namespace():
    """`import broker` would load a second copy of a module under another name."""
    bare = {"broker", "protocols", "storage", "bench"}
    offenders = {
        str(path.relative_to(ROOT)): sorted(n for n in all_imports(path) if n.split(".")[0] in bare)
        for folder in (*bare, "tests")
        for path in (ROOT / folder).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_checker_sees_a_namespaced_upward_import(tmp_path):
    """The checker itself: `from moorage.protocols...` in the core is an upward import."""
    module = tmp_path / "bad.py"
    module.write_text("from moorage.protocols.mqtt import codec\nimport moorage.bench.cli\n")
    assert module_level_imports(module) == {"protocols", "bench"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_upwards(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(module_level_imports(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
