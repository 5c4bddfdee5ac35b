"""The core's snapshots in RabbitMQ's management JSON, with its paging and columns.

Field names follow RabbitMQ 3.10's answers (recorded in
`tests/management/rabbitmq_fields.json`); values RabbitMQ computes from
Erlang internals (garbage collection, backing queue status) are left out.
`message_stats` carries RabbitMQ's counters with their `*_details` rates
(`broker.stats`): queues, exchanges, channels, connections and the overview
always have it (RabbitMQ leaves it out until something moved; a reader that
handles both sees no difference).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from moorage.broker import overview
from moorage.broker.stats import CHANNEL_FIELDS, EXCHANGE_FIELDS, QUEUE_FIELDS
from moorage.protocols.management.auth import http_error

NODE = "moorage@localhost"

Json = dict[str, Any]


def connection_name(info: overview.ConnectionInfo) -> str:
    """A connection's name in the API: its peer and id (RabbitMQ: "peer -> local")."""
    return f"{info.peer} ({info.id})"


def queue(info: overview.QueueInfo) -> Json:
    return {
        "name": info.name,
        "vhost": info.vhost,
        "durable": info.durable,
        "auto_delete": info.auto_delete,
        "exclusive": info.exclusive,
        "arguments": info.arguments,
        "node": NODE,
        "type": "classic",
        "state": "running",
        "messages": info.messages,
        "messages_ready": info.messages_ready,
        "messages_unacknowledged": info.messages_unacknowledged,
        "message_bytes_ready": info.message_bytes_ready,
        "consumers": info.consumers,
        "policy": None,
        "exclusive_consumer_tag": None,
        "message_stats": info.stats.message_stats(QUEUE_FIELDS),
    }


def exchange(info: overview.ExchangeInfo) -> Json:
    return {
        "name": info.name,
        "vhost": info.vhost,
        "type": info.type,
        "durable": info.durable,
        "auto_delete": info.auto_delete,
        "internal": info.internal,
        "arguments": info.arguments,
        "message_stats": info.stats.message_stats(EXCHANGE_FIELDS),
    }


def properties_key(routing_key: str, arguments: Mapping[str, Any]) -> str:
    """A binding's id in URLs (RabbitMQ's shape): the quoted routing key, or `~` when
    empty, then `~` and a stable digest of the arguments when it has any."""
    key = quote(routing_key, safe="") if routing_key else "~"
    if arguments:
        canonical = json.dumps(plain(arguments), sort_keys=True, separators=(",", ":"))
        key += "~" + hashlib.sha256(canonical.encode()).hexdigest()[:12]
    return key


def binding(info: overview.BindingInfo) -> Json:
    return {
        "source": info.source,
        "vhost": info.vhost,
        "destination": info.destination,
        "destination_type": info.destination_type,
        "routing_key": info.routing_key,
        "arguments": info.arguments,
        "properties_key": properties_key(info.routing_key, info.arguments),
    }


_PROTOCOL_NAMES = {"amqp091": "AMQP 0-9-1", "mqtt": "MQTT", "stomp": "STOMP", "http": "HTTP"}


def _peer_parts(peer: str) -> tuple[str, int | None]:
    host, _, port = peer.rpartition(":")
    if not host:
        return peer, None
    return host.strip("[]"), int(port) if port.isdigit() else None


def connection(info: overview.ConnectionInfo) -> Json:
    host, port = _peer_parts(info.peer)
    return {
        "name": connection_name(info),
        "node": NODE,
        "type": "network",
        "state": "running",
        "protocol": _PROTOCOL_NAMES.get(info.protocol, info.protocol),
        "user": info.user,
        "vhost": info.vhost,
        "peer_host": host,
        "peer_port": port,
        "channels": info.channels,
        "client_properties": plain(info.client_properties),
        "message_stats": info.stats.message_stats(CHANNEL_FIELDS),
    }


def channel(info: overview.ChannelInfo, connection_info: overview.ConnectionInfo) -> Json:
    name = connection_name(connection_info)
    return {
        "name": f"{name} ({info.number})",
        "number": info.number,
        "node": NODE,
        "vhost": info.vhost,
        "user": info.user,
        "state": "running",
        "connection_details": {"name": name, "peer_host": _peer_parts(connection_info.peer)[0]},
        "prefetch_count": info.prefetch_count,
        "global_prefetch_count": info.global_prefetch_count,
        "messages_unacknowledged": info.messages_unacknowledged,
        "consumer_count": info.consumers,
        "transactional": info.transactional,
        "confirm": False,
        "message_stats": info.stats.message_stats(CHANNEL_FIELDS),
    }


def consumer(info: overview.ConsumerInfo, connection_info: overview.ConnectionInfo) -> Json:
    name = connection_name(connection_info)
    return {
        "consumer_tag": info.consumer_tag,
        "queue": {"name": info.queue, "vhost": info.vhost},
        "channel_details": {
            "name": f"{name} ({info.channel})",
            "number": info.channel,
            "connection_name": name,
            "peer_host": _peer_parts(connection_info.peer)[0],
        },
        "ack_required": info.ack_required,
        "exclusive": info.exclusive,
        "prefetch_count": info.prefetch_count,
        "arguments": info.arguments,
        "active": True,
        "activity_status": "up",
    }


def plain(value: Any) -> Any:
    """Client properties as JSON (byte strings become text, timestamps numbers)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


# -- ?columns= and paging -----------------------------------------------------------------


def select_columns(items: Sequence[Json], columns: str | None) -> list[Json]:
    """RabbitMQ's `?columns=a,b.c`: keep only those (dotted names reach into objects)."""
    if not columns:
        return list(items)
    wanted = [c.split(".") for c in columns.split(",") if c]
    out = []
    for item in items:
        picked: Json = {}
        for path in wanted:
            value: Any = item
            for part in path:
                value = value.get(part) if isinstance(value, dict) else None
            if value is None and not _has(item, path):
                continue
            target = picked
            for part in path[:-1]:
                target = target.setdefault(part, {})
            target[path[-1]] = value
        out.append(picked)
    return out


def _has(item: Json, path: list[str]) -> bool:
    value: Any = item
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    return True


def _int_param(query: Mapping[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise http_error(400, "bad_request", f"{name} must be an integer") from None
    if value < 1:
        raise http_error(400, "bad_request", f"{name} must be positive")
    return value


def rendered_listing(
    records: Sequence[Any], query: Mapping[str, str], render: Callable[[Any], Json]
) -> Json | list[Json]:
    """`listing` of `render(r)` for each record, rendering only the asked page when no
    `sort` asks to see every item first (a dashboard's first page of 10,000 queues then
    costs one page of JSON). Records need a `name` for the `name` filter."""
    if "page" not in query or query.get("sort"):
        return listing([render(r) for r in records], query)
    page = _int_param(query, "page", 1)
    size = _int_param(query, "page_size", 100)
    if size > 500:
        raise http_error(400, "bad_request", "Page size is too large")
    total = len(records)
    name = query.get("name")
    if name:
        match = _name_matcher(name, query.get("use_regex") == "true")
        records = [r for r in records if match(str(r.name))]
    filtered = len(records)
    page_count = max(1, math.ceil(filtered / size))
    if page > page_count:
        raise http_error(
            400,
            "bad_request",
            f"Page out of range, page: {page} page size: {size}, len: {filtered}",
        )
    chunk = [render(r) for r in records[(page - 1) * size : page * size]]
    return {
        "filtered_count": filtered,
        "item_count": len(chunk),
        "items": select_columns(chunk, query.get("columns")),
        "page": page,
        "page_count": page_count,
        "page_size": size,
        "total_count": total,
    }


def _name_matcher(name: str, regex: bool) -> Callable[[str], bool]:
    """RabbitMQ's `name` filter: a substring, or a regular expression with use_regex."""
    if regex:
        try:
            pattern = re.compile(name)
        except re.error as e:
            raise http_error(400, "bad_request", f"invalid regex: {e}") from None
        return lambda n: pattern.search(n) is not None
    return lambda n: name in n


def listing(items: list[Json], query: Mapping[str, str]) -> Json | list[Json]:
    """A list endpoint's answer: plain, or RabbitMQ's page object when `?page=` is given.

    Paging parameters (RabbitMQ's): `page`, `page_size` (<= 500), `name`
    (filter, a substring unless `use_regex=true`), `sort` (a dotted field)
    and `sort_reverse`; `columns` applies to either form.
    """
    columns = query.get("columns")
    sort = query.get("sort")
    if sort:
        items = _sorted(items, sort, query.get("sort_reverse") == "true")
    if "page" not in query:
        return select_columns(items, columns)
    page = _int_param(query, "page", 1)
    size = _int_param(query, "page_size", 100)
    if size > 500:
        raise http_error(400, "bad_request", "Page size is too large")
    total = len(items)
    name = query.get("name")
    if name:
        match = _name_matcher(name, query.get("use_regex") == "true")
        items = [i for i in items if match(str(i.get("name", "")))]
    filtered = len(items)
    page_count = max(1, math.ceil(filtered / size))
    if page > page_count:
        raise http_error(
            400,
            "bad_request",
            f"Page out of range, page: {page} page size: {size}, len: {filtered}",
        )
    chunk = items[(page - 1) * size : page * size]
    return {
        "filtered_count": filtered,
        "item_count": len(chunk),
        "items": select_columns(chunk, columns),
        "page": page,
        "page_count": page_count,
        "page_size": size,
        "total_count": total,
    }


def _sorted(items: list[Json], sort: str, reverse: bool) -> list[Json]:
    path = sort.split(".")

    def key(item: Json) -> tuple[int, Any]:
        value: Any = item
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            return (0, "")
        return (1, value) if isinstance(value, int | float) else (2, str(value))

    return sorted(items, key=key, reverse=reverse)
