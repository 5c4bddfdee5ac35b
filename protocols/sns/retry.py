"""Delivery policies: the delays between attempts, as AWS's HTTP/S retry policy defines them.

A pure module. AWS's `healthyRetryPolicy` has four phases, in order:
`numNoDelayRetries` immediate retries, `numMinDelayRetries` after
`minDelayTarget` seconds, a backoff phase (the rest of `numRetries`) whose
delays grow from `minDelayTarget` to `maxDelayTarget` along `backoffFunction`
(linear, arithmetic, geometric or exponential), then `numMaxDelayRetries`
after `maxDelayTarget`. After the last retry the message goes to the
subscription's dead-letter queue, or is dropped when it has none.

Subscriptions that are not HTTP/S (SQS queues, email) take `QUEUE_RETRY`:
AWS retries those endpoints for days; Moorage retries 10 times over about
ten minutes and then dead-letters, so a deleted target queue does not hold
its messages forever.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from moorage.protocols.sns.model import DEFAULT_HTTP_RETRY

QUEUE_RETRY: Mapping[str, Any] = {
    "minDelayTarget": 1,
    "maxDelayTarget": 120,
    "numRetries": 10,
    "numNoDelayRetries": 0,
    "numMinDelayRetries": 0,
    "numMaxDelayRetries": 0,
    "backoffFunction": "exponential",
}
MAX_RETRIES = 100
MAX_DELAY = 3600
_FUNCTIONS = ("linear", "arithmetic", "geometric", "exponential")


class DeliveryPolicyError(ValueError):
    """A DeliveryPolicy AWS would refuse; the text says why."""


def parse_delivery_policy(text: str) -> dict[str, Any]:
    """Validate a DeliveryPolicy attribute (topic or subscription). Raises DeliveryPolicyError."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise DeliveryPolicyError("DeliveryPolicy: failed to parse JSON") from None
    if not isinstance(doc, dict):
        raise DeliveryPolicyError("DeliveryPolicy: must be a JSON object")
    policy = http_retry_policy(doc)
    for key in ("minDelayTarget", "maxDelayTarget", *(k for k in policy if k.startswith("num"))):
        value = policy[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DeliveryPolicyError(f"DeliveryPolicy: {key} must be a non-negative integer")
    if policy["numRetries"] > MAX_RETRIES:
        raise DeliveryPolicyError(f"DeliveryPolicy: numRetries must be <= {MAX_RETRIES}")
    if policy["maxDelayTarget"] > MAX_DELAY or policy["minDelayTarget"] > policy["maxDelayTarget"]:
        raise DeliveryPolicyError("DeliveryPolicy: minDelayTarget <= maxDelayTarget <= 3600")
    fixed = (
        policy["numNoDelayRetries"] + policy["numMinDelayRetries"] + policy["numMaxDelayRetries"]
    )
    if fixed > policy["numRetries"]:
        raise DeliveryPolicyError("DeliveryPolicy: the phases exceed numRetries")
    if policy["backoffFunction"] not in _FUNCTIONS:
        raise DeliveryPolicyError(f"DeliveryPolicy: backoffFunction must be one of {_FUNCTIONS}")
    return doc


def http_retry_policy(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The retry policy of a DeliveryPolicy document (topic form `{"http": {...}}` or
    subscription form `{"healthyRetryPolicy": {...}}`), AWS's defaults filling the gaps."""
    found: Any = doc.get("healthyRetryPolicy")
    if found is None and isinstance(doc.get("http"), dict):
        found = doc["http"].get("defaultHealthyRetryPolicy")
    merged = dict(DEFAULT_HTTP_RETRY)
    if isinstance(found, dict):
        merged.update(found)
    return merged


def retry_delays(policy: Mapping[str, Any]) -> list[float]:
    """The delay before each retry (its length is the number of retries)."""
    retries = int(policy["numRetries"])
    low, high = float(policy["minDelayTarget"]), float(policy["maxDelayTarget"])
    no_delay = int(policy["numNoDelayRetries"])
    at_min = int(policy["numMinDelayRetries"])
    at_max = int(policy["numMaxDelayRetries"])
    backoff = max(0, retries - no_delay - at_min - at_max)
    delays = [0.0] * no_delay + [low] * at_min
    function = policy["backoffFunction"]
    for i in range(1, backoff + 1):
        fraction = i / backoff
        if function == "linear":
            step = fraction
        elif function == "arithmetic":
            step = (i * (i + 1) / 2) / (backoff * (backoff + 1) / 2)
        elif function == "geometric":
            step = (2**i - 1) / (2**backoff - 1)
        else:  # exponential: the delay doubles from `low` and is capped at `high`
            delays.append(min(high, low * 2 ** (i - 1)))
            continue
        delays.append(low + (high - low) * step)
    delays += [high] * at_max
    return delays[:retries]
