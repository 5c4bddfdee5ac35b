"""The `aws` command line (PyPI awscli) against Moorage's SQS, as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import RunningBroker
from tests.sqs.conftest import REGION, endpoint

pytest.importorskip("awscli")


def _aws(broker: RunningBroker, home: Path, *args: str) -> Any:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "guest",
        "AWS_SECRET_ACCESS_KEY": "guest",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(home / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
        "AWS_PAGER": "",
        "AWS_MAX_ATTEMPTS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "awscli", "--endpoint-url", endpoint(broker), "--output", "json",
         *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.strip() else None


def test_aws_cli_round_trip(sqs_broker: RunningBroker, tmp_path: Path) -> None:
    url = _aws(sqs_broker, tmp_path, "sqs", "create-queue", "--queue-name", "cli")["QueueUrl"]
    assert url.endswith("/000000000000/cli")
    attributes = '{"k": {"DataType": "String", "StringValue": "v"}}'
    sent = _aws(sqs_broker, tmp_path, "sqs", "send-message", "--queue-url", url,
                "--message-body", "from the cli", "--message-attributes", attributes)  # fmt: skip
    assert sent["MessageId"]
    got = _aws(sqs_broker, tmp_path, "sqs", "receive-message", "--queue-url", url,
               "--message-attribute-names", "All", "--wait-time-seconds", "5")  # fmt: skip
    (message,) = got["Messages"]
    assert message["Body"] == "from the cli"
    assert message["MessageAttributes"]["k"]["StringValue"] == "v"
    _aws(sqs_broker, tmp_path, "sqs", "delete-message", "--queue-url", url,
         "--receipt-handle", message["ReceiptHandle"])  # fmt: skip
    queue = sqs_broker.call(lambda: sqs_broker.daemon.broker.vhosts["/"].queues["cli"])
    assert sqs_broker.call(lambda: queue.message_count) == 0
