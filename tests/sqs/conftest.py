"""Fixtures of the AWS listener and SQS tests: a broker with the `sqs` listener, boto3 clients.

`sqs_client(wire)` gives a boto3 SQS client for either wire protocol. Current
botocore describes SQS with the AWS JSON 1.0 protocol only; for the Query
protocol the tests load botocore's own SQS model and switch it to `query`
with the serialization traits the Query API defines (`query_model.py`), then
register it with a botocore session as a custom model (botocore's documented
`data_loader` search path mechanism), so the client that runs is botocore's
own Query serializer and XML parser.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.config import Config as BotoConfig

from moorage.broker.config import Config
from tests.helpers import RunningBroker, free_port, make_config
from tests.sqs.query_model import write_query_model

REGION = "us-east-1"


@pytest.fixture(scope="session")
def query_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_query_model(tmp_path_factory.mktemp("botocore-models"))


def sqs_config(tmp_path: Path, *users: Any, storage: str = "memory", **kw: Any) -> Config:
    config = make_config(tmp_path, *users, **kw)
    config.ports["sqs"] = free_port()
    config.storage.backend = storage
    return config


@pytest.fixture
def sqs_broker(tmp_path: Path, start_broker: Callable[..., RunningBroker]) -> RunningBroker:
    config = sqs_config(tmp_path)
    config.ports["amqp"] = free_port()
    return start_broker(config)


def endpoint(broker: RunningBroker) -> str:
    return f"http://127.0.0.1:{broker.daemon.ports['sqs']}"


ClientFactory = Callable[..., Any]


@pytest.fixture
def make_client(query_model_dir: Path) -> Iterator[ClientFactory]:
    clients: list[Any] = []

    def make(
        broker: RunningBroker,
        wire: str = "json",
        key: str = "guest",
        secret: str = "guest",
        service: str = "sqs",
        **config: Any,
    ) -> Any:
        session = botocore.session.get_session()
        if wire == "query":
            loader = session.get_component("data_loader")
            loader.search_paths.insert(0, str(query_model_dir))
        client = boto3.Session(botocore_session=session).client(
            service,
            endpoint_url=endpoint(broker),
            region_name=REGION,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=BotoConfig(retries={"max_attempts": 1}, **config),
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


class Sqs:
    """A boto3 SQS client on a running broker, with shortcuts."""

    def __init__(self, broker: RunningBroker, client: Any, wire: str) -> None:
        self.broker = broker
        self.client = client
        self.wire = wire

    def create(self, name: str, **attributes: str) -> str:
        url: str = self.client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        return url

    def attributes(self, url: str, *names: str) -> dict[str, str]:
        reply = self.client.get_queue_attributes(
            QueueUrl=url, AttributeNames=list(names) or ["All"]
        )
        return dict(reply.get("Attributes", {}))

    def receive(self, url: str, **kw: Any) -> list[dict[str, Any]]:
        return list(self.client.receive_message(QueueUrl=url, **kw).get("Messages", []))


@pytest.fixture(params=["json", "query"])
def sqs(
    request: pytest.FixtureRequest, sqs_broker: RunningBroker, make_client: ClientFactory
) -> Sqs:
    """A client of each wire protocol on a broker with SQS and AMQP listeners."""
    return Sqs(sqs_broker, make_client(sqs_broker, request.param), request.param)


def error_code(excinfo: pytest.ExceptionInfo[Any]) -> str:
    return str(excinfo.value.response["Error"]["Code"])
