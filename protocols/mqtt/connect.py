"""The CONNECT handshake of an MQTT connection: login, vhost, session, CONNACK.

`ConnectHandling` is the base class of `adapter.MQTTConnection` that owns
section 3.1.4 of the spec, in its order: the client id (one is assigned to
an empty id), the login (through the broker's authentication chain, which
may answer later: no packet is handled meanwhile), the refusal of a standby
("use another server"), the vhost and connection limits, then the session:
taken over from another connection with the same id, ended on a clean start,
or resumed (its expiry and will delay cancelled, PUBRELs resent), and the
CONNACK with the server's limits (MQTT 5). The connection's other state
machine (packets, deliveries, closes) stays in the adapter; the attributes
declared here are the adapter's.
"""

from __future__ import annotations

import enum
import functools
import uuid
from collections.abc import Callable
from typing import Any

from moorage.broker import logs
from moorage.broker.auth import PermissionPending, User
from moorage.broker.auth_users import Access
from moorage.broker.broker import Broker
from moorage.broker.connection import ClientConnection
from moorage.broker.errors import AccessRefused, BrokerError, NotServing
from moorage.broker.keepalive import KeepAlive
from moorage.broker.limits import LimitExceeded
from moorage.broker.replies import OrderedReplies
from moorage.broker.session import Session
from moorage.protocols.mqtt.codec import MQTT_5, ConnAck, Connect, Packet, PubRel, ReasonCode, Will
from moorage.protocols.mqtt.codec import Properties as MQTTProperties
from moorage.protocols.mqtt.deliveries import MAX_PACKET_SIZE, Deliveries
from moorage.protocols.mqtt.mapping import EXCHANGE
from moorage.protocols.mqtt.registry import SessionRegistry
from moorage.protocols.mqtt.session_state import (
    SESSION_NEVER_EXPIRES,
    SessionState,
    shared_queue_name,
)
from moorage.protocols.mqtt.subscriptions import SessionSubscriptions
from moorage.protocols.tcp import Shell, hold_refusal, want_input

__all__ = ["DEFAULT_VHOST", "ConnectHandling", "State"]

DEFAULT_VHOST = "/"
SERVER_RECEIVE_MAXIMUM = 1024
TOPIC_ALIAS_MAXIMUM = 64


class State(enum.Enum):
    CONNECT = "connect"  # waiting for CONNECT
    CONNECTED = "connected"
    CLOSED = "closed"


class ConnectHandling:
    """CONNECT to CONNACK (or the refusal) for `adapter.MQTTConnection`."""

    broker: Broker
    shell: Shell
    registry: SessionRegistry
    max_packet_size: int
    state: State
    version: int
    client_id: str
    keep_alive: int
    core: ClientConnection | None
    replies: OrderedReplies
    mqtt: SessionState | None
    subscriptions: SessionSubscriptions | None
    user: Any
    _login_pending: bool
    vhost: str
    will: Will | None
    client_receive_maximum: int
    deliveries: Deliveries
    _now: float
    liveness: KeepAlive

    # the adapter's, used here
    @property
    def closed(self) -> bool:
        raise NotImplementedError

    def send(self, packet: Packet) -> None:
        raise NotImplementedError

    def _close(self, *, publish_will: bool, keep_session: bool = False) -> None:
        raise NotImplementedError

    def _handle_events(self) -> None:
        raise NotImplementedError

    def force_close(self, reason: str) -> None:
        raise NotImplementedError

    def core_session(self) -> Session:
        raise NotImplementedError

    def taken_over(self) -> None:
        raise NotImplementedError

    def _refuse(self, reason: ReasonCode, text: str, server_reference: str | None = None) -> None:
        logs.event(
            "connection.refused",
            f"refusing MQTT connection from {self.shell.peer}: {text}",
            peer=self.shell.peer,
            protocol="mqtt",
            reason=text,
        )
        props = (
            MQTTProperties(reason_string=text, server_reference=server_reference)
            if self.version == MQTT_5
            else MQTTProperties()
        )
        self.send(ConnAck(reason_code=reason, properties=props))
        self._close(publish_will=False)

    def _authenticate(self, packet: Connect, then: Callable[[], None]) -> None:
        """Log the client in and attach it to its vhost, then call `then` (not on refusal).

        An authentication backend may answer later: no packet of this client is
        handled until it has (`_login_pending`, `_handle_events`).
        """
        # No user name means no credentials, even with a password (MQTT 5 allows
        # that): the core's anonymous rule decides, never a built-in default user.
        username, password = packet.username, packet.password
        password_text = (password or b"").decode("utf-8", "replace")
        if username is not None and ":" in username:  # RabbitMQ's "vhost:username" form
            self.vhost, username = username.split(":", 1)
        done = functools.partial(self._logged_in, packet, username, then)
        try:
            self.broker.check_serving()
        except NotServing as e:  # a standby: MQTT 5 "use another server" [MQTT-4.11]
            if self.version == MQTT_5:
                reference = e.server_reference.get("mqtt")
                self._refuse(ReasonCode.USE_ANOTHER_SERVER, e.text, reference)
            else:  # 3.1.1 has no redirection: "server unavailable" (return code 3)
                self._refuse(ReasonCode.SERVER_UNAVAILABLE, e.text)
            return
        certificate = getattr(self.shell, "peer_certificate", None)
        if password is not None:
            certificate = None  # a password is given: it is the login, not the certificate
        pending = self.broker.begin_login(
            username,
            password_text,
            from_loopback=self.shell.from_loopback,
            peer=self.shell.peer,
            certificate=certificate or None,
            done=done,
        )
        self._login_pending = pending or self._login_pending  # `done` may have set it

    def _logged_in(
        self,
        packet: Connect,
        username: str | None,
        then: Callable[[], None],
        user: User | None,
        error: AccessRefused | None,
    ) -> None:
        resumed = self._login_pending
        self._login_pending = False
        want_input(self.shell)  # read again (paused while the answer was awaited)
        if self.closed:
            return
        try:
            if self.core is not None or self._attach(packet, username, user, error):
                then()
        except PermissionPending as pending:
            # An authorisation backend has not answered (the vhost, the will, the
            # session's queues): nothing was done, again once it has.
            self._login_pending = True
            pending.then(functools.partial(self._logged_in, packet, username, then, user, error))
            return
        if resumed:  # answered later: the packets that came meanwhile are handled now
            self._handle_events()

    def _attach(
        self, packet: Connect, username: str | None, user: User | None, error: AccessRefused | None
    ) -> bool:
        if user is None:
            assert error is not None
            hold_refusal(self.shell, self.broker.refusal_delay(self.shell.peer))
            # Mosquitto answers an anonymous client it refuses with "not authorised"
            # (its test 01-connect-anon-denied), and bad credentials with code 4 / 0x86.
            reason = (
                ReasonCode.NOT_AUTHORIZED
                if username is None
                else ReasonCode.BAD_USER_NAME_OR_PASSWORD
            )
            self._refuse(reason, error.text)
            return False
        self.user = user
        try:
            self.core = self.broker.connect(
                self.vhost,
                self.user,
                protocol="mqtt",
                peer=self.shell.peer,
                client_properties={
                    "client_id": packet.client_id,
                    "version": packet.protocol_version,
                },
            )
        except LimitExceeded as e:  # a vhost or user connection limit (broker.limits)
            self._refuse(ReasonCode.QUOTA_EXCEEDED, e.text)  # 3.1.1: 3, server unavailable
            return False
        except BrokerError as e:
            self._refuse(ReasonCode.NOT_AUTHORIZED, e.text)
            return False
        self.replies = self.core.ordered_replies()
        self.core.closer = self.force_close
        return True

    def _ask_resume_ahead(self, client_id: str, clean_start: bool) -> None:
        """For a user a backend authorises: the checks resuming the session will make
        (`SessionSubscriptions.resume`), asked before anything is done. Raises
        PermissionPending."""
        state = self.registry.sessions.get((self.vhost, client_id))
        if state is None or clean_start:
            return
        session = self.core_session()
        checks: list[tuple[Access, str, str]] = []
        for sub in state.subscriptions.values():
            queue = state.queue_name if sub.group is None else None
            if queue is not None and session.vhost.find_queue(queue) is None:
                checks.append(("configure", queue, "queue"))
            checks.append(
                ("read", queue or shared_queue_name(sub.group or "", sub.topic_filter), "queue")
            )
        session.ask_ahead(checks)

    def _on_connect(self, packet: Connect) -> None:  # section 3.1.4, in order
        self.version = packet.protocol_version
        v5 = self.version == MQTT_5
        client_id = packet.client_id
        assigned = None
        if not client_id:
            if not packet.clean_start and not v5:
                # [MQTT-3.1.3-8]: zero-length id needs clean session in 3.1.1
                self._refuse(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "empty client id")
                return
            client_id = assigned = f"moorage-{uuid.uuid4().hex}"  # [MQTT-3.1.3-6]
        if v5 and packet.properties.authentication_method is not None:
            # No enhanced authentication method is offered: refuse and close
            # [MQTT-4.12.0-1], with 0x8C as Mosquitto (transcript `connect_5_auth_method`).
            self._refuse(
                ReasonCode.BAD_AUTHENTICATION_METHOD, "authentication method not supported"
            )
            return
        self._authenticate(
            packet, functools.partial(self._on_connect_authenticated, packet, client_id, assigned)
        )

    def _on_connect_authenticated(
        self, packet: Connect, client_id: str, assigned: str | None
    ) -> None:
        v5 = self.version == MQTT_5
        props = packet.properties
        self.client_id = client_id
        self.keep_alive = packet.keep_alive
        self.will = packet.will
        if v5:
            self.client_receive_maximum = props.receive_maximum or 65535
            self.deliveries.client_max_packet_size = props.maximum_packet_size or MAX_PACKET_SIZE
            expiry = props.session_expiry_interval or 0
        else:
            expiry = 0 if packet.clean_start else SESSION_NEVER_EXPIRES
        if self.will is not None:
            try:  # the will is published as this user later [MQTT-3.1.2-7]
                self.user.check(self.vhost, "write", EXCHANGE, "exchange")
            except AccessRefused as e:
                self._refuse(ReasonCode.NOT_AUTHORIZED, e.text)
                return
        if self.user.authz is not None:
            self._ask_resume_ahead(client_id, packet.clean_start)

        registry = self.registry
        key = (self.vhost, client_id)
        registry.attach(self.vhost, client_id, self)  # takes over [MQTT-3.1.4-3]
        state = registry.sessions.get(key)
        if state is not None and packet.clean_start:
            registry.end_session(state)  # [MQTT-3.1.2-4]
            state = None
        session_present = state is not None
        if state is None:
            state = registry.sessions[key] = SessionState(self.vhost, client_id)
        else:
            if state.expiry_timer is not None:
                state.expiry_timer.cancel()
                state.expiry_timer = None
            if state.will is not None:
                if state.will.timer is not None:
                    state.will.timer.cancel()
                state.will = None  # resumed before the will delay [MQTT-3.1.3-9]
        state.expiry_interval = expiry
        state.version = self.version
        state.disconnected_at = None
        self.mqtt = state
        registry.save(state)
        self.state = State.CONNECTED
        # [MQTT-3.1.2-24]: silent for 1.5 x Keep Alive is gone; the server sends no pings
        self.liveness.start(self._now, recv_timeout=self.keep_alive * 1.5, send_interval=0)

        connack_props = MQTTProperties()
        if v5:
            connack_props = MQTTProperties(
                assigned_client_identifier=assigned,
                receive_maximum=SERVER_RECEIVE_MAXIMUM,
                topic_alias_maximum=TOPIC_ALIAS_MAXIMUM,
                maximum_packet_size=self.max_packet_size,
                maximum_qos=None,  # QoS 2 is supported
                retain_available=1,
            )
        # [MQTT-3.2.2-2], [MQTT-3.2.2-3]: session present only when resumed
        self.send(ConnAck(session_present, ReasonCode.SUCCESS, connack_props))
        session = self.core_session()
        session.qos(self.client_receive_maximum, global_=True)  # [MQTT-3.3.4-9]
        for packet_id in sorted(state.outgoing_pubrel):
            self.send(PubRel(packet_id))  # [MQTT-4.4.0-1]: resend PUBREL on resume
        self.subscriptions = SessionSubscriptions(session, state, self.registry, client_id)
        self.subscriptions.resume()
