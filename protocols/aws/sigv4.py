"""AWS Signature Version 4: checks that a request was signed with a broker user's access key.

Theory of operation
-------------------
SigV4 (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html)
signs a *canonical request* — method, path, sorted query, the signed
headers, and the SHA-256 of the body — with a key derived from the secret,
the date, the region and the service. We rebuild the canonical request from
what arrived, derive the key from the secret the access key id maps to, and
compare signatures in constant time. The body's hash is always computed here
from the bytes received (never taken from `X-Amz-Content-Sha256`), so a body
changed in transit fails as `SignatureDoesNotMatch`.

Two forms are accepted: the `Authorization: AWS4-HMAC-SHA256 Credential=...,
SignedHeaders=..., Signature=...` header (what SDKs send), and the presigned
query string (`X-Amz-Algorithm`, `X-Amz-Credential`, `X-Amz-Date`,
`X-Amz-Expires`, `X-Amz-SignedHeaders`, `X-Amz-Signature`). The request's
`X-Amz-Date` must lie within 15 minutes of the broker's clock (AWS's rule;
`RequestExpired` otherwise), and a presigned request must not be past its
`X-Amz-Expires`.

This module is pure: it takes the request's parts and a key lookup and
returns the verified credential, or raises `AwsError`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from calendar import timegm
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from time import strptime
from urllib.parse import quote, unquote

from moorage.protocols.aws.errors import AwsError

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = 15 * 60  # seconds a request's date may differ from the broker's clock
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600  # AWS's longest presigned URL lifetime
_AUTH_FIELD = re.compile(r"\s*(Credential|SignedHeaders|Signature)=([^,\s]*)\s*")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Credential:
    """A verified signature's credential scope."""

    access_key_id: str
    date: str  # YYYYMMDD
    region: str
    service: str


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """The parts of an HTTP request that SigV4 covers."""

    method: str
    path: str  # raw (still percent-encoded) path
    query: list[tuple[str, str]]  # decoded query parameters, in order
    headers: Mapping[str, str]  # case-insensitive lookup expected (aiohttp's CIMultiDict)
    body: bytes


SecretLookup = Callable[[str], str | None]
"""access key id -> its secret, or None when the key is unknown."""


def incomplete(message: str) -> AwsError:
    return AwsError("IncompleteSignature", message)


def signature_mismatch() -> AwsError:
    return AwsError(
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method.",
        status=403,
    )


def _quote(value: str) -> str:
    return quote(value, safe="-_.~")


def _parse_date(value: str) -> float:
    try:
        return float(timegm(strptime(value, "%Y%m%dT%H%M%SZ")))
    except ValueError:
        raise incomplete(f"Date must be in ISO-8601 'basic format'. Got '{value}'.") from None


def _parse_scope(value: str) -> Credential:
    parts = value.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not parts[0]:
        raise incomplete(
            f"Credential should be scoped to a valid region and service, not '{value}'."
        )
    return Credential(parts[0], parts[1], parts[2], parts[3])


def _authorization_fields(header: str) -> dict[str, str]:
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise incomplete(f"Unsupported AWS 'algorithm': '{algorithm}'.")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        match = _AUTH_FIELD.fullmatch(part)
        if match is None:
            raise incomplete(f"Authorization header requires a valid field, not '{part}'.")
        fields[match.group(1)] = match.group(2)
    for name in ("Credential", "SignedHeaders", "Signature"):
        if name not in fields:
            raise incomplete(f"Authorization header requires '{name}' parameter.")
    return fields


def canonical_request(
    request: SignedRequest, signed_headers: list[str], exclude_query: str = ""
) -> str:
    """The canonical request of SigV4 (task 1), hashing the body as received."""
    path = quote(unquote(request.path) or "/", safe="/~")
    query = sorted(
        (_quote(k), _quote(v))
        for k, v in request.query
        if not (exclude_query and k == exclude_query)
    )
    canonical_query = "&".join(f"{k}={v}" for k, v in query)
    lines = []
    for name in signed_headers:
        value = request.headers.get(name)
        if value is None:
            raise signature_mismatch()
        lines.append(f"{name}:{_SPACES.sub(' ', value.strip())}\n")
    payload = hashlib.sha256(request.body).hexdigest()
    return "\n".join(
        [
            request.method,
            path,
            canonical_query,
            "".join(lines),
            ";".join(signed_headers),
            payload,
        ]
    )


def signing_key(secret: str, credential: Credential) -> bytes:
    key = hmac.new(f"AWS4{secret}".encode(), credential.date.encode(), hashlib.sha256).digest()
    for part in (credential.region, credential.service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def signature(secret: str, credential: Credential, amz_date: str, canonical: str) -> str:
    scope = f"{credential.date}/{credential.region}/{credential.service}/aws4_request"
    string_to_sign = "\n".join(
        [ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    return hmac.new(
        signing_key(secret, credential), string_to_sign.encode(), hashlib.sha256
    ).hexdigest()


def is_signed(request: SignedRequest) -> bool:
    """Whether the request carries a SigV4 signature in either form."""
    return "Authorization" in request.headers or any(
        k == "X-Amz-Credential" for k, _ in request.query
    )


def verify(request: SignedRequest, secret_of: SecretLookup, now: float) -> Credential:
    """Check the request's signature; return its credential scope.

    Raises AwsError: MissingAuthenticationToken (not signed), IncompleteSignature
    (malformed), InvalidClientTokenId (unknown key), RequestExpired (date too far
    from `now`, or a presigned URL past its expiry), SignatureDoesNotMatch.
    """
    query = dict(request.query)
    if "Authorization" in request.headers:
        fields = _authorization_fields(request.headers["Authorization"])
        credential = _parse_scope(fields["Credential"])
        amz_date = request.headers.get("X-Amz-Date") or ""
        if not amz_date:
            raise incomplete("Authorization header requires existence of an X-Amz-Date header.")
        signed_headers = fields["SignedHeaders"].split(";")
        given = fields["Signature"]
        expires = MAX_SKEW
        exclude = ""
    elif "X-Amz-Credential" in query:
        if query.get("X-Amz-Algorithm") != ALGORITHM:
            raise incomplete(f"Unsupported AWS 'algorithm': '{query.get('X-Amz-Algorithm')}'.")
        credential = _parse_scope(query["X-Amz-Credential"])
        amz_date = query.get("X-Amz-Date", "")
        signed_headers = query.get("X-Amz-SignedHeaders", "").split(";")
        given = query.get("X-Amz-Signature", "")
        try:
            expires = int(query.get("X-Amz-Expires", str(MAX_SKEW)))
        except ValueError:
            raise incomplete("X-Amz-Expires must be a number of seconds.") from None
        if not 0 < expires <= MAX_PRESIGN_EXPIRES:
            raise incomplete("X-Amz-Expires must be between 1 and 604800 seconds.")
        exclude = "X-Amz-Signature"
    else:
        raise AwsError(
            "MissingAuthenticationToken",
            "Request is missing Authentication Token",
            status=403,
        )
    signed = _parse_date(amz_date)
    if amz_date[:8] != credential.date:
        raise signature_mismatch()
    if (
        not signed_headers
        or signed_headers != sorted(signed_headers)
        or "host" not in signed_headers
    ):
        raise incomplete("SignedHeaders must be sorted, lower case and include 'host'.")
    secret = secret_of(credential.access_key_id)
    if secret is None:
        raise AwsError(
            "InvalidClientTokenId",
            "The security token included in the request is invalid.",
            status=403,
        )
    if now - signed > expires or signed - now > MAX_SKEW:
        raise AwsError(
            "RequestExpired",
            f"Request has expired. Timestamp date is {amz_date}.",
            status=400,
        )
    canonical = canonical_request(request, signed_headers, exclude)
    expected = signature(secret, credential, amz_date, canonical)
    if not hmac.compare_digest(expected, given):
        raise signature_mismatch()
    return credential
