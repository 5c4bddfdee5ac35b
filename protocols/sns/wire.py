"""SNS's Query wire shapes: flat form fields in, XML fragments out, and its errors.

A pure module. botocore's SNS model serializes lists as `Name.member.N` and
maps as `Name.entry.N.key` / `.value` (MessageAttributes: `.Name` /
`.Value.DataType` / `.Value.StringValue` / `.Value.BinaryValue`); N counts
from 1. Answers are XML in the namespace `NAMESPACE`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from xml.sax.saxutils import escape

NAMESPACE = "http://sns.amazonaws.com/doc/2010-03-31/"

_INDEXED = re.compile(r"^(?P<n>[1-9][0-9]{0,5})\.(?P<rest>.+)$")


class SnsError(Exception):
    """An SNS API error: AWS's code, message and HTTP status (sender's fault unless 5xx)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def invalid(message: str) -> SnsError:
    return SnsError("InvalidParameter", f"Invalid parameter: {message}")


def not_found(message: str) -> SnsError:
    return SnsError("NotFound", message, 404)


def indexed(params: Mapping[str, str], prefix: str) -> list[dict[str, str]]:
    """The items of `prefix.N.<field>` fields, in N order, as {field: value} dicts."""
    found: dict[int, dict[str, str]] = {}
    head = prefix + "."
    for key, value in params.items():
        if key.startswith(head):
            match = _INDEXED.match(key[len(head) :])
            if match is None:
                raise invalid(f"{key} is not a well-formed parameter name")
            found.setdefault(int(match["n"]), {})[match["rest"]] = value
    return [found[n] for n in sorted(found)]


def member_list(params: Mapping[str, str], name: str) -> list[dict[str, str]]:
    """A list of structures (`Name.member.N.Field`)."""
    return indexed(params, f"{name}.member")


def string_list(params: Mapping[str, str], name: str) -> list[str]:
    """A list of strings (`Name.member.N`)."""
    head = f"{name}.member."
    items = sorted(
        (int(k[len(head) :]), v)
        for k, v in params.items()
        if k.startswith(head) and k[len(head) :].isdigit()
    )
    return [v for _n, v in items]


def string_map(params: Mapping[str, str], name: str) -> dict[str, str]:
    """A map of strings (`Name.entry.N.key` / `.value`)."""
    result: dict[str, str] = {}
    for entry in indexed(params, f"{name}.entry"):
        if "key" not in entry:
            raise invalid(f"{name}: an entry has no key")
        result[entry["key"]] = entry.get("value", "")
    return result


def xml(tag: str, value: str) -> str:
    return f"<{tag}>{escape(value)}</{tag}>"


def xml_map(tag: str, items: Mapping[str, str]) -> str:
    entries = "".join(f"<entry>{xml('key', k)}{xml('value', v)}</entry>" for k, v in items.items())
    return f"<{tag}>{entries}</{tag}>"


def xml_members(tag: str, members: Iterable[str]) -> str:
    return f"<{tag}>" + "".join(f"<member>{m}</member>" for m in members) + f"</{tag}>"


def response(action: str, result: str, request_id: str) -> bytes:
    """A whole Query answer: `<{action}Response>` with its result and request id."""
    return (
        f'<{action}Response xmlns="{NAMESPACE}"><{action}Result>{result}</{action}Result>'
        f"<ResponseMetadata><RequestId>{escape(request_id)}</RequestId></ResponseMetadata>"
        f"</{action}Response>"
    ).encode()
