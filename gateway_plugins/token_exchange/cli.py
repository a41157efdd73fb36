"""``mcp-token-exchange``: flags → settings → ``create_app`` → serve.

Settings come from the YAML file (``--config``), then ``KMG_TOKEN_EXCHANGE_*`` env vars (nested
fields joined with ``__``), then the flags below. ``mcp-token-exchange options`` lists every
setting with its default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import BaseModel

from gateway_plugins.common.service import run_app
from gateway_plugins.token_exchange.config import SERVICE, Settings
from kmg_common.logging import configure_logging
from kmg_common.settings import SettingsError, env_prefix, load_settings
from kmg_common.settings import describe_options as settings_options


def describe_options(model: type[BaseModel] = Settings, prefix: str = "") -> list[str]:
    """One line per setting: dotted name, type, default, description (for --help and docs)."""
    return settings_options(model, prefix)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcp-token-exchange",
        description="Token exchange service for the MCP Gateway: Envoy ext_authz check "
        "(/check), combined exchange-then-policy check (/ext-authz/combined, needs "
        "ext_authz.policy_url), RFC 8693 token endpoint facade (POST /token), cached and "
        "coalesced calls to Keycloak.",
        epilog=f"Settings precedence: YAML file < env vars {env_prefix(SERVICE)}<FIELD> "
        "(nested with __) < flags. Run 'mcp-token-exchange options' for every setting.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "serve the ext_authz check, the /token facade, health and metrics"),
        ("check-config", "load the settings and secrets, print a summary, and exit"),
    ):
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument(
            "--config", type=Path, metavar="FILE", help="YAML settings file (see 'options')."
        )
        cmd.add_argument("--host", help="listen address (setting 'host', default 127.0.0.1)")
        cmd.add_argument("--port", type=int, help="listen port (setting 'port', default 8081)")
        cmd.add_argument(
            "--log-level",
            choices=["debug", "info", "warning", "error"],
            help="log level (setting 'log_level', default info)",
        )
        cmd.add_argument(
            "--ca-file",
            type=Path,
            metavar="PEM",
            help="extra CA bundle to trust for Keycloak (setting 'ca_file')",
        )
    sub.add_parser("options", help="list every setting with its type, default and meaning")
    return parser


def load(args: argparse.Namespace) -> Settings:
    flags = {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "ca_file": args.ca_file,
    }
    return load_settings(Settings, SERVICE, config_file=args.config, cli=flags)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "options":
        print("\n".join(describe_options()))
        return 0
    try:
        settings = load(args)
        configure_logging(SERVICE, settings.log_level)
        from gateway_plugins.token_exchange.app import create_app
        from gateway_plugins.token_exchange.service import load_credentials

        if args.command == "check-config":
            from gateway_plugins.common.caller_auth import CallerAuthenticator

            load_credentials(settings)
            CallerAuthenticator(settings.caller_auth).server_ssl_context()
            if settings.cache.backend == "redis":
                from gateway_plugins.token_exchange.redis_cache import load_material

                load_material(settings.cache.redis)
            print(
                f"ok: {len(settings.validation.issuers)} issuer(s), {len(settings.sts)} token "
                f"service(s), targets {[t.audience for t in settings.targets]}, "
                f"{len(settings.facade.clients)} facade client(s)"
            )
            return 0
        app = create_app(settings)
    except SettingsError as exc:
        print(f"mcp-token-exchange: configuration error: {exc}", file=sys.stderr)
        return 2
    run_app(app, settings.host, settings.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
