"""TLS on every listener, with certificates made for the test (trustme): pika over AMQPS,
paho over MQTTS and MQTT over WSS, stomp.py over TLS, the management API over HTTPS;
an untrusting client refused; and a SIGHUP that swaps the certificate under a
connected client while a new client gets the new one."""

from __future__ import annotations

import gc
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pika
import pytest
import stomp
import trustme

from tests.durability.broker_process import free_port as process_port
from tests.helpers import RunningBroker, free_port, make_config

TIMEOUT = 15.0
TLS_NAMES = ("amqps", "mqtts", "stomps", "mqtt_wss", "https")

# asyncio (3.11) closes a TLS connection by exchanging close_notify first; a
# client that hangs up just before the test's broker stops its loop leaves that
# socket to the garbage collector, which then reports it as a ResourceWarning in
# whatever test runs next. Each broker here is collected at its own teardown,
# where these marks apply, so nothing leaks into unrelated tests.
pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def write_server_cert(ca: trustme.CA, folder: Path) -> tuple[Path, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(cert_path), append=True)
    return cert_path, key_path


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture(autouse=True)
def _collect_tls_sockets() -> Iterator[None]:
    """Collect this test's leftover sockets while its warning filters still apply."""
    yield
    gc.collect()


@pytest.fixture
def tls_broker(
    tmp_path: Path, ca: trustme.CA, start_broker: Callable[..., RunningBroker]
) -> RunningBroker:
    config = make_config(tmp_path)
    config.ports["amqp"] = 0  # TLS only: the plain AMQP port is off
    for name in TLS_NAMES:
        config.ports[name] = free_port()
    config.tls.cert, config.tls.key = map(str, write_server_cert(ca, tmp_path / "tls"))
    return start_broker(config)


def test_pika_over_amqps(tls_broker: RunningBroker, ca: trustme.CA) -> None:
    assert "amqp" not in tls_broker.daemon.ports  # only TLS is offered
    params = pika.ConnectionParameters(
        "127.0.0.1",
        tls_broker.daemon.ports["amqps"],
        ssl_options=pika.SSLOptions(client_context(ca), "127.0.0.1"),
    )
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        channel.queue_declare("secure")
        channel.basic_publish("", "secure", b"over tls")
        _method, _props, body = channel.basic_get("secure", auto_ack=True)
        assert body == b"over tls"
    finally:
        connection.close()


def test_untrusting_client_is_refused_and_others_carry_on(
    tls_broker: RunningBroker, ca: trustme.CA
) -> None:
    other_ca = trustme.CA()
    context = ssl.create_default_context()
    other_ca.configure_trust(context)
    with (
        socket.create_connection(("127.0.0.1", tls_broker.daemon.ports["amqps"]), TIMEOUT) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname="127.0.0.1")
    # a plain-text client on the TLS port gets no AMQP answer, and the broker carries on
    with socket.create_connection(("127.0.0.1", tls_broker.daemon.ports["amqps"]), TIMEOUT) as raw:
        raw.sendall(b"AMQP\x00\x00\x09\x01")
        assert b"AMQP" not in raw.recv(64)
    test_pika_over_amqps(tls_broker, ca)


def _paho(ca: trustme.CA, port: int, transport: str = "tcp") -> list[bytes]:
    received: list[bytes] = []
    done = threading.Event()
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id=f"tls-{transport}", transport=transport
    )
    if transport == "websockets":
        client.ws_set_options(path="/ws")
    client.username_pw_set("guest", "guest")
    client.tls_set_context(client_context(ca))
    client.on_message = lambda _c, _u, msg: (received.append(msg.payload), done.set())
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.subscribe("secure/#", qos=1)
        assert subscribed.wait(TIMEOUT)
        client.publish("secure/topic", b"mqtt over tls", qos=1).wait_for_publish(TIMEOUT)
        assert done.wait(TIMEOUT)
    finally:
        client.disconnect()
        client.loop_stop()
    return received


def test_paho_over_mqtts(tls_broker: RunningBroker, ca: trustme.CA) -> None:
    assert _paho(ca, tls_broker.daemon.ports["mqtts"]) == [b"mqtt over tls"]


def test_paho_over_wss(tls_broker: RunningBroker, ca: trustme.CA) -> None:
    assert _paho(ca, tls_broker.daemon.ports["mqtt_wss"], "websockets") == [b"mqtt over tls"]


def test_stomp_over_tls(tls_broker: RunningBroker, ca: trustme.CA, tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    port = tls_broker.daemon.ports["stomps"]
    connection = stomp.Connection12([("127.0.0.1", port)], timeout=TIMEOUT)
    connection.set_ssl(for_hosts=[("127.0.0.1", port)], ca_certs=str(ca_file))
    listener = stomp.listener.TestListener()
    connection.set_listener("test", listener)
    connection.connect("guest", "guest", wait=True)
    try:
        connection.subscribe("/queue/secure-stomp", id="1", ack="auto")
        connection.send("/queue/secure-stomp", "stomp over tls", receipt="sent")
        listener.wait_for_message()
        assert listener.get_latest_message()[1] == "stomp over tls"
    finally:
        connection.disconnect()


def test_management_over_https(tls_broker: RunningBroker, ca: trustme.CA) -> None:
    url = f"https://127.0.0.1:{tls_broker.daemon.ports['https']}/api/whoami"
    request = urllib.request.Request(url, headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="})
    with urllib.request.urlopen(request, context=client_context(ca), timeout=TIMEOUT) as r:
        assert r.read() == b'{"name": "guest", "tags": ["administrator"]}'


def test_tls_listener_without_certificate_is_a_config_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "moorage.broker.cli", "serve", "--data-dir", str(tmp_path),
         "--amqps-port", "5671"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == "moorage: the amqps listener needs tls.cert and tls.key\n"


# -- certificate swap on SIGHUP -------------------------------------------------------------


def _peer_serial(port: int, ca: trustme.CA) -> int:
    with (
        socket.create_connection(("127.0.0.1", port), TIMEOUT) as raw,
        client_context(ca).wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def tls_process(
    tmp_path: Path, ca: trustme.CA
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    cert, key = write_server_cert(ca, tmp_path / "tls")
    port = process_port()
    config = tmp_path / "moorage.toml"
    config.write_text(f'[storage]\nbackend = "memory"\n[tls]\ncert = "{cert}"\nkey = "{key}"\n')
    cmd = [
        sys.executable,
        "-m",
        "moorage.broker.cli",
        "serve",
        "--config",
        str(config),
        "--data-dir",
        str(tmp_path / "data"),
        "--amqp-port",
        "0",
        "--amqps-port",
        str(port),
    ]
    others = ("mqtt", "stomp", "http", "mqtt-ws", "stomp-ws", "sqs")
    cmd += [f"--{n}-port=0" for n in others]
    log = (tmp_path / "broker.log").open("wb")
    proc = subprocess.Popen(cmd, stderr=log)
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"broker did not start: {(tmp_path / 'broker.log').read_text()}")
            time.sleep(0.05)
    yield proc, port, tmp_path / "tls"
    proc.terminate()
    proc.wait(TIMEOUT)
    log.close()


def test_sighup_swaps_the_certificate_under_a_connected_client(
    tls_process: tuple[subprocess.Popen[bytes], int, Path], ca: trustme.CA
) -> None:
    proc, port, folder = tls_process
    params = pika.ConnectionParameters(
        "127.0.0.1", port, ssl_options=pika.SSLOptions(client_context(ca), "127.0.0.1")
    )
    connected = pika.BlockingConnection(params)
    channel = connected.channel()
    channel.queue_declare("through-the-swap")
    before = _peer_serial(port, ca)
    write_server_cert(ca, folder)  # a new certificate in the same files
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + TIMEOUT
    while _peer_serial(port, ca) == before:
        assert time.monotonic() < deadline, "the new certificate was never served"
        time.sleep(0.05)
    # the client connected before the swap carries on
    channel.basic_publish("", "through-the-swap", b"still here")
    _m, _p, body = channel.basic_get("through-the-swap", auto_ack=True)
    assert body == b"still here"
    connected.close()
