"""STOMP parity scenarios: raw frame sequences whose answers RabbitMQ 3.10 recorded.

Every scenario opens connection 0 and, unless it is about CONNECT itself,
logs in as guest with STOMP 1.2 (`login()`). Queues are named `p-<scenario>`
so that no two scenarios share one and a recording against a RabbitMQ with
other work on it touches nothing else; each scenario acks or drains what it
sends. Grouped by frame: CONNECT, SEND/SUBSCRIBE, ACK/NACK, transactions,
bodies and headers, errors, DISCONNECT.
"""

from __future__ import annotations

from tests.parity.stomp_runner import ack_of, frame, last_ack
from tests.parity.stream_runner import (
    ConnectionState,
    Expect,
    ExpectClose,
    ExpectHeartbeat,
    Open,
    Scenario,
    Send,
    Step,
)

GUEST = {"login": "guest", "passcode": "guest"}


def connect(
    version: str | None = "1.2", conn: int = 0, command: str = "CONNECT", **headers: str
) -> Send:
    """A CONNECT (or STOMP) frame; `version` None leaves `accept-version` out (STOMP 1.0)."""
    base: dict[str, str] = {}
    if version is not None:
        base["accept-version"] = version
        base["host"] = "/"
    return Send(frame(command, {**base, **GUEST, **headers}), conn)


def login(version: str | None = "1.2", conn: int = 0, **headers: str) -> tuple[Step, ...]:
    return (Open(conn), connect(version, conn, **headers))


def send(
    dest: str,
    body: bytes = b"m",
    conn: int = 0,
    receipt: str | None = "s",
    wait: tuple[str, ...] | None = None,
    **headers: str,
) -> Send:
    """A SEND; with a receipt it waits for the RECEIPT unless `wait` says otherwise (RabbitMQ
    answers a transactional SEND's receipt only at COMMIT)."""
    h = {"destination": dest, **headers}
    if receipt:
        h["receipt"] = receipt
    return Send(frame("SEND", h, body), conn, wait)


def subscribe(
    dest: str,
    id_: str | None = "0",
    ack: str | None = None,
    conn: int = 0,
    receipt: str | None = "sub",
    **headers: str,
) -> Send:
    h = {"destination": dest}
    if id_ is not None:
        h["id"] = id_
    if ack is not None:
        h["ack"] = ack
    h.update(headers)
    if receipt:
        h["receipt"] = receipt
    return Send(frame("SUBSCRIBE", h), conn)


def ack(
    command: str = "ACK",
    index: int | None = None,
    conn: int = 0,
    receipt: str = "a",
    header: str = "id",
    **headers: str,
) -> Send:
    """ACK/NACK the last MESSAGE (or the `index`-th) this connection received."""

    def build(state: ConnectionState) -> bytes:
        value = last_ack(state) if index is None else ack_of(index, state)
        return frame(command, {header: value, **headers, "receipt": receipt})

    return Send(build, conn)


def sync(conn: int = 0, tag: str = "sync") -> Send:
    """A round trip: every answer sent before it has arrived (a receipted no-op UNSUBSCRIBE
    of a subscription made just for it)."""
    return Send(
        frame("SUBSCRIBE", {"destination": "/topic/p-sync", "id": tag, "receipt": tag}), conn
    )


def sc(
    name: str, doc: str, *steps: Step, queues: tuple[str, ...] = (), ordered: bool = False
) -> Scenario:
    return Scenario(name, doc, tuple(steps), queues, ordered)


def q(name: str) -> str:
    return f"/queue/p-{name}"


def _qs(*names: str) -> tuple[str, ...]:
    return tuple(f"p-{n}" for n in names)


_CONNECT = [
    sc("connect_10", "CONNECT without accept-version is STOMP 1.0", Open(), connect(None)),
    sc("connect_11", "accept-version:1.1", Open(), connect("1.1")),
    sc("connect_12", "accept-version:1.2", Open(), connect("1.2")),
    sc(
        "connect_highest_common",
        "accept-version lists several: the highest common wins",
        Open(),
        connect("1.0,1.1,1.2"),
    ),
    sc(
        "connect_unsupported_version",
        "no common version: ERROR naming the supported ones",
        Open(),
        connect("2.0"),
    ),
    sc(
        "connect_stomp_command",
        "the STOMP command instead of CONNECT (1.2)",
        Open(),
        connect("1.2", command="STOMP"),
    ),
    sc(
        "connect_heartbeat_server_sends",
        "heart-beat:0,1000 asks the server for heart-beats",
        Open(),
        connect("1.2", **{"heart-beat": "0,1000"}),
        ExpectHeartbeat(),
    ),
    sc(
        "connect_heartbeat_both",
        "heart-beat:2000,3000: the server answers its side of each",
        Open(),
        connect("1.2", **{"heart-beat": "2000,3000"}),
    ),
    sc(
        "connect_heartbeat_invalid",
        "heart-beat:x,y is not two numbers",
        Open(),
        connect("1.2", **{"heart-beat": "x,y"}),
    ),
    sc(
        "connect_wrong_password",
        "a wrong passcode: ERROR, then closed",
        Open(),
        Send(
            frame(
                "CONNECT",
                {"accept-version": "1.2", "host": "/", "login": "guest", "passcode": "nope"},
            )
        ),
    ),
    sc(
        "connect_unknown_user",
        "an unknown login",
        Open(),
        Send(
            frame(
                "CONNECT",
                {"accept-version": "1.2", "host": "/", "login": "p-nobody", "passcode": "x"},
            )
        ),
    ),
    sc(
        "connect_missing_host_12",
        "STOMP 1.2 CONNECT without host",
        Open(),
        Send(frame("CONNECT", {"accept-version": "1.2", **GUEST})),
    ),
    sc("connect_twice", "a second CONNECT on a connected session", *login(), connect("1.2")),
    sc("frame_before_connect", "SEND before CONNECT", Open(), send(q("fbc"), receipt="r")),
    sc(
        "garbage_before_connect",
        "bytes that are no frame before CONNECT",
        Open(),
        Send(b"HELLO WORLD\n\n\0", wait=("CONNECTED",)),
    ),
    sc(
        "connect_huge_header_before_login",
        "a CONNECT with a 100 KiB header",
        Open(),
        Send(
            frame(
                "CONNECT", {"accept-version": "1.2", "host": "/", **GUEST, "x-big": "a" * 100_000}
            )
        ),
    ),
]

_SEND_SUBSCRIBE = [
    sc(
        "send_receipt_queue",
        "SEND with a receipt to a /queue/",
        *login(),
        send(q("srq")),
        subscribe(q("srq")),
        Expect(1),
        queues=_qs("srq"),
    ),
    sc(
        "subscribe_receipt_before_messages",
        "SUBSCRIBE with a receipt on a queue that holds messages: RECEIPT first, then MESSAGEs",
        *login(),
        send(q("srbm"), b"1"),
        send(q("srbm"), b"2"),
        subscribe(q("srbm")),
        Expect(2),
        queues=_qs("srbm"),
        ordered=True,
    ),
    sc(
        "send_topic_to_subscriber",
        "a /topic/ message reaches a subscriber",
        *login(),
        subscribe("/topic/p-t1"),
        send("/topic/p-t1", b"t"),
        Expect(1),
    ),
    sc(
        "send_topic_no_subscriber",
        "a /topic/ message nobody subscribed to is dropped; a later subscriber gets nothing",
        *login(),
        send("/topic/p-t2", b"lost"),
        subscribe("/topic/p-t2"),
        sync(),
    ),
    sc(
        "topic_two_subscribers",
        "two subscriptions on one topic each get the message",
        *login(),
        subscribe("/topic/p-t3", "a", receipt="ra"),
        subscribe("/topic/p-t3", "b", receipt="rb"),
        send("/topic/p-t3", b"both"),
        Expect(2),
    ),
    sc(
        "send_missing_destination",
        "SEND without destination",
        *login(),
        Send(frame("SEND", {"receipt": "r"}, b"x")),
    ),
    sc(
        "subscribe_missing_destination",
        "SUBSCRIBE without destination",
        *login(),
        Send(frame("SUBSCRIBE", {"id": "0", "receipt": "r"})),
    ),
    sc(
        "subscribe_missing_id_12",
        "STOMP 1.2 SUBSCRIBE without id",
        *login(),
        subscribe(q("smi"), id_=None),
        queues=_qs("smi"),
    ),
    sc(
        "subscribe_10_without_id",
        "STOMP 1.0 SUBSCRIBE without id: MESSAGE names the subscription after the destination",
        *login(None),
        subscribe(q("s10"), id_=None),
        send(q("s10")),
        Expect(1),
        queues=_qs("s10"),
    ),
    sc(
        "subscribe_duplicate_id",
        "a second SUBSCRIBE with an id in use",
        *login(),
        subscribe(q("sdi")),
        subscribe(q("sdi2"), receipt="again"),
        queues=_qs("sdi", "sdi2"),
    ),
    sc(
        "unsubscribe_then_send",
        "after UNSUBSCRIBE (receipted) nothing more arrives",
        *login(),
        subscribe(q("uts")),
        Send(frame("UNSUBSCRIBE", {"id": "0", "receipt": "u"})),
        send(q("uts")),
        sync(),
        queues=_qs("uts"),
    ),
    sc(
        "unsubscribe_unknown_id",
        "UNSUBSCRIBE of an id never subscribed",
        *login(),
        Send(frame("UNSUBSCRIBE", {"id": "nope", "receipt": "u"})),
        sync(),
    ),
    sc(
        "unsubscribe_missing_id",
        "UNSUBSCRIBE without id or destination",
        *login(),
        Send(frame("UNSUBSCRIBE", {"receipt": "u"})),
    ),
    sc(
        "exchange_destination",
        "/exchange/amq.direct/key: subscribe, then send",
        *login(),
        subscribe("/exchange/amq.direct/p-k"),
        send("/exchange/amq.direct/p-k", b"x"),
        Expect(1),
    ),
    sc(
        "exchange_missing",
        "SEND to /exchange/ of an exchange that does not exist",
        *login(),
        send("/exchange/p-nothing/k"),
    ),
    sc(
        "amq_queue_missing",
        "SUBSCRIBE to /amq/queue/ of a queue that does not exist",
        *login(),
        subscribe("/amq/queue/p-nothing"),
    ),
    sc(
        "amq_queue_existing",
        "/amq/queue/ reaches a queue /queue/ declared",
        *login(),
        send(q("aqe"), b"1"),
        subscribe("/amq/queue/p-aqe"),
        Expect(1),
        queues=_qs("aqe"),
    ),
    sc("invalid_destination", "a destination of no known kind", *login(), send("/nowhere/x")),
    sc(
        "custom_headers_pass_through",
        "user headers and content-type reach the subscriber",
        *login(),
        subscribe(q("chp")),
        send(q("chp"), b"{}", **{"content-type": "application/json", "x-p-custom": "v"}),
        Expect(1),
        queues=_qs("chp"),
    ),
    sc(
        "prefetch_count_one",
        "prefetch-count:1 with ack:client-individual: one message until it is acked",
        *login(),
        send(q("pc1"), b"1", receipt="s1"),
        send(q("pc1"), b"2", receipt="s2"),
        subscribe(q("pc1"), ack="client-individual", **{"prefetch-count": "1"}),
        Expect(1),
        sync(),
        ack(),
        Expect(1),
        ack(receipt="a2"),
        queues=_qs("pc1"),
    ),
]

_ACKS = [
    sc(
        "ack_auto_mode_ack",
        "ACK of a message delivered in auto mode",
        *login(),
        subscribe(q("aam")),
        send(q("aam")),
        Expect(1),
        ack(),
        ExpectClose(),  # RabbitMQ: the ERROR comes later, from the AMQP channel
        queues=_qs("aam"),
    ),
    sc(
        "ack_client_cumulative",
        "ack:client: ACK of the second message acks both; nothing comes back after reconnecting",
        *login(),
        subscribe(q("acc"), ack="client"),
        send(q("acc"), b"1", receipt="s1"),
        send(q("acc"), b"2", receipt="s2"),
        Expect(2),
        ack(),
        Send(frame("DISCONNECT", {"receipt": "d"})),
        ExpectClose(),
        *login(conn=1),
        subscribe(q("acc"), conn=1),
        sync(1),
        queues=_qs("acc"),
    ),
    sc(
        "ack_client_individual",
        "ack:client-individual: ACK of the second message only; the first comes back",
        *login(),
        subscribe(q("aci"), ack="client-individual"),
        send(q("aci"), b"1", receipt="s1"),
        send(q("aci"), b"2", receipt="s2"),
        Expect(2),
        ack(),
        Send(frame("DISCONNECT", {"receipt": "d"})),
        ExpectClose(),
        *login(conn=1),
        subscribe(q("aci"), conn=1),
        Expect(1, conn=1),
        queues=_qs("aci"),
    ),
    sc(
        "nack_requeues",
        "NACK (1.2) of a client-individual message: it is delivered again, redelivered",
        *login(),
        subscribe(q("nrq"), ack="client-individual"),
        send(q("nrq")),
        Expect(1),
        ack("NACK", receipt="n"),
        Expect(1),
        ack(receipt="a2"),
        queues=_qs("nrq"),
    ),
    sc(
        "nack_requeue_false",
        "NACK with requeue:false drops the message",
        *login(),
        subscribe(q("nrf"), ack="client-individual"),
        send(q("nrf")),
        Expect(1),
        ack("NACK", receipt="n", requeue="false"),
        sync(),
        queues=_qs("nrf"),
    ),
    sc(
        "ack_unknown_id",
        "ACK of an id no message has",
        *login(),
        subscribe(q("aui"), ack="client"),
        Send(frame("ACK", {"id": "p-unknown", "receipt": "a"})),
        queues=_qs("aui"),
    ),
    sc(
        "ack_missing_id_12",
        "STOMP 1.2 ACK without id",
        *login(),
        Send(frame("ACK", {"receipt": "a"})),
    ),
    sc(
        "ack_11_message_id",
        "STOMP 1.1 ACK names message-id and subscription",
        *login("1.1"),
        subscribe(q("a11"), ack="client"),
        send(q("a11")),
        Expect(1),
        ack(header="message-id", subscription="0"),
        sync(),
        queues=_qs("a11"),
    ),
    sc(
        "ack_twice",
        "the same ACK sent twice",
        *login(),
        subscribe(q("atw"), ack="client-individual"),
        send(q("atw")),
        Expect(1),
        ack(),
        ack(receipt="a2"),
        ExpectClose(),  # RabbitMQ: the ERROR comes later, from the AMQP channel
        queues=_qs("atw"),
    ),
]

_TX = [
    sc(
        "tx_commit",
        "SEND in a transaction reaches the queue at COMMIT",
        *login(),
        subscribe(q("txc")),
        Send(frame("BEGIN", {"transaction": "t1", "receipt": "b"})),
        send(q("txc"), b"in-tx", transaction="t1", wait=()),
        sync(),
        Send(frame("COMMIT", {"transaction": "t1", "receipt": "c"})),
        Expect(1),
        queues=_qs("txc"),
    ),
    sc(
        "tx_abort",
        "SEND in an aborted transaction never arrives",
        *login(),
        subscribe(q("txa")),
        Send(frame("BEGIN", {"transaction": "t1", "receipt": "b"})),
        send(q("txa"), b"aborted", transaction="t1", wait=()),
        Send(frame("ABORT", {"transaction": "t1", "receipt": "ab"})),
        send(q("txa"), b"after"),
        Expect(1),
        queues=_qs("txa"),
    ),
    sc(
        "tx_commit_unknown",
        "COMMIT of a transaction never begun",
        *login(),
        Send(frame("COMMIT", {"transaction": "nope", "receipt": "c"})),
    ),
    sc(
        "tx_abort_unknown",
        "ABORT of a transaction never begun",
        *login(),
        Send(frame("ABORT", {"transaction": "nope", "receipt": "c"})),
    ),
    sc(
        "tx_begin_twice",
        "BEGIN of a transaction already begun",
        *login(),
        Send(frame("BEGIN", {"transaction": "t1", "receipt": "b"})),
        Send(frame("BEGIN", {"transaction": "t1", "receipt": "b2"})),
    ),
    sc(
        "tx_begin_missing_name",
        "BEGIN without transaction header",
        *login(),
        Send(frame("BEGIN", {"receipt": "b"})),
    ),
    sc(
        "tx_send_unknown",
        "SEND naming a transaction never begun",
        *login(),
        send(q("txu"), transaction="nope"),
        queues=_qs("txu"),
    ),
    sc(
        "tx_ack_commit",
        "ACK in a transaction takes effect at COMMIT",
        *login(),
        subscribe(q("tak"), ack="client-individual"),
        send(q("tak")),
        Expect(1),
        Send(frame("BEGIN", {"transaction": "t", "receipt": "b"})),
        ack(transaction="t"),
        Send(frame("COMMIT", {"transaction": "t", "receipt": "c"})),
        Send(frame("DISCONNECT", {"receipt": "d"})),
        ExpectClose(),
        *login(conn=1),
        subscribe(q("tak"), conn=1),
        sync(1),
        queues=_qs("tak"),
    ),
    sc(
        "tx_ack_abort",
        "ACK in an aborted transaction: the message stays unacked, comes back after reconnecting",
        *login(),
        subscribe(q("tab"), ack="client-individual"),
        send(q("tab")),
        Expect(1),
        Send(frame("BEGIN", {"transaction": "t", "receipt": "b"})),
        ack(transaction="t"),
        Send(frame("ABORT", {"transaction": "t", "receipt": "ab"})),
        Send(frame("DISCONNECT", {"receipt": "d"})),
        ExpectClose(),
        *login(conn=1),
        subscribe(q("tab"), conn=1),
        Expect(1, conn=1),
        queues=_qs("tab"),
    ),
]

_BODIES = [
    sc(
        "content_length_nul_in_body",
        "content-length lets a body carry NUL octets",
        *login(),
        subscribe(q("cln")),
        Send(
            frame(
                "SEND", {"destination": q("cln"), "content-length": "5", "receipt": "s"}, b"a\0b\0c"
            )
        ),
        Expect(1),
        queues=_qs("cln"),
    ),
    sc(
        "content_length_too_short",
        "content-length shorter than the body: no NUL where it ends",
        *login(),
        Send(
            frame(
                "SEND", {"destination": q("cls"), "content-length": "2", "receipt": "s"}, b"abcdef"
            )
        ),
        queues=_qs("cls"),
    ),
    sc(
        "content_length_not_a_number",
        "content-length:abc",
        *login(),
        Send(
            frame("SEND", {"destination": q("cnn"), "content-length": "abc", "receipt": "s"}, b"x")
        ),
        queues=_qs("cnn"),
    ),
    sc(
        "body_without_content_length",
        "a body without content-length ends at the NUL; the MESSAGE carries one",
        *login(),
        subscribe(q("bwc")),
        send(q("bwc"), b"hello world"),
        Expect(1),
        queues=_qs("bwc"),
    ),
    sc(
        "empty_body",
        "an empty body",
        *login(),
        subscribe(q("emb")),
        send(q("emb"), b""),
        Expect(1),
        queues=_qs("emb"),
    ),
    sc(
        "header_escaping_12",
        "1.2 escapes \\c \\n \\\\ in a header round-trip",
        *login(),
        subscribe(q("he12")),
        Send(
            frame(
                "SEND",
                {"destination": q("he12"), "x-p-esc": "a\\cb\\nc\\\\d", "receipt": "s"},
                b"x",
            )
        ),
        Expect(1),
        queues=_qs("he12"),
    ),
    sc(
        "header_escaping_undefined_12",
        "1.2 \\t is no defined escape",
        *login(),
        Send(frame("SEND", {"destination": q("heu"), "x-p-esc": "a\\tb", "receipt": "s"}, b"x")),
        queues=_qs("heu"),
    ),
    sc(
        "header_escaping_10_literal",
        "1.0 has no escapes: a backslash is a backslash",
        *login(None),
        subscribe(q("he10")),
        Send(frame("SEND", {"destination": q("he10"), "x-p-esc": "a\\cb", "receipt": "s"}, b"x")),
        Expect(1),
        queues=_qs("he10"),
    ),
    sc(
        "repeated_header_first_wins",
        "a repeated header: the first value counts",
        *login(),
        subscribe(q("rhf")),
        Send(
            b"SEND\ndestination:"
            + q("rhf").encode()
            + b"\nx-p-rep:first\nx-p-rep:second\nreceipt:s\n\nx\0"
        ),
        Expect(1),
        queues=_qs("rhf"),
    ),
    sc(
        "crlf_line_ends",
        "CR LF line ends (1.2)",
        *login(),
        subscribe(q("crlf")),
        Send(b"SEND\r\ndestination:" + q("crlf").encode() + b"\r\nreceipt:s\r\n\r\nx\0"),
        Expect(1),
        queues=_qs("crlf"),
    ),
    sc(
        "heartbeat_eols_between_frames",
        "EOLs between frames are heart-beats, not frames",
        *login(),
        Send(b"\n\n\r\n", wait=()),
        sync(),
    ),
]

_ERRORS = [
    sc(
        "unknown_command",
        "a command STOMP does not have",
        *login(),
        Send(frame("FOO", {"receipt": "r"})),
    ),
    sc(
        "lowercase_command",
        "commands are case-sensitive",
        *login(),
        Send(frame("send", {"destination": q("lc"), "receipt": "r"}, b"x")),
        queues=_qs("lc"),
    ),
    sc(
        "header_without_colon",
        "a header line without a colon",
        *login(),
        Send(b"SEND\ndestination:" + q("hwc").encode() + b"\nnocolon\nreceipt:r\n\nx\0"),
        queues=_qs("hwc"),
    ),
    sc(
        "disconnect_receipt",
        "DISCONNECT with a receipt: RECEIPT, then the server closes",
        *login(),
        Send(frame("DISCONNECT", {"receipt": "bye-now"})),
        ExpectClose(),
    ),
    sc(
        "disconnect_without_receipt",
        "DISCONNECT without a receipt: the server closes",
        *login(),
        Send(frame("DISCONNECT")),
        ExpectClose(),
    ),
]

_MORE = [
    sc(
        "send_body_too_large",
        "a SEND whose body is larger than the broker takes (1.5 MiB; Moorage's limit is 960 KiB)",
        *login(),
        send(q("sbl"), b"x" * (3 * 512 * 1024)),
        queues=_qs("sbl"),
    ),
    sc(
        "temp_queue_reply_to",
        "reply-to:/temp-queue/ is rewritten to the connection's own queue, subscribed at once",
        *login(),
        send(q("tqr"), b"ask", **{"reply-to": "/temp-queue/r"}),
        subscribe(q("tqr")),
        Expect(1),
        queues=_qs("tqr"),
    ),
    sc(
        "nack_client_mode_cumulative",
        "ack:client: NACK of the second message (requeue:false) settles both",
        *login(),
        subscribe(q("ncm"), ack="client"),
        send(q("ncm"), b"1", receipt="s1"),
        send(q("ncm"), b"2", receipt="s2"),
        Expect(2),
        ack("NACK", receipt="n", requeue="false"),
        Send(frame("DISCONNECT", {"receipt": "d"})),
        ExpectClose(),
        *login(conn=1),
        subscribe(q("ncm"), conn=1),
        sync(1),
        queues=_qs("ncm"),
    ),
    sc(
        "unsubscribe_requeues_unacked",
        "UNSUBSCRIBE with an unacked message: it goes back to the queue for the next subscriber",
        *login(),
        subscribe(q("uru"), ack="client-individual"),
        send(q("uru")),
        Expect(1),
        Send(frame("UNSUBSCRIBE", {"id": "0", "receipt": "u"})),
        subscribe(q("uru"), "1", receipt="again"),
        Expect(1),
        ack(receipt="a2"),
        queues=_qs("uru"),
    ),
    sc(
        "persistent_header_passes",
        "persistent:true and priority headers reach the subscriber",
        *login(),
        subscribe(q("php")),
        send(q("php"), persistent="true", priority="5"),
        Expect(1),
        queues=_qs("php"),
    ),
    sc(
        "invalid_ack_mode",
        "SUBSCRIBE with ack:sometimes",
        *login(),
        subscribe(q("iam"), ack="sometimes"),
        queues=_qs("iam"),
    ),
    sc(
        "client_heartbeat_missed",
        "heart-beat:500,0 promises client heart-beats; the client stays silent: the server closes",
        Open(),
        connect("1.2", **{"heart-beat": "500,0"}),
        ExpectClose(within=10.0),
    ),
]

_EDGES = [
    sc(
        "connect_unknown_vhost",
        "CONNECT with host naming a virtual host that does not exist",
        Open(),
        connect("1.2", host="p-novhost"),
    ),
    sc(
        "connect_without_login",
        "CONNECT without login and passcode (anonymous)",
        Open(),
        Send(frame("CONNECT", {"accept-version": "1.2", "host": "/"})),
    ),
    sc(
        "header_value_spaces_12",
        "STOMP 1.2 keeps the spaces around a header value (it trims nothing)",
        *login(),
        subscribe(q("hvs")),
        send(q("hvs"), **{"x-p-pad": "  a b  "}),
        Expect(1),
        queues=_qs("hvs"),
    ),
    sc(
        "unsubscribe_10_by_destination",
        "STOMP 1.0 UNSUBSCRIBE naming the destination of a SUBSCRIBE without id",
        *login(None),
        subscribe(q("u10"), id_=None),
        Send(frame("UNSUBSCRIBE", {"destination": q("u10"), "receipt": "u"})),
        send(q("u10"), receipt="after"),
        sync(),
        queues=_qs("u10"),
    ),
    sc(
        "send_header_too_large",
        "a SEND with a 100 KiB header after login (Moorage allows 64 KiB of headers)",
        *login(),
        send(q("shl"), **{"x-p-big": "b" * 100_000}),
        queues=_qs("shl"),
    ),
    sc(
        "send_too_many_headers",
        "a SEND with 1,500 headers (Moorage allows 1,000)",
        *login(),
        send(q("stmh"), **{f"x-p-{i}": "v" for i in range(1500)}),
        queues=_qs("stmh"),
    ),
    sc(
        "subscribe_selector",
        "an ActiveMQ selector on SUBSCRIBE (prefetch 1, nothing acked): which message comes",
        *login(),
        send(q("sel"), b"blue", colour="blue", receipt="s1"),
        send(q("sel"), b"red", colour="red", receipt="s2"),
        subscribe(
            q("sel"),
            ack="client-individual",
            selector="colour = 'red'",
            **{"prefetch-count": "1", "activemq.prefetchSize": "1"},
        ),
        Expect(1),
        queues=_qs("sel"),
    ),
    sc(
        "ack_10_message_id",
        "STOMP 1.0 ACK names the message-id",
        *login(None),
        subscribe(q("a10"), ack="client"),
        send(q("a10")),
        Expect(1),
        ack(header="message-id"),
        sync(),
        queues=_qs("a10"),
    ),
    sc(
        "nack_10",
        "NACK on a STOMP 1.0 connection (1.0 has no NACK)",
        *login(None),
        subscribe(q("n10"), ack="client"),
        send(q("n10")),
        Expect(1),
        ack("NACK", header="message-id", requeue="false"),
        queues=_qs("n10"),
    ),
]

SCENARIOS: list[Scenario] = [
    *_CONNECT,
    *_SEND_SUBSCRIBE,
    *_ACKS,
    *_TX,
    *_BODIES,
    *_ERRORS,
    *_MORE,
    *_EDGES,
]
