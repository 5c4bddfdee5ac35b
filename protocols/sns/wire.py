"""SNS's Query wire shapes: flat form fields in, XML fragments out, and its errors.

A pure module. botocore's SNS model serializes lists as `Name.member.N` and
maps as `Name.entry.N.key` / `.value` (MessageAttributes: `.Name` /
`.Value.DataType` / `.Value.StringValue` / `.Value.BinaryValue`); N counts
from 1 (parsed with the AWS listener's `protocols.aws.query`). Answers are
XML in the namespace `NAMESPACE`, always with their `<{action}Result>`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from xml.sax.saxutils import escape

from moorage.protocols.aws.query import element, members, name_value_map, scalar_list

NAMESPACE = "http://sns.amazonaws.com/doc/2010-03-31/"


class SnsError(Exception):
    """An SNS API error: AWS's code, message and HTTP status (sender's fault unless 5xx)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def invalid(message: str) -> SnsError:
    """AWS's `InvalidParameter` with its "Invalid parameter: ..." text."""
    return SnsError("InvalidParameter", f"Invalid parameter: {message}")


def not_found(message: str) -> SnsError:
    """AWS's `NotFound` (404)."""
    return SnsError("NotFound", message, 404)


def member_list(params: Mapping[str, str], name: str) -> list[dict[str, str]]:
    """A list of structures (`Name.member.N.Field`)."""
    return members(params, f"{name}.member")


def string_list(params: Mapping[str, str], name: str) -> list[str]:
    """A list of strings (`Name.member.N`)."""
    return scalar_list(params, f"{name}.member")


def string_map(params: Mapping[str, str], name: str) -> dict[str, str]:
    """A map of strings (`Name.entry.N.key` / `.value`)."""
    return name_value_map(params, f"{name}.entry", "key", "value")


xml = element  # `<tag>escaped value</tag>`


def xml_map(tag: str, items: Mapping[str, str]) -> str:
    """A map as SNS answers it: `<tag><entry><key/><value/></entry>...</tag>`."""
    entries = "".join(f"<entry>{xml('key', k)}{xml('value', v)}</entry>" for k, v in items.items())
    return f"<{tag}>{entries}</{tag}>"


def xml_members(tag: str, members: Iterable[str]) -> str:
    """A list as SNS answers it: `<tag><member>...</member>...</tag>`."""
    return f"<{tag}>" + "".join(f"<member>{m}</member>" for m in members) + f"</{tag}>"


def response(action: str, result: str, request_id: str) -> bytes:
    """A whole Query answer: `<{action}Response>` with its result and request id."""
    return (
        f'<{action}Response xmlns="{NAMESPACE}"><{action}Result>{result}</{action}Result>'
        f"<ResponseMetadata><RequestId>{escape(request_id)}</RequestId></ResponseMetadata>"
        f"</{action}Response>"
    ).encode()
