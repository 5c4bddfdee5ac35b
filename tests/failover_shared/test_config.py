"""`storage.mode`, `storage.lease`, `storage.lock_poll` and `--shared-storage`."""

from __future__ import annotations

from pathlib import Path

import pytest

from moorage.broker.cli import main
from moorage.broker.config import Config, ConfigError


def load(tmp_path: Path, storage: str) -> Config:
    path = tmp_path / "moorage.toml"
    path.write_text(f"[storage]\n{storage}\n")
    return Config.load(path)


def test_single_is_the_default(tmp_path: Path) -> None:
    storage = load(tmp_path, "").storage
    assert (storage.mode, storage.lease, storage.lock_poll) == ("single", 10.0, 0.5)


def test_shared_mode_and_its_timings_are_read(tmp_path: Path) -> None:
    storage = load(tmp_path, 'mode = "shared"\nlease = 5\nlock_poll = 0.25').storage
    assert (storage.mode, storage.lease, storage.lock_poll) == ("shared", 5.0, 0.25)


@pytest.mark.parametrize(
    ("storage", "reason"),
    [
        ('mode = "double"', "storage.mode must be 'single' or 'shared'"),
        ('mode = "shared"\nbackend = "memory"', "needs storage.backend = 'sqlite'"),
        ("lease = 0", "must be > 0"),
        ("lock_poll = -1.0", "must be > 0"),
        ('lease = "long"', "storage.lease must be float"),
    ],
)
def test_bad_values_are_refused(tmp_path: Path, storage: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        load(tmp_path, storage)


def test_the_flag_turns_shared_mode_on_and_is_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "memory.toml"
    config.write_text('[storage]\nbackend = "memory"\n')
    assert main(["serve", "--shared-storage", "--config", str(config)]) == 2
    assert capsys.readouterr().err == (
        "moorage: storage.mode = 'shared' needs storage.backend = 'sqlite'\n"
    )
