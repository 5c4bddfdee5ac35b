"""Helpers for the Query protocol both services use: flat members in, XML out.

The Query protocol flattens lists and maps into numbered form fields:
`Attribute.1.Name=VisibilityTimeout&Attribute.1.Value=30`,
`Entries.member.2.Id=b`, `MessageAttributes.entry.1.Value.StringValue=x`
(SNS), or without the `member`/`entry` level (SQS's flattened shapes:
`SendMessageBatchRequestEntry.1.Id`, `AttributeName.1`). `members` and
`entries` read them back in index order; `xml_reply` wraps a result in the
`<{Action}Response>` envelope with its `RequestId`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from xml.sax.saxutils import escape

from moorage.protocols.aws.errors import XML_CONTENT_TYPE
from moorage.protocols.aws.service import AwsReply

_INDEX = re.compile(r"(\d+)(?:\.(.*))?$")


def members(params: Mapping[str, str], prefix: str) -> list[dict[str, str]]:
    """The numbered members under `prefix`, in index order.

    `members(p, "Entries.member")` turns `Entries.member.1.Id=a`,
    `Entries.member.1.MessageBody=x` into `[{"Id": "a", "MessageBody": "x"}]`;
    a scalar list (`AttributeName.1=All`) gives `[{"": "All"}]`. Indexes need not
    be contiguous (AWS accepts gaps) but must be positive integers.
    """
    found: dict[int, dict[str, str]] = {}
    start = prefix + "."
    for key, value in params.items():
        if not key.startswith(start):
            continue
        match = _INDEX.match(key[len(start) :])
        if match is None:
            continue
        index = int(match.group(1))
        found.setdefault(index, {})[match.group(2) or ""] = value
    return [found[i] for i in sorted(found) if i > 0]


def scalar_list(params: Mapping[str, str], prefix: str) -> list[str]:
    """A list of strings: `AttributeName.1=All&AttributeName.2=Policy` -> `["All", "Policy"]`."""
    return [m[""] for m in members(params, prefix) if "" in m]


def name_value_map(
    params: Mapping[str, str], prefix: str, key: str = "Name", value: str = "Value"
) -> dict[str, str]:
    """A map sent as `<prefix>.N.Name`/`<prefix>.N.Value` pairs (`Attribute.1.Name`, ...)."""
    return {m[key]: m.get(value, "") for m in members(params, prefix) if key in m}


def sub_fields(member: Mapping[str, str], prefix: str) -> dict[str, str]:
    """The fields of a member under `prefix.`, with the prefix removed."""
    start = prefix + "."
    return {k[len(start) :]: v for k, v in member.items() if k.startswith(start)}


def element(name: str, value: object) -> str:
    """`<name>value</name>` with the value XML-escaped."""
    return f"<{name}>{escape(str(value))}</{name}>"


def elements(pairs: Iterator[tuple[str, object]] | list[tuple[str, object]]) -> str:
    return "".join(element(name, value) for name, value in pairs)


def xml_reply(
    action: str, namespace: str, result_xml: str, request_id: str, *, has_result: bool = False
) -> AwsReply:
    """The Query protocol's success envelope around `result_xml` (already XML).

    An empty `result_xml` leaves the `<{action}Result>` element out (actions
    without output) unless `has_result` (an action whose result is empty, such
    as an empty list: SDKs look for the element).
    """
    wrap = result_xml or has_result
    result = f"<{action}Result>{result_xml}</{action}Result>" if wrap else ""
    body = (
        f'<?xml version="1.0"?><{action}Response xmlns="{namespace}">{result}'
        f"<ResponseMetadata><RequestId>{escape(request_id)}</RequestId></ResponseMetadata>"
        f"</{action}Response>"
    )
    return AwsReply(body.encode(), XML_CONTENT_TYPE)
