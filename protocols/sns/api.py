"""The SNS API's topic and subscription actions, answered as AWS's Query protocol does.

`SnsApi.handle(action, params, caller)` runs one action for an authenticated
caller and returns the XML of its `<{action}Result>`, or raises `SnsError`.
Every change goes through a core session of the caller (a connection opened
for the request), so the caller's vhost permissions apply as for AMQP:

| action | permission |
|---|---|
| CreateTopic, DeleteTopic, Set/Get/TagTopic... | configure on the exchange |
| Subscribe, Unsubscribe, ...Subscription... | read on the exchange (`sqs`: + write on the queue) |
| Publish, PublishBatch | write on the exchange (the core's publish check) |
| ListTopics, ListSubscriptions(ByTopic) | access to the vhost |

A refused call is AWS's `AuthorizationError` (403). Publishing is
`protocols.sns.publishing`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from moorage.broker.auth import User
from moorage.broker.broker import Broker
from moorage.broker.errors import AccessRefused, BrokerError, NotAllowed, NotFound
from moorage.broker.session import Session
from moorage.protocols.sns.filter_policy import FilterPolicyError, parse_policy
from moorage.protocols.sns.model import (
    ACCOUNT_ID,
    DEFAULT_DELIVERY_POLICY,
    PROTOCOLS,
    SUBSCRIPTION_SETTABLE,
    TOPIC_CREATE_ONLY,
    TOPIC_NAME,
    TOPIC_SETTABLE,
    Subscription,
    Topic,
    default_policy,
    sqs_queue_of,
    topic_name_of,
)
from moorage.protocols.sns.registry import PublishOnly, Registry
from moorage.protocols.sns.retry import DeliveryPolicyError, parse_delivery_policy
from moorage.protocols.sns.wire import (
    SnsError,
    invalid,
    member_list,
    not_found,
    string_list,
    string_map,
    xml,
    xml_map,
    xml_members,
)

PAGE_SIZE = 100  # ListTopics / ListSubscriptions page (AWS: 100)
MAX_TAGS = 50


@dataclass(frozen=True, slots=True)
class Caller:
    """Who calls: the authenticated user, the vhost its access key maps to, where from."""

    user: User
    vhost: str
    peer: str
    endpoint: str  # scheme://host:port the client reached


def to_sns_error(error: BrokerError) -> SnsError:
    """A core error as SNS's answer."""
    if isinstance(error, AccessRefused | NotAllowed):
        return SnsError("AuthorizationError", error.text, 403)
    if isinstance(error, NotFound):
        return not_found(error.text)
    return invalid(error.text)


Action = Callable[[Mapping[str, str], Caller], Awaitable[str]]


class SnsApi:
    """The topic and subscription actions (Publish is added by `publishing.Publishing`)."""

    def __init__(self, broker: Broker, registry: Registry) -> None:
        self.broker = broker
        self.registry = registry
        # a new HTTP/S or email subscription asks its endpoint to confirm (set by the service)
        self.request_confirmation: Callable[[Subscription], None] = lambda _s: None

    def actions(self) -> dict[str, Action]:
        """The action handlers by AWS action name."""
        return {
            "CreateTopic": self.create_topic,
            "DeleteTopic": self.delete_topic,
            "ListTopics": self.list_topics,
            "GetTopicAttributes": self.get_topic_attributes,
            "SetTopicAttributes": self.set_topic_attributes,
            "Subscribe": self.subscribe,
            "ConfirmSubscription": self.confirm_subscription,
            "Unsubscribe": self.unsubscribe,
            "ListSubscriptions": self.list_subscriptions,
            "ListSubscriptionsByTopic": self.list_subscriptions_by_topic,
            "GetSubscriptionAttributes": self.get_subscription_attributes,
            "SetSubscriptionAttributes": self.set_subscription_attributes,
            "TagResource": self.tag_resource,
            "UntagResource": self.untag_resource,
            "ListTagsForResource": self.list_tags_for_resource,
        }

    # -- helpers ------------------------------------------------------------------------

    @contextmanager
    def session(self, caller: Caller) -> Iterator[Session]:
        """A core session of the caller on its vhost; core errors become SNS errors."""
        if self.broker.find_vhost(caller.vhost) is None:
            raise SnsError("AuthorizationError", f"no vhost '{caller.vhost}'", 403)
        try:
            connection = self.broker.connect(
                caller.vhost, caller.user, protocol="sns", peer=caller.peer
            )
        except BrokerError as e:
            raise to_sns_error(e) from None
        try:
            yield connection.open_session(PublishOnly())
        except BrokerError as e:
            raise to_sns_error(e) from None
        finally:
            connection.close()

    @staticmethod
    def required(params: Mapping[str, str], name: str) -> str:
        """A required parameter; missing or empty is `InvalidParameter`."""
        value = params.get(name)
        if value is None or value == "":
            raise invalid(f"{name} is required")  # AWS: "Invalid parameter: TopicArn"
        return value

    def topic(self, caller: Caller, arn: str, field: str = "TopicArn") -> Topic:
        """The caller's topic an ARN names. Raises SnsError (InvalidParameter, NotFound)."""
        name = topic_name_of(arn)
        if name is None:
            raise invalid(f"{field} Reason: An ARN must have at least 6 elements, not {arn!r}")
        topic = self.registry.topic(caller.vhost, name)
        if topic is None:
            raise not_found("Topic does not exist")
        return topic

    def subscription(self, caller: Caller, arn: str) -> Subscription:
        """The caller's subscription an ARN names. Raises SnsError (InvalidParameter, NotFound)."""
        sub = self.registry.subscriptions.get(arn)
        if sub is None or sub.vhost != caller.vhost:
            if topic_name_of(arn.rsplit(":", 1)[0]) is None:
                raise invalid(f"SubscriptionArn Reason: not a subscription ARN: {arn!r}")
            raise not_found("Subscription does not exist")
        return sub

    def check(self, caller: Caller, access: str, name: str, kind: str = "exchange") -> None:
        """Raise `AuthorizationError` unless the caller has `access` on the resource."""
        try:
            caller.user.check(caller.vhost, access, name, kind)  # type: ignore[arg-type]
        except AccessRefused as e:
            raise SnsError("AuthorizationError", e.text, 403) from None

    # -- topics -------------------------------------------------------------------------

    async def create_topic(self, params: Mapping[str, str], caller: Caller) -> str:
        """CreateTopic: declare the fanout exchange and store the topic; idempotent."""
        name = self.required(params, "Name")
        attributes = string_map(params, "Attributes")
        tags = {t.get("Key", ""): t.get("Value", "") for t in member_list(params, "Tags")}
        fifo = attributes.get("FifoTopic", "false").lower() == "true"
        base = name.removesuffix(".fifo") if fifo else name
        if fifo != name.endswith(".fifo") or not TOPIC_NAME.fullmatch(base):
            raise invalid(
                "Fifo Topic names must end with .fifo and must be made up of only uppercase "
                "and lowercase ASCII letters, numbers, underscores, and hyphens, and must be "
                "between 1 and 256 characters long."
                if fifo
                else "Topic Name"
            )
        for key, value in attributes.items():
            self._check_topic_attribute(key, value, creating=True, fifo=fifo)
        existing = self.registry.topic(caller.vhost, name)
        if existing is not None:
            self.check(caller, "configure", name)
            for key, value in attributes.items():
                wanted = value.lower() if key in _BOOLEANS else value
                if existing.attributes.get(key, _DEFAULTS.get(key, "")) != wanted:
                    raise invalid(
                        "Attributes Reason: Topic already exists with different attributes"
                    )
            return xml("TopicArn", existing.arn)
        with self.session(caller) as session:
            session.declare_exchange(name, "fanout", durable=True)
        stored = {k: v.lower() if k in _BOOLEANS else v for k, v in attributes.items() if v}
        if fifo:
            stored["FifoTopic"] = "true"
            stored.setdefault("ContentBasedDeduplication", "false")
        else:
            stored.pop("FifoTopic", None)
        topic = Topic(caller.vhost, name, stored, tags)
        self.registry.add_topic(topic)
        return xml("TopicArn", topic.arn)

    def _check_topic_attribute(self, key: str, value: str, *, creating: bool, fifo: bool) -> None:
        if key not in TOPIC_SETTABLE and not (creating and key in TOPIC_CREATE_ONLY):
            raise invalid("AttributeName")
        if key == "DeliveryPolicy" and value:
            try:
                parse_delivery_policy(value)
            except DeliveryPolicyError as e:
                raise invalid(str(e)) from None
        if key in ("FifoTopic", "ContentBasedDeduplication") and value.lower() not in (
            "true",
            "false",
        ):
            raise invalid(f"{key}: Invalid value [{value}]. Must be true or false.")
        if key == "ContentBasedDeduplication" and value.lower() == "true" and not fifo:
            raise invalid(
                "ContentBasedDeduplication: Content-based deduplication can only be set "
                "for FIFO topics"
            )
        if key == "Policy" and value:
            try:
                json.loads(value)
            except ValueError:
                raise invalid("Policy: failed to parse JSON") from None

    async def delete_topic(self, params: Mapping[str, str], caller: Caller) -> str:
        """DeleteTopic: subscriptions, their queues and the exchange go; missing is fine."""
        name = topic_name_of(self.required(params, "TopicArn"))
        if name is None:
            raise invalid("TopicArn")
        self.check(caller, "configure", name)
        topic = self.registry.topic(caller.vhost, name)
        if topic is None:
            return ""  # AWS: deleting a topic that does not exist succeeds
        self.registry.delete_topic(topic)
        with self.session(caller) as session:
            session.delete_exchange(name)
        return ""

    async def list_topics(self, params: Mapping[str, str], caller: Caller) -> str:
        """ListTopics: the vhost's topics by name, 100 per page."""
        if not self.broker.users.may_open(caller.user, caller.vhost):
            raise SnsError("AuthorizationError", f"access to vhost '{caller.vhost}' refused", 403)
        names = sorted(n for (v, n) in self.registry.topics if v == caller.vhost)
        page, token = _page(names, params.get("NextToken"))
        members = (xml("TopicArn", self.registry.topics[(caller.vhost, n)].arn) for n in page)
        return xml_members("Topics", members) + (xml("NextToken", token) if token else "")

    async def get_topic_attributes(self, params: Mapping[str, str], caller: Caller) -> str:
        """GetTopicAttributes: AWS's computed attributes, then the stored ones."""
        topic = self.topic(caller, self.required(params, "TopicArn"))
        self.check(caller, "configure", topic.name)
        subs = list(self.registry.subscriptions_of(topic))
        attributes = {
            "TopicArn": topic.arn,
            "Owner": ACCOUNT_ID,
            "Policy": default_policy(topic.arn),
            "DisplayName": "",
            "SubscriptionsConfirmed": str(sum(s.confirmed for s in subs)),
            "SubscriptionsPending": str(sum(not s.confirmed for s in subs)),
            "SubscriptionsDeleted": "0",
            "EffectiveDeliveryPolicy": json.dumps(
                json.loads(topic.attributes["DeliveryPolicy"])
                if topic.attributes.get("DeliveryPolicy")
                else DEFAULT_DELIVERY_POLICY
            ),
        }
        attributes.update(topic.attributes)
        if not topic.fifo:
            attributes.pop("FifoTopic", None)
        return xml_map("Attributes", attributes)

    async def set_topic_attributes(self, params: Mapping[str, str], caller: Caller) -> str:
        """SetTopicAttributes: one settable attribute ("" removes it)."""
        topic = self.topic(caller, self.required(params, "TopicArn"))
        key = self.required(params, "AttributeName")
        value = params.get("AttributeValue", "")
        self.check(caller, "configure", topic.name)
        self._check_topic_attribute(key, value, creating=False, fifo=topic.fifo)
        if value == "":
            topic.attributes.pop(key, None)
        else:
            topic.attributes[key] = value.lower() if key in _BOOLEANS else value
        self.registry.save(topic)
        return ""

    # -- subscriptions --------------------------------------------------------------------

    async def subscribe(self, params: Mapping[str, str], caller: Caller) -> str:
        """Subscribe: an `sqs` subscription is confirmed at once, others ask their endpoint."""
        topic = self.topic(caller, self.required(params, "TopicArn"))
        protocol = self.required(params, "Protocol").lower()
        endpoint = params.get("Endpoint", "")
        if protocol not in PROTOCOLS:
            raise invalid("Amazon SNS does not support this protocol string: " + protocol)
        self._check_endpoint(caller, protocol, endpoint)
        self.check(caller, "read", topic.name)
        attributes = string_map(params, "Attributes")
        for key, value in attributes.items():
            self._check_subscription_attribute(caller, protocol, key, value, attributes)
        for sub in self.registry.subscriptions_of(topic):  # AWS: Subscribe is idempotent
            if sub.protocol == protocol and sub.endpoint == endpoint:
                if any(sub.attributes.get(k, "") != v for k, v in attributes.items()):
                    raise invalid(
                        "Attributes Reason: Subscription already exists with different attributes"
                    )
                return xml("SubscriptionArn", self._shown_arn(sub, params))
        sub = self.registry.add_subscription(
            topic, protocol, endpoint, caller.user.name, {k: v for k, v in attributes.items() if v}
        )
        if not sub.confirmed:
            self.request_confirmation(sub)
        return xml("SubscriptionArn", self._shown_arn(sub, params))

    @staticmethod
    def _shown_arn(sub: Subscription, params: Mapping[str, str]) -> str:
        if sub.confirmed or params.get("ReturnSubscriptionArn", "false").lower() == "true":
            return sub.arn
        return "pending confirmation"

    def _check_endpoint(self, caller: Caller, protocol: str, endpoint: str) -> None:
        if protocol == "sqs":
            queue = sqs_queue_of(endpoint)
            if queue is None:
                raise invalid("SQS endpoint ARN")
            self.check(caller, "write", queue, "queue")
        elif protocol in ("http", "https"):
            if (
                not endpoint.lower().startswith(protocol + "://")
                or len(endpoint) <= len(protocol) + 3
            ):
                raise invalid("Endpoint must match the specified protocol")
        elif "@" not in endpoint.strip("@"):
            raise invalid("Email address")

    def _check_subscription_attribute(
        self, caller: Caller, protocol: str, key: str, value: str, all_: Mapping[str, str]
    ) -> None:
        if key not in SUBSCRIPTION_SETTABLE:
            raise invalid("AttributeName")
        if key == "RawMessageDelivery":
            if value.lower() not in ("true", "false"):
                raise invalid(
                    "RawMessageDelivery: Invalid value [" + value + "]. Must be true or false."
                )
            if value.lower() == "true" and protocol not in ("sqs", "http", "https"):
                raise invalid(
                    "Delivery protocol [" + protocol + "] does not support raw message delivery."
                )
        elif key == "FilterPolicyScope":
            if value not in ("MessageAttributes", "MessageBody"):
                raise invalid(
                    f"FilterPolicyScope: Invalid value [{value}]. "
                    "Please use either MessageBody or MessageAttributes"
                )
        elif key == "FilterPolicy" and value:
            try:
                parse_policy(value, all_.get("FilterPolicyScope", "MessageAttributes"))
            except FilterPolicyError as e:
                raise invalid(str(e)) from None
        elif key == "DeliveryPolicy" and value:
            try:
                parse_delivery_policy(value)
            except DeliveryPolicyError as e:
                raise invalid(str(e)) from None
        elif key == "RedrivePolicy" and value:
            try:
                target = json.loads(value).get("deadLetterTargetArn")
            except (ValueError, AttributeError):
                raise invalid("RedrivePolicy: failed to parse JSON") from None
            queue = sqs_queue_of(target) if isinstance(target, str) else None
            if queue is None:
                raise invalid("RedrivePolicy: deadLetterTargetArn is invalid")
            self.check(caller, "write", queue, "queue")

    async def confirm_subscription(self, params: Mapping[str, str], caller: Caller) -> str:
        """ConfirmSubscription: the token of a pending subscription starts its deliveries."""
        topic = self.topic(caller, self.required(params, "TopicArn"))
        token = self.required(params, "Token")
        for sub in self.registry.subscriptions_of(topic):
            if sub.token == token:
                if not sub.confirmed:
                    self.registry.confirm(sub)
                return xml("SubscriptionArn", sub.arn)
        raise invalid("Token")

    async def unsubscribe(self, params: Mapping[str, str], caller: Caller) -> str:
        """Unsubscribe: the subscription and its queue (with its backlog) go."""
        sub = self.subscription(caller, self.required(params, "SubscriptionArn"))
        self.check(caller, "read", sub.topic)
        self.registry.remove_subscription(sub)
        return ""

    def _subscription_members(self, subs: list[Subscription]) -> Iterator[str]:
        for sub in subs:
            shown = sub.arn if sub.confirmed else "PendingConfirmation"
            yield (
                xml("SubscriptionArn", shown)
                + xml("Owner", ACCOUNT_ID)
                + xml("Protocol", sub.protocol)
                + xml("Endpoint", sub.endpoint)
                + xml("TopicArn", f"{sub.arn.rsplit(':', 1)[0]}")
            )

    async def list_subscriptions(self, params: Mapping[str, str], caller: Caller) -> str:
        """ListSubscriptions: every subscription of the vhost, 100 per page."""
        if not self.broker.users.may_open(caller.user, caller.vhost):
            raise SnsError("AuthorizationError", f"access to vhost '{caller.vhost}' refused", 403)
        subs = sorted(
            (s for s in self.registry.subscriptions.values() if s.vhost == caller.vhost),
            key=lambda s: s.arn,
        )
        return self._subscription_page(subs, params)

    async def list_subscriptions_by_topic(self, params: Mapping[str, str], caller: Caller) -> str:
        """ListSubscriptionsByTopic: one topic's subscriptions, 100 per page."""
        topic = self.topic(caller, self.required(params, "TopicArn"))
        self.check(caller, "read", topic.name)
        subs = sorted(self.registry.subscriptions_of(topic), key=lambda s: s.arn)
        return self._subscription_page(subs, params)

    def _subscription_page(self, subs: list[Subscription], params: Mapping[str, str]) -> str:
        by_arn = {s.arn: s for s in subs}
        page, token = _page(list(by_arn), params.get("NextToken"))
        members = self._subscription_members([by_arn[a] for a in page])
        return xml_members("Subscriptions", members) + (xml("NextToken", token) if token else "")

    async def get_subscription_attributes(self, params: Mapping[str, str], caller: Caller) -> str:
        """GetSubscriptionAttributes: AWS's computed attributes, then the stored ones."""
        sub = self.subscription(caller, self.required(params, "SubscriptionArn"))
        self.check(caller, "read", sub.topic)
        attributes = {
            "SubscriptionArn": sub.arn,
            "TopicArn": sub.arn.rsplit(":", 1)[0],
            "Owner": ACCOUNT_ID,
            "Protocol": sub.protocol,
            "Endpoint": sub.endpoint,
            "ConfirmationWasAuthenticated": "true" if sub.confirmed else "false",
            "PendingConfirmation": "false" if sub.confirmed else "true",
            "RawMessageDelivery": "false",
            "SubscriptionPrincipal": f"arn:aws:iam::{ACCOUNT_ID}:user/{sub.owner}",
        }
        if sub.protocol in ("http", "https"):
            attributes["EffectiveDeliveryPolicy"] = json.dumps(
                {"healthyRetryPolicy": DEFAULT_DELIVERY_POLICY["http"]["defaultHealthyRetryPolicy"]}
            )
        attributes.update(sub.attributes)
        if "FilterPolicy" in sub.attributes:
            attributes.setdefault("FilterPolicyScope", "MessageAttributes")
        return xml_map("Attributes", attributes)

    async def set_subscription_attributes(self, params: Mapping[str, str], caller: Caller) -> str:
        """SetSubscriptionAttributes: one settable attribute, validated ("" removes it)."""
        sub = self.subscription(caller, self.required(params, "SubscriptionArn"))
        key = self.required(params, "AttributeName")
        value = params.get("AttributeValue", "")
        self.check(caller, "read", sub.topic)
        merged = {**sub.attributes, key: value}
        self._check_subscription_attribute(caller, sub.protocol, key, value, merged)
        if key == "FilterPolicyScope" and sub.attributes.get("FilterPolicy"):
            try:  # the policy must still be valid in its new scope
                parse_policy(sub.attributes["FilterPolicy"], value)
            except FilterPolicyError as e:
                raise invalid(str(e)) from None
        if value == "":
            sub.attributes.pop(key, None)
        else:
            sub.attributes[key] = value
        self.registry.save(sub)
        return ""

    # -- tags -----------------------------------------------------------------------------

    def _tagged(self, params: Mapping[str, str], caller: Caller) -> Topic:
        topic = self.topic(caller, self.required(params, "ResourceArn"), "ResourceArn")
        self.check(caller, "configure", topic.name)
        return topic

    async def tag_resource(self, params: Mapping[str, str], caller: Caller) -> str:
        """TagResource: add or replace tags (at most 50 per topic)."""
        topic = self._tagged(params, caller)
        tags = {t.get("Key", ""): t.get("Value", "") for t in member_list(params, "Tags")}
        if len({**topic.tags, **tags}) > MAX_TAGS:
            raise SnsError(
                "TagLimitExceeded", "Could not complete request: tag quota of per resource exceeded"
            )
        topic.tags.update(tags)
        self.registry.save(topic)
        return ""

    async def untag_resource(self, params: Mapping[str, str], caller: Caller) -> str:
        """UntagResource: remove tags by key (missing keys are fine)."""
        topic = self._tagged(params, caller)
        for key in string_list(params, "TagKeys"):
            topic.tags.pop(key, None)
        self.registry.save(topic)
        return ""

    async def list_tags_for_resource(self, params: Mapping[str, str], caller: Caller) -> str:
        """ListTagsForResource: the topic's tags."""
        topic = self._tagged(params, caller)
        return xml_members("Tags", (xml("Key", k) + xml("Value", v) for k, v in topic.tags.items()))


_BOOLEANS = frozenset({"FifoTopic", "ContentBasedDeduplication"})
_DEFAULTS = {"FifoTopic": "false", "ContentBasedDeduplication": "false", "DisplayName": ""}


def _page(items: list[str], token: str | None) -> tuple[list[str], str | None]:
    """One page of sorted names after `token` (the last name of the previous page)."""
    start = 0
    if token:
        start = next((i for i, n in enumerate(items) if n > token), len(items))
    page = items[start : start + PAGE_SIZE]
    more = start + PAGE_SIZE < len(items)
    return page, (page[-1] if more else None)
