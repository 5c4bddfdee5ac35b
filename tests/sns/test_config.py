"""The `[sns]` configuration section: its keys, types and defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from moorage.broker.config import Config, ConfigError


def test_sns_section_is_read(tmp_path: Path) -> None:
    path = tmp_path / "moorage.toml"
    path.write_text(
        '[sns]\nsmtp_host = "relay.example"\nsmtp_port = 2525\nalert_queue_depth = 1000\n'
        "alert_queue_age = 60\n"
    )
    sns = Config.load(path).sns
    assert (sns.smtp_host, sns.smtp_port, sns.alert_queue_depth) == ("relay.example", 2525, 1000)
    assert sns.alert_queue_age == 60.0
    assert sns.alerts_topic == "moorage-alerts"  # the default


@pytest.mark.parametrize(
    "section", ['[sns]\nsmtp_hots = "typo"\n', '[sns]\nsmtp_port = "25"\n', "[sns]\nhttps_ca = 1\n"]
)
def test_bad_sns_section_is_refused(tmp_path: Path, section: str) -> None:
    path = tmp_path / "moorage.toml"
    path.write_text(section)
    with pytest.raises(ConfigError, match=r"sns\."):
        Config.load(path)


def test_the_example_configuration_documents_every_sns_key() -> None:
    example = (Path(__file__).parents[2] / "config" / "moorage.toml").read_text()
    section = Config.load(Path(__file__).parents[2] / "config" / "moorage.toml").sns
    for key in section.__slots__:  # type: ignore[attr-defined]
        assert f"\n{key} = " in example, key
