"""Settings layering: defaults ← YAML ← env ← CLI, with clear errors and no plain secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from kmg_common.settings import (
    SettingsError,
    env_prefix,
    load_settings,
    read_secret,
)


class Upstream(BaseModel):
    url: str = "https://kc.example"
    timeout_s: float = 5.0
    client_secret_file: Path | None = None
    client_secret_env: str | None = None


class DemoSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8080
    tags: list[str] = Field(default_factory=list)
    upstream: Upstream = Field(default_factory=Upstream)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_env_prefix() -> None:
    assert env_prefix("token-exchange") == "KMG_TOKEN_EXCHANGE_"


def test_defaults_without_any_source() -> None:
    settings = load_settings(DemoSettings, "demo", environ={})
    assert settings == DemoSettings()


def test_layers_override_in_order(tmp_path: Path) -> None:
    config = _write(tmp_path, "port: 9000\nupstream:\n  url: https://yaml\n  timeout_s: 2\n")
    environ = {
        "KMG_DEMO_PORT": "9100",
        "KMG_DEMO_UPSTREAM__TIMEOUT_S": "7.5",
        "KMG_DEMO_TAGS": '["a", "b"]',
        "KMG_OTHER_PORT": "1",
    }
    settings = load_settings(
        DemoSettings, "demo", config_file=config, environ=environ, cli={"port": 9200, "host": None}
    )
    assert settings.port == 9200  # CLI wins
    assert settings.host == "127.0.0.1"  # None CLI value = not given
    assert settings.upstream.url == "https://yaml"  # YAML kept where nothing overrides
    assert settings.upstream.timeout_s == 7.5  # env wins over YAML
    assert settings.tags == ["a", "b"]


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    config = _write(tmp_path, "port: 9000\nupstream:\n  url: [unclosed\n  timeout_s: 2\n")
    with pytest.raises(SettingsError) as info:
        load_settings(DemoSettings, "demo", config_file=config, environ={})
    assert str(info.value).startswith(f"{config}:4:")


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    config = _write(tmp_path, "- a\n- b\n")
    with pytest.raises(SettingsError, match="top level must be a mapping"):
        load_settings(DemoSettings, "demo", config_file=config, environ={})


def test_missing_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_settings(DemoSettings, "demo", config_file=tmp_path / "nope.yaml", environ={})


def test_invalid_value_names_the_field(tmp_path: Path) -> None:
    config = _write(tmp_path, "upstream:\n  timeout_s: soon\n")
    with pytest.raises(SettingsError) as info:
        load_settings(DemoSettings, "demo", config_file=config, environ={})
    message = str(info.value)
    assert "upstream.timeout_s" in message
    assert "KMG_DEMO_" in message
    assert "soon" not in message  # inputs are never echoed (they may be secrets)


def test_plain_secret_in_yaml_refused(tmp_path: Path) -> None:
    config = _write(tmp_path, "upstream:\n  client_secret: hunter2\n")
    with pytest.raises(SettingsError) as info:
        load_settings(DemoSettings, "demo", config_file=config, environ={})
    message = str(info.value)
    assert "upstream.client_secret_file" in message
    assert "hunter2" not in message


def test_read_secret_from_file_and_env(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret\n")
    assert read_secret("client_secret", file=secret_file, env=None) == "s3cret"
    assert read_secret("client_secret", file=None, env="X", environ={"X": "e"}) == "e"


@pytest.mark.parametrize(
    ("file", "env", "expected"),
    [
        (None, None, "no secret configured"),
        ("missing", None, "cannot read secret file"),
        (None, "UNSET_VAR", "env var UNSET_VAR is not set"),
        ("empty", "X", "not both"),
    ],
)
def test_read_secret_errors(tmp_path: Path, file: str | None, env: str | None, expected: str):
    path = tmp_path / file if file else None
    with pytest.raises(SettingsError, match=expected):
        read_secret("client_secret", file=path, env=env, environ={})


def test_empty_secret_file_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SettingsError, match="is empty"):
        read_secret("client_secret", file=empty, env=None)
