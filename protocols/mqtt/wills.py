"""Will messages: published when a session's connection ends without DISCONNECT.

A will waits in the session (`SessionState.will`) for its Will Delay
Interval, or until the session ends, whichever comes first; a client that
resumes the session before then cancels it [MQTT-3.1.3-9]. It is published as
the user who connected, on a connection of its own (the client's is gone),
and retained if it asked to be.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from moorage.broker.auth import PermissionPending
from moorage.broker.broker import Broker
from moorage.broker.errors import BrokerError
from moorage.broker.message import Message
from moorage.protocols.mqtt.codec import Publish
from moorage.protocols.mqtt.mapping import EXCHANGE, to_message
from moorage.protocols.mqtt.retained import retain
from moorage.protocols.mqtt.session_state import PendingWill, SessionState

log = logging.getLogger("moorage.mqtt")

Schedule = Callable[[float, Callable[[], None]], Any]


class Wills:
    """Schedules and publishes the wills of one broker's MQTT sessions."""

    def __init__(self, broker: Broker, now: Callable[[], float], schedule: Schedule) -> None:
        self.broker = broker
        self._now = now
        self._schedule = schedule

    def schedule(self, state: SessionState, pending: PendingWill) -> None:
        """Publish a will now, or after its delay unless the session is resumed first."""
        delay = pending.will.properties.will_delay_interval or 0
        state.will = pending
        if delay and state.expiry_interval:
            pending.timer = self._schedule(
                min(delay, state.expiry_interval), lambda: self.publish(state)
            )
        else:
            self.publish(state)

    def publish(self, state: SessionState) -> None:
        """Publish the session's pending will, if it still has one."""
        pending, state.will = state.will, None
        if pending is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        try:
            core = self.broker.connect(
                pending.vhost,
                pending.user,
                protocol="mqtt",
                peer=f"will:{pending.client_id}",
                client=False,
            )
        except PermissionPending as waiting:  # a backend's answer first (`broker.auth_users`)
            state.will = pending
            waiting.then(lambda: self.publish(state))
            return
        except BrokerError as e:
            log.info("will of %s not published: %s", pending.client_id, e.text)
            return
        try:
            session = core.open_session(_NullSink())
            will = pending.will
            publish = Publish(will.topic, will.payload, will.qos, will.retain, False, None)
            publish.properties = will.properties
            message = to_message(publish, pending.client_id, self._now())
            if will.retain:
                retain(session.vhost, will.topic, message)
            session.publish(EXCHANGE, message)
        except PermissionPending as waiting:
            state.will = pending
            waiting.then(lambda: self.publish(state))
        except BrokerError as e:
            log.info("will of %s not published: %s", pending.client_id, e.text)
        finally:
            core.close()


class _NullSink:
    def deliver(self, consumer_tag: str, delivery_tag: int, redelivered: bool, m: Message) -> None:
        pass

    def returned(self, message: Message, reply_code: int, reply_text: str) -> None:
        pass

    def cancelled(self, consumer_tag: str, error: BrokerError | None) -> None:
        pass
