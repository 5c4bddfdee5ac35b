"""`moorage bench` works end to end: self-tests and tiny runs against a spawned broker.

These check the tool, not performance: nothing here is timed.
"""

from __future__ import annotations

import json

import pytest

from moorage.bench.cli import main as bench_main
from moorage.broker.cli import main as moorage_main

PROTOCOLS = ["amqp", "mqtt", "stomp"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_self_test_runs(protocol, capsys):
    assert moorage_main(["bench", protocol, "--self-test", "--count", "2000", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["messages"] == 2000
    assert report["one_core_1to1_ceiling_per_s"] > 0


@pytest.mark.parametrize(
    ("protocol", "extra"),
    [
        ("amqp", []),
        ("mqtt", ["--qos", "1"]),
        ("mqtt", ["--qos", "2", "--producers", "2"]),
        ("stomp", ["--ack", "client-individual"]),
    ],
)
def test_spawned_run_reports_a_rate(protocol, extra, capsys):
    argv = [protocol, "--spawn", "--spawn-store", "memory", "--count", "300", "--json"]
    argv += ["--quiet", "--timeout", "30", *extra]
    assert bench_main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["complete"]
    assert result["delivered"] == 300
    assert result["delivered_per_s"] > 0
    assert result["latency_ms"]["p99"] >= result["latency_ms"]["p50"]


def test_protocol_switch_is_a_subcommand(capsys):
    assert bench_main(["--protocol", "mqtt", "--self-test", "--count", "500", "--json"]) == 0
    assert "mqtt self-test" in json.loads(capsys.readouterr().out)["scenario"]


def test_non_loopback_host_is_refused(capsys):
    assert bench_main(["mqtt", "--host", "192.0.2.1", "--count", "10", "--quiet"]) == 2
    assert "loopback" in capsys.readouterr().err


def test_idle_connections_on_spawned_broker(capsys):
    argv = ["conn", "--spawn", "--spawn-store", "memory", "--connections", "20", "--json"]
    assert bench_main([*argv, "--settle", "0", "--rate-of", "10"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["connections_opened"] == 20
    assert "kib_per_connection" in report


def test_stomp_duration_run_ends_with_a_receipt(capsys):
    argv = ["stomp", "--spawn", "--spawn-store", "memory", "--duration", "0.5", "--rate", "400"]
    assert bench_main([*argv, "--json", "--quiet", "--idle-timeout", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["complete"]
    assert result["delivered"] == result["sent"] > 0


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_stomp_older_version_and_aligned_frames(version, capsys):
    argv = ["stomp", "--spawn", "--spawn-store", "memory", "--count", "300", "--json", "--quiet"]
    argv += ["--stomp-version", version, "--align-frames", "--ack", "client-individual"]
    assert bench_main([*argv, "--timeout", "30"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["complete"]
    assert result["delivered"] == 300
    assert f"stomp{version}" in result["scenario"]
    assert "aligned" in result["scenario"]


@pytest.mark.parametrize("size", [40, 100, 1000, 4000])
def test_pad_frame_makes_a_power_of_two_that_still_decodes(size):
    from moorage.bench.stomp_bench import pad_frame
    from moorage.protocols.stomp.codec import Frame, FrameCodec, encode

    headers = (("destination", "/queue/q"), ("receipt", "1"))
    wire = encode(Frame("SEND", headers, b"x" * size), "1.2")
    padded = pad_frame(wire)
    assert len(padded) & (len(padded) - 1) == 0
    assert len(padded) >= len(wire)
    codec = FrameCodec()
    codec.receive_data(padded)
    decoded = codec.next_event()
    assert isinstance(decoded, Frame)
    assert decoded.body == b"x" * size
    assert decoded.headers[:2] == headers


def test_persistent_mqtt_idle_connections(capsys):
    argv = ["conn", "--protocol", "mqtt", "--spawn", "--spawn-store", "memory", "--json"]
    argv += ["--connections", "20", "--persistent", "--settle", "0", "--rate-of", "10"]
    assert bench_main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["connections_opened"] == 20
    assert report["sessions"] == "persistent"
    assert report["broker_cpu_s"] >= 0


def test_pipelined_handshake_frames_are_the_codecs_encoding():
    """start-ok, tune-ok, open and channel.open, in that order, as the codec decodes them."""
    from pamqp import commands

    from moorage.bench.amqp_handshake import FRAME_MAX, handshake_frames
    from moorage.protocols.amqp091.codec import NEED_DATA, FrameDecoder, MethodReceived

    decoder = FrameDecoder(expect_protocol_header=False)
    decoder.receive_data(handshake_frames("user", "secret", "/v"))
    events = []
    while (event := decoder.next_event()) is not NEED_DATA:
        assert isinstance(event, MethodReceived)
        events.append((event.channel, type(event.method), event.method))
    kinds = [(channel, kind) for channel, kind, _ in events]
    assert kinds == [
        (0, commands.Connection.StartOk),
        (0, commands.Connection.TuneOk),
        (0, commands.Connection.Open),
        (1, commands.Channel.Open),
    ]
    start_ok, tune_ok, open_ = (method for _, _, method in events[:3])
    assert (start_ok.mechanism, start_ok.response) == ("PLAIN", "\0user\0secret")
    assert start_ok.client_properties["capabilities"]["authentication_failure_close"]
    assert (tune_ok.channel_max, tune_ok.frame_max, tune_ok.heartbeat) == (1, FRAME_MAX, 0)
    assert open_.virtual_host == "/v"
    assert len(handshake_frames("u", "p", "/", channel=False)) < len(
        handshake_frames("u", "p", "/")
    )


@pytest.mark.parametrize("channel", [True, False])
async def test_pipelined_handshake_against_a_broker(broker, channel):
    """Over a real socket: open (with or without channel 1), then connection.close/close-ok."""
    from moorage.bench.amqp_handshake import PipelinedConnection, handshake_frames

    frames = handshake_frames("guest", "guest", "/", channel=channel)
    conns = [
        await PipelinedConnection.open("127.0.0.1", broker.port, f"c{i}", frames, channel=channel)
        for i in range(3)
    ]
    assert broker.call(lambda: len(broker.core.connections)) == 3
    for conn in conns:
        await conn.close()  # returns once close-ok arrived: the broker let go before it
        assert conn.error is None
    assert broker.call(lambda: len(broker.core.connections)) == 0


@pytest.mark.parametrize(
    ("password", "vhost", "reply"),
    [("wrong", "/", "403 ACCESS_REFUSED"), ("guest", "/nowhere", "530 NOT_ALLOWED")],
)
async def test_pipelined_handshake_reports_the_brokers_refusal(broker, password, vhost, reply):
    from moorage.bench.amqp_handshake import PipelinedConnection, handshake_frames
    from moorage.bench.errors import BenchError

    frames = handshake_frames("guest", password, vhost)
    with pytest.raises(BenchError, match=f"broker closed the connection: {reply}"):
        await PipelinedConnection.open("127.0.0.1", broker.port, "refused", frames)
