"""TLS for every listener: one server context from `[tls]`, re-read on SIGHUP.

Each plain listener has a TLS twin that serves the same protocol through the
same plug-in with this context: `amqps` (AMQP, RabbitMQ's 5671), `mqtts` (8883),
`stomps` (61614), `mqtt_wss` and `stomp_wss` (WebSocket over TLS, RabbitMQ's
15676 and 15673) and `https` (management, 15671). A TLS listener starts when
its port is set (`[listeners] amqps_port = 5671`, `--amqps-port 5671`) and
needs `[tls] cert` and `key`. Setting a plain port to 0 offers TLS only.

Client certificates: `verify = "none"` (default) asks for none, `"optional"`
checks one if sent, `"required"` refuses a client without a valid one; they
are checked against `ca`. The minimum version is TLS 1.2 unless `min_version
= "1.3"`; `ciphers` is an OpenSSL cipher list for TLS 1.2 (empty: Python's
secure defaults). `reload` loads the certificate and key again into the same
context: connections keep theirs, new handshakes get the new one.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

TLS_LISTENERS: dict[str, str] = {
    "amqps": "amqp",
    "mqtts": "mqtt",
    "stomps": "stomp",
    "mqtt_wss": "mqtt_ws",
    "stomp_wss": "stomp_ws",
    "https": "http",
    "sqs_https": "sqs",
}
"""Each TLS listener's name and the plain listener whose protocol it serves."""

TLS_PORTS: dict[str, int] = {
    "amqps": 5671,
    "mqtts": 8883,
    "stomps": 61614,
    "mqtt_wss": 15676,
    "stomp_wss": 15673,
    "https": 15671,
    "sqs_https": 9325,
}
"""The ports RabbitMQ and ActiveMQ users expect; a TLS listener is off until its port is set."""

_VERIFY = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TLSError(Exception):
    """The TLS settings cannot be used; the message says why in one line."""


@dataclass(slots=True)
class TLSConfig:
    """The `[tls]` section."""

    cert: str = ""  # PEM certificate chain of the server
    key: str = ""  # its PEM private key
    ca: str = ""  # PEM bundle that client certificates are checked against
    min_version: str = "1.2"
    ciphers: str = ""
    verify: str = "none"  # none | optional | required

    @property
    def configured(self) -> bool:
        return bool(self.cert)

    def check(self) -> None:
        """Raise TLSError for a value no context could be made from."""
        if self.min_version not in _VERSIONS:
            raise TLSError(f"tls.min_version must be '1.2' or '1.3', not {self.min_version!r}")
        if self.verify not in _VERIFY:
            raise TLSError(
                f"tls.verify must be 'none', 'optional' or 'required', not {self.verify!r}"
            )
        if self.verify != "none" and not self.ca:
            raise TLSError(f"tls.verify = '{self.verify}' needs tls.ca (the clients' CA bundle)")
        if self.cert and not self.key:
            raise TLSError("tls.cert is set but tls.key is not")


def server_context(config: TLSConfig) -> ssl.SSLContext:
    """A server-side context for `config`. Raises TLSError with the file and reason."""
    config.check()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = _VERSIONS[config.min_version]
    if config.ciphers:
        try:
            context.set_ciphers(config.ciphers)
        except ssl.SSLError as e:
            raise TLSError(f"tls.ciphers {config.ciphers!r}: {e}") from e
    context.verify_mode = _VERIFY[config.verify]
    if config.ca:
        try:
            context.load_verify_locations(cafile=config.ca)
        except (OSError, ssl.SSLError) as e:
            raise TLSError(f"tls.ca {config.ca}: {_reason(e)}") from e
    load_certificate(context, config)
    return context


def load_certificate(context: ssl.SSLContext, config: TLSConfig) -> None:
    """(Re)load the certificate chain and key into `context`. Raises TLSError."""
    for what, path in (("cert", config.cert), ("key", config.key)):
        if not Path(path).is_file():
            raise TLSError(f"tls.{what} {path}: no such file")
    try:
        context.load_cert_chain(config.cert, config.key)
    except (OSError, ssl.SSLError) as e:
        raise TLSError(f"tls.cert/key {config.cert}, {config.key}: {_reason(e)}") from e


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError) and error.reason:
        return str(error.reason)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)
