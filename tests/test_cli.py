"""`moorage serve` as operators run it: start-up errors in one line, clean exits."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pika

from tests.durability.broker_process import BrokerProcess, free_port

SERVE = [sys.executable, "-m", "moorage.broker.cli", "serve"]
NO_OTHER_LISTENERS = [
    *("--mqtt-port", "0", "--stomp-port", "0", "--http-port", "0"),
    *("--mqtt-ws-port", "0", "--stomp-ws-port", "0", "--sqs-port", "0"),
]


def run_serve(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def one_line_reason(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("moorage: "), lines[0]
    return lines[0]


def test_port_in_use_is_a_one_line_error(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_serve(
            "--data-dir", str(tmp_path), "--amqp-port", str(port), *NO_OTHER_LISTENERS
        )
    assert result.returncode != 0
    assert str(port) in one_line_reason(result)


def test_unreadable_config_is_a_one_line_error(tmp_path: Path):
    result = run_serve("--config", str(tmp_path / "missing.toml"))
    assert result.returncode != 0
    assert "missing.toml" in one_line_reason(result)
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nframe_max = 'big'\n")
    result = run_serve("--config", str(bad))
    assert result.returncode != 0
    assert "frame_max" in one_line_reason(result)
    typo = tmp_path / "typo.toml"
    typo.write_text("[listeners]\namqp_prot = 5672\n")
    assert "amqp_prot" in one_line_reason(run_serve("--config", str(typo)))


def test_corrupt_database_stops_startup_and_is_left_untouched(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    db = data / "moorage.db"
    garbage = b"this is not a database" * 100
    db.write_bytes(garbage)
    result = run_serve(
        "--data-dir", str(data), "--amqp-port", str(free_port()), *NO_OTHER_LISTENERS
    )
    assert result.returncode != 0
    assert "moorage.db" in one_line_reason(result)
    assert db.read_bytes() == garbage
    assert sorted(p.name for p in data.iterdir()) == ["moorage.db"]


def test_sigterm_closes_clients_and_exits_zero(tmp_path: Path):
    process = BrokerProcess(tmp_path / "data").start()
    try:
        connection = pika.BlockingConnection(process.params)
        closed = []
        assert process.proc is not None
        process.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                connection.process_data_events(time_limit=0.1)
        except pika.exceptions.ConnectionClosedByBroker as e:
            closed.append(e.reply_code)
        assert closed == [320]
        assert process.proc.wait(10) == 0
        log = process.log.read_text()
        assert "amqp listener accepting connections on 127.0.0.1:" in log
    finally:
        process.kill()


def test_sigusr1_logs_statistics(tmp_path: Path):
    process = BrokerProcess(tmp_path / "data").start()
    try:
        connection = pika.BlockingConnection(process.params)
        channel = connection.channel()
        channel.queue_declare("counted", durable=True)
        channel.basic_publish("", "counted", b"x", pika.BasicProperties(delivery_mode=2))
        channel.queue_declare("counted", durable=True, passive=True)  # publish processed
        assert process.proc is not None
        process.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        line = ""
        while time.monotonic() < deadline and not line:
            line = next((x for x in process.log.read_text().splitlines() if "statistics:" in x), "")
            time.sleep(0.02)
        assert "connections=1" in line
        assert "messages=1" in line
        assert "store_fsyncs=" in line
        connection.close()
    finally:
        process.kill()


def test_tune_gc_sets_the_thresholds_and_freezes_startup_objects():
    import gc

    from moorage.broker.daemon import GC_THRESHOLDS, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_sigusr1_as_soon_as_the_port_answers_does_not_end_the_broker(tmp_path: Path):
    """`moorage bench --spawn` signals right away: the handler must already be there."""
    port = free_port()
    args = [*SERVE, "--data-dir", str(tmp_path / "data"), "--amqp-port", str(port)]
    log = tmp_path / "log"
    with log.open("wb") as out:
        process = subprocess.Popen([*args, *NO_OTHER_LISTENERS], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "not listening"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.01)
        process.send_signal(signal.SIGUSR1)
        pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port)).close()
        assert process.poll() is None, log.read_text()
    finally:
        process.terminate()
        assert process.wait(10) == 0
