"""Password hashes (scrypt, RabbitMQ's formats) and the credential cache, without sockets."""

from __future__ import annotations

import base64
import hashlib

import pytest

from moorage.broker import auth
from moorage.broker.auth import UserDirectory
from moorage.broker.auth_hashing import (
    RABBIT_MD5,
    RABBIT_SHA256,
    RABBIT_SHA512,
    SCRYPT,
    HashFormatError,
    algorithm_of,
    check_hash,
    hash_password,
    needs_upgrade,
    rabbit_hash,
    verify_password,
)
from moorage.broker.auth_users import User
from moorage.broker.clock import ManualClock
from moorage.broker.errors import AccessRefused
from moorage.storage import MemoryStore


def test_scrypt_round_trip_records_its_parameters() -> None:
    stored = hash_password("s3cret")
    assert stored.startswith("$scrypt$ln=14,r=8,p=1$")
    assert verify_password("s3cret", stored)
    assert not verify_password("S3cret", stored)
    assert hash_password("s3cret") != stored  # salted
    assert algorithm_of(stored) == SCRYPT
    assert not needs_upgrade(stored)


def test_weaker_scrypt_parameters_still_verify_and_ask_for_an_upgrade() -> None:
    salt = b"0123456789abcdef"
    key = hashlib.scrypt(b"pw", salt=salt, n=2**10, r=8, p=1, dklen=32)
    b64 = base64.b64encode
    stored = f"$scrypt$ln=10,r=8,p=1${b64(salt).decode()}${b64(key).decode()}"
    assert verify_password("pw", stored)
    assert needs_upgrade(stored)


@pytest.mark.parametrize("algorithm", [RABBIT_SHA256, RABBIT_SHA512, RABBIT_MD5])
def test_rabbitmq_formats(algorithm: str) -> None:
    stored = rabbit_hash("guest", algorithm)
    assert algorithm_of(stored) == algorithm  # recognised by length alone
    assert check_hash(stored, algorithm) == algorithm
    assert verify_password("guest", stored, algorithm)
    assert verify_password("guest", stored)
    assert not verify_password("guest2", stored, algorithm)
    assert needs_upgrade(stored)


def test_rabbitmq_sha256_by_hand() -> None:
    # RabbitMQ's rabbit_password:hash/2: base64(salt ++ sha256(salt ++ password))
    salt = bytes.fromhex("908dc60a")
    stored = base64.b64encode(salt + hashlib.sha256(salt + b"test12").digest()).decode()
    assert verify_password("test12", stored, RABBIT_SHA256)


@pytest.mark.parametrize(
    ("stored", "algorithm"),
    [
        ("", ""),
        ("not base64!", ""),
        (base64.b64encode(b"x" * 10).decode(), ""),  # no algorithm has that length
        (rabbit_hash("a", RABBIT_SHA256), RABBIT_SHA512),  # wrong length for the name
        ("$scrypt$ln=99,r=8,p=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", ""),
        ("$scrypt$garbage", ""),
        (rabbit_hash("a"), "rabbit_password_hashing_rot13"),
    ],
)
def test_unusable_hashes_are_refused_and_match_nothing(stored: str, algorithm: str) -> None:
    with pytest.raises(HashFormatError):
        check_hash(stored, algorithm)
    assert not verify_password("a", stored, algorithm)


async def test_credential_cache_spares_scrypt_until_unused_for_its_ttl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    real = auth.verify_password

    def counting(password: str, stored: str, algorithm: str = "") -> bool:
        calls.append(password)
        return real(password, stored, algorithm)

    monkeypatch.setattr(auth, "verify_password", counting)
    clock = ManualClock()
    directory = UserDirectory([User("alice", hash_password("pw"))], cache_ttl=15.0)
    await directory.open(await _opened_store(), clock)
    for _ in range(5):
        directory.authenticate("alice", "pw", from_loopback=True)
    assert calls == ["pw"]
    with pytest.raises(AccessRefused):  # a wrong password is never answered from the cache
        directory.authenticate("alice", "wrong", from_loopback=True)
    for _ in range(4):  # used every 10 s: each use renews it (a polling web UI)
        clock.advance(10.0)
        directory.authenticate("alice", "pw", from_loopback=True)
    assert calls == ["pw", "wrong"]
    clock.advance(15.0)  # unused for its whole lifetime: gone
    directory.authenticate("alice", "pw", from_loopback=True)
    assert calls == ["pw", "wrong", "pw"]
    directory.put_user("alice", password="new")  # a new hash misses the cache
    with pytest.raises(AccessRefused):
        directory.authenticate("alice", "pw", from_loopback=True)


async def test_rabbitmq_hash_is_upgraded_at_the_first_login() -> None:
    store = await _opened_store()
    directory = UserDirectory([User("bob", rabbit_hash("pw", RABBIT_SHA512))])
    await directory.open(store, ManualClock())
    with pytest.raises(AccessRefused):
        directory.authenticate("bob", "nope", from_loopback=True)
    assert (await store.load_users()).users[0].hashing_algorithm == RABBIT_SHA512
    directory.authenticate("bob", "pw", from_loopback=True)
    record = (await store.load_users()).users[0]
    assert record.hashing_algorithm == SCRYPT
    assert record.password_hash.startswith("$scrypt$")
    assert verify_password("pw", record.password_hash)


async def _opened_store() -> MemoryStore:
    store = MemoryStore()
    await store.open()
    return store
