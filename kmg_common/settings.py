"""Load one typed settings object per service: defaults ← YAML file ← env vars ← CLI flags.

Env vars are named ``KMG_<SERVICE>_<FIELD>``; nested fields join with ``__``
(``KMG_TOKEN_EXCHANGE_STS__TIMEOUT_S=3``). Values starting with ``[`` or ``{`` are parsed as
JSON, everything else is handed to pydantic as a string (it coerces numbers and booleans).

Secrets never live in the YAML in plain text: a key named like a secret (``client_secret``,
``password``, ``private_key``, ...) is refused with a hint to use ``<name>_file`` or
``<name>_env``; :func:`read_secret` resolves those at start.
"""

from __future__ import annotations

import json
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)

_SECRET_KEY = re.compile(
    r"(^|_)(secret|password|passwd|private_key|api_key|access_token|bearer_token)$"
)


class SettingsError(Exception):
    """Configuration is unusable; the message says where and what to fix (never a secret)."""


class StrictModel(BaseModel):
    """A settings section: an unknown key is an error (a typo never passes silently)."""

    model_config = ConfigDict(extra="forbid")


def env_prefix(service: str) -> str:
    """``token-exchange`` → ``KMG_TOKEN_EXCHANGE_``."""
    return "KMG_" + re.sub(r"[^A-Za-z0-9]+", "_", service).upper().strip("_") + "_"


def read_yaml(path: Path) -> dict[str, Any]:
    """A settings file: a YAML mapping (see :func:`read_yaml_mapping`) without plain secrets."""
    data = read_yaml_mapping(path)
    reject_plain_secrets(data, source=str(path))
    return data


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Parse a YAML mapping, naming file, line and column on a syntax error."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise SettingsError(f"{where}: {problem}; fix the YAML syntax there") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def reject_plain_secrets(data: Mapping[str, Any], *, source: str, path: str = "") -> None:
    """Refuse secret-looking keys with inline values; point at the ``_file``/``_env`` variants."""
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if isinstance(value, Mapping):
            reject_plain_secrets(value, source=source, path=dotted)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    reject_plain_secrets(item, source=source, path=f"{dotted}.{i}")
        elif _SECRET_KEY.search(str(key)) and value not in (None, ""):
            raise SettingsError(
                f"{source}: '{dotted}' holds a secret in plain text; remove it and set "
                f"'{dotted}_file' (path to a file with the secret) or '{dotted}_env' "
                "(name of an env var holding it) instead"
            )


def env_overrides(service: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Nested dict built from ``KMG_<SERVICE>_*`` variables."""
    env = os.environ if environ is None else environ
    prefix = env_prefix(service)
    out: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(prefix) or name == prefix:
            continue
        parts = [p.lower() for p in name[len(prefix) :].split("__") if p]
        value: Any = raw
        if raw.strip().startswith(("[", "{")):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise SettingsError(f"env var {name}: invalid JSON ({exc.msg})") from None
        _set_path(out, parts, value)
    return out


def _set_path(target: dict[str, Any], parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            target[part] = nxt
        target = nxt
    target[parts[-1]] = value


def dotted_overrides(flags: Mapping[str, Any]) -> dict[str, Any]:
    """``{"sts.timeout_s": 3, "port": None}`` → ``{"sts": {"timeout_s": 3}}`` (None = unset)."""
    out: dict[str, Any] = {}
    for key, value in flags.items():
        if value is not None:
            _set_path(out, key.split("."), value)
    return out


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def load_settings(
    model: type[M],
    service: str,
    *,
    config_file: Path | None = None,
    cli: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> M:
    """Build ``model`` from the layers; a bad value raises :class:`SettingsError` naming it."""
    data: dict[str, Any] = read_yaml(config_file) if config_file is not None else {}
    data = deep_merge(data, env_overrides(service, environ))
    data = deep_merge(data, dotted_overrides(cli or {}))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, service, config_file)) from None


def _describe(exc: ValidationError, service: str, config_file: Path | None) -> str:
    source = f"config file {config_file}" if config_file else "settings"
    lines = [f"invalid {source} (env prefix {env_prefix(service)}):"]
    for err in exc.errors(include_input=False, include_url=False):
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {field}: {err['msg']}")
    return "\n".join(lines)


def read_secret(
    what: str,
    *,
    file: Path | None,
    env: str | None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """Read a secret from a file or an env var; exactly one must be configured."""
    source = os.environ if environ is None else environ
    if file is not None and env is not None:
        raise SettingsError(f"{what}: set either '_file' or '_env', not both")
    if file is not None:
        try:
            value = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingsError(
                f"{what}: cannot read secret file {file}: {exc.strerror or exc}"
            ) from None
        if not value:
            raise SettingsError(f"{what}: secret file {file} is empty")
        return value
    if env is not None:
        value = source.get(env, "").strip()
        if not value:
            raise SettingsError(f"{what}: env var {env} is not set or empty")
        return value
    raise SettingsError(f"{what}: no secret configured; set '{what}_file' or '{what}_env'")


def _model_of(annotation: Any) -> type[BaseModel] | None:
    candidates = [annotation, *typing.get_args(annotation)]
    for cand in candidates:
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
        for inner in typing.get_args(cand):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


@dataclass(frozen=True)
class OptionRow:
    """One documented setting: ``kind`` is None for a section (a nested settings object)."""

    name: str
    kind: str | None
    default: str
    description: str


def option_rows(model: type[BaseModel], prefix: str = "") -> list[OptionRow]:
    """Every setting of ``model``, depth first, with its dotted name, type, default and meaning."""
    rows: list[OptionRow] = []
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        nested = _model_of(info.annotation)
        value = None if info.is_required() else info.get_default(call_default_factory=True)
        value = getattr(value, "value", value)  # enums: show the YAML spelling
        default = "(required)" if info.is_required() else repr(value)
        kind = getattr(info.annotation, "__name__", None) or str(info.annotation)
        if isinstance(info.annotation, types.UnionType):
            kind = str(info.annotation)
        kind = kind.replace("typing.", "").replace("pathlib.", "")
        desc = info.description or ""
        if nested is not None and not kind.startswith(("list", "dict")):
            rows.append(OptionRow(dotted, None, "", desc))
            rows += option_rows(nested, f"{dotted}.")
            continue
        rows.append(OptionRow(dotted, kind, default, desc))
        if nested is not None:
            item = ".<name>." if kind.startswith("dict") else "[]."
            rows += option_rows(nested, f"{dotted}{item}")
    return rows


def describe_options(model: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per setting of ``model`` (the CLI's ``options`` listing)."""
    lines = []
    for row in option_rows(model, prefix):
        desc = f"  {row.description}" if row.description else ""
        if row.kind is None:
            lines.append(f"{row.name}:{desc}")
        else:
            lines.append(f"{row.name} [{row.kind}] default {row.default}.{desc}")
    return lines
