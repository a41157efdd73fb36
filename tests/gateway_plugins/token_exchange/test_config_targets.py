"""Settings validation, target plans, CLI option docs, and secrets handling."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gateway_plugins.token_exchange import cli
from gateway_plugins.token_exchange.config import SERVICE, Settings
from gateway_plugins.token_exchange.service import load_credentials
from gateway_plugins.token_exchange.sts_config import Grant
from gateway_plugins.token_exchange.targets import ScopeNotAllowed, TargetRegistry, UnknownTarget
from kmg_common.settings import SettingsError, load_settings

CONFIG = """
validation:
  issuers:
    - issuer: https://kc.example/realms/mcp
      audiences: [mcp-gateway]
caller_auth:
  secret_env: TEST_CALLER_SECRET
sts:
  mcp:
    token_url: https://kc.example/realms/mcp/protocol/openid-connect/token
    client_id: mcp-gateway
    client_secret_env: TEST_GATEWAY_SECRET
  cluster-b:
    token_url: https://kc.example/realms/cluster-b/protocol/openid-connect/token
    client_id: mcp-gateway
    client_secret_file: {secret_file}
targets:
  - audience: mcp-test/kubernetes-mcp
    steps: [{{sts: mcp, scope: openid}}]
    allowed_scopes: [openid, profile]
  - audience: cluster-b
    steps:
      - {{sts: mcp, audience: ["https://kc.example/realms/cluster-b"]}}
      - {{sts: cluster-b, grant: jwt_bearer}}
"""


def _settings(tmp_path: Path, text: str | None = None, **environ: str) -> Settings:
    secret_file = tmp_path / "cluster-b.secret"
    secret_file.write_text("from-file\n")
    config = tmp_path / "te.yaml"
    config.write_text(text if text is not None else CONFIG.format(secret_file=secret_file))
    return load_settings(Settings, SERVICE, config_file=config, environ=environ)


def test_full_config_loads_with_secrets_from_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    assert settings.sts["mcp"].issuer_url == "https://kc.example/realms/mcp"
    monkeypatch.setenv("TEST_GATEWAY_SECRET", "from-env")
    secrets, keys, facade = load_credentials(settings)
    assert secrets == {"mcp": "from-env", "cluster-b": "from-file"}
    assert keys == {}
    assert facade == {}


def test_missing_secret_env_fails_clearly(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with pytest.raises(SettingsError, match="env var TEST_GATEWAY_SECRET is not set"):
        load_credentials(settings)


def test_plain_secret_refused(tmp_path: Path) -> None:
    text = CONFIG.replace("client_secret_env: TEST_GATEWAY_SECRET", "client_secret: oops")
    with pytest.raises(SettingsError, match=r"sts\.mcp\.client_secret_file"):
        _settings(tmp_path, text.format(secret_file="/x"))


def test_unknown_sts_reference_names_target(tmp_path: Path) -> None:
    text = CONFIG.replace("{{sts: cluster-b, grant", "{{sts: cluster-c, grant")
    with pytest.raises(SettingsError, match="uses sts 'cluster-c'"):
        _settings(tmp_path, text.format(secret_file="/x"))


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    text = CONFIG + "cache:\n  max_entires: 5\n"
    with pytest.raises(SettingsError, match=r"cache\.max_entires"):
        _settings(tmp_path, text.format(secret_file="/x"))


def test_env_overrides_nested_setting(tmp_path: Path) -> None:
    settings = _settings(tmp_path, KMG_TOKEN_EXCHANGE_CACHE__MAX_ENTRIES="42")
    assert settings.cache.max_entries == 42


def test_target_plans(tmp_path: Path) -> None:
    registry = TargetRegistry(_settings(tmp_path).targets)
    backend = registry.resolve("mcp-test/kubernetes-mcp")
    steps, scope = backend.plan(None)
    assert [(s.sts, s.grant, s.audience, s.scope) for s in steps] == [
        ("mcp", Grant.TOKEN_EXCHANGE, ("mcp-test/kubernetes-mcp",), "openid")
    ]
    assert scope == "openid"
    steps, scope = backend.plan(["profile", "openid"])
    assert scope == "openid profile"
    assert steps[-1].scope == "openid profile"
    with pytest.raises(ScopeNotAllowed, match="email"):
        backend.plan(["email"])
    cross = registry.resolve("cluster-b")
    assert [s.grant for s in cross.steps] == [Grant.TOKEN_EXCHANGE, Grant.JWT_BEARER]
    assert cross.steps[0].audience == ("https://kc.example/realms/cluster-b",)
    assert cross.final_audience == "cluster-b"
    with pytest.raises(UnknownTarget, match="'nope'"):
        registry.resolve("nope")


def test_cli_options_list_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["options"]) == 0
    out = capsys.readouterr().out
    for name in (
        "validation.opaque_tokens",
        "sts.<name>.client_secret_file",
        "targets[].steps[].grant",
        "cache.max_entries",
        "ext_authz.passthrough_targets",
        "facade.clients[].client_id",
        "breaker.cooldown_s",
    ):
        assert name in out


def test_cli_config_error_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("validation: [unclosed\n")
    assert cli.main(["check-config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:" in err
    assert "Traceback" not in err


def test_readme_lists_every_setting_with_its_default() -> None:
    readme = (Path(cli.__file__).parent / "README.md").read_text()
    missing = [line for line in cli.describe_options() if line not in readme]
    assert missing == [], "regenerate the README's settings block with `mcp-token-exchange options`"


def test_the_readmes_example_configuration_is_one_the_service_accepts() -> None:
    """The README's example is what operators copy: after issue 14 (audiences required, a caller
    credential on the checks) it must still load, and carry the bindings the fix relies on."""
    readme = (Path(cli.__file__).parent / "README.md").read_text()
    section = readme.split("## Example configuration", 1)[1]
    match = re.search(r"```yaml\n(.*?)```", section, flags=re.DOTALL)
    assert match is not None
    settings = Settings.model_validate(yaml.safe_load(match.group(1)))
    assert all(issuer.audiences for issuer in settings.validation.issuers)
    assert settings.ext_authz.targets == ["mcp-test/kubernetes-mcp"]  # not cluster-b
    assert settings.ext_authz.audiences == ["mcp-gateway"]
    assert settings.caller_auth.mode == "secret"
    assert settings.caller_auth.secret_file is not None
