"""Every documented setting of the three services is reached by its env var through the one
loader: ``KMG_<SERVICE>_<KEY>``, nested keys joined with ``__`` (the backend's top-level
settings keep the flat ``KMG_BACKEND_<KEY>`` names they always had)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from kmg_common.settings import env_overrides, env_prefix, option_rows
from mcp_backend.config import load_settings
from tests.readme_options import SERVICES, ServiceDoc


def _documented(model: type[BaseModel]) -> list[str]:
    """Dotted names of the settings with a value of their own (not inside lists or dicts)."""
    return [
        row.name
        for row in option_rows(model)
        if row.kind is not None and "[]" not in row.name and ".<name>." not in row.name
    ]


@pytest.mark.parametrize("svc", SERVICES, ids=lambda svc: svc.title)
def test_each_documented_env_var_sets_its_setting(svc: ServiceDoc) -> None:
    service = {"KMG_BACKEND_": "backend", "KMG_TOKEN_EXCHANGE_": "token-exchange"}.get(
        svc.env,
        "policy",
    )
    assert env_prefix(service) == svc.env
    names = _documented(svc.model)
    assert len(names) > 10
    for dotted in names:
        var = svc.env + dotted.replace(".", "__").upper()
        overrides = env_overrides(service, {var: "x", "OTHER_" + var: "y"})
        node = overrides
        for part in dotted.split(".")[:-1]:
            node = node[part]
        assert node == {dotted.split(".")[-1]: "x"}, (var, overrides)


def test_backend_section_from_json_or_nested_env_vars(tmp_path: Path) -> None:
    """The backend's one section (``tracing``): the documented JSON variable still works, and the
    ``__`` form every other service has now works for the backend too (it used to be refused as
    an unknown key ``tracing__endpoint``); both merge over the YAML file."""
    config = tmp_path / "backend.yaml"
    config.write_text("tracing:\n  service_name: from-yaml\n")
    url = "http://127.0.0.1:4318/v1/traces"
    for env in (
        {"KMG_BACKEND_TRACING": json.dumps({"endpoint": url})},
        {"KMG_BACKEND_TRACING__ENDPOINT": url},
    ):
        settings = load_settings(config, environ=env)
        assert settings.tracing.endpoint == url
        assert settings.tracing.service_name == "from-yaml"
    flags = load_settings(
        config, overrides={"read_only": True}, environ={"KMG_BACKEND_READ_ONLY": "0"}
    )
    assert flags.read_only is True
