"""``mcp-backend serve --config FILE [flags]``: flags → settings → app → uvicorn.

Precedence: defaults < YAML config file < ``KMG_BACKEND_*`` env vars < flags.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path
from typing import Any

from mcp_backend.config import Settings, SettingsError, load_settings


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _field_help(name: str) -> str:
    info = Settings.model_fields[name]
    default = info.get_default(call_default_factory=True)
    if isinstance(default, list) and default and hasattr(default[0], "model_dump"):
        default = ", ".join(f"{d.group or 'core'}/{d.kind}" for d in default)
    return f"{info.description or ''} (default: {default!r})"


FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--host", "host", {}),
    ("--port", "port", {"type": int}),
    ("--stateless", "stateless", {"action": argparse.BooleanOptionalAction}),
    ("--json-response", "json_response", {"action": argparse.BooleanOptionalAction}),
    ("--single-exchange", "single_exchange", {"action": argparse.BooleanOptionalAction}),
    ("--modern-protocol", "modern_protocol", {"action": argparse.BooleanOptionalAction}),
    ("--allowed-hosts", "allowed_hosts", {"type": _csv, "metavar": "H1,H2"}),
    ("--allowed-origins", "allowed_origins", {"type": _csv, "metavar": "O1,O2"}),
    ("--resource-url", "resource_url", {}),
    ("--authorization-servers", "authorization_servers", {"type": _csv, "metavar": "URL,..."}),
    (
        "--accept-token-in-arguments",
        "accept_token_in_arguments",
        {"action": argparse.BooleanOptionalAction},
    ),
    ("--accepted-audiences", "accepted_audiences", {"type": _csv, "metavar": "AUD,..."}),
    ("--authorized-parties", "authorized_parties", {"type": _csv, "metavar": "CLIENT,..."}),
    ("--opaque-tokens", "opaque_tokens", {"choices": ["accept", "reject"]}),
    ("--discovery-credential-file", "discovery_credential_file", {"type": Path}),
    ("--discovery-credential-env", "discovery_credential_env", {"metavar": "VAR"}),
    ("--read-only", "read_only", {"action": argparse.BooleanOptionalAction}),
    ("--disable-destructive", "disable_destructive", {"action": argparse.BooleanOptionalAction}),
    ("--enabled-tools", "enabled_tools", {"type": _csv, "metavar": "T1,T2"}),
    ("--disabled-tools", "disabled_tools", {"type": _csv, "metavar": "T1,T2"}),
    ("--redact-secrets", "redact_secrets", {"action": argparse.BooleanOptionalAction}),
    ("--output-max-chars", "output_max_chars", {"type": int}),
    ("--default-list-limit", "default_list_limit", {"type": int}),
    ("--max-list-limit", "max_list_limit", {"type": int}),
    ("--max-response-bytes", "max_response_bytes", {"type": int}),
    ("--max-concurrent-calls-per-user", "max_concurrent_calls_per_user", {"type": int}),
    ("--log-tail-lines", "log_tail_lines", {"type": int}),
    ("--log-grep-max-lines", "log_grep_max_lines", {"type": int}),
    ("--log-grep-max-bytes", "log_grep_max_bytes", {"type": int}),
    ("--request-timeout-s", "request_timeout_s", {"type": float}),
    ("--connect-timeout-s", "connect_timeout_s", {"type": float}),
    ("--pool-size", "pool_size", {"type": int}),
    ("--discovery-ttl-s", "discovery_ttl_s", {"type": float}),
    ("--discovery-timeout-s", "discovery_timeout_s", {"type": float}),
    ("--exec-timeout-s", "exec_timeout_s", {"type": float}),
    ("--helm-binary", "helm_binary", {}),
    ("--helm-timeout-s", "helm_timeout_s", {"type": float}),
    ("--helm-chart-sources", "helm_chart_sources", {"type": _csv, "metavar": "PREFIX,..."}),
    ("--log-level", "log_level", {"choices": ["DEBUG", "INFO", "WARNING", "ERROR"]}),
    ("--otel-spans", "otel_spans", {"action": argparse.BooleanOptionalAction}),
    ("--gc-young-threshold", "gc_young_threshold", {"type": int}),
    ("--kubeconfig", "kubeconfig", {"type": Path}),
    ("--in-cluster", "in_cluster", {"action": argparse.BooleanOptionalAction}),
]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="mcp-backend",
        description="Kubernetes MCP server with token passthrough (kube-mcp-gateway backend).",
    )
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="serve MCP over Streamable HTTP at /mcp",
        description="Serve MCP at /mcp. Settings: defaults < --config YAML < KMG_BACKEND_* env "
        "vars < flags. Clusters and denied_kinds are set in the YAML file (or as JSON in "
        "KMG_BACKEND_CLUSTERS / KMG_BACKEND_DENIED_KINDS).",
    )
    serve.add_argument("--config", type=Path, help="YAML settings file")
    for flag, field, extra in FLAGS:
        serve.add_argument(flag, dest=field, default=None, help=_field_help(field), **extra)
    return top


def tune_gc(young_threshold: int) -> None:
    """Freeze start-up objects out of the collector's sight and collect the young generation
    less often: parsing a large API response allocates tens of thousands of (acyclic) objects,
    and with Python's defaults the collections cost more than the parsing itself."""
    if young_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(young_threshold, 20, 100)


def main(argv: list[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    args.pop("command")
    config_file = args.pop("config")
    try:
        settings = load_settings(config_file, overrides=args)
        from kmg_common.logging import configure_logging
        from mcp_backend.app import create_app

        configure_logging("mcp-backend", settings.log_level)
        app = create_app(settings)
    except (SettingsError, ValueError) as exc:
        print(f"mcp-backend: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    tune_gc(settings.gc_young_threshold)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    return 0
