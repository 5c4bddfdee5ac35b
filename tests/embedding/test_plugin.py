"""The pytest plugin `moorage.testing`, run the way another project runs it: a pytest subprocess.

The project under test is a folder of its own (no conftest, no settings), so
its tests see only what the plugin provides. Where this environment has
Moorage installed with its `pytest11` entry point the plugin loads by
itself; otherwise (a tree not yet reinstalled) it is named with `-p`. The
entry point itself is proven by `test_scratch_project.py`, which installs
the wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import moorage.testing

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 300

PROJECT_TESTS = """
import asyncio

import aio_pika
import pika
import pytest


def test_publish_and_consume(moorage_broker):
    connection = pika.BlockingConnection(pika.URLParameters(moorage_broker.amqp_url))
    channel = connection.channel()
    channel.queue_declare("plugin")
    channel.basic_publish("", "plugin", b"from the fixture")
    for _ in range(200):
        method, _properties, body = channel.basic_get("plugin", auto_ack=True)
        if method is not None:
            break
        connection.sleep(0.05)
    assert body == b"from the fixture"
    connection.close()


def test_every_protocol_listens(moorage_broker):
    assert set(moorage_broker.urls) == {"amqp", "mqtt", "stomp"}
    assert moorage_broker.stomp_url.startswith("stomp://guest:guest@127.0.0.1:")


@pytest.mark.parametrize("moorage_broker", [{"storage": "sqlite"}], indirect=True)
def test_indirect_settings(moorage_broker):
    assert moorage_broker.config.storage.backend == "sqlite"


def test_factory(moorage_broker_factory):
    first = moorage_broker_factory(protocols=["stomp"])
    second = moorage_broker_factory(loop="uvloop")
    assert list(first.urls) == ["stomp"]
    assert first.ports["stomp"] != second.ports["amqp"]


async def test_from_an_async_test(moorage_broker):
    connection = await aio_pika.connect(moorage_broker.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue("async-plugin")


def test_a_loop_error_fails_the_test(moorage_broker):
    def boom():
        raise RuntimeError("boom seen by the plugin")

    moorage_broker.call(moorage_broker.loop.call_soon, boom)
    moorage_broker.call(lambda: None)
"""


def run_pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in `project` with this tree's code, the plugin loaded as an installed one is."""
    plugin_args = (
        [] if entry_points(group="pytest11", name="moorage") else ["-p", "moorage.testing"]
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *plugin_args, *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def test_fixtures_in_another_project(tmp_path: Path):
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    (tmp_path / "test_project.py").write_text(textwrap.dedent(PROJECT_TESTS))
    result = run_pytest(tmp_path, "-q", "-rA")
    output = result.stdout + result.stderr
    # the last test's call passes; its teardown, where the plugin checks the loop, errors
    assert "6 passed, 1 error" in output, output
    assert "ERROR at teardown of test_a_loop_error_fails_the_test" in output, output
    assert "boom seen by the plugin" in output, output


def test_plugin_import_is_cheap():
    """Loading the plugin (every pytest run where Moorage is installed) imports no broker."""
    code = "import sys, moorage.testing; assert 'moorage.broker' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=RUN_TIMEOUT)


def test_plugin_changes_nothing_for_tests_that_do_not_ask():
    """No command-line options and no autouse fixtures: other projects see no difference."""
    hooks = [name for name in vars(moorage.testing) if name.startswith("pytest_")]
    assert hooks == []
    for name in ("moorage_broker", "moorage_broker_factory"):
        marker = getattr(moorage.testing, name)._fixture_function_marker
        assert not marker.autouse
        assert marker.scope == "function"
