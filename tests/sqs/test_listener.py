"""The AWS listener: SigV4 authentication, both wires, dispatch to a service, error rendering."""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import unittest.mock
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest
from botocore.exceptions import ClientError

from moorage.broker.config import Config, ConfigError
from moorage.protocols.aws import server
from tests.helpers import RunningBroker, free_port, make_user
from tests.sqs import echo_service
from tests.sqs.conftest import REGION, ClientFactory, endpoint, sqs_config


@pytest.fixture
def echo(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Serve the echo stand-in as the `sqs` service (the listener imports it by name)."""
    monkeypatch.setitem(server.SERVICES, "sqs", "tests.sqs.echo_service:EchoService")
    echo_service.CALLS.clear()
    echo_service.INSTANCES.clear()
    return echo_service.CALLS


@pytest.fixture
def broker(tmp_path: Path, start_broker: Callable[..., RunningBroker], echo: Any) -> RunningBroker:
    alice = make_user("alice", "pw", {"/": (".*", ".*", ".*"), "dev": (".*", ".*", ".*")})
    alice.add_access_key("AKIAALICE", "alice-secret")
    alice.add_access_key("AKIADEV", "dev-secret", "dev")
    return start_broker(sqs_config(tmp_path, alice, vhosts=("/", "dev")))


@pytest.mark.parametrize("wire", ["json", "query"])
def test_signed_call_reaches_the_service(
    broker: RunningBroker, make_client: ClientFactory, echo: list[Any], wire: str
) -> None:
    client = make_client(broker, wire, key="AKIAALICE", secret="alice-secret")
    urls = client.list_queues()["QueueUrls"]
    assert urls == [f"{endpoint(broker)}/000000000000/alice"]
    call = echo[-1]
    assert (call.service, call.action, call.wire, call.user.name, call.vhost) == (
        "sqs",
        "ListQueues",
        wire,
        "alice",
        "/",
    )
    assert call.endpoint == endpoint(broker)
    other = make_client(broker, wire, key="AKIADEV", secret="dev-secret")
    other.list_queues()
    assert echo[-1].vhost == "dev"


def test_services_start_with_the_listener(
    broker: RunningBroker, make_client: ClientFactory, echo: list[Any]
) -> None:
    """Each registered service is made and started when the listener starts, before any
    request (SNS resumes its deliveries after a restart), once per broker."""
    (service,) = echo_service.INSTANCES
    assert (service.started, service.closed, echo) == (1, False, [])
    assert service.broker is broker.daemon.broker
    make_client(broker).list_queues()
    assert len(echo_service.INSTANCES) == 1
    assert len(echo) == 1
    broker.stop()
    assert service.closed


@pytest.mark.parametrize("wire", ["json", "query"])
def test_service_errors_in_each_wire(
    broker: RunningBroker, make_client: ClientFactory, wire: str
) -> None:
    client = make_client(broker, wire)
    with pytest.raises(ClientError) as e:
        client.get_queue_url(QueueName="nope")
    assert e.value.response["Error"]["Code"] == "AWS.SimpleQueueService.NonExistentQueue"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    # botocore's modeled exception class is found from the code on both wires
    assert isinstance(e.value, client.exceptions.QueueDoesNotExist)


@pytest.mark.parametrize("wire", ["json", "query"])
def test_bad_credentials_are_refused(
    broker: RunningBroker, make_client: ClientFactory, echo: list[Any], wire: str
) -> None:
    cases = [
        ("AKIAALICE", "wrong-secret", "SignatureDoesNotMatch", 403),
        ("AKIAUNKNOWN", "x", "InvalidClientTokenId", 403),
    ]
    for key, secret, code, status in cases:
        client = make_client(broker, wire, key=key, secret=secret)
        with pytest.raises(ClientError) as e:
            client.list_queues()
        assert e.value.response["Error"]["Code"] == code
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert echo == []


def _signed(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    key: str = "guest",
    secret: str = "guest",
    when: datetime.datetime | None = None,
) -> dict[str, str]:
    """Headers of a request signed by botocore's SigV4 at `when` (default: now)."""
    request = botocore.awsrequest.AWSRequest("POST", url, data=body, headers=headers)
    signer = botocore.auth.SigV4Auth(botocore.credentials.Credentials(key, secret), "sqs", REGION)
    if when is None:
        signer.add_auth(request)
    else:
        # a client whose clock is off: botocore signs with the time it reads here
        with unittest.mock.patch.object(botocore.auth, "get_current_datetime", return_value=when):
            signer.add_auth(request)
    return dict(request.headers.items())


async def _post(
    url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        return response.status, dict(response.headers), await response.read()


JSON_HEADERS = {
    "Content-Type": "application/x-amz-json-1.0",
    "X-Amz-Target": "AmazonSQS.ListQueues",
}
FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}


async def test_tampered_body_and_expired_timestamp(broker: RunningBroker, echo: list[Any]) -> None:
    url = endpoint(broker) + "/"
    body = b'{"QueueNamePrefix": "a"}'
    headers = _signed(url, body, dict(JSON_HEADERS))
    status, reply_headers, reply = await _post(url, b'{"QueueNamePrefix": "b"}', headers)
    assert status == 403
    assert json.loads(reply)["__type"].endswith("#SignatureDoesNotMatch")
    assert reply_headers["x-amzn-query-error"] == "SignatureDoesNotMatch;Sender"

    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=20)
    headers = _signed(url, body, dict(JSON_HEADERS), when=old)
    status, _, reply = await _post(url, body, headers)
    assert (status, json.loads(reply)["__type"].split("#")[1]) == (400, "RequestExpired")

    form = b"Action=ListQueues&Version=2012-11-05"
    headers = _signed(url, form, dict(FORM_HEADERS), when=old)
    status, _, reply = await _post(url, form, headers)
    assert status == 400
    assert b"<Code>RequestExpired</Code>" in reply
    assert b"<Type>Sender</Type>" in reply

    # still good when signed now: the same request goes through
    status, _, reply = await _post(url, body, _signed(url, body, dict(JSON_HEADERS)))
    assert status == 200, reply
    assert len(echo) == 1


async def test_unsigned_malformed_and_unknown(broker: RunningBroker, echo: list[Any]) -> None:
    url = endpoint(broker) + "/"
    status, _, reply = await _post(url, b"Action=ListQueues", dict(FORM_HEADERS))
    assert (status, b"<Code>MissingAuthenticationToken</Code>" in reply) == (403, True)

    body = b'{"QueueNamePrefix": '
    status, headers, reply = await _post(url, body, _signed(url, body, dict(JSON_HEADERS)))
    assert status == 400
    assert json.loads(reply)["__type"].endswith("#SerializationException")

    body = b"[1, 2]"
    status, _, reply = await _post(url, body, _signed(url, body, dict(JSON_HEADERS)))
    assert json.loads(reply)["__type"].endswith("#SerializationException")

    body = b"Action=ListQueues&%zz=1"
    status, _, reply = await _post(url, body, _signed(url, body, dict(FORM_HEADERS)))
    assert (status, b"<Code>MalformedQueryString</Code>" in reply) == (404, True)

    body = b"Action=Frobnicate"
    status, _, reply = await _post(url, body, _signed(url, body, dict(FORM_HEADERS)))
    assert status == 400
    assert b"<Code>InvalidAction</Code>" in reply

    body = b"Version=2012-11-05"
    status, _, reply = await _post(url, body, _signed(url, body, dict(FORM_HEADERS)))
    assert status == 400
    assert b"<Code>MissingAction</Code>" in reply

    headers = dict(JSON_HEADERS, **{"X-Amz-Target": "AmazonKinesis.ListStreams"})
    status, _, reply = await _post(url, b"{}", _signed(url, b"{}", headers))
    assert status == 400
    assert json.loads(reply)["__type"].endswith("#InvalidAction")

    # SNS is a separate branch: until its module is installed, it is not served
    request = botocore.awsrequest.AWSRequest(
        "POST", url, data=b"Action=ListTopics", headers=dict(FORM_HEADERS)
    )
    botocore.auth.SigV4Auth(
        botocore.credentials.Credentials("guest", "guest"), "nosuchservice", REGION
    ).add_auth(request)
    status, _, reply = await _post(url, b"Action=ListTopics", dict(request.headers.items()))
    assert status == 400
    assert b"<Code>InvalidAction</Code>" in reply
    assert echo == []


async def test_presigned_url(broker: RunningBroker, echo: list[Any]) -> None:
    url = endpoint(broker) + "/?Action=ListQueues&Version=2012-11-05"
    request = botocore.awsrequest.AWSRequest("GET", url)
    botocore.auth.SigV4QueryAuth(
        botocore.credentials.Credentials("guest", "guest"), "sqs", REGION, expires=60
    ).add_auth(request)
    async with aiohttp.ClientSession() as session, session.get(request.url) as response:
        assert response.status == 200, await response.text()
    assert echo[-1].action == "ListQueues"
    assert echo[-1].wire == "query"
    tampered = request.url.replace("ListQueues", "ListQueueTags")
    async with aiohttp.ClientSession() as session, session.get(tampered) as response:
        assert response.status == 403
        assert "<Code>SignatureDoesNotMatch</Code>" in await response.text()


def test_guest_key_works_from_loopback_only(
    tmp_path: Path, start_broker: Callable[..., RunningBroker], echo: list[Any]
) -> None:
    """The guest key is refused from a non-loopback address, like guest's password."""
    config = sqs_config(tmp_path)
    config.bind = "0.0.0.0"
    running = start_broker(config)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: only picks a local address
        except OSError:
            pytest.skip("no non-loopback address on this machine")
        address = probe.getsockname()[0]
    if address.startswith("127."):
        pytest.skip("no non-loopback address on this machine")
    url = f"http://{address}:{running.daemon.ports['sqs']}/"
    body = b"Action=ListQueues"

    status, _, reply = asyncio.run(_post(url, body, _signed(url, body, dict(FORM_HEADERS))))
    assert status == 403
    assert b"<Code>InvalidClientTokenId</Code>" in reply
    assert echo == []


def test_access_keys_in_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "moorage.toml"
    path.write_text(
        '[[users]]\nname = "app"\npassword = "pw"\n'
        'access_keys = [{ id = "AKIA1", secret = "s1" }, { id = "AKIA2", secret = "s2", '
        'vhost = "dev" }]\n'
    )
    directory = Config.load(path).user_directory()
    found = directory.find_access_key("AKIA2")
    assert found is not None
    user, secret = found
    assert (user.name, secret, user.access_key_vhosts) == (
        "app",
        "s2",
        {"AKIA1": "/", "AKIA2": "dev"},
    )
    assert directory.find_access_key("guest") is None  # only the built-in guest has it
    assert Config.load(None).user_directory().find_access_key("guest") is not None
    for bad in (
        'access_keys = "AKIA1"',
        'access_keys = [{ id = "AKIA1" }]',
        'access_keys = [{ id = "A", secret = "s", color = "red" }]',
    ):
        path.write_text(f'[[users]]\nname = "app"\n{bad}\n')
        with pytest.raises(ConfigError, match="access_keys"):
            Config.load(path)


def test_sqs_over_https(
    tmp_path: Path, start_broker: Callable[..., RunningBroker], make_client: ClientFactory
) -> None:
    """The TLS twin (`sqs_https`) serves the same API with the [tls] certificate, on the
    same service as the plain listener: a receipt handle got over one works on the other."""
    import boto3
    import trustme

    from tests.test_tls import write_server_cert

    ca = trustme.CA()
    config = sqs_config(tmp_path)
    config.ports["sqs_https"] = free_port()
    config.tls.cert, config.tls.key = map(str, write_server_cert(ca, tmp_path / "tls"))
    running = start_broker(config)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client = boto3.client(
        "sqs",
        endpoint_url=f"https://127.0.0.1:{running.daemon.ports['sqs_https']}",
        region_name=REGION,
        aws_access_key_id="guest",
        aws_secret_access_key="guest",
        verify=str(ca_file),
    )
    url = client.create_queue(QueueName="secure", Attributes={"VisibilityTimeout": "600"})[
        "QueueUrl"
    ]
    assert url.startswith("https://127.0.0.1:")
    client.send_message(QueueUrl=url, MessageBody="over tls")
    (message,) = client.receive_message(QueueUrl=url)["Messages"]
    client.close()
    plain = make_client(running)
    plain_url = plain.get_queue_url(QueueName="secure")["QueueUrl"]
    attributes = plain.get_queue_attributes(QueueUrl=plain_url, AttributeNames=["All"])
    assert attributes["Attributes"]["VisibilityTimeout"] == "600"
    assert attributes["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "1"
    plain.delete_message(QueueUrl=plain_url, ReceiptHandle=message["ReceiptHandle"])
    attributes = plain.get_queue_attributes(QueueUrl=plain_url, AttributeNames=["All"])
    assert attributes["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "0"
