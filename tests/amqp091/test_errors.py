"""Connection-level errors, authentication and permissions.

The connection-level cases use `RawClient` to send what client libraries
never send. Throughout, a second, well-behaved pika connection must keep
working: one client's protocol error must not disturb another.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from pamqp import body as pamqp_body
from pamqp import commands, frame
from pamqp import header as pamqp_header
from pika.exceptions import (
    AuthenticationError,
    ChannelClosedByBroker,
    ConnectionClosedByBroker,
    ProbableAccessDeniedError,
    ProbableAuthenticationError,
)

from moorage.broker.auth import UserDirectory
from moorage.broker.config import default_guest
from moorage.broker.errors import AccessRefused
from tests.helpers import RawClient, RunningBroker, make_config, make_user

Connect = Callable[..., pika.BlockingConnection]


@pytest.fixture
def bystander(connect: Connect) -> Iterator[Callable[[], None]]:
    """A second client; call the fixture's value to check it still works."""
    connection = connect()
    channel = connection.channel()
    channel.confirm_delivery()
    name = channel.queue_declare("", exclusive=True).method.queue
    counter = iter(range(1000))

    def check() -> None:
        body = str(next(counter)).encode()
        channel.basic_publish("", name, body)
        assert channel.basic_get(name, auto_ack=True)[2] == body

    check()
    yield check
    check()


def expect_connection_close(
    client: RawClient, code: int, *, answer: bool = True
) -> commands.Connection.Close:
    """The server's connection.close with `code`.

    With `answer`, reply close-ok and check that the server then closes the
    socket. After a framing error the server cannot parse a close-ok any more
    (like RabbitMQ it closes the socket after a grace period instead), so those
    tests hang up themselves.
    """
    close = client.expect(commands.Connection.Close)
    assert close.reply_code == code, close.reply_text
    if answer:
        client.send_frame(0, commands.Connection.CloseOk())
        assert client.wait_closed() == []
    return close


# -- framing -------------------------------------------------------------------------------


def test_method_on_unopened_channel_is_504(
    broker: RunningBroker, bystander: Callable[[], None]
) -> None:
    with RawClient(broker.port) as client:
        client.handshake()
        client.open_channel(1)
        client.send_frame(7, commands.Queue.Declare(queue="x"))
        close = expect_connection_close(client, 504)
        assert "CHANNEL_ERROR" in close.reply_text
    bystander()


def test_content_on_unopened_channel_is_504(
    broker: RunningBroker, bystander: Callable[[], None]
) -> None:
    with RawClient(broker.port) as client:
        client.handshake()
        client.send(
            frame.marshal(commands.Basic.Publish(exchange="", routing_key="q"), 3)
            + frame.marshal(pamqp_header.ContentHeader(0, 1, commands.Basic.Properties()), 3)
            + frame.marshal(pamqp_body.ContentBody(b"x"), 3)
        )
        expect_connection_close(client, 504)
    bystander()


def test_channel_max_limits_open_channels_not_numbers(
    broker: RunningBroker, bystander: Callable[[], None]
) -> None:
    """RabbitMQ: channel_max counts open channels; any number up to 65535 may be used."""
    with RawClient(broker.port) as client:
        client.handshake(channel_max=2)
        client.open_channel(65535)
        client.send_frame(3, commands.Channel.Open())
        client.expect(commands.Channel.OpenOk)
        client.send_frame(7, commands.Channel.Open())
        close = expect_connection_close(client, 530)
        assert close.reply_text == (
            "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)"
        )
    bystander()


def test_closed_channel_frees_its_place_under_channel_max(
    broker: RunningBroker, bystander: Callable[[], None]
) -> None:
    with RawClient(broker.port) as client:
        client.handshake(channel_max=1)
        client.open_channel(40000)
        client.send_frame(40000, commands.Channel.Close(200, "bye", 0, 0))
        client.expect(commands.Channel.CloseOk)
        client.open_channel(2)
    bystander()


def test_oversized_frame_is_501(broker: RunningBroker, bystander: Callable[[], None]) -> None:
    with RawClient(broker.port) as client:
        client.handshake(frame_max=4096)
        client.open_channel(1)
        body = b"x" * 5000  # one body frame larger than the negotiated frame_max
        client.send(
            frame.marshal(commands.Basic.Publish(exchange="", routing_key="q"), 1)
            + frame.marshal(
                pamqp_header.ContentHeader(0, len(body), commands.Basic.Properties()), 1
            )
            + frame.marshal(pamqp_body.ContentBody(body), 1)
        )
        close = expect_connection_close(client, 501, answer=False)
        assert "FRAME_ERROR" in close.reply_text
    bystander()


def test_frame_just_within_frame_max_is_accepted(broker: RunningBroker) -> None:
    with RawClient(broker.port) as client:
        client.handshake(frame_max=4096)
        client.open_channel(1)
        client.send_frame(1, commands.Queue.Declare(queue="fits"))
        client.expect(commands.Queue.DeclareOk)
        client.send_frame(1, commands.Confirm.Select())
        client.expect(commands.Confirm.SelectOk)
        body = b"y" * (4096 - 8)  # the whole frame is exactly frame_max
        client.send(
            frame.marshal(commands.Basic.Publish(exchange="", routing_key="fits"), 1)
            + frame.marshal(
                pamqp_header.ContentHeader(0, len(body), commands.Basic.Properties()), 1
            )
            + frame.marshal(pamqp_body.ContentBody(body), 1)
        )
        client.expect(commands.Basic.Ack)
    assert broker.ready_count("fits") == 1


def test_bad_frame_end_is_501(broker: RunningBroker, bystander: Callable[[], None]) -> None:
    with RawClient(broker.port) as client:
        client.handshake()
        raw = frame.marshal(commands.Channel.Open(), 1)
        client.send(raw[:-1] + b"\x00")
        close = expect_connection_close(client, 501, answer=False)
        assert "frame end" in close.reply_text
        # nothing more is read from this client; the server hangs up after a grace period
        client.send_frame(0, commands.Connection.CloseOk())
        assert client.wait_closed() == []  # within RawClient's timeout: a bound, not a speed
    bystander()


def test_unknown_frame_type_is_501(broker: RunningBroker, bystander: Callable[[], None]) -> None:
    with RawClient(broker.port) as client:
        client.handshake()
        client.send(struct.pack(">BHI", 9, 0, 0) + b"\xce")
        expect_connection_close(client, 501, answer=False)
    bystander()


@pytest.mark.parametrize(
    "greeting",
    [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"AMQP\x00\x00\x08\x00", b"AMQP\x01\x01\x00\x0a"],
    ids=["http", "amqp-0-8", "amqp-1-0"],
)
def test_bad_protocol_header_gets_ours_and_close(
    broker: RunningBroker, bystander: Callable[[], None], greeting: bytes
) -> None:
    with RawClient(broker.port) as client:
        client.send(greeting)
        assert client.read_raw() == b"AMQP\x00\x00\x09\x01"
    bystander()


def test_client_initiated_connection_close(broker: RunningBroker) -> None:
    """A client that closes politely right after open gets close-ok and EOF."""
    with RawClient(broker.port) as client:
        client.handshake()
        client.send_frame(0, commands.Connection.Close(200, "bye", 0, 0))
        client.expect(commands.Connection.CloseOk)
        assert client.wait_closed() == []
    assert broker.wait_until(lambda: not broker.core.connections)


def test_method_before_open_is_rejected(broker: RunningBroker) -> None:
    with RawClient(broker.port) as client:
        client.send(pamqp_header.ProtocolHeader().marshal())
        client.expect(commands.Connection.Start)
        # skipping start-ok: the server must not let the client in
        client.send_frame(0, commands.Connection.Open(virtual_host="/"))
        frames = client.wait_closed()
        assert not any(isinstance(f, commands.Connection.OpenOk) for f in frames)
    assert broker.connection_count() == 0


# -- authentication ----------------------------------------------------------------------


@pytest.mark.parametrize(("user", "password"), [("guest", "wrong"), ("nobody", "guest")])
def test_login_refused(broker: RunningBroker, user: str, password: str) -> None:
    params = pika.URLParameters(broker.url_for(user, password))
    with pytest.raises((ProbableAuthenticationError, AuthenticationError)):
        pika.BlockingConnection(params)
    assert broker.connection_count() == 0


def test_login_refused_raw_gets_403_close(broker: RunningBroker) -> None:
    with RawClient(broker.port) as client:
        client.send(pamqp_header.ProtocolHeader().marshal())
        client.expect(commands.Connection.Start)
        client.send_frame(
            0,
            commands.Connection.StartOk(
                client_properties={"capabilities": {"authentication_failure_close": True}},
                mechanism="PLAIN",
                response="\0guest\0nope",
            ),
        )
        frames = client.wait_closed()
    assert len(frames) == 1
    assert isinstance(frames[0], commands.Connection.Close)
    assert frames[0].reply_code == 403
    assert "ACCESS_REFUSED" in frames[0].reply_text


def _anonymous_start_ok(client: RawClient, mechanism: str, response: str) -> Any:
    """Handshake with no credentials; the server's answer to start-ok (or Closed)."""
    client.send(pamqp_header.ProtocolHeader().marshal())
    client.expect(commands.Connection.Start)
    client.send_frame(
        0,
        commands.Connection.StartOk(
            client_properties={"capabilities": {"authentication_failure_close": True}},
            mechanism=mechanism,
            response=response,
        ),
    )
    return client.wait_closed()


@pytest.mark.parametrize(("mechanism", "response"), [("ANONYMOUS", ""), ("PLAIN", "\0\0")])
def test_no_credentials_refused_by_default(
    broker: RunningBroker, mechanism: str, response: str
) -> None:
    with RawClient(broker.port) as client:
        frames = _anonymous_start_ok(client, mechanism, response)
    assert len(frames) == 1
    assert frames[0].reply_code == 403
    assert broker.connection_count() == 0


@pytest.mark.parametrize(("mechanism", "response"), [("ANONYMOUS", ""), ("PLAIN", "\0\0")])
def test_no_credentials_act_as_the_anonymous_user(
    tmp_path: Path, start_broker: Callable[..., RunningBroker], mechanism: str, response: str
) -> None:
    config = make_config(tmp_path, make_user("visitor", "pw", {"/": ("", "", ".*")}))
    config.anonymous_user = "visitor"
    running = start_broker(config)
    with RawClient(running.port) as client:
        client.send(pamqp_header.ProtocolHeader().marshal())
        client.expect(commands.Connection.Start)
        client.send_frame(0, commands.Connection.StartOk(mechanism=mechanism, response=response))
        client.expect(commands.Connection.Tune)
        client.send_frame(0, commands.Connection.TuneOk(channel_max=10, frame_max=131072))
        client.send_frame(0, commands.Connection.Open(virtual_host="/"))
        client.expect(commands.Connection.OpenOk)
        users = running.call(lambda: [c.user.name for c in running.core.connections])
        assert users == ["visitor"]  # that user and no other (guest would be allowed here)
        client.send_frame(1, commands.Channel.Open())
        client.expect(commands.Channel.OpenOk)
        client.send_frame(1, commands.Queue.Declare(queue="anon-may-not-configure"))
        assert client.expect(commands.Channel.Close).reply_code == 403


def test_amqplain_login(broker: RunningBroker) -> None:
    from pamqp import encode

    table = encode.field_table({"LOGIN": "guest", "PASSWORD": "guest"})[4:]
    with RawClient(broker.port) as client:
        client.send(pamqp_header.ProtocolHeader().marshal())
        client.expect(commands.Connection.Start)
        client.send_frame(
            0,
            commands.Connection.StartOk(mechanism="AMQPLAIN", response=table.decode("latin-1")),
        )
        client.expect(commands.Connection.Tune)


def test_guest_only_from_loopback() -> None:
    users = UserDirectory(
        [default_guest(), make_user("remote", "pw", {"/": (".*",) * 3})], frozenset({"guest"})
    )
    assert users.authenticate("guest", "guest", from_loopback=True).name == "guest"
    with pytest.raises(AccessRefused, match="only connect via localhost"):
        users.authenticate("guest", "guest", from_loopback=False)
    assert users.authenticate("remote", "pw", from_loopback=False).name == "remote"
    with pytest.raises(AccessRefused):
        users.authenticate("remote", "bad", from_loopback=False)


@pytest.fixture
def secured(tmp_path: Path, start_broker: Callable[..., RunningBroker]) -> RunningBroker:
    """A broker with a second vhost and users with limited rights."""
    config = make_config(
        tmp_path,
        make_user("limited", "pw", {"/": ("^own-.*", "^own-.*", "^own-.*")}),
        make_user("elsewhere", "pw", {"other": (".*", ".*", ".*")}),
        make_user("reader", "pw", {"/": ("", "", ".*")}),
        vhosts=("/", "other"),
    )
    return start_broker(config)


def test_vhost_without_permissions_is_530(secured: RunningBroker) -> None:
    params = pika.URLParameters(secured.url_for("elsewhere", "pw", "/"))
    with pytest.raises((ProbableAccessDeniedError, ConnectionClosedByBroker)) as info:
        pika.BlockingConnection(params)
    assert "530" in str(info.value) or "NOT_ALLOWED" in str(info.value)
    # ...while the vhost the user has rights on works
    connection = pika.BlockingConnection(
        pika.URLParameters(secured.url_for("elsewhere", "pw", "other"))
    )
    try:
        connection.channel().queue_declare("in-other")
    finally:
        connection.close()


def test_missing_vhost_is_530_raw(secured: RunningBroker) -> None:
    with RawClient(secured.port) as client:
        client.send(pamqp_header.ProtocolHeader().marshal())
        client.expect(commands.Connection.Start)
        client.send_frame(
            0, commands.Connection.StartOk(mechanism="PLAIN", response="\0guest\0guest")
        )
        tune = client.expect(commands.Connection.Tune)
        client.send_frame(0, commands.Connection.TuneOk(tune.channel_max, tune.frame_max, 0))
        client.send_frame(0, commands.Connection.Open(virtual_host="no-such-vhost"))
        close = expect_connection_close(client, 530)
        assert "NOT_ALLOWED" in close.reply_text


def test_missing_vhost_with_pika(secured: RunningBroker) -> None:
    params = pika.URLParameters(secured.url_for("guest", "guest", "no-such-vhost"))
    with pytest.raises((ProbableAccessDeniedError, ConnectionClosedByBroker)) as info:
        pika.BlockingConnection(params)
    assert "530" in str(info.value) or "NOT_ALLOWED" in str(info.value)


def test_permissions_limit_configure_write_read(secured: RunningBroker) -> None:
    admin = pika.BlockingConnection(pika.URLParameters(secured.url))
    limited = pika.BlockingConnection(pika.URLParameters(secured.url_for("limited", "pw")))
    try:
        admin_channel = admin.channel()
        admin_channel.queue_declare("foreign")
        admin_channel.exchange_declare("own-x", "direct")

        channel = limited.channel()
        channel.confirm_delivery()
        channel.queue_declare("own-q")
        channel.queue_bind("own-q", "own-x", "k")
        channel.basic_publish("own-x", "k", b"allowed")
        assert channel.basic_get("own-q", auto_ack=True)[2] == b"allowed"

        denied = [
            lambda ch: ch.queue_declare("not-own"),  # configure
            lambda ch: ch.queue_delete("foreign"),  # configure
            lambda ch: ch.basic_publish("amq.direct", "k", b"m"),  # write on exchange
            lambda ch: ch.basic_publish("", "own-q", b"m"),  # write on amq.default
            lambda ch: ch.basic_get("foreign"),  # read
            lambda ch: ch.basic_consume("foreign", lambda *a: None),  # read
            lambda ch: ch.queue_purge("foreign"),  # read
            lambda ch: ch.queue_bind("own-q", "amq.direct", "k"),  # read on exchange
            lambda ch: ch.exchange_declare("elsewhere-x", "fanout"),  # configure
        ]
        for attempt in denied:
            ch = limited.channel()
            ch.confirm_delivery()
            with pytest.raises(ChannelClosedByBroker) as info:
                attempt(ch)
            assert info.value.reply_code == 403
            assert "ACCESS_REFUSED" in info.value.reply_text
        # the connection survived every refusal
        assert limited.channel().queue_declare("own-q", passive=True).method.message_count == 0
        # and nothing was done on the refused resources
        assert secured.queue_exists("foreign")
        assert not secured.queue_exists("not-own")
    finally:
        limited.close()
        admin.close()


def test_read_only_user_may_consume_but_not_declare(secured: RunningBroker) -> None:
    admin = pika.BlockingConnection(pika.URLParameters(secured.url))
    reader = pika.BlockingConnection(pika.URLParameters(secured.url_for("reader", "pw")))
    try:
        admin_channel = admin.channel()
        admin_channel.confirm_delivery()
        admin_channel.queue_declare("readable")
        admin_channel.basic_publish("", "readable", b"r")
        channel = reader.channel()
        assert channel.queue_declare("readable", passive=True).method.message_count == 1
        assert channel.basic_get("readable", auto_ack=True)[2] == b"r"
        with pytest.raises(ChannelClosedByBroker) as info:
            channel.queue_declare("readable")
        assert info.value.reply_code == 403
    finally:
        reader.close()
        admin.close()


def test_tune_ok_above_server_limits_is_530(broker: RunningBroker) -> None:
    with RawClient(broker.port) as client:
        client.send(pamqp_header.ProtocolHeader().marshal())
        client.expect(commands.Connection.Start)
        client.send_frame(
            0, commands.Connection.StartOk(mechanism="PLAIN", response="\0guest\0guest")
        )
        tune = client.expect(commands.Connection.Tune)
        client.send_frame(0, commands.Connection.TuneOk(tune.channel_max, tune.frame_max * 2, 0))
        client.send_frame(0, commands.Connection.Open(virtual_host="/"))
        close = expect_connection_close(client, 530)
        assert "frame_max" in close.reply_text


def test_channel_number_reusable_after_channel_error(broker: RunningBroker) -> None:
    with RawClient(broker.port) as client:
        client.handshake()
        client.open_channel(1)
        client.send_frame(1, commands.Queue.Declare(queue="absent", passive=True))
        close = client.expect(commands.Channel.Close)
        assert close.reply_code == 404
        # frames on the closing channel are dropped until close-ok
        client.send_frame(1, commands.Queue.Declare(queue="dropped"))
        client.send_frame(1, commands.Channel.CloseOk())
        client.open_channel(1)
        client.send_frame(1, commands.Queue.Declare(queue="reopened"))
        client.expect(commands.Queue.DeclareOk)
    assert not broker.queue_exists("dropped")


def test_non_connection_method_on_channel_0_is_504(
    broker: RunningBroker, bystander: Callable[[], None]
) -> None:
    """RabbitMQ 3.10 (transcript connection_method_on_channel_zero): 504 naming the method."""
    with RawClient(broker.port) as client:
        client.handshake()
        client.send_frame(0, commands.Basic.Qos(prefetch_count=1))
        close = expect_connection_close(client, 504)
        assert (close.class_id, close.method_id) == (60, 10)
    bystander()


@pytest.mark.parametrize(
    "method",
    [commands.Basic.Qos(prefetch_size=1024), commands.Basic.Recover(requeue=False)],
    ids=["qos-prefetch-size", "recover-without-requeue"],
)
def test_unsupported_options_are_540(
    broker: RunningBroker, bystander: Callable[[], None], method: Any
) -> None:
    with RawClient(broker.port) as client:
        client.handshake()
        client.open_channel(1)
        client.send_frame(1, method)
        close = expect_connection_close(client, 540)
        assert "NOT_IMPLEMENTED" in close.reply_text
    bystander()
