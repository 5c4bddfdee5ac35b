"""Client certificates as identity: AMQP EXTERNAL (pika), MQTT and STOMP without a password,
with certificates made for the test (trustme); CN or full DN; untrusted or unknown refused."""

from __future__ import annotations

import gc
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pika
import pytest
import stomp
import trustme
from cryptography import x509
from pika.credentials import ExternalCredentials
from pika.exceptions import AMQPConnectionError, ProbableAuthenticationError

from moorage.broker.auth_certs import identity_of
from tests.helpers import RunningBroker, free_port, make_config, make_user
from tests.test_tls import write_server_cert

TIMEOUT = 15.0
pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


@pytest.fixture(autouse=True)
def _collect_tls_sockets() -> Iterator[None]:
    yield
    gc.collect()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def client_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("app@example.com", common_name="app")


def _dn(cert: trustme.LeafCert) -> str:
    """The subject as RFC 4514 writes it (cryptography's own formatting, as a reference)."""
    return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).subject.rfc4514_string()


def _broker(
    tmp_path: Path, ca: trustme.CA, start: Callable[..., RunningBroker], source: str, user: str
) -> RunningBroker:
    config = make_config(tmp_path, make_user(user, "unused", {"/": (".*", ".*", ".*")}))
    config.ports["amqp"] = 0
    for name in ("amqps", "mqtts", "stomps"):
        config.ports[name] = free_port()
    config.tls.cert, config.tls.key = map(str, write_server_cert(ca, tmp_path / "tls"))
    ca_file = tmp_path / "tls" / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    config.tls.ca, config.tls.verify = str(ca_file), "required"
    config.ssl_cert_login_from = source
    return start(config)


def _context(ca: trustme.CA, cert: trustme.LeafCert | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if cert is not None:
        cert.configure_cert(context)
    return context


def _amqp_external(broker: RunningBroker, ca: trustme.CA, cert: trustme.LeafCert) -> None:
    params = pika.ConnectionParameters(
        "127.0.0.1",
        broker.daemon.ports["amqps"],
        ssl_options=pika.SSLOptions(_context(ca, cert), "127.0.0.1"),
        credentials=ExternalCredentials(),
    )
    connection = pika.BlockingConnection(params)
    try:
        connection.channel().queue_declare("by-certificate")
    finally:
        connection.close()


def _users(broker: RunningBroker) -> list[str]:
    core = broker.daemon.broker
    assert core is not None
    names = broker.call(lambda: sorted(c.user.name for c in core.connections))
    return [n for n in names if n != "mqtt-internal"]  # the MQTT adapter's own connection


def test_common_name_on_every_protocol(
    tmp_path: Path,
    ca: trustme.CA,
    client_cert: trustme.LeafCert,
    start_broker: Callable[..., RunningBroker],
) -> None:
    broker = _broker(tmp_path, ca, start_broker, "common_name", "app")
    _amqp_external(broker, ca, client_cert)
    assert broker.queue_exists("by-certificate")

    # MQTT: no user name, no password
    connected = threading.Event()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="cert")
    client.tls_set_context(_context(ca, client_cert))
    client.on_connect = lambda _c, _u, _f, rc, _p: connected.set() if rc == 0 else None
    client.connect("127.0.0.1", broker.daemon.ports["mqtts"])
    client.loop_start()
    try:
        assert connected.wait(TIMEOUT)
        assert _users(broker) == ["app"]
    finally:
        client.disconnect()
        client.loop_stop()

    # STOMP: CONNECT without login and passcode
    files = tmp_path / "client"
    files.mkdir()
    client_cert.private_key_pem.write_to_path(str(files / "key.pem"))
    client_cert.cert_chain_pems[0].write_to_path(str(files / "cert.pem"))
    port = broker.daemon.ports["stomps"]
    connection = stomp.Connection12([("127.0.0.1", port)], timeout=TIMEOUT)
    connection.set_ssl(
        for_hosts=[("127.0.0.1", port)],
        key_file=str(files / "key.pem"),
        cert_file=str(files / "cert.pem"),
        ca_certs=str(tmp_path / "tls" / "ca.pem"),
    )
    connection.connect(wait=True)
    try:
        assert "app" in _users(broker)
    finally:
        connection.disconnect()


def test_distinguished_name_and_refusals(
    tmp_path: Path,
    ca: trustme.CA,
    client_cert: trustme.LeafCert,
    start_broker: Callable[..., RunningBroker],
) -> None:
    dn = _dn(client_cert)
    assert dn.startswith("CN=app,")
    broker = _broker(tmp_path, ca, start_broker, "distinguished_name", dn)
    _amqp_external(broker, ca, client_cert)  # the user named by the full subject

    stranger = ca.issue_cert("x@example.com", common_name="stranger")  # trusted, no such user
    with pytest.raises(ProbableAuthenticationError):
        _amqp_external(broker, ca, stranger)

    untrusted = trustme.CA().issue_cert("y@example.com", common_name="app")
    with pytest.raises(AMQPConnectionError):  # the handshake itself fails
        _amqp_external(broker, ca, untrusted)

    # a client certificate does not stop PLAIN: the password is checked as usual
    params = pika.ConnectionParameters(
        "127.0.0.1",
        broker.daemon.ports["amqps"],
        ssl_options=pika.SSLOptions(_context(ca, client_cert), "127.0.0.1"),
        credentials=pika.PlainCredentials(dn, "wrong"),
    )
    with pytest.raises(ProbableAuthenticationError):
        pika.BlockingConnection(params)


def test_identity_formatting() -> None:
    subject = (
        (("countryName", "GB"),),
        (("organizationName", "Example, Ltd"),),
        (("commonName", "#app"), ("userId", "7")),
    )
    certificate = {"subject": subject}
    assert identity_of(certificate, "distinguished_name") == "CN=\\#app+UID=7,O=Example\\, Ltd,C=GB"
    assert identity_of(certificate, "common_name") == "#app"
    assert identity_of({}, "common_name") is None
    assert identity_of({"subject": ((("organizationName", "x"),),)}, "common_name") is None
