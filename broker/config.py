"""The broker's configuration: one TOML file, embedded defaults, flag overrides.

`Config.load(path)` reads the file (see `config/moorage.toml` for every key,
documented); `apply_overrides` lays command-line flags on top. Unknown keys
are errors: a typo in an operator's file must not be silently ignored.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from moorage.broker.auth import Permission, TopicPermission, User, UserDirectory, hash_password
from moorage.broker.auth_certs import CERT_LOGIN_SOURCES
from moorage.broker.auth_hashing import HashFormatError, check_hash
from moorage.broker.limits import (
    ResourceLimits,
    UserLimits,
    VhostLimits,
    parse_user_limits,
    parse_vhost_limits,
)
from moorage.broker.tls import TLS_PORTS, TLSConfig, TLSError

_T = TypeVar("_T")

DEFAULT_PORTS: dict[str, int] = {
    "amqp": 5672,
    "mqtt": 1883,
    "stomp": 61613,
    "http": 15672,
    "mqtt_ws": 15675,  # MQTT over WebSocket, path /ws
    "stomp_ws": 15674,  # STOMP over WebSocket, path /ws
    "sqs": 9324,  # the AWS listener: SQS (and SNS) APIs, ElasticMQ's port
    # TLS twins of the above (broker.tls): off (0) until a port is set
    **dict.fromkeys(TLS_PORTS, 0),
}


class ConfigError(Exception):
    """The configuration cannot be used; the message says why in one line."""


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/moorage`, else `~/.local/share/moorage`."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "moorage"


@dataclass(slots=True)
class Limits:
    """Protection for the daemon: sizes, counts and timeouts."""

    frame_max: int = 131072
    channel_max: int = 2047
    heartbeat: int = 60
    max_message_size: int = 128 * 1024 * 1024
    handshake_timeout: float = 10.0
    max_connections: int = 0  # 0 = unlimited
    file_descriptor_reserve: int = 32  # descriptors kept from clients (broker.descriptors)
    queue_memory_limit: int = 16 * 1024 * 1024  # ready bytes a stored queue keeps in RAM
    store_backlog: int = 32 * 1024 * 1024  # unwritten bytes before publishers are paused
    memory_high_watermark: float = 0.4  # process RAM that blocks publishers (broker.memory)
    memory_calculation_strategy: str = "rss"  # "rss" (the process) or "queued" (broker.memory)
    consumer_timeout: int = 0  # ms a delivery may stay unacked (0 = off; x-consumer-timeout)
    consumer_timeout_action: str = "requeue"  # or "close": RabbitMQ's channel close (406)
    mqtt_session_queue_limit: int = 100_000  # messages queued per persistent MQTT session
    mqtt_sys_interval: float = 10.0  # seconds between MQTT $SYS updates (0 = none)


@dataclass(slots=True)
class StorageConfig:
    """Where and how durable state is kept."""

    backend: str = "sqlite"  # "sqlite" or "memory"
    durability: str = "fsync"  # "fsync" or "nosync"
    retention: float = 0.0  # seconds a message may stay queued (0 = no limit)
    ack_window: float = 0.1  # seconds a delivered message may wait for its ack unwritten
    # Shared-storage failover (broker.shared_storage, docs/failover.md "Shared storage"):
    mode: str = "single"  # "single", or "shared": brokers on one data_dir under a lock
    lease: float = 10.0  # seconds a lock holder may go without renewing before it stops
    lock_poll: float = 0.5  # seconds between a waiting broker's attempts at the lock

    disk_free_limit: int = 50_000_000  # free bytes under which publishers block (broker.disk)
    disk_free_limit_relative: float = 0.0  # or this times RAM, when > 0 (0 = use the above)

    def check_mode(self) -> None:
        """`mode`, `lease` and `lock_poll` make sense together. Raises ConfigError."""
        if self.mode not in {"single", "shared"}:
            raise ConfigError(f"storage.mode must be 'single' or 'shared', not {self.mode!r}")
        if self.mode == "shared" and self.backend != "sqlite":
            raise ConfigError("storage.mode = 'shared' needs storage.backend = 'sqlite'")
        if not self.lease > 0 or not self.lock_poll > 0:
            raise ConfigError("storage.lease and storage.lock_poll must be > 0 seconds")


@dataclass(slots=True)
class SnsConfig:
    """The SNS API's deliveries and alerts (`[sns]`, see docs/sns.md)."""

    smtp_host: str = ""  # SMTP relay for email subscriptions ("" = email deliveries fail)
    smtp_port: int = 25
    smtp_from: str = "moorage@localhost"
    https_ca: str = ""  # PEM CA bundle trusted for https endpoints, besides the system's
    alerts_topic: str = "moorage-alerts"  # system topic of the broker's alarms ("" = none)
    alerts_vhost: str = "/"
    alert_queue_depth: int = 0  # alert when a queue holds more messages (0 = off)
    alert_queue_age: float = 0.0  # alert when a queue's oldest message is older, seconds (0 = off)
    alert_interval: float = 30.0  # seconds between checks of queue depth and age


@dataclass(slots=True)
class ReplicationConfig:
    """Failover by replication (docs/failover.md): this node's role and its peers."""

    role: str = ""  # "" (a single broker), "primary" or "standby"
    port: int = 0  # the replication port (standbys connect, `moorage promote` asks)
    peer: str = ""  # HOST:PORT of the other node's replication port (`--primary`)
    witness: str = ""  # HOST:PORT of the witness ("" = none: promotion is manual)
    advertise: str = ""  # host the other nodes and clients reach this node at (default: bind)
    standby_timeout: float = 5.0  # seconds confirms wait for a lost standby before going alone
    heartbeat: float = 0.25  # seconds between keep-alives and witness reports
    peer_timeout: float = 1.5  # seconds of silence after which the peer is lost
    promote_without_witness: bool = False  # accept the risk: auto-promote with no witness


@dataclass(slots=True)
class Config:
    """Everything `moorage serve` needs; defaults run a local broker."""

    data_dir: Path = field(default_factory=default_data_dir)
    bind: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    vhosts: list[str] = field(default_factory=lambda: ["/"])
    users: list[User] = field(default_factory=list)
    # Digest of the file's [[users]] (None: not from a file). The store keeps the
    # digest it last applied: users are seeded again only when it changes.
    users_seed: str | None = None
    loopback_users: frozenset[str] = frozenset({"guest"})
    anonymous_user: str = ""  # user of clients that send no credentials ("" = refuse them)
    # brute-force slowdown (broker.auth_guard): the n-th refusal in a row from one
    # address waits min(failed_login_max_delay, n * failed_login_delay) seconds
    failed_login_delay: float = 0.2  # 0 = off
    failed_login_max_delay: float = 10.0
    # the user name a verified client certificate stands for (broker.auth_certs)
    ssl_cert_login_from: str = "distinguished_name"  # or "common_name"
    # the authentication chain, in order (broker.auth_backends), and each one's settings
    auth_backends: list[str] = field(default_factory=lambda: ["internal"])
    auth_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    sns: SnsConfig = field(default_factory=SnsConfig)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    log_level: str = "info"
    # RabbitMQ's vhost and user limits (broker.limits): [vhost_limits."/"], [user_limits.NAME]
    vhost_limits: dict[str, VhostLimits] = field(default_factory=dict)
    user_limits: dict[str, UserLimits] = field(default_factory=dict)
    log_format: str = "text"  # or "json": one JSON object per line (`broker.logs`)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None) -> Config:
        """Read a TOML file (None: embedded defaults). Raises ConfigError."""
        if path is None:
            config = cls()
        else:
            try:
                with open(path, "rb") as f:
                    data = tomllib.load(f)
            except OSError as e:
                raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"config file {path} is not valid TOML: {e}") from e
            config = cls._from_dict(data)
        if not config.users:
            config.users = [default_guest()]
        if config.users_seed is None:
            config.users_seed = _digest([])
        return config

    @classmethod
    def _from_dict(cls, data: dict[str, Any]) -> Config:
        config = cls()
        data = dict(data)
        broker = _table(data.pop("broker", {}), "broker")
        _check_keys(broker, {"data_dir", "vhosts", "log_level", "log_format"}, "broker")
        if "data_dir" in broker:
            config.data_dir = Path(str(broker["data_dir"])).expanduser()
        if "vhosts" in broker:
            config.vhosts = [str(v) for v in broker["vhosts"]]
        config.log_level = str(broker.get("log_level", config.log_level))
        config.log_format = str(broker.get("log_format", config.log_format))
        if config.log_format not in ("text", "json"):
            raise ConfigError(
                f'broker.log_format must be "text" or "json", not {config.log_format!r}'
            )

        listeners = _table(data.pop("listeners", {}), "listeners")
        config.bind = str(listeners.pop("bind", config.bind))
        for key, value in listeners.items():
            if not key.endswith("_port"):
                raise ConfigError(f"unknown key 'listeners.{key}'")
            config.ports[key.removesuffix("_port")] = _port(value, f"listeners.{key}")

        config.limits = _dataclass_from(Limits, data.pop("limits", {}), "limits")
        if config.limits.memory_calculation_strategy not in {"rss", "queued"}:
            raise ConfigError(
                "limits.memory_calculation_strategy must be 'rss' or 'queued', "
                f"not {config.limits.memory_calculation_strategy!r}"
            )
        config.storage = _dataclass_from(StorageConfig, data.pop("storage", {}), "storage")
        if config.storage.backend not in {"sqlite", "memory"}:
            raise ConfigError(
                f"storage.backend must be 'sqlite' or 'memory', not {config.storage.backend!r}"
            )
        if config.storage.durability not in {"fsync", "nosync"}:
            raise ConfigError(
                f"storage.durability must be 'fsync' or 'nosync', not {config.storage.durability!r}"
            )
        if not config.storage.ack_window >= 0:
            raise ConfigError(
                f"storage.ack_window must be >= 0 seconds, not {config.storage.ack_window!r}"
            )
        config.storage.check_mode()

        config.tls = _dataclass_from(TLSConfig, data.pop("tls", {}), "tls")
        config.sns = _dataclass_from(SnsConfig, data.pop("sns", {}), "sns")
        config.replication = _dataclass_from(
            ReplicationConfig, data.pop("replication", {}), "replication"
        )
        config.check_replication()
        try:
            config.vhost_limits = parse_vhost_limits(data.pop("vhost_limits", {}))
            config.user_limits = parse_user_limits(data.pop("user_limits", {}))
        except ValueError as e:
            raise ConfigError(str(e)) from None

        _auth_section(config, _table(data.pop("auth", {}), "auth"))
        raw_users = data.pop("users", [])
        if not isinstance(raw_users, list):
            raise ConfigError("'users' must be an array of tables ([[users]])")
        config.users = [_user(u) for u in raw_users]
        config.users_seed = _digest(raw_users)
        if data:
            raise ConfigError(f"unknown section '{next(iter(data))}'")
        config.check_tls()
        names = {u.name for u in config.users} or {"guest"}
        if config.anonymous_user and config.anonymous_user not in names:
            raise ConfigError(f"auth.anonymous_user '{config.anonymous_user}' is not a user")
        return config

    def check_tls(self) -> None:
        """A TLS listener needs a certificate; TLS settings must make sense. Raises ConfigError."""
        try:
            self.tls.check()
        except TLSError as e:
            raise ConfigError(str(e)) from None
        wanted = [name for name in TLS_PORTS if self.ports.get(name)]
        if wanted and not self.tls.configured:
            raise ConfigError(f"the {wanted[0]} listener needs tls.cert and tls.key")

    def check_replication(self) -> None:
        """The role and addresses of `[replication]` make sense. Raises ConfigError."""
        r = self.replication
        if r.role not in {"", "primary", "standby"}:
            raise ConfigError(f"replication.role must be 'primary' or 'standby', not {r.role!r}")
        _port(r.port, "replication.port")
        for key in ("peer", "witness"):
            value = getattr(r, key)
            if value and not _is_address(value):
                raise ConfigError(f"replication.{key} must be HOST:PORT, not {value!r}")
        if r.role and self.storage.backend != "sqlite":
            raise ConfigError("replication needs storage.backend = 'sqlite'")
        if r.role and self.storage.mode == "shared":
            raise ConfigError(
                "replication.role and storage.mode = 'shared' are two failover designs; "
                "choose one (docs/failover.md)"
            )
        if r.role and not r.port:
            raise ConfigError("a replicated node needs a replication port (--replication-port)")
        if r.role == "standby" and not r.peer:
            raise ConfigError("a standby needs the primary's address (--primary HOST:PORT)")
        for key in ("standby_timeout", "heartbeat", "peer_timeout"):
            if not getattr(r, key) > 0:
                raise ConfigError(f"replication.{key} must be > 0 seconds")

    def resource_limits(self) -> ResourceLimits:
        """The per-vhost and per-user limits of this configuration."""
        return ResourceLimits(dict(self.vhost_limits), dict(self.user_limits))

    def user_directory(self) -> UserDirectory:
        """The `UserDirectory` of these users, with the anonymous user resolved."""
        return UserDirectory(
            self.users, self.loopback_users, self.anonymous_user, seed=self.users_seed
        )

    def apply_overrides(
        self,
        *,
        data_dir: str | None = None,
        bind: str | None = None,
        ports: dict[str, int | None] | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_ca: str | None = None,
    ) -> None:
        """Lay command-line flags over the file's values (None = not given). Raises ConfigError."""
        if data_dir is not None:
            self.data_dir = Path(data_dir).expanduser()
        if bind is not None:
            self.bind = bind
        for name, port in (ports or {}).items():
            if port is not None:
                self.ports[name] = _port(port, f"--{name}-port")
        if tls_cert is not None:
            self.tls.cert = tls_cert
        if tls_key is not None:
            self.tls.key = tls_key
        if tls_ca is not None:
            self.tls.ca = tls_ca
        self.check_tls()


def _is_address(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) <= 65535)


def _auth_section(config: Config, auth: dict[str, Any]) -> None:
    """The [auth] table: rules, brute-force delays, certificate logins, the backend chain."""
    backends = auth.get("backends", ["internal"])
    if (
        not isinstance(backends, list)
        or not backends
        or not all(isinstance(b, str) for b in backends)
    ):
        raise ConfigError("auth.backends must be a non-empty list of backend names")
    config.auth_backends = list(backends)
    for name in backends:
        if name in auth:
            config.auth_settings[name] = _table(auth[name], f"auth.{name}")
    _check_keys(
        auth,
        {
            "loopback_users",
            "anonymous_user",
            "failed_login_delay",
            "failed_login_max_delay",
            "ssl_cert_login_from",
            "backends",
            *backends,
        },
        "auth",
    )
    for key in ("failed_login_delay", "failed_login_max_delay"):
        value = auth.get(key, getattr(config, key))
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"auth.{key} must be a number of seconds >= 0, not {value!r}")
        setattr(config, key, float(value))
    if "loopback_users" in auth:
        config.loopback_users = frozenset(str(u) for u in auth["loopback_users"])
    config.anonymous_user = str(auth.get("anonymous_user", ""))
    config.ssl_cert_login_from = str(auth.get("ssl_cert_login_from", "distinguished_name"))
    if config.ssl_cert_login_from not in CERT_LOGIN_SOURCES:
        raise ConfigError(
            "auth.ssl_cert_login_from must be 'distinguished_name' or 'common_name',"
            f" not {config.ssl_cert_login_from!r}"
        )


def default_guest() -> User:
    """RabbitMQ's default user: guest/guest, all permissions on `/`, loopback only."""
    return User(
        "guest",
        _guest_hash(),
        ("administrator",),
        {"/": Permission(".*", ".*", ".*")},
        attributes={"access_keys": {"guest": {"secret": "guest", "vhost": "/"}}},
    )  # the AWS access key guest/guest is loopback only too, as the password


@functools.cache
def _guest_hash() -> str:
    # guest's password is public; hashing it once per process spares every
    # broker started in one process (tests, embedding) a scrypt run.
    return hash_password("guest")


def _digest(raw_users: list[Any]) -> str:
    """A digest of the file's [[users]] as written (passwords included, never stored)."""
    text = json.dumps(raw_users, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _table(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"'{name}' must be a table")
    return dict(value)


def _check_keys(table: dict[str, Any], allowed: set[str], section: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"unknown key '{section}.{key}'")


def _port(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise ConfigError(f"{name} must be a port number 0-65535 (0 disables), not {value!r}")
    return value


def _dataclass_from(cls: type[_T], value: Any, section: str) -> _T:
    """Build a settings dataclass from a TOML table, checking names and types."""
    table = _table(value, section)
    _check_keys(table, {f.name for f in fields(cls)}, section)  # type: ignore[arg-type]
    obj = cls()
    for key, item in table.items():
        kind = type(getattr(obj, key))
        accepted = (int, float) if kind is float else (kind,)
        if isinstance(item, bool) != (kind is bool) or not isinstance(item, accepted):
            raise ConfigError(f"{section}.{key} must be {kind.__name__}, not {item!r}")
        setattr(obj, key, kind(item))
    return obj


def _user(value: Any) -> User:
    table = _table(value, "users")
    _check_keys(
        table,
        {
            "name",
            "password",
            "password_hash",
            "hashing_algorithm",
            "tags",
            "permissions",
            "topic_permissions",
            "access_keys",
        },
        "users",
    )
    if "name" not in table:
        raise ConfigError("every [[users]] entry needs a name")
    name = str(table["name"])
    algorithm = str(table.get("hashing_algorithm", ""))
    if "password_hash" in table:
        password_hash: str | None = str(table["password_hash"])
        try:
            algorithm = check_hash(str(password_hash), algorithm)
        except HashFormatError as e:
            raise ConfigError(f"users.{name}.password_hash: {e}") from None
    elif "password" in table:
        password_hash = hash_password(str(table["password"]))
    else:
        password_hash = None
    permissions = {}
    for vhost, perm in _table(table.get("permissions", {}), f"users.{name}.permissions").items():
        perm = _table(perm, f"users.{name}.permissions.{vhost}")
        _check_keys(perm, {"configure", "write", "read"}, f"users.{name}.permissions.{vhost}")
        # A pattern left out grants nothing (as an empty pattern does in RabbitMQ).
        permissions[vhost] = Permission(
            str(perm.get("configure", "")), str(perm.get("write", "")), str(perm.get("read", ""))
        )
    topics: dict[tuple[str, str], TopicPermission] = {}
    where = f"users.{name}.topic_permissions"
    for vhost, exchanges in _table(table.get("topic_permissions", {}), where).items():
        for exchange, perm in _table(exchanges, f"{where}.{vhost}").items():
            perm = _table(perm, f"{where}.{vhost}.{exchange}")
            _check_keys(perm, {"write", "read"}, f"{where}.{vhost}.{exchange}")
            topics[(vhost, exchange)] = TopicPermission(
                str(perm.get("write", "")), str(perm.get("read", ""))
            )
    tags = table.get("tags", [])
    if isinstance(tags, str):  # RabbitMQ's comma-separated form
        tags = [t.strip() for t in tags.split(",") if t.strip()]
    user = User(
        name,
        password_hash,
        tuple(str(t) for t in tags),
        permissions,
        hashing_algorithm=algorithm if password_hash else "",
        topic_permissions=topics,
    )
    _access_keys(user, table.get("access_keys", []))
    return user


def _access_keys(user: User, value: Any) -> None:
    """`access_keys = [{ id = "AKIA...", secret = "...", vhost = "/" }]` of one user."""
    where = f"users.{user.name}.access_keys"
    if not isinstance(value, list):
        raise ConfigError(f"'{where}' must be a list of {{ id, secret }} tables")
    for item in value:
        key = _table(item, where)
        _check_keys(key, {"id", "secret", "vhost"}, where)
        key_id, secret = key.get("id"), key.get("secret")
        if not isinstance(key_id, str) or not key_id or not isinstance(secret, str) or not secret:
            raise ConfigError(f"every entry of '{where}' needs a non-empty id and secret")
        user.add_access_key(key_id, secret, str(key.get("vhost", "/")))
