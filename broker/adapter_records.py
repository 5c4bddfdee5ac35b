"""What adapters keep in the store, reached through the broker and never the store itself.

- `SessionRecords`: one protocol's durable records (an MQTT session's state,
  an SQS queue's attributes, an SNS topic or subscription), each an opaque
  document keyed by (vhost, key). `Broker.session_records(protocol)` hands
  an adapter the records of its protocol name; writes are queued to the store
  like every other change, so a reply that promises them waits through the
  connection's `OrderedReplies` (`broker.replies`).
- `recover_retained`: the retained messages read back after a restart and
  filed in their vhosts' `RetainedMessages` (`broker.retained`); the broker
  runs it when an adapter asks (`Broker.recover_retained`), once the topology
  is back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from moorage.broker.retained import RetainedMessages
from moorage.broker.serialization import decode_message
from moorage.storage import Store
from moorage.storage.store import SessionRecord

log = logging.getLogger("moorage.broker")


class SessionRecords:
    """The durable records of one protocol (`protocol` is the store's session key)."""

    __slots__ = ("_store", "protocol")

    def __init__(self, store: Store, protocol: str) -> None:
        self._store = store
        self.protocol = protocol

    async def load(self) -> list[SessionRecord]:
        """Every stored record of the protocol, in no particular order."""
        return await self._store.load_sessions(self.protocol)

    def put(self, vhost: str, key: str, state: bytes) -> None:
        """Create or replace the record `key` of `vhost` (queued to the store)."""
        self._store.put_session(vhost, self.protocol, key, state)

    def delete(self, vhost: str, key: str) -> None:
        """Forget the record `key` of `vhost` (no-op if there is none)."""
        self._store.delete_session(vhost, self.protocol, key)


async def recover_retained(store: Store, retained: Mapping[str, RetainedMessages]) -> None:
    """File the stored retained messages in their vhosts' `retained` (by vhost name).

    A record of an unknown vhost is skipped (and kept); an unreadable one is
    deleted from the store.
    """
    for item in await store.load_retained():
        messages = retained.get(item.vhost)
        if messages is None:
            log.warning("retained message of %r in unknown vhost %r", item.topic, item.vhost)
            continue
        try:
            message = decode_message(item.data)
        except ValueError as e:
            log.warning("dropping unreadable retained message of %r: %s", item.topic, e)
            store.delete_retained(item.vhost, item.topic)
            continue
        messages.restore(item.topic, message, item.message_id)
