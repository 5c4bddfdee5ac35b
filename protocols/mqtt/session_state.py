"""The state of one MQTT session, which outlives its network connections (section 4.1).

What this module owns:

- `SessionState`: subscriptions, QoS 2 packet identifiers in both
  directions, the session expiry, a pending will, and the record of it kept
  in the store (`encode` / `decode`, JSON);
- `SubscriptionState`: one subscription with its options and identifier;
- the names of the core queues a session uses: its own queue
  (`queue_name`) and the queue of a shared subscription group
  (`shared_queue_name`).

Deliveries are matched against a session's subscriptions through a topic
trie (`matching`): one session queue carries the messages of all its
subscriptions, and the adapter must know which of them matched (granted QoS,
subscription identifiers, no-local, retain-as-published). The trie
(`broker.topic_trie`, AMQP binding-key grammar) finds the candidates by
routing key instead of trying every subscription; `topics.matches` then
confirms each candidate with MQTT's own rules (the `$` rule [MQTT-4.7.2-1],
wildcard characters inside a level), so the result is exactly what matching
one subscription at a time gave. The confirmed result is cached per routing
key (a session usually sees few topics), so a delivery normally costs one
dict lookup, less than matching even a single subscription did.
Subscriptions change only through `subscribe`, `unsubscribe` and
`clear_subscriptions`, which keep the trie in step and empty the cache.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from moorage.broker.topic_trie import TopicTrie
from moorage.protocols.mqtt.codec import Subscription, Will
from moorage.protocols.mqtt.topics import filter_to_binding_key, matches, split_shared

SESSION_NEVER_EXPIRES = 0xFFFFFFFF

# Routing keys whose matching subscriptions a session remembers (emptied when
# full); a session usually sees few topics, and the cache is per session.
MATCH_CACHE_SIZE = 64


@dataclass(slots=True)
class SubscriptionState:
    options: Subscription
    identifier: int | None
    group: str | None  # shared subscription group, or None
    topic_filter: str  # without the $share/group/ prefix


@dataclass(slots=True)
class PendingWill:
    will: Will
    user: Any
    vhost: str
    client_id: str
    timer: Any = None


def shared_queue_name(group: str, topic_filter: str) -> str:
    """The core queue of the shared subscription `$share/<group>/<topic_filter>`."""
    return f"mqtt-shared-{group}-{topic_filter}"


@dataclass(eq=False)
class SessionState:
    """What survives a client's disconnect (section 4.1)."""

    vhost: str
    client_id: str
    expiry_interval: int = 0
    subscriptions: dict[str, SubscriptionState] = field(default_factory=dict)  # read-only
    incoming_qos2: set[int] = field(default_factory=set)  # PUBREC sent, PUBREL awaited
    outgoing_pubrel: set[int] = field(default_factory=set)  # PUBREL sent, PUBCOMP awaited
    expiry_timer: Any = None
    will: PendingWill | None = None
    queue_declared: bool = False
    version: int = 4
    saved: bool = False  # a record of it is in the store
    disconnected_at: float | None = None  # wall clock, while no connection owns it
    # binding key of each non-shared subscription -> its name (created on first use)
    _matcher: TopicTrie[str] | None = field(default=None, init=False, repr=False)
    # routing key -> the subscriptions it matches (see `matching`)
    _matched: dict[str, tuple[SubscriptionState, ...]] = field(
        default_factory=dict, init=False, repr=False
    )

    @property
    def queue_name(self) -> str:
        return f"mqtt-subscription-{self.client_id}qos1"

    @property
    def persistent(self) -> bool:
        return self.expiry_interval != 0

    # -- subscriptions ---------------------------------------------------------------

    def subscribe(self, sub: SubscriptionState) -> bool:
        """Add a subscription, replacing one with the same filter [MQTT-3.8.4-3].

        Returns:
            Whether a subscription with that filter existed.
        """
        name = sub.options.topic_filter
        self._matched.clear()
        old = self.subscriptions.get(name)
        if old is not None and old.group is None and self._matcher is not None:
            self._matcher.remove(filter_to_binding_key(old.topic_filter), name)
        self.subscriptions[name] = sub  # a replaced filter keeps its place
        if sub.group is None:
            if self._matcher is None:
                self._matcher = TopicTrie(cache_size=0)  # `_matched` caches the results
            self._matcher.add(filter_to_binding_key(sub.topic_filter), name)
        return old is not None

    def unsubscribe(self, name: str) -> SubscriptionState | None:
        """Remove the subscription named `name` (its full filter); the one removed, or None."""
        self._matched.clear()
        sub = self.subscriptions.pop(name, None)
        if sub is not None and sub.group is None and self._matcher is not None:
            self._matcher.remove(filter_to_binding_key(sub.topic_filter), name)
        return sub

    def clear_subscriptions(self) -> None:
        self.subscriptions.clear()
        self._matched.clear()
        self._matcher = None

    def matching(self, topic: str, routing_key: str) -> Sequence[SubscriptionState]:
        """The non-shared subscriptions that `topic` (routed as `routing_key`) matches.

        The result may be shared with later calls: do not change it.
        """
        found = self._matched.get(routing_key)
        if found is not None:
            return found
        matcher = self._matcher
        if matcher is None:
            return ()
        subscriptions = self.subscriptions
        found = tuple(
            sub
            for sub in (subscriptions[name] for name in matcher.match(routing_key))
            if matches(sub.topic_filter, topic)
        )
        if len(self._matched) >= MATCH_CACHE_SIZE:
            self._matched.clear()
        self._matched[routing_key] = found
        return found

    # -- the record in the store ------------------------------------------------------

    def encode(self) -> bytes:
        """The state kept in the store (JSON; pending wills are not kept)."""
        return json.dumps(
            {
                "version": self.version,
                "expiry": self.expiry_interval,
                "disconnected_at": self.disconnected_at,
                "subscriptions": [
                    [
                        name,
                        sub.options.qos,
                        sub.options.no_local,
                        sub.options.retain_as_published,
                        sub.options.retain_handling,
                        sub.identifier,
                    ]
                    for name, sub in self.subscriptions.items()
                ],
                "incoming_qos2": sorted(self.incoming_qos2),
                "outgoing_pubrel": sorted(self.outgoing_pubrel),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, vhost: str, client_id: str, data: bytes) -> SessionState:
        """Inverse of `encode`. Raises ValueError (or KeyError/TypeError) on a bad record."""
        d = json.loads(data)
        state = cls(vhost, client_id, int(d["expiry"]), version=int(d["version"]))
        state.disconnected_at = d.get("disconnected_at")
        for name, qos, no_local, rap, rh, identifier in d["subscriptions"]:
            group, topic_filter = split_shared(name)
            options = Subscription(name, int(qos), bool(no_local), bool(rap), int(rh))
            state.subscribe(SubscriptionState(options, identifier, group, topic_filter))
        state.incoming_qos2 = {int(i) for i in d["incoming_qos2"]}
        state.outgoing_pubrel = {int(i) for i in d["outgoing_pubrel"]}
        return state
