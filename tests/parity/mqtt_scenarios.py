"""MQTT parity scenarios: raw packet sequences whose answers Mosquitto 2.0 recorded.

Every scenario opens connection 0; most log in as guest (`login()`, 3.1.1
or 5.0). Client ids and topics are named `p-<scenario>` so that no two
scenarios share a session, a subscription or a retained message; a scenario
that leaves a retained message or a persistent session behind clears it.
Both brokers run with anonymous clients refused (Mosquitto's
`allow_anonymous false`, Moorage's default `auth.anonymous_user = ""`) and a
packet size limit of `MAX_PACKET_SIZE`. Grouped: CONNECT, QoS flows,
retained messages, topics and filters, MQTT 5 features, malformed packets.
"""

from __future__ import annotations

from typing import Any

from tests.parity.mqtt_runner import (
    DISCONNECT,
    MAX_PACKET_SIZE,
    PINGREQ,
    ack,
    connect,
    disconnect_v5,
    packet,
    publish,
    subscribe,
    unsubscribe,
)
from tests.parity.stream_runner import Expect, ExpectClose, Hangup, Open, Scenario, Send, Step

KEEPALIVE_WAIT = 20.0  # seconds: Mosquitto closes a silent keep-alive-1 client after 1.5 to ~6 s


def login(name: str, *, v5: bool = False, conn: int = 0, **kw: Any) -> tuple[Step, ...]:
    """Open connection `conn` and CONNECT as guest with client id `p-<name>`."""
    return (Open(conn), Send(connect(f"p-{name}", v5=v5, **kw), conn))


def ping(conn: int = 0) -> Send:
    """A round trip: every answer the broker sent before PINGRESP has arrived."""
    return Send(PINGREQ, conn)


def sc(name: str, doc: str, *steps: Step, ordered: bool = False) -> Scenario:
    return Scenario(name, doc, tuple(steps), ordered=ordered)


def clear_retained(topic: str, v5: bool = False) -> Send:
    return Send(publish(topic, b"", retain=True, v5=v5))


def _connect_only(name: str, doc: str, data: bytes) -> Scenario:
    """A CONNECT (or what stands for one) and whatever follows until the socket ends."""
    return sc(name, doc, Open(), Send(data), ExpectClose())


_CONNECT = [
    sc("connect_311", "a 3.1.1 CONNECT with user and password", *login("c311")),
    sc(
        "connect_5",
        "a 5.0 CONNECT: the CONNACK's properties tell the broker's limits",
        *login("c5", v5=True),
    ),
    _connect_only(
        "connect_311_bad_password",
        "3.1.1 wrong password: CONNACK 4, closed",
        connect("p-c311bp", password="nope"),
    ),
    _connect_only(
        "connect_5_bad_password",
        "5.0 wrong password: CONNACK 0x86, closed",
        connect("p-c5bp", v5=True, password="nope"),
    ),
    _connect_only(
        "connect_311_anonymous",
        "3.1.1 without user name, anonymous refused: CONNACK 5",
        connect("p-c311an", user=None, password=None),
    ),
    _connect_only(
        "connect_5_anonymous",
        "5.0 without user name, anonymous refused: CONNACK 0x87",
        connect("p-c5an", v5=True, user=None, password=None),
    ),
    _connect_only(
        "connect_311_user_without_password",
        "3.1.1 user name without password",
        connect("p-c311uwp", password=None),
    ),
    _connect_only(
        "connect_5_user_without_password",
        "5.0 user name without password",
        connect("p-c5uwp", v5=True, password=None),
    ),
    _connect_only(
        "connect_311_password_without_user",
        "3.1.1 forbids a password flag without the user name flag [MQTT-3.1.2-22]",
        connect("p-c311pwu", user=None, password="guest"),
    ),
    _connect_only(
        "connect_5_password_without_user",
        "5.0 allows a password without a user name",
        connect("p-c5pwu", v5=True, user=None, password="guest"),
    ),
    _connect_only(
        "connect_bad_protocol_name", "protocol name MQTX", connect("p-cbpn", name=b"MQTX")
    ),
    _connect_only(
        "connect_unsupported_level",
        "protocol level 6: CONNACK 1 (unacceptable protocol version)",
        connect("p-cul", level=6),
    ),
    _connect_only(
        "connect_reserved_flag",
        "the reserved connect flag set [MQTT-3.1.2-3]",
        connect("p-crf", flags=0xC3),
    ),
    _connect_only(
        "connect_will_qos_3", "will QoS 3 [MQTT-3.1.2-14]", connect("p-cwq3", flags=0xDE)
    ),
    _connect_only(
        "connect_will_retain_without_will",
        "will retain without the will flag [MQTT-3.1.2-15]",
        connect("p-cwr", flags=0xE2),
    ),
    _connect_only(
        "connect_will_qos_without_will",
        "will QoS 1 without the will flag [MQTT-3.1.2-13]",
        connect("p-cwqw", flags=0xCA),
    ),
    sc(
        "connect_empty_client_id_clean",
        "3.1.1 empty client id with clean session: accepted",
        Open(),
        Send(connect("")),
    ),
    _connect_only(
        "connect_empty_client_id_persistent",
        "3.1.1 empty client id without clean session: CONNACK 2",
        connect("", clean=False),
    ),
    sc(
        "connect_5_empty_client_id",
        "5.0 empty client id: the broker assigns one",
        Open(),
        Send(connect("", v5=True)),
    ),
    sc(
        "connect_twice",
        "a second CONNECT on one connection [MQTT-3.1.0-2]",
        *login("ctw"),
        Send(connect("p-ctw")),
        ExpectClose(),
    ),
    _connect_only("first_packet_not_connect", "PINGREQ before CONNECT", PINGREQ),
    sc(
        "keepalive_timeout",
        "keep-alive 1 s and silence: closed after 1.5 s [MQTT-3.1.2-24]",
        *login("kat", keepalive=1),
        ExpectClose(within=KEEPALIVE_WAIT),
    ),
    sc(
        "keepalive_5_timeout",
        "5.0 keep-alive 1 s and silence",
        *login("kat5", v5=True, keepalive=1),
        ExpectClose(within=KEEPALIVE_WAIT),
    ),
    sc(
        "session_present_311",
        "3.1.1 persistent session: present on reconnect, the QoS 1 message sent meanwhile arrives",
        *login("sp311", clean=False),
        Send(subscribe(1, ("p/sp311", 1))),
        Send(DISCONNECT),
        ExpectClose(),
        *login("sp311pub", conn=1),
        Send(publish("p/sp311", b"queued", qos=1), 1),
        Open(2),
        Send(connect("p-sp311", clean=False), 2),
        Expect(1, conn=2),
        Send(ack("PUBACK"), 2),
        Send(DISCONNECT, 2),
        ExpectClose(2),
        Open(3),
        Send(connect("p-sp311"), 3),
    ),
    sc(
        "session_clean_discards",
        "3.1.1 clean session after a persistent one: no session present",
        *login("scd", clean=False),
        Send(subscribe(1, ("p/scd", 1))),
        Send(DISCONNECT),
        ExpectClose(),
        Open(1),
        Send(connect("p-scd"), 1),
    ),
    sc(
        "session_expiry_5",
        "5.0 session expiry interval: the session outlives the connection",
        *login("se5", v5=True, clean=False, properties={"session_expiry_interval": 60}),
        Send(subscribe(1, ("p/se5", 1), v5=True)),
        Send(DISCONNECT),
        ExpectClose(),
        Open(1),
        Send(connect("p-se5", v5=True, clean=False, properties={"session_expiry_interval": 60}), 1),
        Send(disconnect_v5(0, {"session_expiry_interval": 0}), 1),
        ExpectClose(1),
    ),
    sc(
        "session_expiry_zero_5",
        "5.0 clean start false with no session expiry: the session ends with the connection",
        *login("sez5", v5=True, clean=False),
        Send(DISCONNECT),
        ExpectClose(),
        Open(1),
        Send(connect("p-sez5", v5=True, clean=False), 1),
    ),
]

_QOS = [
    sc(
        "qos0_to_self",
        "subscribe QoS 0, publish QoS 0",
        *login("q0"),
        Send(subscribe(1, ("p/q0", 0))),
        Send(publish("p/q0", b"zero")),
        Expect(1),
    ),
    sc(
        "qos1_flow",
        "QoS 1 both ways: PUBACK to the publisher, a QoS 1 delivery acked",
        *login("q1"),
        Send(subscribe(1, ("p/q1", 1))),
        Send(publish("p/q1", b"one", qos=1, packet_id=7)),
        Expect(1),
        Send(ack("PUBACK")),
        ping(),
    ),
    sc(
        "qos2_publisher_flow",
        "QoS 2 from the client: PUBREC, PUBREL, PUBCOMP",
        *login("q2p"),
        Send(publish("p/q2p", b"two", qos=2, packet_id=9)),
        Send(ack("PUBREL", 9)),
    ),
    sc(
        "qos2_duplicate_pubrel",
        "a PUBREL sent twice gets a PUBCOMP twice",
        *login("q2dr"),
        Send(publish("p/q2dr", b"two", qos=2, packet_id=3)),
        Send(ack("PUBREL", 3)),
        Send(ack("PUBREL", 3)),
    ),
    sc(
        "qos2_pubrel_unknown_311",
        "3.1.1 PUBREL of an id never published",
        *login("q2ru"),
        Send(ack("PUBREL", 44)),
    ),
    sc(
        "qos2_pubrel_unknown_5",
        "5.0 PUBREL of an id never published: PUBCOMP 0x92",
        *login("q2ru5", v5=True),
        Send(ack("PUBREL", 44)),
    ),
    sc(
        "qos2_duplicate_publish",
        "a QoS 2 PUBLISH resent with DUP before PUBREL is delivered once",
        *login("q2dp"),
        Send(subscribe(1, ("p/q2dp", 0))),
        Send(publish("p/q2dp", b"once", qos=2, packet_id=5)),
        Send(publish("p/q2dp", b"once", qos=2, packet_id=5, dup=True)),
        Send(ack("PUBREL", 5)),
        Expect(1),
        ping(),
    ),
    sc(
        "qos2_subscriber_flow",
        "a QoS 2 delivery: PUBREC from the client, PUBREL, PUBCOMP",
        *login("q2s"),
        Send(subscribe(1, ("p/q2s", 2))),
        Send(publish("p/q2s", b"two", qos=2, packet_id=2)),
        Send(ack("PUBREL", 2)),
        Expect(1),
        Send(ack("PUBREC"), wait=("PUBREL",)),
        Send(ack("PUBCOMP")),
        ping(),
    ),
    sc(
        "qos_downgraded_to_subscription",
        "publish QoS 2 to a QoS 0 subscription: delivered at QoS 0",
        *login("qdg"),
        Send(subscribe(1, ("p/qdg", 0))),
        Send(publish("p/qdg", b"x", qos=1, packet_id=4)),
        Expect(1),
    ),
    sc(
        "puback_unknown_id",
        "a PUBACK for an id the broker never used is ignored",
        *login("pau"),
        Send(ack("PUBACK", 99)),
        ping(),
    ),
    sc(
        "publish_qos3",
        "PUBLISH with QoS 3 [MQTT-3.3.1-4]",
        *login("pq3"),
        Send(packet(3, 0x06, b"\x00\x04p/q3\x00\x01x"), wait=()),
        ExpectClose(),
    ),
]

_RETAINED = [
    sc(
        "retained_delivered_on_subscribe",
        "a retained message reaches a later subscriber with the retain flag",
        *login("rds"),
        Send(publish("p/rds", b"kept", retain=True, qos=1)),
        Send(subscribe(1, ("p/rds", 0))),
        Expect(1),
        clear_retained("p/rds"),
        ping(),
    ),
    sc(
        "retained_cleared",
        "an empty retained message clears it",
        *login("rcl"),
        Send(publish("p/rcl", b"kept", retain=True, qos=1)),
        Send(publish("p/rcl", b"", retain=True, qos=1, packet_id=2)),
        Send(subscribe(1, ("p/rcl", 0))),
        ping(),
    ),
    sc(
        "retained_live_flag_311",
        "a live delivery to an existing subscription carries retain 0",
        *login("rlf"),
        Send(subscribe(1, ("p/rlf", 0))),
        Send(publish("p/rlf", b"r", retain=True, qos=1)),
        Expect(1),
        clear_retained("p/rlf"),
        ping(),
    ),
    sc(
        "retained_wildcard_subscribe",
        "a wildcard subscription gets every matching retained message",
        *login("rws"),
        Send(publish("p/rws/a", b"a", retain=True, qos=1)),
        Send(publish("p/rws/b", b"b", retain=True, qos=1, packet_id=2)),
        Send(subscribe(1, ("p/rws/+", 0))),
        Expect(2),
        clear_retained("p/rws/a"),
        clear_retained("p/rws/b"),
        ping(),
    ),
    sc(
        "retain_as_published_5",
        "5.0 retain-as-published keeps the flag on a live delivery",
        *login("rap", v5=True),
        Send(subscribe(1, ("p/rap", 0x08), v5=True)),
        Send(publish("p/rap", b"r", retain=True, qos=1, v5=True)),
        Expect(1),
        clear_retained("p/rap", True),
        ping(),
    ),
    sc(
        "retain_handling_2_5",
        "5.0 retain handling 2: no retained messages on subscribe",
        *login("rh2", v5=True),
        Send(publish("p/rh2", b"kept", retain=True, qos=1, v5=True)),
        Send(subscribe(1, ("p/rh2", 0x20), v5=True)),
        ping(),
        clear_retained("p/rh2", True),
        ping(),
    ),
]

_TOPICS = [
    sc(
        "wildcard_plus",
        "+ matches one level",
        *login("wp"),
        Send(subscribe(1, ("p/wp/+/c", 0))),
        Send(publish("p/wp/b/c", b"1")),
        Send(publish("p/wp/b/x/c", b"no")),
        Send(publish("p/wp/b/c", b"2")),
        Expect(2),
    ),
    sc(
        "wildcard_hash_parent",
        "p/# matches p itself",
        *login("whp"),
        Send(subscribe(1, ("p/whp/#", 0))),
        Send(publish("p/whp", b"parent")),
        Send(publish("p/whp/a/b", b"child")),
        Expect(2),
    ),
    sc(
        "dollar_topic_not_matched_by_wildcard",
        "+/... does not match a $ topic [MQTT-4.7.2-1]",
        *login("dtw"),
        Send(subscribe(1, ("+/p-dtw", 0))),
        Send(publish("$x/p-dtw", b"dollar")),
        Send(publish("y/p-dtw", b"plain")),
        Expect(1),
        ping(),
    ),
    sc(
        "dollar_sys_subscribe",
        "subscribing to $SYS/broker/version answers with a retained version",
        *login("dss"),
        Send(subscribe(1, ("$SYS/broker/p-none", 0))),
        ping(),
    ),
    sc(
        "invalid_filter_hash_not_last_311",
        "3.1.1 filter p/#/c [MQTT-4.7.1-2]",
        *login("ifh"),
        Send(subscribe(1, ("p/#/c", 0))),
    ),
    sc(
        "invalid_filter_hash_not_last_5",
        "5.0 filter p/#/c",
        *login("ifh5", v5=True),
        Send(subscribe(1, ("p/#/c", 0), v5=True)),
    ),
    sc(
        "invalid_filter_plus_in_level_311",
        "3.1.1 filter p+/c [MQTT-4.7.1-3]",
        *login("ifp"),
        Send(subscribe(1, ("p+/c", 0))),
    ),
    sc(
        "publish_wildcard_topic_311",
        "3.1.1 PUBLISH to a topic with + [MQTT-3.3.2-2]",
        *login("pwt"),
        Send(publish("p/+/x", b"x", qos=1)),
    ),
    sc(
        "publish_wildcard_topic_5",
        "5.0 PUBLISH to a topic with #",
        *login("pwt5", v5=True),
        Send(publish("p/#", b"x", qos=1, v5=True)),
    ),
    sc(
        "publish_empty_topic_311",
        "3.1.1 PUBLISH to an empty topic [MQTT-4.7.3-1]",
        *login("pet"),
        Send(publish("", b"x", qos=1)),
    ),
    sc(
        "subscribe_no_filters",
        "SUBSCRIBE without any filter [MQTT-3.8.3-3]",
        *login("snf"),
        Send(subscribe(1)),
    ),
    sc(
        "subscribe_bad_flags",
        "SUBSCRIBE with fixed header flags 0 [MQTT-3.8.1-1]",
        *login("sbf"),
        Send(packet(8, 0, b"\x00\x01\x00\x03p/x\x00")),
    ),
    sc(
        "subscribe_qos_3",
        "a subscription asking for QoS 3",
        *login("sq3"),
        Send(subscribe(1, ("p/sq3", 3))),
    ),
    sc(
        "subscribe_several_filters",
        "one SUBSCRIBE, three filters, three QoS",
        *login("ssf"),
        Send(subscribe(1, ("p/ssf/a", 0), ("p/ssf/b", 1), ("p/ssf/c", 2))),
    ),
    sc(
        "unsubscribe_then_publish",
        "after UNSUBACK nothing more arrives",
        *login("utp"),
        Send(subscribe(1, ("p/utp", 0))),
        Send(unsubscribe(2, "p/utp")),
        Send(publish("p/utp", b"x")),
        ping(),
    ),
    sc(
        "unsubscribe_unknown_5",
        "5.0 UNSUBSCRIBE of a filter never subscribed: 0x11",
        *login("uu5", v5=True),
        Send(unsubscribe(2, "p/never", v5=True)),
    ),
    sc(
        "overlapping_subscriptions_311",
        "two matching subscriptions on one session",
        *login("ovl"),
        Send(subscribe(1, ("p/ovl/#", 0), ("p/ovl/+", 1))),
        Send(publish("p/ovl/a", b"x", qos=1)),
        Expect(1),
        ping(),
    ),
]

_V5 = [
    sc(
        "subscription_identifier_5",
        "5.0 a subscription identifier comes back on the delivery",
        *login("sid", v5=True),
        Send(subscribe(1, ("p/sid", 0), v5=True, properties={"subscription_identifier": 7})),
        Send(publish("p/sid", b"x", v5=True)),
        Expect(1),
    ),
    sc(
        "topic_alias_5",
        "5.0 a topic alias set, then used with an empty topic",
        *login("ta", v5=True),
        Send(subscribe(1, ("p/ta", 0), v5=True)),
        Send(publish("p/ta", b"1", v5=True, properties={"topic_alias": 1})),
        Send(publish("", b"2", v5=True, properties={"topic_alias": 1})),
        Expect(2),
    ),
    sc(
        "topic_alias_unknown_5",
        "5.0 an empty topic with an alias never set: DISCONNECT 0x82",
        *login("tau", v5=True),
        Send(publish("", b"x", v5=True, properties={"topic_alias": 2}), wait=("DISCONNECT",)),
        ExpectClose(),
    ),
    sc(
        "topic_alias_too_large_5",
        "5.0 a topic alias above the broker's maximum: DISCONNECT 0x94",
        *login("tal", v5=True),
        Send(
            publish("p/tal", b"x", v5=True, properties={"topic_alias": 65000}), wait=("DISCONNECT",)
        ),
        ExpectClose(),
    ),
    sc(
        "receive_maximum_zero_5",
        "5.0 CONNECT with receive maximum 0 [MQTT-3.1.2-... protocol error]",
        Open(),
        Send(connect("p-rm0", v5=True, properties={"receive_maximum": 0})),
        ExpectClose(),
    ),
    sc(
        "no_local_5",
        "5.0 no-local: the session's own publishes are not delivered to it",
        *login("nl", v5=True),
        Send(subscribe(1, ("p/nl", 0x04), v5=True)),
        Send(publish("p/nl", b"x", qos=1, v5=True)),
        ping(),
    ),
    sc(
        "user_properties_5",
        "5.0 user properties and content type pass through",
        *login("up", v5=True),
        Send(subscribe(1, ("p/up", 0), v5=True)),
        Send(
            publish(
                "p/up",
                b"x",
                v5=True,
                properties={
                    "content_type": "text/plain",
                    "user_property": [["a", "1"], ["b", "2"]],
                },
            )
        ),
        Expect(1),
    ),
    sc(
        "client_maximum_packet_size_5",
        "5.0 a delivery larger than the client's maximum packet size is dropped",
        *login("cmps", v5=True, properties={"maximum_packet_size": 64}),
        Send(subscribe(1, ("p/cmps", 0), v5=True)),
        Send(publish("p/cmps", b"x" * 100, v5=True)),
        Send(publish("p/cmps", b"small", v5=True)),
        Expect(1),
        ping(),
    ),
    sc(
        "packet_too_large_311",
        "3.1.1 a PUBLISH above the broker's maximum packet size",
        *login("ptl"),
        Send(publish("p/ptl", b"x" * MAX_PACKET_SIZE, qos=1), wait=()),
        ExpectClose(),
    ),
    sc(
        "packet_too_large_5",
        "5.0 a PUBLISH above the broker's maximum packet size",
        *login("ptl5", v5=True),
        Send(publish("p/ptl5", b"x" * MAX_PACKET_SIZE, qos=1, v5=True), wait=()),
        ExpectClose(),
    ),
    sc(
        "disconnect_with_will_5",
        "5.0 DISCONNECT 0x04 sends the will",
        *login("dww", conn=1),
        Send(subscribe(1, ("p/dww", 0)), 1),
        Open(),
        Send(connect("p-dww", v5=True, will=("p/dww", b"will", 0, False))),
        Send(disconnect_v5(4)),
        ExpectClose(),
        Expect(1, conn=1),
    ),
    sc(
        "will_on_hangup",
        "a will is published when the connection drops without DISCONNECT",
        *login("woh", conn=1),
        Send(subscribe(1, ("p/woh", 0)), 1),
        Open(),
        Send(connect("p-woh", will=("p/woh", b"will", 0, False))),
        Hangup(),
        Expect(1, conn=1),
    ),
    sc(
        "will_not_on_disconnect",
        "no will after a clean DISCONNECT",
        *login("wnd", conn=1),
        Send(subscribe(1, ("p/wnd", 0)), 1),
        Open(),
        Send(connect("p-wnd", will=("p/wnd", b"will", 0, False))),
        Send(DISCONNECT),
        ExpectClose(),
        ping(1),
    ),
    sc(
        "server_disconnect_reason_5",
        "5.0 a client DISCONNECT with a bad reason code",
        *login("sdr", v5=True),
        Send(disconnect_v5(0x03)),
        ExpectClose(),
    ),
]

_MALFORMED = [
    sc(
        "remaining_length_five_bytes",
        "a remaining length of five bytes [MQTT-1.5.5]",
        *login("rl5"),
        Send(b"\x30\xff\xff\xff\xff\x01", wait=()),
        ExpectClose(),
    ),
    sc(
        "invalid_utf8_topic",
        "a topic that is not UTF-8 [MQTT-1.5.3-1]",
        *login("iut"),
        Send(packet(3, 0, b"\x00\x02\xc3\x28x"), wait=()),
        ping(),
    ),
    sc(
        "topic_with_nul",
        "a topic with U+0000 [MQTT-1.5.3-2]",
        *login("twn"),
        Send(packet(3, 0, b"\x00\x03p\x00qx"), wait=()),
        ping(),
    ),
    sc(
        "reserved_packet_type",
        "packet type 0 is reserved",
        *login("rpt"),
        Send(b"\x00\x00", wait=()),
        ExpectClose(),
    ),
    sc(
        "pingreq_with_body",
        "PINGREQ with a remaining length of 1",
        *login("pwb"),
        Send(b"\xc0\x01\x00"),
        ping(),
    ),
    sc(
        "truncated_connect",
        "a CONNECT cut short, then the client hangs up",
        Open(),
        Send(connect("p-tc")[:8], wait=()),
        Hangup(),
    ),
    sc(
        "connack_from_client",
        "a client that sends CONNACK",
        *login("cfc"),
        Send(b"\x20\x02\x00\x00", wait=()),
        ExpectClose(),
    ),
]

_MORE = [
    sc(
        "connect_31",
        "MQTT 3.1: protocol name MQIsdp, level 3",
        Open(),
        Send(connect("p-c31", name=b"MQIsdp", level=3)),
    ),
    sc(
        "client_receive_maximum_5",
        "5.0 receive maximum 1: one QoS 1 delivery in flight until it is acked",
        *login("crm", v5=True, properties={"receive_maximum": 1}),
        Send(subscribe(1, ("p/crm", 1), v5=True)),
        *login("crmpub", conn=1),
        Send(publish("p/crm", b"1", qos=1, packet_id=1), 1),
        Send(publish("p/crm", b"2", qos=1, packet_id=2), 1),
        Expect(1),
        ping(),
        Send(ack("PUBACK")),
        Expect(1),
        Send(ack("PUBACK")),
        ping(),
    ),
    sc(
        "session_takeover_311",
        "3.1.1 a second connection with the same client id: the first is closed",
        *login("sto"),
        *login("sto", conn=1),
        ExpectClose(),
    ),
    sc(
        "session_takeover_5",
        "5.0 a second connection with the same client id: DISCONNECT 0x8E to the first",
        *login("sto5", v5=True),
        *login("sto5", v5=True, conn=1),
        ExpectClose(),
    ),
    sc(
        "shared_subscription_5",
        "5.0 $share/group/filter: one of the group gets each message",
        *login("shs", v5=True),
        Send(subscribe(1, ("$share/p-g/p/shs", 0), v5=True)),
        Send(publish("p/shs", b"shared", v5=True)),
        Expect(1),
    ),
    sc(
        "publish_to_sys_topic",
        "a client PUBLISH to $SYS/...: not delivered to a $SYS subscriber",
        *login("pst"),
        Send(subscribe(1, ("$SYS/p-pst", 0))),
        Send(publish("$SYS/p-pst", b"fake", qos=1)),
        ping(),
    ),
    sc(
        "unsubscribe_several_5",
        "5.0 UNSUBSCRIBE of a subscribed and an unknown filter: 0x00 and 0x11",
        *login("us5", v5=True),
        Send(subscribe(1, ("p/us5", 0), v5=True)),
        Send(unsubscribe(2, "p/us5", "p/us5-never", v5=True)),
    ),
    sc(
        "subscribe_5_no_local_shared",
        "5.0 no-local on a shared subscription is a protocol error [MQTT-3.8.3-4]",
        *login("nls", v5=True),
        Send(subscribe(1, ("$share/p-g/p/nls", 0x04), v5=True)),
    ),
]

_EDGES = [
    _connect_only(
        "connect_5_auth_method",
        "5.0 CONNECT naming an authentication method the broker does not offer",
        connect("p-c5am", v5=True, properties={"authentication_method": "SCRAM-SHA-1"}),
    ),
    sc(
        "disconnect_session_expiry_from_zero_5",
        "5.0 DISCONNECT setting a session expiry after CONNECT set none [MQTT-3.14.2-2]",
        *login("dsez5", v5=True),
        Send(disconnect_v5(0x00, {"session_expiry_interval": 60}), wait=()),
        ExpectClose(),
    ),
    sc(
        "publish_qos0_dup",
        "3.1.1 a QoS 0 PUBLISH with the DUP flag [MQTT-3.3.1-2]",
        *login("q0dup"),
        Send(publish("p/q0dup", dup=True), wait=()),
        ping(),
    ),
    sc(
        "payload_format_invalid_5",
        "5.0 payload format indicator 1 (UTF-8) on a payload that is not UTF-8",
        *login("pfi5", v5=True),
        Send(subscribe(1, ("p/pfi5", 0), v5=True)),
        Send(
            publish(
                "p/pfi5", b"\xff\xfe", qos=1, v5=True, properties={"payload_format_indicator": 1}
            )
        ),
        ping(),
    ),
    sc(
        "shared_subscription_without_filter_5",
        "5.0 $share/group with no filter after it",
        *login("swf5", v5=True),
        Send(subscribe(1, ("$share/p-g", 0), v5=True)),
    ),
    sc(
        "unsubscribe_311",
        "3.1.1 UNSUBSCRIBE of a filter never subscribed: UNSUBACK all the same",
        *login("u311"),
        Send(unsubscribe(1, "p/u311-never")),
    ),
    sc(
        "connect_5_maximum_packet_size_zero",
        "5.0 CONNECT with maximum packet size 0, which the spec forbids",
        Open(),
        Send(connect("p-c5mps0", v5=True, properties={"maximum_packet_size": 0})),
        ExpectClose(),
    ),
    _connect_only(
        "connect_5_duplicate_property",
        "5.0 CONNECT with the session expiry interval twice [MQTT-2.2.2.2]",
        packet(
            1,
            0,
            b"\x00\x04MQTT\x05\xc2\x00\x3c"
            + b"\x0a\x11\x00\x00\x00\x01\x11\x00\x00\x00\x02"
            + b"\x00\x08p-c5dupp\x00\x05guest\x00\x05guest",
        ),
    ),
    sc(
        "subscribe_subscription_identifier_zero_5",
        "5.0 SUBSCRIBE with subscription identifier 0 [MQTT-3.8.2.1.2]",
        *login("ssi0", v5=True),
        Send(subscribe(1, ("p/ssi0", 0), v5=True, properties={"subscription_identifier": 0})),
        ExpectClose(),
    ),
    sc(
        "publish_with_subscription_identifier_5",
        "5.0 a client PUBLISH carrying a subscription identifier [MQTT-3.3.4-6]: both ignore it",
        *login("pwsi", v5=True),
        Send(publish("p/pwsi", qos=1, v5=True, properties={"subscription_identifier": 7})),
        ping(),
    ),
    sc(
        "topic_alias_zero_5",
        "5.0 PUBLISH with topic alias 0 [MQTT-3.3.2-8]",
        *login("ta0", v5=True),
        Send(publish("p/ta0", qos=1, v5=True, properties={"topic_alias": 0})),
        ExpectClose(),
    ),
    sc(
        "subscribe_retain_handling_3_5",
        "5.0 SUBSCRIBE with retain handling 3, a reserved value",
        *login("srh3", v5=True),
        Send(subscribe(1, ("p/srh3", 0x30), v5=True)),
        ExpectClose(),
    ),
    sc(
        "subscribe_reserved_option_bits_5",
        "5.0 SUBSCRIBE with the reserved bits 6-7 of the options set [MQTT-3.8.3-5]",
        *login("srob", v5=True),
        Send(subscribe(1, ("p/srob", 0xC0), v5=True)),
        ExpectClose(),
    ),
]

SCENARIOS: list[Scenario] = [
    *_CONNECT,
    *_QOS,
    *_RETAINED,
    *_TOPICS,
    *_V5,
    *_MALFORMED,
    *_MORE,
    *_EDGES,
]
