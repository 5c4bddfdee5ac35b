"""STOMP SEND: destinations -> exchanges and routing keys, headers -> a core Message.

The general path (:meth:`Publisher.send`) parses the destination, declares a
`/queue/` when needed (`queues.ensure_queue`), maps the headers to message
properties (`mapping.message_properties`) and publishes through the core
session, or, inside a transaction, validates all that at once and publishes
at COMMIT. Its receipt waits for the store when the message was written
(a receipt promises the message is safe, not that the acks before it are).

The hot path (:meth:`Publisher.send_fast`) takes a *plain* SEND (no
transaction, no queue argument header) to a destination a SEND reached
before, and skips the work whose answer cannot have changed:

- the destination, resolved once per text (`_send_targets`), with the
  `/queue/`'s Queue object (as its declare gave it), still the vhost's
  queue of that name while it is not `deleted`;
- what a header set decides (`SendPlan`), once per header set: the codec
  gives frames that repeat the previous header block the same headers tuple
  (`codec.decode_repeat`), so the usual case is one identity check; the
  message properties and their STOMP header caches are shared by every
  message of the set unless they depend on more than the headers
  (`mapping.IMPURE_HEADERS`);
- the frames themselves, for a run of SENDs repeating one header block
  (:meth:`Publisher.send_repeats`, `FrameCodec.next_repeat`).

tests/stomp/test_fast_path.py proves that both paths leave the broker and
the client with the same bytes and the same queue contents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from moorage.broker.auth_users import PermissionPending
from moorage.broker.message import Message, Properties
from moorage.broker.queue import Queue
from moorage.protocols.stomp.codec import Frame, State
from moorage.protocols.stomp.destinations import Destination, Kind, parse_destination
from moorage.protocols.stomp.mapping import (
    IMPURE_HEADERS,
    NO_HEADERS_WIRE,
    message_properties,
    wire_cache_for,
)
from moorage.protocols.stomp.queues import QUEUE_ARGUMENT_HEADERS, ensure_queue, queue_arguments

if TYPE_CHECKING:
    from moorage.protocols.stomp.adapter import StompConnection

SEND_TARGET_CACHE_LIMIT: Final = 256  # cached SEND destinations per connection
SEND_PLAN_CACHE_LIMIT: Final = 64  # cached SEND header sets per connection


@dataclass(slots=True, eq=False)
class SendPlan:
    """A plain SEND's header set and what it decides (`Publisher.send_plan`).

    `properties` are the message properties those headers give, set by the
    first SEND that has them unless they depend on more than the headers
    (`IMPURE_HEADERS`); messages share them (a published message is never
    changed). `wire` is the `Message.wire_cache` such properties give, each
    message starting with a copy.
    """

    headers: tuple[tuple[str, str], ...]
    destination: str
    receipt: bool
    cacheable: bool
    properties: Properties | None = None
    wire: dict[str, Any] | None = None


def plain_send(frame: Frame) -> tuple[str, bool, bool] | None:
    """(destination, asks for a receipt, has other headers) of a SEND outside a
    transaction whose headers declare nothing (no queue argument header); else None."""
    destination = None
    receipt = False
    others = False
    for name, value in frame.headers:
        if name == "destination":
            if destination is None:
                destination = value
        elif name == "receipt":
            receipt = True
        elif name == "content-length":
            continue
        elif name == "transaction" or name in QUEUE_ARGUMENT_HEADERS:
            return None
        else:
            others = True
    return None if destination is None else (destination, receipt, others)


class Publisher:
    """The SENDs of one connection, and the caches of its hot path."""

    def __init__(self, conn: StompConnection) -> None:
        self.conn = conn
        # Simple SENDs' destinations already checked: text -> (exchange, routing
        # key, the /queue/'s Queue object or None); see `send_fast`.
        self._send_targets: dict[str, tuple[str, str, Queue | None]] = {}
        # Plain SENDs' header sets: what they decide (`SendPlan`); see `send_plan`.
        self._send_plans: dict[tuple[tuple[str, str], ...], SendPlan] = {}
        self._last_plan: SendPlan | None = None

    def send(self, frame: Frame) -> None:
        """SEND, the general path."""
        conn = self.conn
        session = conn.active_session()
        destination = parse_destination(frame.get("destination"))
        exchange, routing_key, queue = self._publish_target(destination, queue_arguments(frame))
        message = Message(exchange, routing_key, message_properties(frame, conn), frame.body)
        session.check_exchange(exchange)  # NotFound now, not at COMMIT
        tx = conn.transactions.of(frame)
        if tx is not None:
            # a backend's answers now, while they are sure to be asked (COMMIT waits
            # too if they are forgotten by then: `Transactions.commit`)
            session.ask_ahead([("write", exchange, "exchange")], [(exchange, "write", routing_key)])
            tx.append(lambda: session.publish(exchange, message).stored)
            conn.receipt(frame)
            return
        stored = session.publish(exchange, message).stored
        if destination.kind is not Kind.TEMP_QUEUE and plain_send(frame) is not None:
            text = frame.get("destination") or ""
            self._remember_target(text, exchange, routing_key, queue)
        conn.receipt(frame, durable=stored, removals=False)

    def send_fast(self, frame: Frame) -> bool:
        """A plain SEND (`plain_send`) to a destination seen before; False: general path.

        It does what `send` does for such a frame, minus the work whose
        answer cannot have changed: parsing the destination, and for /queue/
        the declare (the same Queue object is still there, not deleted, so
        the passive declare's exclusive-owner check passes again; `touch`
        restarts its `x-expires` clock as that declare would). Properties
        come from the headers as in `send`, once per header set
        (`send_plan`); the message then starts with the STOMP header caches
        such properties give. `Session.publish` (a repeated destination
        takes its route cache, `broker.vhost_routing`) raises NotFound, as
        `check_exchange` would, when the exchange has gone.
        """
        plan = self.send_plan(frame)
        return plan is not None and self._send_planned(plan, frame.body, frame)

    def _send_planned(self, plan: SendPlan, body: bytes, frame: Frame | None) -> bool:
        """`send_fast` once the plan is known; `frame` (None: a repeat, see
        `send_repeats`) is needed only while the plan's properties are not
        known yet and for a receipt."""
        target = self._send_targets.get(plan.destination)
        if target is None:
            return False
        exchange, routing_key, queue = target
        conn = self.conn
        session = conn.session
        assert session is not None  # SEND is accepted once CONNECTED
        if queue is not None:
            if queue.deleted:  # the general path declares it again
                del self._send_targets[plan.destination]
                return False
            if queue.options.expires:  # `touch` restarts the `x-expires` clock, if any
                queue.touch()
        properties = plan.properties
        if properties is None:  # the header set's first SEND, or one not cacheable
            assert frame is not None
            properties = message_properties(frame, conn)
            message = Message(exchange, routing_key, properties, body)
            if plan.cacheable:
                plan.properties = properties
        else:
            message = Message(exchange, routing_key, properties, body)
            wire = plan.wire
            if wire is None:
                wire = plan.wire = wire_cache_for(properties)
            message.wire_cache = wire.copy()
        stored = session.publish(exchange, message).stored
        if plan.receipt:
            assert frame is not None
            conn.receipt(frame, durable=stored, removals=False)
        return True

    def send_repeats(self, frame: Frame) -> Frame | None:
        """After `frame` took the SEND fast path: the SENDs right behind it in the
        buffer that repeat its header block, without making frames of them.

        Each is what `send_fast` would do with it, with the same plan (kept,
        its properties known, no receipt), counted in `conn.frames_in_read`.
        Returns the first one the plan cannot take (its destination changed),
        as a frame for the connection's general dispatch, or None.
        """
        plan = self._last_plan
        headers = frame.headers
        if plan is None or plan.headers is not headers or plan.properties is None or plan.receipt:
            return None
        conn = self.conn
        codec = conn.codec
        while codec.state is State.CONNECTED:
            body = codec.next_repeat(headers)
            if body is None:
                return None
            conn.frames_in_read += 1
            try:
                sent = self._send_planned(plan, body, None)
            except PermissionPending as pending:  # this SEND is the one to handle again
                pending.retry = Frame(frame.command, headers, body)
                raise
            if not sent:
                return Frame(frame.command, headers, body)
        return None

    def send_plan(self, frame: Frame) -> SendPlan | None:
        """What a SEND's headers decide, or None when it is not plain (`plain_send`).

        Kept per header set: the codec gives a frame that repeats the
        previous one's header block the same headers tuple
        (`decode_repeat`), so the usual case is one identity check. Plans
        with a receipt are not kept (receipt ids do not repeat).
        """
        headers = frame.headers
        plan = self._last_plan
        if plan is not None and plan.headers is headers:
            return plan
        plans = self._send_plans
        plan = plans.get(headers)
        if plan is None:
            shape = plain_send(frame)
            if shape is None:
                return None
            destination, receipt, others = shape
            plan = SendPlan(
                headers,
                destination,
                receipt,
                cacheable=not any(name in IMPURE_HEADERS for name, _ in headers),
            )
            if not others:
                plan.properties = Properties()
                plan.wire = NO_HEADERS_WIRE
            if not receipt:
                if len(plans) >= SEND_PLAN_CACHE_LIMIT:
                    plans.clear()
                plans[headers] = plan
        else:
            plan.headers = headers  # an equal tuple: the codec's latest (decoded again)
        self._last_plan = plan
        return plan

    def _remember_target(
        self, text: str, exchange: str, routing_key: str, queue: Queue | None
    ) -> None:
        """Cache a destination a simple SEND reached (see `send_fast`); `queue`
        is the `/queue/`'s queue (None for other destinations)."""
        if queue is not None and queue.deleted:  # published, then gone (exclusive auto-delete)
            return
        if len(self._send_targets) >= SEND_TARGET_CACHE_LIMIT:
            self._send_targets.clear()
        self._send_targets[text] = (exchange, routing_key, queue)

    def _publish_target(
        self, destination: Destination, arguments: dict[str, Any]
    ) -> tuple[str, str, Queue | None]:
        """(exchange, routing key, the `/queue/`'s queue or None) of a SEND's destination."""
        if destination.kind is Kind.TEMP_QUEUE:
            return "", self.conn.subscriptions.temp_queue(destination.name), None
        if destination.kind is Kind.QUEUE:
            queue, _ = ensure_queue(self.conn.active_session(), destination.name, arguments)
            return (*destination.publish_target(), queue)
        return (*destination.publish_target(), None)
