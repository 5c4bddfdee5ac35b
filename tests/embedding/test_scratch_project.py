"""Acceptance: another project installs Moorage's wheel and tests with the fixture and pika alone.

A fresh virtualenv outside the repository gets `pip install <a copy of this
tree>` (a wheel, not an editable install) plus pika and pytest; a scratch
folder holding nothing but one test file runs there with pytest. The same
venv shows the namespace promise: `import broker` fails, `import moorage`
works, and a codec imports no core.

It needs a package index (the configured one may be local). When pip cannot
reach any, the test is skipped with pip's own words, except under CI
(`CI` set), where a missing index is a failure: this test is the proof
that the wheel works, and CI must run it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIP_TIMEOUT = 600  # a wheel build plus aiohttp, pamqp, uvloop, pika and pytest, on a busy machine
RUN_TIMEOUT = 300

pytestmark = [pytest.mark.slow, pytest.mark.timeout(PIP_TIMEOUT + 3 * RUN_TIMEOUT)]

SCRATCH_TEST = """
import pika


def test_publish_and_consume(moorage_broker):
    connection = pika.BlockingConnection(pika.URLParameters(moorage_broker.amqp_url))
    channel = connection.channel()
    channel.queue_declare("scratch")
    channel.basic_publish("", "scratch", b"hello from a scratch project")
    received = []
    channel.basic_consume(
        "scratch", lambda ch, method, properties, body: received.append(body), auto_ack=True
    )
    connection.process_data_events(time_limit=0)
    for _ in range(200):
        if received:
            break
        connection.process_data_events(time_limit=0.05)
    assert received == [b"hello from a scratch project"]
    connection.close()
"""

# what a copy of the tree leaves out: environments, caches, build output, VCS
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "__pycache__",
    "*.egg-info",
    "build",
    "dist",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "data",
)


class ScratchVenv:
    """A virtualenv in a temporary folder; runs its Python outside the repository."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        venv.create(folder, with_pip=True)
        self.python = folder / "bin" / "python"

    def run(
        self, *args: str, cwd: Path, timeout: float = RUN_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
        env.pop("VIRTUAL_ENV", None)
        return subprocess.run(
            [str(self.python), *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _without_index(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the scratch-project test, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> tuple[ScratchVenv, Path]:
    """(a venv with Moorage's wheel, pika and pytest installed; a folder outside the tree)."""
    base = tmp_path_factory.mktemp("scratch")
    source = base / "moorage-src"
    shutil.copytree(ROOT, source, symlinks=True, ignore=NOT_SOURCE)
    env = ScratchVenv(base / "venv")
    outside = base / "project"
    outside.mkdir()

    probe = env.run(
        "-m", "pip", "download", "--no-deps", "-d", str(base / "probe"), "pika", cwd=outside
    )
    if probe.returncode != 0:
        _without_index(f"pip cannot reach a package index:\n{probe.stdout}{probe.stderr}")

    install = env.run(
        "-m", "pip", "install", str(source), "pika", "pytest", cwd=outside, timeout=PIP_TIMEOUT
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return env, outside


def test_a_scratch_project_tests_with_the_fixture_and_pika(scratch: tuple[ScratchVenv, Path]):
    env, project = scratch
    (project / "test_scratch.py").write_text(textwrap.dedent(SCRATCH_TEST))
    result = env.run("-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=project)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "1 passed" in output, output


def test_only_the_moorage_namespace_is_installed(scratch: tuple[ScratchVenv, Path]):
    env, outside = scratch
    for bare in ("broker", "storage", "protocols", "bench"):
        result = env.run("-c", f"import {bare}", cwd=outside)
        assert result.returncode != 0, f"import {bare} worked in the scratch venv"
        assert "ModuleNotFoundError" in result.stderr, result.stderr
    result = env.run("-c", "import moorage, moorage.testing; print(moorage.__file__)", cwd=outside)
    assert result.returncode == 0, result.stderr
    installed = Path(result.stdout.strip())
    assert env.folder in installed.parents  # the wheel's copy, not this tree
    entry_point = (
        "from importlib.metadata import entry_points;"
        "print(entry_points(group='pytest11', name='moorage'))"
    )
    result = env.run("-c", entry_point, cwd=outside)
    assert "moorage.testing" in result.stdout, result.stdout + result.stderr


STANDALONE = (
    "import sys, moorage.protocols.{codec}.codec; assert 'moorage.broker' not in sys.modules"
)


@pytest.mark.parametrize("codec", ["amqp091", "mqtt", "stomp"])
def test_a_codec_imports_no_core(scratch: tuple[ScratchVenv, Path], codec: str):
    env, outside = scratch
    result = env.run("-c", STANDALONE.format(codec=codec), cwd=outside)
    assert result.returncode == 0, result.stderr


def test_the_mqtt_and_stomp_codecs_import_no_pamqp(scratch: tuple[ScratchVenv, Path]):
    env, outside = scratch
    for codec in ("mqtt", "stomp"):
        code = f"import sys, moorage.protocols.{codec}.codec; assert 'pamqp' not in sys.modules"
        result = env.run("-c", code, cwd=outside)
        assert result.returncode == 0, f"{codec}: {result.stderr}"
