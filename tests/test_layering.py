"""Dependencies flow one way: protocols -> broker -> storage (DESIGN.md), no cycles.

Rules, each counting every import statement of a file: module level, inside
`if TYPE_CHECKING:` blocks and inside functions alike (a lazy import is still
a dependency, and a `TYPE_CHECKING` one is one that mypy has to resolve):

- codecs (`protocols/*/codec.py`) stand alone: neither they nor any module
  they import, transitively within Moorage (package `__init__`s included),
  import `moorage.broker` or `moorage.storage`;
- the core imports no protocol and no benchmark; the one exception is the
  CLI's `moorage bench`, which loads `moorage.bench.cli` by name at run time
  (`importlib.import_module` inside a function, see `LAZY_LOADS`);
- the store imports neither the core, nor a protocol, nor the benchmark;
- the modules of `broker/` import each other without a cycle;
- adapters (`protocols/`) reach vhosts, queues and the store only through the
  core's API (`Broker.find_vhost`, `VirtualHost.find_queue`,
  `Broker.session_records`, the session's verbs...): no module there reads
  an attribute named `store`, `vhosts` or `queues` (`CORE_INTERNALS`), the
  few reads that are something else by that name allow-listed with the
  reason (`REACH_ALLOWED`).

The checker builds the module graph with `ast` from the folders the
`moorage.*` namespace maps (`broker/` is `moorage.broker`, ...), and is itself
tested on small fake trees written to `tmp_path`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("broker", "protocols", "storage", "bench")
FORBIDDEN = {
    "broker": {"protocols", "bench"},
    "storage": {"broker", "protocols", "bench"},
}
LAZY_LOADS = {"moorage.broker.cli": {"moorage.bench.cli"}}
"""Modules of a lower layer that a core module may load by name inside a function."""
CORE_INTERNALS = frozenset({"store", "vhosts", "queues"})
"""The core's internals an adapter must not read: `Broker.store`, `Broker.vhosts`,
`VirtualHost.queues` (and `VirtualHost.store`)."""
_NOT_A_VHOST = "a count of `broker.overview.QueueTotals`, not a vhost's queues"
REACH_ALLOWED = {
    ("moorage.protocols.management.api_overview", "queues.queues"): _NOT_A_VHOST,
    ("moorage.protocols.management.metrics", "totals.queues"): _NOT_A_VHOST,
}
"""(module, expression) -> why a read named like a core internal is not one."""


def _layer(module: str) -> str:
    """The part of Moorage a dotted module name belongs to: `moorage.broker.x` -> `broker`."""
    parts = module.split(".")
    return parts[1] if parts[0] == "moorage" and len(parts) > 1 else parts[0]


def _module_name(root: Path, path: Path) -> str:
    """`root/broker/queue.py` -> `moorage.broker.queue`; a package's `__init__` is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(("moorage", *parts))


def _imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name the file imports anywhere, relative imports resolved.

    `from a.b import c` yields both `a.b` and `a.b.c` (the latter matters
    only when `c` is a module; the graph keeps the names that are).
    """
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            elif node.module:
                source = node.module
            else:
                continue
            names.add(source)
            names |= {f"{source}.{alias.name}" for alias in node.names}
    return names


def module_graph(root: Path, layers: tuple[str, ...] = LAYERS) -> dict[str, set[str]]:
    """Moorage module -> the Moorage modules it imports (explicitly, anywhere in the file)."""
    files = {
        _module_name(root, path): path
        for layer in layers
        if (root / layer).is_dir()
        for path in sorted((root / layer).rglob("*.py"))
    }
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        imported = _imported_names(path, module)
        graph[module] = {name for name in imported if name in files and name != module}
    return graph


def _parents(module: str, graph: dict[str, set[str]]) -> set[str]:
    """The packages Python imports first to import `module` (those in the graph)."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts))} & graph.keys()


def import_chain(graph: dict[str, set[str]], start: str, forbidden: tuple[str, ...]) -> list[str]:
    """The shortest chain of imports from `start` to a module under a `forbidden` prefix
    ([] when there is none). Importing a module imports its parent packages too."""
    previous: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for module in frontier:
            if module.startswith(forbidden) and module != start:
                chain = [module]
                while (before := previous[chain[-1]]) is not None:
                    chain.append(before)
                return chain[::-1]
            for target in sorted(graph.get(module, set()) | _parents(module, graph)):
                if target not in previous:
                    previous[target] = module
                    following.append(target)
        frontier = following
    return []


def find_cycle(graph: dict[str, set[str]], prefix: str) -> list[str]:
    """One import cycle among the modules named `prefix...`, as `[a, b, ..., a]`; [] if none."""
    nodes = sorted(m for m in graph if m == prefix or m.startswith(prefix + "."))
    inside = set(nodes)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module] & inside):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return []

    for module in nodes:
        if module not in state and (cycle := visit(module)):
            return cycle
    return []


def upward_imports(root: Path, layer: str, forbidden: set[str]) -> dict[str, list[str]]:
    """Modules of `layer` that import a module of a `forbidden` layer, anywhere in the file."""
    prefixes = {f"moorage.{name}" for name in forbidden} | forbidden
    offenders: dict[str, list[str]] = {}
    for path in sorted((root / layer).rglob("*.py")):
        module = _module_name(root, path)
        bad = sorted(
            name
            for name in _imported_names(path, module)
            if any(name == p or name.startswith(p + ".") for p in prefixes)
        )
        if bad:
            offenders[module] = bad
    return offenders


def lazy_loads(root: Path, layer: str) -> dict[str, set[str]]:
    """Modules loaded by name (`importlib.import_module("...")`) in `layer`, per module,
    with `<module level>` added when such a call is not inside a function."""
    found: dict[str, set[str]] = {}
    for path in sorted((root / layer).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        in_functions = {
            id(call)
            for function in ast.walk(tree)
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
            for call in ast.walk(function)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "import_module"
            ):
                loads = found.setdefault(_module_name(root, path), set())
                target = node.args[0] if node.args else None
                if isinstance(target, ast.Constant) and isinstance(target.value, str):
                    loads.add(target.value)
                else:
                    loads.add("<computed name>")
                if id(node) not in in_functions:
                    loads.add("<module level>")
    return found


def core_reaches(root: Path, layer: str = "protocols") -> dict[str, list[str]]:
    """Reads of a `CORE_INTERNALS` attribute in `layer`: module -> ["line: expression"].

    Calling an attribute of that name (`overview.queues(broker)`) is calling a
    function, not reading a field, and is not counted. Allowed reads
    (`REACH_ALLOWED`) are left out.
    """
    found: dict[str, list[str]] = {}
    for path in sorted((root / layer).rglob("*.py")):
        module = _module_name(root, path)
        tree = ast.parse(path.read_text(), filename=str(path))
        called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in CORE_INTERNALS
                and id(node) not in called
                and (module, ast.unparse(node)) not in REACH_ALLOWED
            ):
                found.setdefault(module, []).append(f"{node.lineno}: {ast.unparse(node)}")
    return {module: sorted(reads) for module, reads in found.items()}


# -- the rules on this tree ---------------------------------------------------------

GRAPH = module_graph(ROOT)
CODECS = sorted(_module_name(ROOT, path) for path in (ROOT / "protocols").glob("*/codec.py"))


def all_imports(path: Path) -> set[str]:
    """Every absolute module name imported anywhere in the file, functions included."""
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


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_upwards(package):
    """The core imports no protocol or bench, the store nothing above it: not even lazily."""
    assert upward_imports(ROOT, package, FORBIDDEN[package]) == {}


def test_the_core_loads_only_the_bench_by_name_and_only_inside_a_function():
    assert lazy_loads(ROOT, "broker") == LAZY_LOADS


def test_no_import_cycle_in_the_core():
    assert find_cycle(GRAPH, "moorage.broker") == []


def test_every_codec_is_checked():
    assert CODECS == [
        "moorage.protocols.amqp091.codec",
        "moorage.protocols.mqtt.codec",
        "moorage.protocols.stomp.codec",
    ]


@pytest.mark.parametrize("codec", CODECS)
def test_codec_imports_neither_core_nor_store(codec):
    assert import_chain(GRAPH, codec, ("moorage.broker", "moorage.storage")) == []


def test_adapters_reach_the_core_only_through_its_api():
    """No `broker.store`, `broker.vhosts` or `vhost.queues` under protocols/."""
    assert core_reaches(ROOT) == {}


def test_every_allowed_reach_is_still_there():
    """An allow-list entry whose read went away must go too."""
    tree = {
        (_module_name(ROOT, path), ast.unparse(node))
        for path in (ROOT / "protocols").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in CORE_INTERNALS
    }
    assert set(REACH_ALLOWED) - tree == set()


# -- the checker itself, on fake trees ------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_sees_a_namespaced_upward_import(tmp_path):
    """`from moorage.protocols...` in the core is an upward import, also inside a function."""
    _write(
        tmp_path,
        {
            "broker/__init__.py": "",
            "broker/bad.py": (
                "from moorage.protocols.mqtt import codec\n"
                "def later():\n"
                "    import moorage.bench.cli\n"
            ),
            "broker/good.py": "from moorage.storage import Store\n",
        },
    )
    assert upward_imports(tmp_path, "broker", {"protocols", "bench"}) == {
        "moorage.broker.bad": [
            "moorage.bench.cli",
            "moorage.protocols.mqtt",
            "moorage.protocols.mqtt.codec",
        ]
    }


def test_checker_reports_a_cycle_through_type_checking_and_function_imports(tmp_path):
    _write(
        tmp_path,
        {
            "broker/__init__.py": "",
            "broker/a.py": "from moorage.broker.b import B\n",
            "broker/b.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from moorage.broker.c import C\n"
            ),
            "broker/c.py": "def f():\n    from . import a\n",
            "broker/d.py": "from moorage.broker import a\n",
        },
    )
    assert find_cycle(module_graph(tmp_path), "moorage.broker") == [
        "moorage.broker.a",
        "moorage.broker.b",
        "moorage.broker.c",
        "moorage.broker.a",
    ]


def test_checker_finds_no_cycle_in_a_layered_tree(tmp_path):
    _write(
        tmp_path,
        {
            "broker/__init__.py": "",
            "broker/a.py": "from moorage.broker.b import B\nfrom moorage.broker import c\n",
            "broker/b.py": "from moorage.broker.c import C\n",
            "broker/c.py": "import moorage.storage\n",
            "storage/__init__.py": "",
        },
    )
    assert find_cycle(module_graph(tmp_path), "moorage.broker") == []


def test_checker_reports_a_codec_reaching_the_core_through_another_module(tmp_path):
    _write(
        tmp_path,
        {
            "broker/__init__.py": "",
            "broker/message.py": "",
            "protocols/__init__.py": "",
            "protocols/fake/__init__.py": "",
            "protocols/fake/codec.py": "from .wire import encode\n",
            "protocols/fake/wire.py": (
                "def encode():\n    from moorage.broker.message import Message\n"
            ),
            "protocols/other/__init__.py": "from moorage.protocols.other import adapter\n",
            "protocols/other/adapter.py": "import moorage.broker\n",
            "protocols/other/codec.py": "import struct\n",
            "protocols/clean/__init__.py": "",
            "protocols/clean/codec.py": "import struct\nfrom . import frames\n",
            "protocols/clean/frames.py": "import moorage.protocols\n",
        },
    )
    graph = module_graph(tmp_path)
    core = ("moorage.broker", "moorage.storage")
    assert import_chain(graph, "moorage.protocols.fake.codec", core) == [
        "moorage.protocols.fake.codec",
        "moorage.protocols.fake.wire",
        "moorage.broker.message",
    ]
    # through its package's __init__, which Python imports first
    assert import_chain(graph, "moorage.protocols.other.codec", core) == [
        "moorage.protocols.other.codec",
        "moorage.protocols.other",
        "moorage.protocols.other.adapter",
        "moorage.broker",
    ]
    assert import_chain(graph, "moorage.protocols.clean.codec", core) == []


def test_checker_sees_a_lazy_load_outside_a_function(tmp_path):
    _write(
        tmp_path,
        {
            "broker/cli.py": (
                "import importlib\n"
                "tool = importlib.import_module('moorage.bench.cli')\n"
                "def run(name):\n"
                "    return importlib.import_module(name)\n"
            ),
        },
    )
    assert lazy_loads(tmp_path, "broker") == {
        "moorage.broker.cli": {"moorage.bench.cli", "<module level>", "<computed name>"}
    }


def test_checker_sees_an_adapter_reaching_around_the_core(tmp_path):
    """Reads of `store`, `vhosts` or `queues` anywhere in an adapter, also inside
    functions and through a chain; calls of a function of that name are not reads."""
    _write(
        tmp_path,
        {
            "protocols/fake/adapter.py": (
                "def save(self, state):\n"
                "    self.broker.store.put_session('/', 'fake', 'id', state)\n"
                "    vhost = self.broker.vhosts.get('/')\n"
                "    return session.vhost.queues.get('q'), overview.queues(self.broker)\n"
            ),
            "protocols/fake/clean.py": (
                "def save(self, state):\n"
                "    self.records.put('/', 'id', state)\n"
                "    return self.broker.find_vhost('/').find_queue('q')\n"
            ),
        },
    )
    assert core_reaches(tmp_path) == {
        "moorage.protocols.fake.adapter": [
            "2: self.broker.store",
            "3: self.broker.vhosts",
            "4: session.vhost.queues",
        ]
    }
