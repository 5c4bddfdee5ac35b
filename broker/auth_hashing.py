"""Password hashes: scrypt for new passwords, RabbitMQ's formats for imported ones.

New passwords are hashed with `hashlib.scrypt` (salted, memory-hard), in a
self-describing string that records its parameters, so they can be raised
later without breaking stored hashes:

    $scrypt$ln=14,r=8,p=1$<salt, base64>$<key, base64>

`ln` is log2 of scrypt's N. N = 2^14, r = 8, p = 1 is the scrypt paper's
figure for interactive logins (16 MiB and tens of milliseconds per check);
the credential cache of `auth_directory` keeps a reconnect storm from paying
it at every connection.

Hashes exported by RabbitMQ (`rabbitmqctl export_definitions`, the
management API's `password_hash` with `hashing_algorithm`) keep working:
base64(salt[4] + H(salt + password)) with H = SHA-256
(`rabbit_password_hashing_sha256`, RabbitMQ's default), SHA-512
(`rabbit_password_hashing_sha512`) or MD5 (`rabbit_password_hashing_md5`,
RabbitMQ before 3.6). `needs_upgrade` says a hash is not scrypt with the
current parameters; the user directory then re-hashes the password at the
next successful login, when it has the password in hand.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import Final

SCRYPT: Final = "moorage_password_hashing_scrypt"
RABBIT_SHA256: Final = "rabbit_password_hashing_sha256"
RABBIT_SHA512: Final = "rabbit_password_hashing_sha512"
RABBIT_MD5: Final = "rabbit_password_hashing_md5"

ALGORITHMS: Final = (SCRYPT, RABBIT_SHA256, RABBIT_SHA512, RABBIT_MD5)
"""Every `hashing_algorithm` accepted (RabbitMQ's names, and ours for scrypt)."""

SCRYPT_LOG_N: Final = 14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_SCRYPT_SALT_BYTES: Final = 16
_SCRYPT_KEY_BYTES: Final = 32
_SCRYPT_MAX_LOG_N: Final = 20  # refuse stored parameters that would need > 1 GiB

_RABBIT_DIGESTS: Final = {
    RABBIT_SHA256: hashlib.sha256,
    RABBIT_SHA512: hashlib.sha512,
    RABBIT_MD5: hashlib.md5,
}
_RABBIT_BY_LENGTH: Final = {4 + 32: RABBIT_SHA256, 4 + 64: RABBIT_SHA512, 4 + 16: RABBIT_MD5}


class HashFormatError(ValueError):
    """A password hash or hashing algorithm that cannot be used; says why."""


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A new scrypt hash of `password` with the current parameters."""
    salt = os.urandom(_SCRYPT_SALT_BYTES) if salt is None else salt
    key = _scrypt(password, salt, SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P)
    return f"$scrypt$ln={SCRYPT_LOG_N},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(key)}"


def rabbit_hash(password: str, algorithm: str = RABBIT_SHA256, *, salt: bytes | None = None) -> str:
    """A hash in RabbitMQ's format: base64(salt[4] + H(salt + password))."""
    salt = os.urandom(4) if salt is None else salt
    digest = _RABBIT_DIGESTS[algorithm](salt + password.encode()).digest()
    return base64.b64encode(salt + digest).decode()


def algorithm_of(password_hash: str, algorithm: str = "") -> str:
    """The algorithm of a stored hash: `algorithm` when given and valid, else recognised
    from the hash itself (scrypt's prefix, or the length of RabbitMQ's base64 form).

    Raises:
        HashFormatError: an unknown algorithm name, or a hash that is neither.
    """
    if algorithm:
        if algorithm not in ALGORITHMS:
            raise HashFormatError(f"unknown hashing_algorithm '{algorithm}'")
        return algorithm
    if password_hash.startswith("$scrypt$"):
        return SCRYPT
    try:
        raw = base64.b64decode(password_hash, validate=True)
    except (binascii.Error, ValueError):
        raise HashFormatError("password_hash is neither scrypt nor RabbitMQ's base64") from None
    found = _RABBIT_BY_LENGTH.get(len(raw))
    if found is None:
        raise HashFormatError("password_hash has the length of no known algorithm")
    return found


def check_hash(password_hash: str, algorithm: str = "") -> str:
    """Validate a hash given by an operator; return its algorithm. Raises HashFormatError."""
    found = algorithm_of(password_hash, algorithm)
    if found == SCRYPT:
        _parse_scrypt(password_hash)
    else:
        try:
            raw = base64.b64decode(password_hash, validate=True)
        except (binascii.Error, ValueError):
            raise HashFormatError(f"password_hash is not base64 ({found})") from None
        if _RABBIT_BY_LENGTH.get(len(raw)) != found:
            raise HashFormatError(f"password_hash does not have the length of {found}")
    return found


def verify_password(password: str, password_hash: str, algorithm: str = "") -> bool:
    """Whether `password` matches the stored hash (constant-time comparison).

    A hash that cannot be parsed matches nothing (never raises for bad data).
    """
    try:
        found = algorithm_of(password_hash, algorithm)
        if found == SCRYPT:
            log_n, r, p, salt, key = _parse_scrypt(password_hash)
            return hmac.compare_digest(_scrypt(password, salt, log_n, r, p, len(key)), key)
        raw = base64.b64decode(password_hash, validate=True)
    except (HashFormatError, binascii.Error, ValueError):
        return False
    if len(raw) < 5:
        return False
    digest = _RABBIT_DIGESTS[found](raw[:4] + password.encode()).digest()
    return hmac.compare_digest(digest, raw[4:])


def needs_upgrade(password_hash: str, algorithm: str = "") -> bool:
    """True unless the hash is scrypt with at least the current parameters."""
    try:
        if algorithm_of(password_hash, algorithm) != SCRYPT:
            return True
        log_n, r, p, _salt, _key = _parse_scrypt(password_hash)
    except HashFormatError:
        return True
    return (log_n, r, p) < (SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P)


def _scrypt(password: str, salt: bytes, log_n: int, r: int, p: int, dklen: int = 32) -> bytes:
    n = 1 << log_n
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=129 * r * n * p + 1024**2, dklen=dklen
    )


def _parse_scrypt(password_hash: str) -> tuple[int, int, int, bytes, bytes]:
    """(log_n, r, p, salt, key) of a `$scrypt$` string. Raises HashFormatError."""
    parts = password_hash.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != "scrypt":
        raise HashFormatError("a scrypt hash is $scrypt$ln=..,r=..,p=..$salt$key")
    try:
        params = dict(item.split("=", 1) for item in parts[2].split(","))
        log_n, r, p = int(params["ln"]), int(params["r"]), int(params["p"])
        salt, key = _unb64(parts[3]), _unb64(parts[4])
    except (KeyError, ValueError, binascii.Error):
        raise HashFormatError("a scrypt hash is $scrypt$ln=..,r=..,p=..$salt$key") from None
    if not (1 <= log_n <= _SCRYPT_MAX_LOG_N and 1 <= r <= 32 and 1 <= p <= 16):
        raise HashFormatError(f"scrypt parameters out of range: ln={log_n}, r={r}, p={p}")
    if len(salt) < 8 or not 16 <= len(key) <= 64:
        raise HashFormatError("scrypt salt or key too short")
    return log_n, r, p, salt, key


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
