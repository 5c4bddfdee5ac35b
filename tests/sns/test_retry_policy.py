"""Delivery policies: AWS's retry phases and backoff functions, and their validation. Pure."""

from __future__ import annotations

import json
from typing import Any

import pytest

from moorage.protocols.sns.retry import (
    DeliveryPolicyError,
    http_retry_policy,
    parse_delivery_policy,
    retry_delays,
)


def delays(**policy: Any) -> list[float]:
    return retry_delays(http_retry_policy({"healthyRetryPolicy": policy}))


def test_aws_default_is_three_retries_twenty_seconds_apart() -> None:
    assert retry_delays(http_retry_policy({})) == [20.0, 20.0, 20.0]


def test_the_four_phases_come_in_aws_order() -> None:
    got = delays(
        numRetries=8,
        numNoDelayRetries=2,
        numMinDelayRetries=1,
        numMaxDelayRetries=2,
        minDelayTarget=1,
        maxDelayTarget=9,
        backoffFunction="linear",
    )
    # 2 at once, 1 at the minimum, 3 backing off linearly from 1 to 9, 2 at the maximum
    assert got == pytest.approx([0.0, 0.0, 1.0, 1 + 8 / 3, 1 + 16 / 3, 9.0, 9.0, 9.0])


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        ("linear", [4.0, 7.0, 10.0]),
        ("arithmetic", [2.5, 5.5, 10.0]),
        ("geometric", [1 + 9 / 7, 1 + 27 / 7, 10.0]),
        ("exponential", [1.0, 2.0, 4.0]),
    ],
)
def test_backoff_functions_grow_from_min_to_max(function: str, expected: list[float]) -> None:
    got = delays(numRetries=3, minDelayTarget=1, maxDelayTarget=10, backoffFunction=function)
    assert got == pytest.approx(expected)
    assert all(1 <= d <= 10 for d in got)
    assert got == sorted(got)


def test_topic_form_is_read_too() -> None:
    topic = {
        "http": {
            "defaultHealthyRetryPolicy": {"numRetries": 1, "minDelayTarget": 5, "maxDelayTarget": 5}
        }
    }
    assert retry_delays(http_retry_policy(topic)) == [5.0]


@pytest.mark.parametrize(
    "policy",
    [
        "not json",
        "[]",
        {"healthyRetryPolicy": {"numRetries": -1}},
        {"healthyRetryPolicy": {"numRetries": 101}},
        {"healthyRetryPolicy": {"minDelayTarget": 30, "maxDelayTarget": 10}},
        {"healthyRetryPolicy": {"maxDelayTarget": 3601}},
        {"healthyRetryPolicy": {"numRetries": 1, "numNoDelayRetries": 2}},
        {"healthyRetryPolicy": {"backoffFunction": "random"}},
        {"healthyRetryPolicy": {"numRetries": "3"}},
    ],
)
def test_invalid_policies_are_refused(policy: Any) -> None:
    with pytest.raises(DeliveryPolicyError):
        parse_delivery_policy(policy if isinstance(policy, str) else json.dumps(policy))
