"""The AMQP codec stands alone: importing it loads neither the core nor the store."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_importing_the_codec_loads_no_core_and_no_store():
    """In a fresh interpreter: `moorage.broker` and `moorage.storage` stay unloaded
    (pamqp is allowed: the AMQP codec is built on it)."""
    script = (
        "import sys\n"
        "import moorage.protocols.amqp091.codec\n"
        "loaded = sorted(m for m in sys.modules\n"
        "                if m.split('.')[:2] in (['moorage', 'broker'], ['moorage', 'storage']))\n"
        "print(loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_the_field_table_leaf_imports_nothing_from_moorage():
    """`moorage/field_table.py` is shared by the codec and the core only because it
    depends on neither (its docstring says why it lives there)."""
    tree = ast.parse((ROOT / "moorage" / "field_table.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    assert not {name for name in imported if name.startswith(("moorage", "."))}
