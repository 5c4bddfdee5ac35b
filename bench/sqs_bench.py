"""``moorage bench sqs``: SQS throughput through boto3 and a raw HTTP client, beside moto.

    python -m moorage.bench.sqs_bench [--count N] [--concurrency C] [--size BYTES]
                                      [--store sqlite|memory] [--no-moto]
    moorage bench sqs ...                # the same

For each broker — a Moorage started for the run with only its SQS listener
(``moorage serve``, SQLite store with fsync by default: every SendMessageBatch
is answered after its messages are on disk), and moto's server mode
(``moto[server]``, in-memory, the stand-in many teams test against) on another
free port — it runs two phases on one queue, with ``C`` clients in parallel:

0. warm-up, not timed: each client sends, receives and deletes one message on
   a queue of its own (botocore loads an operation's model on its first call),
   or opens its connection (raw);
1. send: ``N`` messages of ``BYTES`` bytes in SendMessageBatch calls of 10;
2. drain: ReceiveMessage (10 at a time) and DeleteMessageBatch of what came,
   until all ``N`` were received and deleted;

once through boto3 (one client per thread, the JSON protocol) and once
through a raw aiohttp client that signs each request with botocore's SigV4
and posts the JSON itself (``C`` requests in flight). It prints messages per
second of each phase and the ratio Moorage/moto in the same run. It is a
benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REGION = "us-east-1"
KEY = "guest"  # Moorage's loopback guest key; moto accepts any key


@dataclass(slots=True)
class Rates:
    send: float
    drain: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextlib.contextmanager
def moorage_server(store: str) -> Iterator[str]:
    tmp = Path(tempfile.mkdtemp(prefix="moorage-sqs-bench-"))
    port = _free_port()
    config = tmp / "moorage.toml"
    config.write_text(f'[storage]\nbackend = "{store}"\n')
    cmd = [sys.executable, "-m", "moorage.broker.cli", "serve", "--config", str(config),
           "--data-dir", str(tmp / "data"), "--log-level", "warning",
           f"--sqs-port={port}"]  # fmt: skip
    cmd += [f"--{n}-port=0" for n in ("amqp", "mqtt", "stomp", "http", "mqtt-ws", "stomp-ws")]
    process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)  # noqa: S603 - our own argv
    try:
        _wait_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(  # noqa: S603 - our own argv
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)


def _boto3_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=KEY,
        aws_secret_access_key=KEY,
        config=Config(max_pool_connections=64, retries={"max_attempts": 1}),
    )


def _in_threads(concurrency: int, work: Callable[[int], None]) -> float:
    """Run `work(i)` on `concurrency` threads; the elapsed seconds."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def _shares(count: int, parts: int) -> list[int]:
    return [count // parts + (1 if i < count % parts else 0) for i in range(parts)]


def _warm_up_boto3(clients: list[Any], url: str, body: str) -> None:
    """One send, receive and delete per client on a queue of its own, before timing:
    botocore loads each operation's model on its first call, and opens its connection."""
    for client in clients:
        client.send_message_batch(QueueUrl=url, Entries=[{"Id": "0", "MessageBody": body}])
        for message in client.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get(
            "Messages", []
        ):
            entries = [{"Id": "0", "ReceiptHandle": message["ReceiptHandle"]}]
            client.delete_message_batch(QueueUrl=url, Entries=entries)


def run_boto3(endpoint: str, queue: str, count: int, concurrency: int, body: str) -> Rates:
    setup = _boto3_client(endpoint)
    url = setup.create_queue(QueueName=queue)["QueueUrl"]
    clients = [_boto3_client(endpoint) for _ in range(concurrency)]
    warm_up = setup.create_queue(QueueName=f"{queue}-warm-up")["QueueUrl"]
    _warm_up_boto3(clients, warm_up, body)
    setup.delete_queue(QueueUrl=warm_up)
    shares = _shares(count, concurrency)

    def send(i: int) -> None:
        client, left = clients[i], shares[i]
        while left:
            n = min(10, left)
            entries = [{"Id": str(k), "MessageBody": body} for k in range(n)]
            client.send_message_batch(QueueUrl=url, Entries=entries)
            left -= n

    send_time = _in_threads(concurrency, send)
    received = [0]
    lock = threading.Lock()

    def drain(i: int) -> None:
        client = clients[i]
        while True:
            with lock:
                if received[0] >= count:
                    return
            got = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            if not got:
                continue
            with lock:
                received[0] += len(got)
            entries = [{"Id": str(k), "ReceiptHandle": m["ReceiptHandle"]} for k, m in
                       enumerate(got)]  # fmt: skip
            client.delete_message_batch(QueueUrl=url, Entries=entries)

    drain_time = _in_threads(concurrency, drain)
    setup.delete_queue(QueueUrl=url)
    return Rates(count / send_time, count / drain_time)


class RawClient:
    """SQS over AWS JSON 1.0 with aiohttp: each request signed by botocore's SigV4."""

    def __init__(self, endpoint: str, session: Any) -> None:
        from botocore.auth import SigV4Auth
        from botocore.credentials import Credentials

        self.endpoint = endpoint + "/"
        self.session = session
        self.signer = SigV4Auth(Credentials(KEY, KEY), "sqs", REGION)

    async def call(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        from botocore.awsrequest import AWSRequest

        body = json.dumps(params).encode()
        request = AWSRequest(
            "POST",
            self.endpoint,
            data=body,
            headers={
                "Content-Type": "application/x-amz-json-1.0",
                "X-Amz-Target": f"AmazonSQS.{action}",
            },
        )
        self.signer.add_auth(request)
        async with self.session.post(
            self.endpoint, data=body, headers=dict(request.headers.items())
        ) as response:
            data = await response.read()
            if response.status != 200:
                raise RuntimeError(f"{action}: {response.status} {data[:200]!r}")
            result: dict[str, Any] = json.loads(data) if data else {}
            return result


async def _run_raw(endpoint: str, queue: str, count: int, concurrency: int, body: str) -> Rates:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = RawClient(endpoint, session)
        url = (await client.call("CreateQueue", {"QueueName": queue}))["QueueUrl"]
        # open the connections before timing: a call per client in parallel
        await asyncio.gather(
            *(client.call("GetQueueAttributes", {"QueueUrl": url}) for _ in range(concurrency))
        )
        shares = _shares(count, concurrency)

        async def send(left: int) -> None:
            while left:
                n = min(10, left)
                entries = [{"Id": str(k), "MessageBody": body} for k in range(n)]
                await client.call("SendMessageBatch", {"QueueUrl": url, "Entries": entries})
                left -= n

        start = time.perf_counter()
        await asyncio.gather(*(send(n) for n in shares))
        send_time = time.perf_counter() - start
        received = 0

        async def drain() -> None:
            nonlocal received
            while received < count:
                got = (
                    await client.call(
                        "ReceiveMessage", {"QueueUrl": url, "MaxNumberOfMessages": 10}
                    )
                ).get("Messages", [])
                if not got:
                    continue
                received += len(got)
                entries = [{"Id": str(k), "ReceiptHandle": m["ReceiptHandle"]}
                           for k, m in enumerate(got)]  # fmt: skip
                await client.call("DeleteMessageBatch", {"QueueUrl": url, "Entries": entries})

        start = time.perf_counter()
        await asyncio.gather(*(drain() for _ in range(concurrency)))
        drain_time = time.perf_counter() - start
        await client.call("DeleteQueue", {"QueueUrl": url})
    return Rates(count / send_time, count / drain_time)


def run_raw(endpoint: str, queue: str, count: int, concurrency: int, body: str) -> Rates:
    return asyncio.run(_run_raw(endpoint, queue, count, concurrency, body))


def measure(endpoint: str, count: int, concurrency: int, size: int) -> dict[str, Rates]:
    body = "x" * size
    return {
        "boto3": run_boto3(endpoint, "bench-boto3", count, concurrency, body),
        "raw": run_raw(endpoint, "bench-raw", count, concurrency, body),
    }


def _line(broker: str, client: str, rates: Rates) -> str:
    return f"{broker:<8} {client:<6} {rates.send:>14,.0f} {rates.drain:>17,.0f}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moorage bench sqs", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--count", type=int, default=5000, help="messages per run (5000)")
    parser.add_argument("--concurrency", type=int, default=4, help="parallel clients (4)")
    parser.add_argument("--size", type=int, default=100, help="message body bytes (100)")
    parser.add_argument("--store", choices=["sqlite", "memory"], default="sqlite")
    parser.add_argument("--no-moto", action="store_true", help="measure Moorage only")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.count < 10 or args.concurrency < 1 or args.size < 1:
        print("moorage bench sqs: --count >= 10, --concurrency >= 1, --size >= 1", file=sys.stderr)
        return 2
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    results: dict[str, dict[str, Rates]] = {}
    print(f"SQS: {args.count} messages of {args.size} B, {args.concurrency} clients, "
          f"Moorage store {args.store}", flush=True)  # fmt: skip
    with moorage_server(args.store) as endpoint:
        results["moorage"] = measure(endpoint, args.count, args.concurrency, args.size)
    if not args.no_moto:
        try:
            import moto.server  # noqa: F401 - only to say what is missing
        except ImportError:
            print("moto[server] is not installed (pip install '.[bench]'): Moorage only")
        else:
            with moto_server() as endpoint:
                results["moto"] = measure(endpoint, args.count, args.concurrency, args.size)
    print(f"{'broker':<8} {'client':<6} {'send msg/s':>14} {'receive+del msg/s':>17}")
    for broker, by_client in results.items():
        for client, rates in by_client.items():
            print(_line(broker, client, rates))
    if "moto" in results:
        for client in ("boto3", "raw"):
            ours, theirs = results["moorage"][client], results["moto"][client]
            print(f"ratio moorage/moto {client:<6} send {ours.send / theirs.send:5.1f}x   "
                  f"receive+delete {ours.drain / theirs.drain:5.1f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
