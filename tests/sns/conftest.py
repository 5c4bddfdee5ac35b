"""Fixtures of the SNS acceptance tests: a broker with the AWS listener on the test's loop,
and boto3 SNS clients (blocking, so every call runs on a worker thread).

The broker runs on the test's own event loop (`EmbeddedBroker` in `async with`),
so the HTTP subscriber and the SMTP server of `tests.sns.endpoints` run beside it
and boto3's blocking calls go through `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig

from moorage.broker.config import Config
from moorage.broker.embedded import EmbeddedBroker, embedded_config

REGION = "us-east-1"
ACCOUNT = "000000000000"


def sqs_arn(queue: str) -> str:
    return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}"


class Sns:
    """A boto3 SNS client whose calls are awaited (`await sns.publish(...)`)."""

    service = "sns"

    def __init__(self, endpoint: str, key: str = "guest", secret: str = "guest") -> None:
        self.client = boto3.client(
            self.service,  # type: ignore[call-overload]
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=BotoConfig(retries={"max_attempts": 1}),
        )

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)

        async def call(**kwargs: Any) -> Any:
            return await asyncio.to_thread(partial(method, **kwargs))

        return call


class Sqs(Sns):
    """The same for SQS (to read back what SNS delivered to queues)."""

    service = "sqs"


def aws_config(tmp_path: Path, storage: str = "memory", protocols: tuple[str, ...] = ()) -> Config:
    config = embedded_config(
        protocols=("amqp", "sqs", *protocols), storage=storage, data_dir=tmp_path / "data"
    )
    config.sns.alerts_topic = ""
    return config


@pytest.fixture
async def aws(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedBroker, Sns]]:
    """A broker with AMQP and the AWS listener, and a boto3 SNS client as guest."""
    async with EmbeddedBroker(aws_config(tmp_path)) as eb:
        sns = Sns(f"http://127.0.0.1:{eb.ports['sqs']}")
        try:
            yield eb, sns
        finally:
            sns.client.close()
