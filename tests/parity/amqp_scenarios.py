"""AMQP 0-9-1 parity scenarios: method sequences whose answers RabbitMQ 3.10 recorded.

Each scenario starts with connection 0 open and channel 1 open on it (see
`amqp_runner.scenario`); the steps are data. Names start with `p-` so that
recording against a RabbitMQ that has other work on it touches nothing else.
Grouped by AMQP class and method: the success path first, then each error
path the spec or RabbitMQ documents.

The `parity` user (password `parity`) may configure only `p-own.*`, write
only `p-own.*` and read only `p-own.*` and `amq.direct`; `p-noperm` has no
permission at all. The recording RabbitMQ has both (see `tests/parity/README.md`).
"""

from __future__ import annotations

import struct
import warnings
from typing import Any

from pamqp import commands

from tests.parity.amqp_runner import (
    Connect,
    Expect,
    Hangup,
    Publish,
    Raw,
    Scenario,
    Send,
    scenario,
)

C = commands
PARITY_USER = ("parity", "parity")
NOPERM_USER = ("p-noperm", "p-noperm")  # a user with no permission anywhere
PARITY_PERMISSIONS = ("^p-own.*", "^p-own.*", "^(p-own.*|amq\\.direct)$")


def qd(queue: str = "p-q", ch: int = 1, conn: int = 0, **kw: Any) -> Send:
    return Send(ch, C.Queue.Declare(queue=queue, **kw), conn)


def xd(exchange: str = "p-x", type_: str = "direct", ch: int = 1, conn: int = 0, **kw: Any) -> Send:
    return Send(ch, C.Exchange.Declare(exchange=exchange, exchange_type=type_, **kw), conn)


def bind(queue: str = "p-q", exchange: str = "p-x", key: str = "k", ch: int = 1, **kw: Any) -> Send:
    return Send(ch, C.Queue.Bind(queue=queue, exchange=exchange, routing_key=key, **kw))


def get(queue: str = "p-q", ch: int = 1, no_ack: bool = True, conn: int = 0) -> Send:
    return Send(ch, C.Basic.Get(queue=queue, no_ack=no_ack), conn)


def pub(
    key: str = "p-q", body: bytes = b"m", ch: int = 1, exchange: str = "", **kw: Any
) -> Publish:
    return Publish(ch, exchange, key, body, **kw)


def consume(queue: str = "p-q", tag: str = "p-tag", ch: int = 1, conn: int = 0, **kw: Any) -> Send:
    return Send(ch, C.Basic.Consume(queue=queue, consumer_tag=tag, **kw), conn)


def open_ch(ch: int, conn: int = 0) -> Send:
    return Send(ch, C.Channel.Open(), conn)


def close_ch(ch: int = 1, conn: int = 0) -> Send:
    return Send(ch, C.Channel.Close(200, "bye", 0, 0), conn)


def sync(ch: int = 1, conn: int = 0) -> Send:
    """A round trip on `ch`: every answer sent before it has arrived."""
    return Send(ch, C.Basic.Qos(prefetch_count=0), conn)


def _recover_async() -> C.Basic.RecoverAsync:
    with warnings.catch_warnings():  # pamqp: "deprecated in AMQP 0-9-1"; RabbitMQ answers it
        warnings.simplefilter("ignore", DeprecationWarning)
        return C.Basic.RecoverAsync(requeue=True)


def frame(kind: int, channel: int, payload: bytes, end: bytes = b"\xce") -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + end


SECOND = Connect(conn=1)
PARITY = Connect(user=PARITY_USER[0], password=PARITY_USER[1])

_Q_DECLARE = [
    scenario("queue_declare_ok", "declare a new queue", qd()),
    scenario("queue_declare_again_equivalent", "redeclare with the same flags", qd(), qd()),
    scenario(
        "queue_declare_server_named",
        "an empty name asks the server for one",
        qd("", exclusive=True),
    ),
    scenario(
        "queue_declare_counts",
        "declare-ok counts ready messages and consumers",
        qd(),
        pub(),
        pub(),
        consume(ch=1, tag="p-c1", no_ack=False),
        Expect(2),
        qd(ch=1),
    ),
    scenario("queue_declare_passive_missing", "404 for a missing queue", qd(passive=True)),
    scenario("queue_declare_passive_existing", "passive counts", qd(), pub(), qd(passive=True)),
    scenario("queue_declare_reserved_prefix", "amq.* is reserved", qd("amq.p-mine")),
    scenario(
        "queue_declare_passive_reserved_missing",
        "passive declare of a missing amq.* queue",
        qd("amq.p-nothing", passive=True),
    ),
    scenario(
        "queue_declare_inequivalent_durable",
        "406 durable",
        qd(durable=False),
        qd(durable=True),
    ),
    scenario(
        "queue_declare_inequivalent_auto_delete",
        "406 auto_delete",
        qd(),
        qd(auto_delete=True),
    ),
    scenario(
        "queue_declare_inequivalent_ttl",
        "406 for a different x-message-ttl",
        qd(arguments={"x-message-ttl": 1000}),
        qd(arguments={"x-message-ttl": 2000}),
    ),
    scenario(
        "queue_declare_missing_ttl_on_redeclare",
        "406 when an argument is left out on redeclaration",
        qd(arguments={"x-message-ttl": 1000}),
        qd(),
    ),
    scenario(
        "queue_declare_unknown_argument",
        "arguments RabbitMQ does not know are accepted",
        qd(arguments={"x-p-whatever": "yes"}),
        qd(arguments={"x-p-whatever": "other"}),
    ),
    scenario(
        "queue_declare_invalid_max_length",
        "a non-integer x-max-length is 406",
        qd(arguments={"x-max-length": "ten"}),
    ),
    scenario(
        "queue_declare_negative_ttl",
        "a negative x-message-ttl is 406",
        qd(arguments={"x-message-ttl": -1}),
    ),
    scenario(
        "queue_declare_invalid_overflow",
        "an unknown x-overflow is 406",
        qd(arguments={"x-overflow": "sideways"}),
    ),
    scenario(
        "queue_declare_exclusive_other_connection",
        "another connection's exclusive queue is 405",
        qd(exclusive=True),
        SECOND,
        qd(conn=1),
    ),
    scenario(
        "queue_declare_exclusive_other_connection_passive",
        "passive declare of another connection's exclusive queue is 405",
        qd(exclusive=True),
        SECOND,
        qd(conn=1, passive=True),
    ),
    scenario(
        "queue_declare_exclusive_same_connection_without_flag",
        "the owner redeclaring without exclusive on another channel: 405",
        qd(exclusive=True),
        open_ch(2),
        qd(ch=2),
        qd(exclusive=True),
    ),
    scenario(
        "queue_declare_exclusive_same_connection_passive",
        "the owner may declare its exclusive queue passively on another channel",
        qd(exclusive=True),
        open_ch(2),
        qd(ch=2, passive=True),
    ),
    scenario(
        "queue_declare_shared_then_exclusive",
        "redeclaring a shared queue as exclusive: 405",
        qd(),
        qd(exclusive=True),
    ),
    scenario(
        "queue_declare_nowait",
        "nowait: no declare-ok",
        qd(nowait=True),
        qd(passive=True),
    ),
    scenario(
        "queue_declare_channel_reuse_after_error",
        "after a server-side channel.close the channel number can be opened again",
        qd(passive=True),
        open_ch(1),
        qd(),
    ),
    scenario(
        "queue_declare_on_closed_channel_before_reopen",
        "a method on a channel the server closed, before it is opened again: 504",
        qd(passive=True),
        qd(),
    ),
    scenario(
        "queue_declare_exclusive_dies_with_connection",
        "an exclusive queue is deleted when its connection closes",
        SECOND,
        qd(conn=1, exclusive=True),
        Send(0, C.Connection.Close(200, "bye", 0, 0), 1),
        qd(passive=True),
    ),
    scenario(
        "queue_declare_auto_delete_after_cancel",
        "an auto-delete queue goes with its last consumer",
        qd(auto_delete=True),
        consume(),
        Send(1, C.Basic.Cancel(consumer_tag="p-tag")),
        qd(passive=True),
    ),
    scenario(
        "queue_declare_auto_delete_never_consumed",
        "an auto-delete queue that never had a consumer stays",
        qd(auto_delete=True),
        qd(passive=True),
    ),
    scenario(
        "queue_declare_durable_exclusive",
        "durable and exclusive together",
        qd(durable=True, exclusive=True),
        qd(durable=True, exclusive=True),
    ),
    scenario(
        "queue_declare_max_priority_invalid",
        "x-max-priority above 255 is 406",
        qd(arguments={"x-max-priority": 300}),
    ),
]

_Q_DELETE = [
    scenario(
        "queue_delete_ok",
        "delete-ok counts ready messages",
        qd(),
        pub(),
        pub(),
        Send(1, C.Queue.Delete(queue="p-q")),
    ),
    scenario(
        "queue_delete_missing",
        "RabbitMQ 3.x: delete-ok, 0",
        Send(1, C.Queue.Delete(queue="p-never")),
    ),
    scenario(
        "queue_delete_twice",
        "the second delete is a delete-ok too",
        qd(),
        Send(1, C.Queue.Delete(queue="p-q")),
        Send(1, C.Queue.Delete(queue="p-q")),
    ),
    scenario(
        "queue_delete_if_empty_not_empty",
        "406 with if_empty",
        qd(),
        pub(),
        Send(1, C.Queue.Delete(queue="p-q", if_empty=True)),
    ),
    scenario(
        "queue_delete_if_empty_empty",
        "if_empty on an empty queue",
        qd(),
        Send(1, C.Queue.Delete(queue="p-q", if_empty=True)),
    ),
    scenario(
        "queue_delete_if_unused_in_use",
        "406 with if_unused",
        qd(),
        consume(),
        Send(1, C.Queue.Delete(queue="p-q", if_unused=True)),
    ),
    scenario(
        "queue_delete_if_unused_missing",
        "if_unused on a missing queue",
        Send(1, C.Queue.Delete(queue="p-never", if_unused=True)),
    ),
    scenario(
        "queue_delete_exclusive_other_connection",
        "405",
        qd(exclusive=True),
        SECOND,
        Send(1, C.Queue.Delete(queue="p-q"), 1),
    ),
    scenario(
        "queue_delete_cancels_consumers",
        "consumers get basic.cancel",
        qd(),
        consume(),
        open_ch(2),
        Send(2, C.Queue.Delete(queue="p-q")),
    ),
    scenario(
        "queue_delete_empty_name_no_previous",
        "404: no previously declared queue",
        Send(1, C.Queue.Delete(queue="")),
    ),
    scenario(
        "queue_delete_empty_name_last_declared",
        "an empty name is the last declared",
        qd(),
        pub(),
        Send(1, C.Queue.Delete(queue="")),
        qd(passive=True),
    ),
    scenario(
        "queue_delete_after_auto_delete",
        "deleting an auto-deleted queue: delete-ok",
        qd(auto_delete=True),
        consume(),
        Send(1, C.Basic.Cancel(consumer_tag="p-tag")),
        Send(1, C.Queue.Delete(queue="p-q")),
    ),
    scenario(
        "queue_delete_nowait",
        "nowait delete",
        qd(),
        Send(1, C.Queue.Delete(queue="p-q", nowait=True)),
        qd(passive=True),
    ),
]

_Q_PURGE = [
    scenario(
        "queue_purge_ok",
        "purge-ok counts",
        qd(),
        pub(),
        pub(),
        pub(),
        Send(1, C.Queue.Purge(queue="p-q")),
        get(),
    ),
    scenario("queue_purge_missing", "404", Send(1, C.Queue.Purge(queue="p-never"))),
    scenario(
        "queue_purge_exclusive_other_connection",
        "405",
        qd(exclusive=True),
        SECOND,
        Send(1, C.Queue.Purge(queue="p-q"), 1),
    ),
    scenario(
        "queue_purge_keeps_unacked",
        "unacked messages are not purged",
        qd(),
        pub(),
        pub(),
        get(no_ack=False),
        Send(1, C.Queue.Purge(queue="p-q")),
        Send(1, C.Basic.Recover(requeue=True)),
        get(),
    ),
    scenario(
        "queue_purge_empty_name",
        "empty name: the last declared queue",
        qd(),
        pub(),
        Send(1, C.Queue.Purge(queue="")),
    ),
]

_Q_BIND = [
    scenario(
        "queue_bind_ok", "bind and route", qd(), xd(), bind(), pub("k", exchange="p-x"), get()
    ),
    scenario("queue_bind_twice", "binding twice is fine", qd(), xd(), bind(), bind()),
    scenario("queue_bind_missing_exchange", "404 names the exchange", qd(), bind(exchange="p-nox")),
    scenario("queue_bind_missing_queue", "404 names the queue", xd(), bind(queue="p-noq")),
    scenario(
        "queue_bind_both_missing", "404 names the exchange", bind(queue="p-noq", exchange="p-nox")
    ),
    scenario("queue_bind_default_exchange", "403 on the default exchange", qd(), bind(exchange="")),
    scenario(
        "queue_bind_default_exchange_missing_queue",
        "403 comes before 404",
        bind(queue="p-noq", exchange=""),
    ),
    scenario(
        "queue_bind_exclusive_other_connection",
        "405",
        qd(exclusive=True),
        SECOND,
        Send(1, C.Queue.Bind(queue="p-q", exchange="amq.direct", routing_key="k"), 1),
    ),
    scenario(
        "queue_bind_empty_queue_name",
        "the last declared queue, its name as key",
        qd(),
        Send(1, C.Queue.Bind(queue="", exchange="amq.direct", routing_key="")),
        pub("p-q", exchange="amq.direct"),
        get(),
    ),
    scenario(
        "queue_bind_empty_name_no_previous",
        "404",
        Send(1, C.Queue.Bind(queue="", exchange="amq.direct", routing_key="k")),
    ),
    scenario(
        "queue_bind_headers_invalid_x_match",
        "406 for x-match other than all/any",
        qd(),
        bind(exchange="amq.headers", arguments={"x-match": "some"}),
    ),
    scenario(
        "queue_bind_nowait",
        "nowait bind",
        qd(),
        bind(exchange="amq.direct", nowait=True),
        pub("k", exchange="amq.direct"),
        get(),
    ),
]

_Q_UNBIND = [
    scenario(
        "queue_unbind_ok",
        "unbind stops routing",
        qd(),
        bind(exchange="amq.direct"),
        Send(1, C.Queue.Unbind(queue="p-q", exchange="amq.direct", routing_key="k")),
        pub("k", exchange="amq.direct"),
        get(),
    ),
    scenario(
        "queue_unbind_missing_queue",
        "unbind-ok",
        Send(1, C.Queue.Unbind(queue="p-noq", exchange="amq.direct", routing_key="k")),
    ),
    scenario(
        "queue_unbind_missing_exchange",
        "unbind-ok",
        qd(),
        Send(1, C.Queue.Unbind(queue="p-q", exchange="p-nox", routing_key="k")),
    ),
    scenario(
        "queue_unbind_both_missing",
        "unbind-ok",
        Send(1, C.Queue.Unbind(queue="p-noq", exchange="p-nox", routing_key="k")),
    ),
    scenario(
        "queue_unbind_missing_binding",
        "unbind-ok",
        qd(),
        Send(1, C.Queue.Unbind(queue="p-q", exchange="amq.direct", routing_key="k")),
    ),
    scenario(
        "queue_unbind_default_exchange",
        "403",
        qd(),
        Send(1, C.Queue.Unbind(queue="p-q", exchange="", routing_key="p-q")),
    ),
    scenario(
        "queue_unbind_auto_delete_exchange",
        "the last unbind deletes an auto-delete exchange",
        qd(),
        xd(auto_delete=True),
        bind(),
        Send(1, C.Queue.Unbind(queue="p-q", exchange="p-x", routing_key="k")),
        xd(passive=True),
    ),
]

_X_DECLARE = [
    scenario("exchange_declare_ok", "declare a direct exchange", xd()),
    scenario(
        "exchange_declare_each_type",
        "the four standard types",
        xd("p-x1", "direct"),
        xd("p-x2", "fanout"),
        xd("p-x3", "topic"),
        xd("p-x4", "headers"),
    ),
    scenario("exchange_declare_again_equivalent", "redeclare", xd(), xd()),
    scenario("exchange_declare_passive_missing", "404", xd(passive=True)),
    scenario("exchange_declare_passive_existing", "declare-ok", xd(), xd(passive=True)),
    scenario(
        "exchange_declare_passive_standard",
        "amq.topic exists",
        xd("amq.topic", "topic", passive=True),
    ),
    scenario(
        "exchange_declare_passive_default", "403 on the default exchange", xd("", passive=True)
    ),
    scenario("exchange_declare_default", "403 on the default exchange", xd("")),
    scenario("exchange_declare_reserved_prefix", "403 for a new amq.* name", xd("amq.p-mine")),
    scenario(
        "exchange_declare_standard_equivalent",
        "redeclaring amq.direct is allowed",
        xd("amq.direct", durable=True),
    ),
    scenario(
        "exchange_declare_standard_inequivalent",
        "406 for amq.direct as fanout",
        xd("amq.direct", "fanout", durable=True),
    ),
    scenario(
        "exchange_declare_unknown_type",
        "503 COMMAND_INVALID closes the connection",
        xd(type_="p-nonsense"),
    ),
    scenario(
        "exchange_declare_unknown_type_existing",
        "the type is checked first",
        xd(),
        xd(type_="p-nonsense"),
    ),
    scenario("exchange_declare_inequivalent_type", "406", xd(), xd(type_="fanout")),
    scenario("exchange_declare_inequivalent_durable", "406", xd(durable=False), xd(durable=True)),
    scenario("exchange_declare_inequivalent_auto_delete", "406", xd(), xd(auto_delete=True)),
    scenario("exchange_declare_inequivalent_internal", "406", xd(), xd(internal=True)),
    scenario(
        "exchange_declare_alternate_exchange_differs",
        "alternate-exchange is compared",
        xd(arguments={"alternate-exchange": "p-ae1"}),
        xd(arguments={"alternate-exchange": "p-ae2"}),
    ),
    scenario(
        "exchange_declare_other_argument_differs",
        "other arguments are not compared",
        xd(arguments={"p-arg": 1}),
        xd(arguments={"p-arg": 2}),
    ),
    scenario("exchange_declare_nowait", "nowait", xd(nowait=True), xd(passive=True)),
    scenario(
        "exchange_declare_passive_unknown_type",
        "passive ignores the type",
        xd(),
        xd(type_="p-nonsense", passive=True),
    ),
]

_X_DELETE = [
    scenario(
        "exchange_delete_ok",
        "delete-ok, then publishing to it is 404",
        xd(),
        Send(1, C.Exchange.Delete(exchange="p-x")),
        pub("k", exchange="p-x"),
        Expect(1),
    ),
    scenario("exchange_delete_missing", "delete-ok", Send(1, C.Exchange.Delete(exchange="p-nox"))),
    scenario("exchange_delete_default", "403", Send(1, C.Exchange.Delete(exchange=""))),
    scenario(
        "exchange_delete_standard",
        "403 for amq.direct",
        Send(1, C.Exchange.Delete(exchange="amq.direct")),
    ),
    scenario(
        "exchange_delete_reserved_missing",
        "403 for a missing amq.* name",
        Send(1, C.Exchange.Delete(exchange="amq.p-none")),
    ),
    scenario(
        "exchange_delete_if_unused_in_use",
        "406",
        qd(),
        xd(),
        bind(),
        Send(1, C.Exchange.Delete(exchange="p-x", if_unused=True)),
    ),
    scenario(
        "exchange_delete_if_unused_unused",
        "delete-ok",
        xd(),
        Send(1, C.Exchange.Delete(exchange="p-x", if_unused=True)),
    ),
    scenario(
        "exchange_delete_removes_bindings",
        "the queue stays, unbound",
        qd(),
        xd(),
        bind(),
        Send(1, C.Exchange.Delete(exchange="p-x")),
        xd(),
        pub("k", exchange="p-x"),
        get(),
    ),
    scenario(
        "exchange_delete_nowait",
        "nowait",
        xd(),
        Send(1, C.Exchange.Delete(exchange="p-x", nowait=True)),
        xd(passive=True),
    ),
]

_X_BIND = [
    scenario(
        "exchange_bind_ok",
        "exchange to exchange routing",
        qd(),
        xd("p-src", "fanout"),
        xd("p-dst", "direct"),
        Send(1, C.Exchange.Bind(destination="p-dst", source="p-src", routing_key="k")),
        bind(exchange="p-dst"),
        pub("k", exchange="p-src"),
        get(),
    ),
    scenario(
        "exchange_bind_missing_source",
        "404",
        xd("p-dst"),
        Send(1, C.Exchange.Bind(destination="p-dst", source="p-nox", routing_key="k")),
    ),
    scenario(
        "exchange_bind_missing_destination",
        "404",
        xd("p-src"),
        Send(1, C.Exchange.Bind(destination="p-nox", source="p-src", routing_key="k")),
    ),
    scenario(
        "exchange_bind_both_missing",
        "404 names the source",
        Send(1, C.Exchange.Bind(destination="p-nod", source="p-nos", routing_key="k")),
    ),
    scenario(
        "exchange_bind_default_source",
        "403",
        xd("p-dst"),
        Send(1, C.Exchange.Bind(destination="p-dst", source="", routing_key="k")),
    ),
    scenario(
        "exchange_bind_default_destination",
        "403",
        xd("p-src"),
        Send(1, C.Exchange.Bind(destination="", source="p-src", routing_key="k")),
    ),
    scenario(
        "exchange_unbind_missing",
        "unbind-ok",
        Send(1, C.Exchange.Unbind(destination="p-nod", source="p-nos", routing_key="k")),
    ),
    scenario(
        "exchange_unbind_ok",
        "unbind stops routing",
        qd(),
        xd("p-src", "fanout"),
        xd("p-dst"),
        Send(1, C.Exchange.Bind(destination="p-dst", source="p-src", routing_key="k")),
        bind(exchange="p-dst"),
        Send(1, C.Exchange.Unbind(destination="p-dst", source="p-src", routing_key="k")),
        pub("k", exchange="p-src"),
        get(),
    ),
    scenario(
        "exchange_bind_cycle",
        "a cycle of bindings routes each message once",
        qd(),
        xd("p-a", "fanout"),
        xd("p-b", "fanout"),
        Send(1, C.Exchange.Bind(destination="p-b", source="p-a", routing_key="")),
        Send(1, C.Exchange.Bind(destination="p-a", source="p-b", routing_key="")),
        bind(exchange="p-b", key=""),
        pub("", exchange="p-a"),
        get(),
        get(),
    ),
]

_PUBLISH = [
    scenario(
        "publish_default_exchange",
        "the default exchange routes by queue name",
        qd(),
        pub(body=b"hello"),
        get(),
    ),
    scenario(
        "publish_missing_exchange", "404 closes the channel", pub("k", exchange="p-nox"), Expect(1)
    ),
    scenario(
        "publish_missing_exchange_then_reopen",
        "the channel can be opened again",
        pub("k", exchange="p-nox"),
        Expect(1),
        open_ch(1),
        qd(),
    ),
    scenario("publish_unroutable_not_mandatory", "dropped silently", pub("p-nowhere"), sync()),
    scenario(
        "publish_mandatory_unroutable",
        "basic.return 312 NO_ROUTE",
        pub("p-nowhere", mandatory=True),
        Expect(1),
    ),
    scenario("publish_mandatory_routable", "no return", qd(), pub(mandatory=True), get()),
    scenario(
        "publish_immediate", "RabbitMQ: 540 NOT_IMPLEMENTED", pub("p-q", immediate=True), Expect(1)
    ),
    scenario(
        "publish_internal_exchange", "403", xd(internal=True), pub("k", exchange="p-x"), Expect(1)
    ),
    scenario(
        "publish_user_id_mismatch",
        "406",
        qd(),
        pub(properties=C.Basic.Properties(user_id="p-someone-else")),
        Expect(1),
    ),
    scenario(
        "publish_user_id_match",
        "accepted",
        qd(),
        pub(properties=C.Basic.Properties(user_id="guest")),
        get(),
    ),
    scenario(
        "publish_fanout_two_queues",
        "fanout",
        qd("p-q1"),
        qd("p-q2"),
        bind("p-q1", "amq.fanout", ""),
        bind("p-q2", "amq.fanout", ""),
        pub("x", exchange="amq.fanout"),
        get("p-q1"),
        get("p-q2"),
    ),
    scenario(
        "publish_topic",
        "topic wildcards",
        qd("p-q1"),
        qd("p-q2"),
        bind("p-q1", "amq.topic", "a.*"),
        bind("p-q2", "amq.topic", "a.#"),
        pub("a.b.c", exchange="amq.topic"),
        get("p-q1"),
        get("p-q2"),
    ),
    scenario(
        "publish_headers_any",
        "headers exchange, x-match any",
        qd(),
        bind(exchange="amq.headers", key="", arguments={"x-match": "any", "a": 1, "b": 2}),
        pub("", exchange="amq.headers", properties=C.Basic.Properties(headers={"b": 2})),
        get(),
    ),
    scenario(
        "publish_alternate_exchange",
        "unroutable goes to the alternate exchange",
        qd(),
        xd("p-ae", "fanout"),
        bind(exchange="p-ae", key=""),
        xd(arguments={"alternate-exchange": "p-ae"}),
        pub("nowhere", exchange="p-x"),
        get(),
    ),
    scenario(
        "publish_content_header_before_method",
        "505 UNEXPECTED_FRAME",
        Raw(frame(2, 1, struct.pack(">HHQH", 60, 0, 1, 0)), note="header without method"),
    ),
    scenario(
        "publish_method_inside_content",
        "505 UNEXPECTED_FRAME: a method before the body",
        Raw(
            frame(1, 1, struct.pack(">HH", 60, 40) + C.Basic.Publish(routing_key="p-q").marshal())
            + frame(2, 1, struct.pack(">HHQH", 60, 0, 5, 0))
            + frame(1, 1, struct.pack(">HH", 50, 10) + C.Queue.Declare(queue="p-q").marshal()),
            note="publish, header for 5 octets, then queue.declare",
        ),
    ),
    scenario(
        "publish_body_larger_than_declared",
        "a body frame past the declared size",
        Publish(1, "", "p-q", b"0123456789", body_size=4),
        sync(),
    ),
    scenario("publish_zero_length_body", "no body frame at all", qd(), pub(body=b""), get()),
]

_CONFIRM = [
    scenario(
        "confirm_select_ack",
        "a confirm per publish",
        qd(),
        Send(1, C.Confirm.Select()),
        pub(),
        Expect(1),
        pub(),
        Expect(1),
    ),
    scenario(
        "confirm_unroutable",
        "an unroutable message is confirmed",
        Send(1, C.Confirm.Select()),
        pub("p-nowhere"),
        Expect(1),
    ),
    scenario(
        "confirm_mandatory_unroutable",
        "basic.return, then basic.ack",
        Send(1, C.Confirm.Select()),
        pub("p-nowhere", mandatory=True),
        Expect(2),
    ),
    scenario(
        "confirm_then_tx", "406 cannot switch", Send(1, C.Confirm.Select()), Send(1, C.Tx.Select())
    ),
    scenario(
        "tx_then_confirm", "406 cannot switch", Send(1, C.Tx.Select()), Send(1, C.Confirm.Select())
    ),
    scenario(
        "confirm_select_twice",
        "select-ok twice",
        Send(1, C.Confirm.Select()),
        Send(1, C.Confirm.Select()),
    ),
    scenario(
        "confirm_select_nowait",
        "nowait",
        Send(1, C.Confirm.Select(nowait=True)),
        qd(),
        pub(),
        Expect(1),
    ),
    scenario(
        "confirm_missing_exchange",
        "404 closes the channel, no confirm",
        Send(1, C.Confirm.Select()),
        pub("k", exchange="p-nox"),
        Expect(1),
    ),
    scenario(
        "confirm_reject_publish_overflow",
        "x-overflow reject-publish: basic.nack",
        qd(arguments={"x-max-length": 1, "x-overflow": "reject-publish"}),
        Send(1, C.Confirm.Select()),
        pub(),
        Expect(1),
        pub(),
        Expect(1),
    ),
    scenario(
        "confirm_durable_persistent",
        "a persistent message on a durable queue",
        qd(durable=True),
        Send(1, C.Confirm.Select()),
        pub(properties=C.Basic.Properties(delivery_mode=2)),
        Expect(1),
    ),
]

_TX = [
    scenario(
        "tx_commit",
        "publish inside a transaction appears at commit",
        qd(),
        Send(1, C.Tx.Select()),
        pub(),
        get(),
        Send(1, C.Tx.Commit()),
        get(),
    ),
    scenario(
        "tx_rollback",
        "rolled back publishes are dropped",
        qd(),
        Send(1, C.Tx.Select()),
        pub(),
        Send(1, C.Tx.Rollback()),
        Send(1, C.Tx.Commit()),
        get(),
    ),
    scenario("tx_commit_without_select", "406", Send(1, C.Tx.Commit())),
    scenario("tx_rollback_without_select", "406", Send(1, C.Tx.Rollback())),
    scenario("tx_select_twice", "select-ok twice", Send(1, C.Tx.Select()), Send(1, C.Tx.Select())),
    scenario(
        "tx_ack_rollback",
        "a rolled back ack leaves the delivery unacked",
        qd(),
        pub(),
        get(no_ack=False),
        Send(1, C.Tx.Select()),
        Send(1, C.Basic.Ack(delivery_tag=1), wait=False),
        Send(1, C.Tx.Rollback()),
        qd(passive=True),
        Send(1, C.Basic.Recover(requeue=True)),
        get(),
    ),
    scenario(
        "tx_ack_commit",
        "a committed ack",
        qd(),
        pub(),
        get(no_ack=False),
        Send(1, C.Tx.Select()),
        Send(1, C.Basic.Ack(delivery_tag=1), wait=False),
        Send(1, C.Tx.Commit()),
        Send(1, C.Basic.Recover(requeue=True)),
        get(),
    ),
    scenario(
        "tx_unknown_tag_ack",
        "406 for an unknown tag inside a transaction",
        Send(1, C.Tx.Select()),
        Send(1, C.Basic.Ack(delivery_tag=7), wait=False),
        Send(1, C.Tx.Commit()),
    ),
    scenario(
        "tx_mandatory_unroutable",
        "basic.return at commit",
        Send(1, C.Tx.Select()),
        pub("p-nowhere", mandatory=True),
        Send(1, C.Tx.Commit()),
    ),
]

_GET_ACK = [
    scenario("basic_get_empty", "get-empty", qd(), get()),
    scenario(
        "basic_get_ok", "get-ok with message count", qd(), pub(body=b"1"), pub(body=b"2"), get()
    ),
    scenario("basic_get_missing_queue", "404", get("p-never")),
    scenario(
        "basic_get_exclusive_other_connection", "405", qd(exclusive=True), SECOND, get(conn=1)
    ),
    scenario("basic_get_empty_name_no_previous", "404", get("")),
    scenario(
        "basic_ack_unknown_tag",
        "406 PRECONDITION_FAILED",
        Send(1, C.Basic.Ack(delivery_tag=5), wait=False),
        sync(),
    ),
    scenario(
        "basic_ack_twice",
        "406 on the second ack",
        qd(),
        pub(),
        get(no_ack=False),
        Send(1, C.Basic.Ack(delivery_tag=1), wait=False),
        Send(1, C.Basic.Ack(delivery_tag=1), wait=False),
        sync(),
    ),
    scenario(
        "basic_ack_multiple",
        "multiple acks everything up to the tag",
        qd(),
        pub(),
        pub(),
        pub(),
        get(no_ack=False),
        get(no_ack=False),
        get(no_ack=False),
        Send(1, C.Basic.Ack(delivery_tag=2, multiple=True), wait=False),
        Send(1, C.Basic.Recover(requeue=True)),
        get(),
    ),
    scenario(
        "basic_ack_zero_multiple",
        "tag 0 with multiple acks everything",
        qd(),
        pub(),
        pub(),
        get(no_ack=False),
        get(no_ack=False),
        Send(1, C.Basic.Ack(delivery_tag=0, multiple=True), wait=False),
        Send(1, C.Basic.Recover(requeue=True)),
        get(),
    ),
    scenario(
        "basic_ack_no_ack_delivery",
        "acking a no-ack get is an unknown tag",
        qd(),
        pub(),
        get(),
        Send(1, C.Basic.Ack(delivery_tag=1), wait=False),
        sync(),
    ),
    scenario(
        "basic_reject_requeue",
        "requeued: redelivered",
        qd(),
        pub(),
        get(no_ack=False),
        Send(1, C.Basic.Reject(delivery_tag=1, requeue=True), wait=False),
        get(),
    ),
    scenario(
        "basic_reject_discard",
        "dropped",
        qd(),
        pub(),
        get(no_ack=False),
        Send(1, C.Basic.Reject(delivery_tag=1, requeue=False), wait=False),
        get(),
    ),
    scenario(
        "basic_nack_multiple_requeue",
        "nack multiple",
        qd(),
        pub(),
        pub(),
        get(no_ack=False),
        get(no_ack=False),
        Send(1, C.Basic.Nack(delivery_tag=2, multiple=True, requeue=True), wait=False),
        get(),
        get(),
    ),
    scenario(
        "basic_reject_unknown_tag",
        "406",
        Send(1, C.Basic.Reject(delivery_tag=3), wait=False),
        sync(),
    ),
    scenario(
        "basic_ack_other_channel_tag",
        "tags are per channel",
        qd(),
        pub(),
        get(no_ack=False),
        open_ch(2),
        Send(2, C.Basic.Ack(delivery_tag=1), wait=False),
        sync(2),
    ),
    scenario(
        "basic_reject_dead_letters",
        "rejected with requeue=false goes to the DLX",
        qd("p-dlq"),
        qd("p-q", arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "p-dlq"}),
        pub(),
        get(no_ack=False),
        Send(1, C.Basic.Reject(delivery_tag=1, requeue=False), wait=False),
        get("p-dlq"),
    ),
    scenario(
        "basic_close_channel_requeues",
        "closing a channel requeues its unacked",
        qd(),
        pub(),
        get(no_ack=False),
        close_ch(1),
        open_ch(1),
        get(),
    ),
    scenario(
        "max_length_drop_head",
        "x-max-length drops the oldest",
        qd(arguments={"x-max-length": 1}),
        pub(body=b"old"),
        pub(body=b"new"),
        get(),
        get(),
    ),
]

_CONSUME = [
    scenario("basic_consume_ok", "consume-ok then deliveries", qd(), pub(), consume(), Expect(1)),
    scenario(
        "basic_consume_server_tag", "an empty tag gets a server-made one", qd(), consume(tag="")
    ),
    scenario("basic_consume_missing_queue", "404", consume("p-never")),
    scenario(
        "basic_consume_duplicate_tag",
        "530 NOT_ALLOWED for a tag in use",
        qd(),
        consume(),
        consume(),
    ),
    scenario(
        "basic_consume_exclusive_with_others",
        "403 ACCESS_REFUSED",
        qd(),
        consume(),
        consume(tag="p-tag2", exclusive=True),
    ),
    scenario(
        "basic_consume_after_exclusive",
        "403 ACCESS_REFUSED",
        qd(),
        consume(exclusive=True),
        consume(tag="p-tag2"),
    ),
    scenario(
        "basic_consume_exclusive_queue_other_connection",
        "405",
        qd(exclusive=True),
        SECOND,
        consume(conn=1),
    ),
    scenario(
        "basic_consume_no_ack",
        "no_ack deliveries",
        qd(),
        pub(),
        pub(),
        consume(no_ack=True),
        Expect(2),
    ),
    scenario(
        "basic_consume_nowait",
        "nowait: no consume-ok",
        qd(),
        pub(),
        consume(nowait=True),
        Expect(1),
    ),
    scenario(
        "basic_cancel_ok",
        "cancel-ok",
        qd(),
        consume(),
        Send(1, C.Basic.Cancel(consumer_tag="p-tag")),
    ),
    scenario(
        "basic_cancel_unknown",
        "cancel-ok for an unknown tag",
        Send(1, C.Basic.Cancel(consumer_tag="p-none")),
    ),
    scenario(
        "basic_cancel_requeue_on_close",
        "unacked of a cancelled consumer stay unacked",
        qd(),
        pub(),
        consume(),
        Expect(1),
        Send(1, C.Basic.Cancel(consumer_tag="p-tag")),
        qd(passive=True),
    ),
    scenario(
        "basic_consume_invalid_priority",
        "406 for a non-integer x-priority",
        qd(),
        consume(arguments={"x-priority": "high"}),
    ),
    scenario(
        "basic_consume_on_two_channels",
        "round robin",
        qd(),
        open_ch(2),
        consume(tag="p-a"),
        consume(ch=2, tag="p-b"),
        pub(body=b"1"),
        pub(body=b"2"),
        Expect(2),
    ),
    scenario(
        "basic_consume_empty_name", "the last declared queue", qd(), pub(), consume(""), Expect(1)
    ),
]

_QOS = [
    scenario(
        "basic_qos_prefetch_one",
        "one unacked delivery at a time",
        qd(),
        pub(body=b"1"),
        pub(body=b"2"),
        Send(1, C.Basic.Qos(prefetch_count=1)),
        consume(),
        Expect(1),
        qd(passive=True),
        Send(1, C.Basic.Ack(delivery_tag=1), wait=False),
        Expect(1),
    ),
    scenario(
        "basic_qos_prefetch_size",
        "RabbitMQ: 540 NOT_IMPLEMENTED for prefetch_size",
        Send(1, C.Basic.Qos(prefetch_size=1000)),
    ),
    scenario(
        "basic_qos_global", "global prefetch", Send(1, C.Basic.Qos(prefetch_count=5, global_=True))
    ),
    scenario("basic_qos_zero", "unlimited", Send(1, C.Basic.Qos(prefetch_count=0))),
    scenario(
        "basic_qos_raise_keeps_consumer_prefetch",
        "basic.qos (global=false) applies to consumers started after it",
        qd(),
        pub(body=b"1"),
        pub(body=b"2"),
        Send(1, C.Basic.Qos(prefetch_count=1)),
        consume(),
        Expect(1),
        Send(1, C.Basic.Qos(prefetch_count=2)),
        qd(passive=True),
    ),
]

_RECOVER = [
    scenario(
        "basic_recover_requeue",
        "unacked gets are requeued, redelivered",
        qd(),
        pub(),
        get(no_ack=False),
        Send(1, C.Basic.Recover(requeue=True)),
        get(),
    ),
    scenario(
        "basic_recover_no_requeue",
        "RabbitMQ: requeue=false is 540",
        Send(1, C.Basic.Recover(requeue=False)),
    ),
    scenario(
        "basic_recover_consumer",
        "a consumer gets its unacked again",
        qd(),
        pub(),
        consume(),
        Expect(1),
        Send(1, C.Basic.Recover(requeue=True)),
        Expect(1),
    ),
    scenario(
        "basic_recover_async",
        "recover-async: no reply",
        qd(),
        pub(),
        get(no_ack=False),
        Send(1, _recover_async(), wait=False),
        get(),
    ),
]

_CHANNEL = [
    scenario("channel_open_twice", "504 CHANNEL_ERROR", open_ch(1)),
    scenario("channel_method_unopened", "504", qd(ch=9)),
    scenario(
        "channel_close_then_reopen", "close-ok, then open again", close_ch(1), open_ch(1), qd()
    ),
    scenario("channel_flow_active", "flow-ok", Send(1, C.Channel.Flow(active=True))),
    scenario(
        "channel_flow_inactive",
        "RabbitMQ 3.x does not support active=false",
        Send(1, C.Channel.Flow(active=False)),
    ),
    scenario(
        "channel_close_ok_unexpected",
        "an unsolicited close-ok",
        Send(1, C.Channel.CloseOk(), wait=False),
        sync(),
    ),
    scenario(
        "channel_number_65535", "any channel number may be used", open_ch(65535), qd(ch=65535)
    ),
    scenario(
        "channel_max_reached",
        "530 when one channel too many is opened",
        open_ch(2),
        open_ch(3),
        connect=Connect(channel_max=2),
    ),
    scenario(
        "channel_max_number_above",
        "numbers above channel_max are fine",
        open_ch(500),
        connect=Connect(channel_max=2),
    ),
    scenario(
        "channel_max_after_close",
        "a closed channel frees its place",
        close_ch(1),
        open_ch(2),
        open_ch(3),
        connect=Connect(channel_max=2),
    ),
    scenario("channel_close_on_unopened", "channel.close on an unopened channel", close_ch(4)),
    scenario(
        "channel_many_errors_other_channel_ok",
        "a channel error leaves others open",
        open_ch(2),
        qd(passive=True),
        qd("p-q", ch=2),
    ),
]

_CONNECTION = [
    scenario(
        "connection_bad_password",
        "403 ACCESS_REFUSED, then the socket closes",
        connect=Connect(password="wrong", channel=0, record_handshake=True),
    ),
    scenario(
        "connection_unknown_user",
        "403",
        connect=Connect(user="p-nobody", password="x", channel=0, record_handshake=True),
    ),
    scenario(
        "connection_missing_vhost",
        "530 NOT_ALLOWED",
        connect=Connect(vhost="p-novhost", channel=0, record_handshake=True),
    ),
    scenario(
        "connection_frame_max_small",
        "a frame_max below 4096 in tune-ok",
        connect=Connect(frame_max=1024, channel=0, record_handshake=True),
    ),
    scenario(
        "connection_frame_max_too_big",
        "a frame_max above the server's",
        connect=Connect(frame_max=10_000_000, channel=0, record_handshake=True),
    ),
    scenario(
        "connection_channel_max_too_big",
        "a channel_max above the server's",
        connect=Connect(channel_max=65535, channel=0, record_handshake=True),
    ),
    scenario(
        "connection_close_by_client",
        "close-ok, then the server hangs up",
        Send(0, C.Connection.Close(200, "bye", 0, 0)),
    ),
    scenario(
        "connection_oversized_frame",
        "501 FRAME_ERROR",
        Raw(frame(1, 1, b"\x00" * 5000), note="a 5008-octet frame, frame_max 4096"),
        connect=Connect(frame_max=4096),
    ),
    scenario(
        "connection_body_frame_exactly_frame_max",
        "a body frame with frame_max payload",
        qd(),
        Publish(1, "", "p-q", b"b" * 8192, frame_size=4096),
        get(),
        connect=Connect(frame_max=4096),
    ),
    scenario(
        "connection_body_frame_over_frame_max",
        "frame_max + 1 payload octets: 501",
        qd(),
        Publish(1, "", "p-q", b"b" * 4097, frame_size=4097),
        sync(),
        connect=Connect(frame_max=4096),
    ),
    scenario("connection_unknown_frame_type", "501", Raw(frame(9, 1, b"abc"), note="frame type 9")),
    scenario(
        "connection_bad_frame_end",
        "501",
        Raw(frame(8, 0, b"", end=b"\x00"), note="heartbeat with frame-end 0x00"),
    ),
    scenario(
        "connection_heartbeat_on_channel",
        "heartbeat on channel 1",
        Raw(frame(8, 1, b""), note="heartbeat on channel 1"),
    ),
    scenario(
        "connection_unknown_method",
        "an unknown class and method",
        Raw(frame(1, 1, struct.pack(">HH", 99, 99)), note="method 99.99"),
    ),
    scenario(
        "connection_body_without_header",
        "a body frame with no content header",
        Raw(frame(3, 1, b"body"), note="body frame only"),
    ),
    scenario(
        "connection_hangup",
        "the client drops the socket; another connection goes on",
        SECOND,
        Hangup(1),
        qd(),
    ),
    scenario(
        "connection_second_header",
        "a protocol header after the handshake",
        Raw(b"AMQP\x00\x00\x09\x01", note="protocol header again"),
    ),
    scenario(
        "connection_method_on_channel_zero",
        "a channel method on channel 0",
        Raw(
            frame(1, 0, struct.pack(">HH", 50, 10) + C.Queue.Declare(queue="p-q").marshal()),
            note="queue.declare on channel 0",
        ),
    ),
]

_ACCESS = [
    scenario(
        "access_declare_refused",
        "403 for a queue the user may not configure",
        qd("p-other"),
        connect=PARITY,
    ),
    scenario(
        "access_declare_own", "allowed by the configure pattern", qd("p-own-q"), connect=PARITY
    ),
    scenario(
        "access_passive_declare_needs_nothing",
        "passive declare needs no permission",
        qd("p-other", passive=True),
        connect=PARITY,
    ),
    scenario(
        "access_delete_refused",
        "403 before looking for the queue",
        Send(1, C.Queue.Delete(queue="p-other")),
        connect=PARITY,
    ),
    scenario(
        "access_bind_write_refused",
        "403 without write on the queue",
        bind("p-other", "amq.direct"),
        connect=PARITY,
    ),
    scenario(
        "access_bind_read_refused",
        "403 without read on the exchange",
        qd("p-own-q"),
        bind("p-own-q", "amq.topic"),
        connect=PARITY,
    ),
    scenario(
        "access_publish_refused",
        "403 without write on the exchange",
        pub("k", exchange="amq.topic"),
        Expect(1),
        connect=PARITY,
    ),
    scenario("access_get_refused", "403 without read on the queue", get("p-other"), connect=PARITY),
    scenario("access_exchange_declare_refused", "403", xd("p-x"), connect=PARITY),
    scenario(
        "access_exchange_delete_refused_missing",
        "403 even for a missing exchange",
        Send(1, C.Exchange.Delete(exchange="p-x")),
        connect=PARITY,
    ),
]

NOPERM = Connect(user=NOPERM_USER[0], password=NOPERM_USER[1], channel=0, record_handshake=True)

_MORE = [
    scenario(
        "queue_declare_quorum",
        "a durable quorum queue",
        qd(durable=True, arguments={"x-queue-type": "quorum"}),
    ),
    scenario(
        "queue_declare_quorum_not_durable",
        "406: quorum queues are durable",
        qd(arguments={"x-queue-type": "quorum"}),
    ),
    scenario(
        "queue_declare_quorum_exclusive",
        "406: quorum queues cannot be exclusive",
        qd(durable=True, exclusive=True, arguments={"x-queue-type": "quorum"}),
    ),
    scenario(
        "queue_declare_unknown_queue_type",
        "406 for an unknown x-queue-type",
        qd(arguments={"x-queue-type": "p-bogus"}),
    ),
    scenario(
        "queue_declare_expires_zero",
        "406: x-expires must be positive",
        qd(arguments={"x-expires": 0}),
    ),
    scenario(
        "queue_declare_negative_max_length",
        "406: x-max-length must not be negative",
        qd(arguments={"x-max-length": -1}),
    ),
    scenario(
        "queue_declare_dlrk_without_dlx",
        "x-dead-letter-routing-key without an exchange",
        qd(arguments={"x-dead-letter-routing-key": "k"}),
    ),
    scenario(
        "queue_declare_ttl_string",
        "406 for a string x-message-ttl",
        qd(arguments={"x-message-ttl": "1000"}),
    ),
    scenario(
        "queue_declare_single_active_consumer",
        "single active consumer",
        qd(arguments={"x-single-active-consumer": True}),
        consume(tag="p-a"),
        consume(tag="p-b"),
        pub(),
        Expect(1),
    ),
    scenario(
        "queue_declare_priority",
        "a priority queue orders by priority",
        qd(arguments={"x-max-priority": 5}),
        pub(body=b"low", properties=C.Basic.Properties(priority=1)),
        pub(body=b"high", properties=C.Basic.Properties(priority=4)),
        get(),
        get(),
    ),
    scenario(
        "exchange_declare_delayed_type",
        "the delayed-message exchange type",
        xd("p-delayed", "x-delayed-message", arguments={"x-delayed-type": "direct"}),
    ),
    scenario(
        "exchange_declare_amq_prefix_passive_missing",
        "404 for a missing amq.* name",
        xd("amq.p-none", passive=True),
    ),
    scenario(
        "publish_headers_all",
        "headers exchange, x-match all",
        qd(),
        bind(exchange="amq.headers", key="", arguments={"x-match": "all", "a": 1, "b": 2}),
        pub("", exchange="amq.headers", properties=C.Basic.Properties(headers={"b": 2})),
        pub(
            "",
            exchange="amq.headers",
            body=b"both",
            properties=C.Basic.Properties(headers={"a": 1, "b": 2}),
        ),
        get(),
        get(),
    ),
    scenario(
        "publish_topic_hash_only",
        "# matches every key",
        qd(),
        bind(exchange="amq.topic", key="#"),
        pub("", exchange="amq.topic"),
        pub("a.b", exchange="amq.topic"),
        get(),
        get(),
    ),
    scenario(
        "publish_mandatory_alternate",
        "routed by the alternate exchange: no return",
        qd(),
        xd("p-ae", "fanout"),
        bind(exchange="p-ae", key=""),
        xd(arguments={"alternate-exchange": "p-ae"}),
        pub("nowhere", exchange="p-x", mandatory=True),
        get(),
    ),
    scenario(
        "publish_mandatory_to_empty_fanout",
        "basic.return from a fanout with no queues",
        xd("p-x", "fanout"),
        pub("", exchange="p-x", mandatory=True),
        Expect(1),
    ),
    scenario(
        "tx_publish_missing_exchange",
        "404 at publish time, inside a transaction",
        Send(1, C.Tx.Select()),
        pub("k", exchange="p-nox"),
        Expect(1),
    ),
    scenario(
        "basic_consume_exclusive_other_connection",
        "403 for an exclusive consumer's queue from another connection",
        qd(),
        consume(exclusive=True),
        SECOND,
        consume(conn=1, tag="p-other"),
    ),
    scenario(
        "basic_consume_no_local",
        "no_local is accepted (and ignored)",
        qd(),
        consume(no_local=True),
        pub(),
        Expect(1),
    ),
    scenario(
        "basic_ack_multiple_unknown",
        "406 for multiple up to an unknown tag",
        Send(1, C.Basic.Ack(delivery_tag=9, multiple=True), wait=False),
        sync(),
    ),
    scenario(
        "basic_nack_without_requeue_multiple_zero",
        "nack 0 multiple drops all",
        qd(),
        pub(),
        pub(),
        get(no_ack=False),
        get(no_ack=False),
        Send(1, C.Basic.Nack(delivery_tag=0, multiple=True, requeue=False), wait=False),
        qd(passive=True),
    ),
    scenario(
        "queue_purge_with_consumer_unacked",
        "purge leaves a consumer's unacked",
        qd(),
        pub(),
        pub(),
        Send(1, C.Basic.Qos(prefetch_count=1)),
        consume(),
        Expect(1),
        Send(1, C.Queue.Purge(queue="p-q")),
    ),
    scenario(
        "exchange_auto_delete_source_unbind",
        "an auto-delete source exchange goes with its last binding",
        xd("p-src", "fanout", auto_delete=True),
        xd("p-dst"),
        Send(1, C.Exchange.Bind(destination="p-dst", source="p-src", routing_key="")),
        Send(1, C.Exchange.Unbind(destination="p-dst", source="p-src", routing_key="")),
        xd("p-src", "fanout", passive=True),
    ),
    scenario(
        "connection_vhost_refused", "530 for a vhost the user has no permission on", connect=NOPERM
    ),
    scenario(
        "queue_bind_nowait_missing_exchange",
        "nowait: the 404 arrives on its own",
        qd(),
        bind(exchange="p-nox", nowait=True),
        Expect(1),
    ),
    scenario(
        "queue_declare_exclusive_after_owner_closed_channel",
        "the owner's other channel still owns it",
        qd(exclusive=True),
        close_ch(1),
        open_ch(2),
        qd(ch=2, exclusive=True, passive=True),
        qd(ch=2, exclusive=True),
    ),
]

SCENARIOS: tuple[Scenario, ...] = tuple(
    _Q_DECLARE
    + _Q_DELETE
    + _Q_PURGE
    + _Q_BIND
    + _Q_UNBIND
    + _X_DECLARE
    + _X_DELETE
    + _X_BIND
    + _PUBLISH
    + _CONFIRM
    + _TX
    + _GET_ACK
    + _CONSUME
    + _QOS
    + _RECOVER
    + _CHANNEL
    + _CONNECTION
    + _ACCESS
    + _MORE
)

assert len({s.name for s in SCENARIOS}) == len(SCENARIOS), "scenario names must be unique"
