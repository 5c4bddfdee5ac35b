"""What the SQS service keeps, and the checks every action shares.

- Queue metadata (`attributes.QueueMeta`), durable in the broker's session
  records of the protocol name `"sqs"` (`Broker.session_records`: one record
  per queue, keyed by vhost and queue name, a JSON document), loaded once on
  the first call; records of queues that no longer exist are dropped then.
- The broker's pull receivers (`broker.visibility`), with each queue's
  redrive policy plugged in.
- Resolving a call to its vhost and queue, with the user's permissions
  (AMQP's: configure to create or change a queue, write on the default
  exchange to send, read to receive, delete or purge); a refusal is
  `AccessDenied` (403).
- Parameters that arrive as JSON numbers or as Query text.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from moorage.broker.auth import Access
from moorage.broker.broker import Broker
from moorage.broker.errors import AccessRefused
from moorage.broker.queue import Queue
from moorage.broker.vhost import VirtualHost
from moorage.broker.visibility import PullReceiver, PullReceivers
from moorage.protocols.aws.errors import AwsError, access_denied
from moorage.protocols.aws.service import AwsCall
from moorage.protocols.sqs.attributes import ACCOUNT_ID, QueueMeta, queue_arn
from moorage.protocols.sqs.errors import invalid_value, missing, queue_does_not_exist

PROTOCOL = "sqs"  # the session records' protocol name
RECEIVERS = "pull_receivers"  # the broker extension holding the receivers


class SqsState:
    """The SQS service's state on one broker."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.receivers = broker.extension(RECEIVERS, lambda b: PullReceivers(b.clock))
        self.records = broker.session_records(PROTOCOL)
        self.metas: dict[tuple[str, str], QueueMeta] = {}
        self.epoch = secrets.token_hex(4)  # receipt handles of an earlier run are stale
        self.move_tasks: list[dict[str, Any]] = []
        self._loaded = False
        self._loading: asyncio.Lock = asyncio.Lock()

    async def load(self) -> None:
        """Read the queue metadata from the store (once)."""
        if self._loaded:
            return
        async with self._loading:
            if self._loaded:
                return
            for record in await self.records.load():
                vhost = self.broker.find_vhost(record.vhost)
                if vhost is None or vhost.find_queue(record.client_id) is None:
                    # its queue was deleted by another protocol: a later queue of the
                    # same name must not inherit its SQS attributes
                    self.records.delete(record.vhost, record.client_id)
                    continue
                try:
                    self.metas[(record.vhost, record.client_id)] = QueueMeta.decode(record.state)
                except (ValueError, TypeError, AttributeError):
                    continue  # a damaged record: the queue shows the defaults
            self._loaded = True

    # -- metadata ---------------------------------------------------------------------

    def meta(self, vhost: str, name: str) -> QueueMeta:
        """The queue's metadata (defaults for a queue SQS never configured)."""
        meta = self.metas.get((vhost, name))
        if meta is None:
            meta = QueueMeta()
        return meta

    def save(self, vhost: str, name: str, meta: QueueMeta) -> None:
        self.metas[(vhost, name)] = meta
        self.records.put(vhost, name, meta.encode())

    def forget(self, vhost: str, name: str) -> None:
        if self.metas.pop((vhost, name), None) is not None:
            self.records.delete(vhost, name)
        self.receivers.forget(vhost, name)

    async def durable(self) -> None:
        """Wait until every change made so far is on disk (confirmed means durable)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def written(error: BaseException | None = None) -> None:
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        self.broker.ordered_replies().send(written, stored=True)
        try:
            await done
        except Exception as e:
            raise AwsError(
                "InternalFailure",
                f"The broker could not write the change: {e}",
                status=500,
                sender_fault=False,
            ) from e

    # -- resolving a call ---------------------------------------------------------------

    def vhost(self, call: AwsCall) -> VirtualHost:
        vhost = self.broker.find_vhost(call.vhost)
        if vhost is None or not self.broker.users.may_open(call.user, call.vhost):
            raise access_denied(
                f"access to vhost '{call.vhost}' refused for user '{call.user.name}'"
            )
        return vhost

    @staticmethod
    def check(call: AwsCall, access: Access, resource: str, kind: str = "queue") -> None:
        try:
            call.user.check(call.vhost, access, resource, kind)
        except AccessRefused as e:
            raise access_denied(str(e)) from None

    @staticmethod
    def queue_name(call: AwsCall, params: Mapping[str, Any]) -> str:
        """The queue a call names: its `QueueUrl`, or (Query) the path it was posted to."""
        url = params.get("QueueUrl")
        if url is None and call.wire == "query" and call.path.count("/") >= 2:
            url = call.path
        if not isinstance(url, str) or not url:
            raise missing("QueueUrl")
        name = urlsplit(url).path.rstrip("/").rpartition("/")[2]
        if not name:
            raise queue_does_not_exist()
        return name

    def queue(self, call: AwsCall, params: Mapping[str, Any]) -> tuple[VirtualHost, Queue]:
        vhost = self.vhost(call)
        queue = vhost.find_queue(self.queue_name(call, params))
        if queue is None or queue.name.startswith("amq."):
            raise queue_does_not_exist()
        return vhost, queue

    def receiver(self, vhost: VirtualHost, queue: Queue) -> PullReceiver:
        receiver = self.receivers.of(queue)
        meta = self.metas.get((vhost.name, queue.name))
        receiver.redrive = meta.redrive if meta is not None else _no_redrive
        return receiver

    @staticmethod
    def url(call: AwsCall, name: str) -> str:
        return f"{call.endpoint}/{ACCOUNT_ID}/{name}"

    @staticmethod
    def arn(call: AwsCall, name: str) -> str:
        return queue_arn(call.region, name)


def _no_redrive() -> tuple[int, str] | None:
    return None


def integer(
    params: Mapping[str, Any], name: str, low: int, high: int, default: int | None = None
) -> int | None:
    """An integer parameter (a JSON number or Query text) within [low, high]."""
    raw = params.get(name)
    if raw is None:
        return default
    try:
        if isinstance(raw, bool):
            raise ValueError(raw)
        value = int(raw)
    except (TypeError, ValueError):
        raise invalid_value(name, raw, "Must be an integer.") from None
    if not low <= value <= high:
        raise invalid_value(name, raw, f"Must be between {low} and {high}, if provided.")
    return value


def text(params: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    raw = params.get(name)
    if raw is None:
        if required:
            raise missing(name)
        return None
    if not isinstance(raw, str):
        raise invalid_value(name, raw, "Must be a string.")
    return raw


def names(params: Mapping[str, Any], name: str) -> list[str]:
    """A list-of-strings parameter (absent: empty)."""
    raw = params.get(name) or []
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise invalid_value(name, raw, "Must be a list of strings.")
    return list(raw)
