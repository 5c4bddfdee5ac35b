"""A client connection as the core sees it: who, on which vhost, with which sessions."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from moorage.broker.replies import OrderedReplies
from moorage.broker.session import DeliverySink, Session

if TYPE_CHECKING:
    from moorage.broker.auth import User
    from moorage.broker.broker import Broker
    from moorage.broker.queue import Queue
    from moorage.broker.vhost import VirtualHost

_ids = itertools.count(1)


class ClientConnection:
    """Owns a connection's sessions and exclusive queues; closing it releases both."""

    def __init__(
        self,
        broker: Broker,
        vhost: VirtualHost,
        user: User,
        *,
        protocol: str,
        peer: str,
        client_properties: dict[str, Any] | None = None,
    ) -> None:
        self.id = next(_ids)
        self.broker = broker
        self.vhost = vhost
        self.user = user
        self.protocol = protocol
        self.peer = peer
        self.client_properties = client_properties or {}
        self.sessions: set[Session] = set()
        self.exclusive_queues: list[Queue] = []
        self.closed = False
        self.published = False  # the memory alarm pauses only connections that publish

    def ordered_replies(self) -> OrderedReplies:
        """A new ordered stream of replies that wait for the store (`broker.replies`)."""
        return OrderedReplies(self.broker.store)

    def open_session(self, sink: DeliverySink) -> Session:
        """A new session whose deliveries go to `sink`."""
        session = Session(self, sink)
        self.sessions.add(session)
        return session

    def close_session(self, session: Session) -> None:
        """Close one session: its consumers end, its unacked messages are requeued."""
        session.close()
        self.sessions.discard(session)

    def close(self) -> None:
        """Close every session, then delete the exclusive queues. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for session in list(self.sessions):
            self.close_session(session)
        for queue in list(self.exclusive_queues):
            if not queue.deleted:
                self.vhost.delete_queue(queue.name)
        self.exclusive_queues.clear()
        self.broker.connections.discard(self)
