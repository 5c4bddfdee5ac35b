"""The broker's configuration: one TOML file, embedded defaults, flag overrides.

`Config.load(path)` reads the file (see `config/moorage.toml` for every key,
documented); `apply_overrides` lays command-line flags on top. Unknown keys
are errors: a typo in an operator's file must not be silently ignored.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from moorage.broker.auth import Permission, User, UserDirectory, hash_password
from moorage.broker.tls import TLS_PORTS, TLSConfig, TLSError

_T = TypeVar("_T")

DEFAULT_PORTS: dict[str, int] = {
    "amqp": 5672,
    "mqtt": 1883,
    "stomp": 61613,
    "http": 15672,
    "mqtt_ws": 15675,  # MQTT over WebSocket, path /ws
    "stomp_ws": 15674,  # STOMP over WebSocket, path /ws
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
    queue_memory_limit: int = 16 * 1024 * 1024  # ready bytes a stored queue keeps in RAM
    store_backlog: int = 32 * 1024 * 1024  # unwritten bytes before publishers are paused
    memory_high_watermark: float = 0.4  # queued-message RAM that blocks publishers (broker.memory)
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


@dataclass(slots=True)
class Config:
    """Everything `moorage serve` needs; defaults run a local broker."""

    data_dir: Path = field(default_factory=default_data_dir)
    bind: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    vhosts: list[str] = field(default_factory=lambda: ["/"])
    users: list[User] = field(default_factory=list)
    loopback_users: frozenset[str] = frozenset({"guest"})
    anonymous_user: str = ""  # user of clients that send no credentials ("" = refuse them)
    limits: Limits = field(default_factory=Limits)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    log_level: str = "info"
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

        config.tls = _dataclass_from(TLSConfig, data.pop("tls", {}), "tls")

        auth = _table(data.pop("auth", {}), "auth")
        _check_keys(auth, {"loopback_users", "anonymous_user"}, "auth")
        if "loopback_users" in auth:
            config.loopback_users = frozenset(str(u) for u in auth["loopback_users"])
        config.anonymous_user = str(auth.get("anonymous_user", ""))
        config.users = [_user(u) for u in data.pop("users", [])]
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

    def user_directory(self) -> UserDirectory:
        """The `UserDirectory` of these users, with the anonymous user resolved."""
        users = {u.name: u for u in self.users}
        anonymous = users.get(self.anonymous_user) if self.anonymous_user else None
        return UserDirectory(self.users, self.loopback_users, anonymous)

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


def default_guest() -> User:
    """RabbitMQ's default user: guest/guest, all permissions on `/`, loopback only."""
    return User(
        "guest", hash_password("guest"), ("administrator",), {"/": Permission(".*", ".*", ".*")}
    )


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
    _check_keys(table, {"name", "password", "password_hash", "tags", "permissions"}, "users")
    if "name" not in table:
        raise ConfigError("every [[users]] entry needs a name")
    name = str(table["name"])
    if "password_hash" in table:
        password_hash: str | None = str(table["password_hash"])
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
    return User(name, password_hash, tuple(str(t) for t in table.get("tags", [])), permissions)
