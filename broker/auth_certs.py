"""Client certificates as identity (RabbitMQ's `rabbitmq_auth_mechanism_ssl`).

A client that presents a certificate the TLS listener verified (`tls.verify
= "optional"` or `"required"`, against `tls.ca`) may log in as the user its
certificate names, with no password: AMQP through the `EXTERNAL` mechanism,
MQTT and STOMP by sending no password. `auth.ssl_cert_login_from` chooses the
name, as RabbitMQ's setting of that name does:

- `"distinguished_name"` (RabbitMQ's default): the subject in RFC 4514
  order and form, most specific first, e.g. `CN=app,OU=ops,O=Example`;
- `"common_name"`: the subject's (last) CN.

The user must exist; its permissions and the loopback rule apply as for a
password login. The certificate is what Python's `ssl` gives for a verified
peer (`SSLObject.getpeercert()`), so an unverified certificate never gets here.
"""

from __future__ import annotations

from typing import Any, Final

CERT_LOGIN_SOURCES: Final = ("distinguished_name", "common_name")

# RFC 4514 section 3 short names; others are written with their OID's name as given
_SHORT_NAMES: Final = {
    "commonName": "CN",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


def identity_of(certificate: dict[str, Any] | None, source: str) -> str | None:
    """The user name a verified peer certificate stands for, or None if it names none."""
    if not certificate:
        return None
    subject = certificate.get("subject") or ()
    if source == "common_name":
        names = [value for rdn in subject for key, value in rdn if key == "commonName"]
        return str(names[-1]) if names else None
    parts = []
    for rdn in reversed(subject):  # RFC 4514 2.1: the last RDN of the sequence first
        parts.append(
            "+".join(f"{_SHORT_NAMES.get(key, key)}={_escape(str(value))}" for key, value in rdn)
        )
    return ",".join(parts) or None


def _escape(value: str) -> str:
    """RFC 4514 2.4 escaping of an attribute value."""
    out = []
    for i, char in enumerate(value):
        if char in ',+"\\<>;' or (char in " #" and i == 0) or (char == " " and i == len(value) - 1):
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)
