"""At the open-files limit new clients are refused at once; the others carry on.

A broker subprocess is started with a low `RLIMIT_NOFILE` (set in the child
before it runs), then filled with raw AMQP connections that stay in their
handshake. Past the limit minus the reserve, each new client is accepted and
closed at once (no stall in the listen backlog), while a pika client that
connected before keeps publishing and getting messages and the management
API answers from the reserve.
"""

from __future__ import annotations

import resource
import socket
import time
import urllib.request
from base64 import b64encode
from pathlib import Path

import pika
import pytest

from moorage.broker.descriptors import DescriptorGuard, open_files_limit
from tests.durability.broker_process import BrokerProcess

LIMIT = 128
RESERVE = 32
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def test_guard_keeps_the_reserve() -> None:
    limit = open_files_limit()
    assert limit is not None
    guard = DescriptorGuard(reserve=RESERVE)
    assert not guard.exhausted(3)
    assert not guard.exhausted(limit - RESERVE - 1)
    assert guard.exhausted(limit - RESERVE)
    assert guard.refused == 1
    assert not DescriptorGuard(reserve=0).exhausted(limit - 1)  # 0 turns it off


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Did the broker close this socket (EOF or reset) within `timeout` seconds?"""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_new_clients_are_refused_at_once_at_the_limit(tmp_path: Path) -> None:
    broker = BrokerProcess(
        tmp_path / "data", http=True, extra_config="[limits]\nhandshake_timeout = 120.0\n"
    )
    broker.preexec_fn = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))
    broker.start()
    held: list[socket.socket] = []
    try:
        served = pika.BlockingConnection(broker.params)
        channel = served.channel()
        channel.queue_declare("fd")

        refused = 0
        for _ in range(LIMIT):  # more than can fit: the last ones are refused
            sock = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
            sock.sendall(AMQP_HEADER)  # stays in the handshake (connection.start sent)
            held.append(sock)
        for sock in held:
            sock.settimeout(5)
            try:
                first = sock.recv(7)
            except (ConnectionResetError, TimeoutError):
                first = b""
            refused += not first
        accepted = len(held) - refused
        assert refused > 0, "no client was refused"
        assert accepted >= LIMIT - RESERVE - 40, f"only {accepted} clients served"

        started = time.monotonic()
        newcomer = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
        held.append(newcomer)
        assert closed_by_peer(newcomer, timeout=10), "a new client was left waiting"
        refused_in = time.monotonic() - started

        # the client connected before is still served
        channel.basic_publish("", "fd", b"still here")
        deadline = time.monotonic() + 10
        body = None
        while body is None and time.monotonic() < deadline:
            _method, _props, body = channel.basic_get("fd", auto_ack=True)
        assert body == b"still here"
        served.close()

        # the management API answers from the reserve
        request = urllib.request.Request(
            f"http://127.0.0.1:{broker.http_port}/api/overview",
            headers={"Authorization": "Basic " + b64encode(b"guest:guest").decode()},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        print(
            f"\n{accepted} clients held, {refused} refused, "
            f"a newcomer refused in {refused_in:.3f} s"
        )
    finally:
        for sock in held:
            sock.close()
        broker.stop()
    log = broker.log.read_text()
    assert f"open-files limit: {LIMIT}" in log
    assert "refusing new client connections" in log


@pytest.fixture(autouse=True)
def _enough_descriptors_here() -> None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 2 * LIMIT + 64:
        pytest.skip("the test process itself needs more descriptors")
