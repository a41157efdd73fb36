"""``mcp-policy``: run the policy service, or sync Keycloak client roles with a backend's tools.

    mcp-policy serve --config policy.yaml [--port 8282] [--engine opa] ...
    mcp-policy bundle --out policy-bundle.tar.gz [--catalogue-file tools.json]
    mcp-policy verify-embedded [--policies-dir policies] [--opa opa] [--record]
    mcp-policy sync-roles --keycloak-url https://kc --realm mcp --client mcp-test/kubernetes-mcp \\
        --backend-url https://backend/mcp --backend-token-env TOKEN --admin-user admin \\
        --admin-password-env KC_ADMIN_PASSWORD [--dry-run] [--prune]

Exit codes: 0 success, 1 failure (message on stderr), 2 usage error; ``sync-roles --dry-run``
exits 0 and prints the plan.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from kmg_common.settings import SettingsError, load_settings, read_secret


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the policy service (ext_authz check, /v1/decide, /v1/filter, JWKS)",
        description="Run the policy service. Settings: defaults <- --config YAML <- KMG_POLICY_* "
        "env vars (nested with __, e.g. KMG_POLICY_OPA__URL) <- these flags.",
    )
    p.add_argument("--config", type=Path, help="YAML settings file (see README: policy service)")
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default 8282)")
    p.add_argument(
        "--engine", choices=["embedded", "opa"], help="decision engine (default embedded)"
    )
    p.add_argument("--policies-dir", type=Path, help="Rego modules directory (default policies)")
    p.add_argument("--catalogue-file", type=Path, help="JSON {server: [tool, ...]} for tools/list")
    p.add_argument(
        "--opa-url", help="OPA server URL for --engine opa (default http://127.0.0.1:8181)"
    )
    p.add_argument(
        "--signing-key-file", type=Path, help="PEM EC P-256 key signing the tool-list header"
    )
    p.add_argument(
        "--wristband-form",
        choices=["x-authorized-tools", "x-mcp-authorized", "both"],
        help="which signed header(s) tools/list answers carry (default x-authorized-tools)",
    )
    p.add_argument("--decision-log", help="decision log file, '-' for stderr (default '-')")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def _sync_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sync-roles",
        help="create/update one Keycloak client role per backend tool, plus composites",
        description="Make the Keycloak client of an MCP server hold one role per tool of the "
        "backend's tools/list, a composite role of every read-only tool and one of every tool. "
        "Idempotent; --dry-run prints the difference; --prune removes roles of tools that no "
        "longer exist (only roles this command created).",
    )
    p.add_argument("--keycloak-url", required=True, help="Keycloak base URL, e.g. https://kc:8443")
    p.add_argument("--realm", required=True, help="realm holding the server's client, e.g. mcp")
    p.add_argument(
        "--client", required=True, help="clientId = server name, e.g. mcp-test/kubernetes-mcp"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--backend-url", help="the backend's MCP endpoint, e.g. https://host/mcp")
    source.add_argument(
        "--tools-file", type=Path, help="JSON tools/list result instead of a backend"
    )
    p.add_argument(
        "--backend-token-env", help="env var holding a bearer token for the backend (not a flag)"
    )
    p.add_argument("--admin-realm", default="master", help="realm of the admin account (master)")
    p.add_argument("--admin-client-id", default="admin-cli", help="admin client (admin-cli)")
    p.add_argument("--admin-user", help="admin username (password grant)")
    p.add_argument("--admin-password-env", help="env var holding the admin password")
    p.add_argument("--admin-password-file", type=Path, help="file holding the admin password")
    p.add_argument(
        "--admin-client-secret-env", help="env var holding a service-account client secret"
    )
    p.add_argument("--ca-file", type=Path, help="CA bundle for Keycloak's and the backend's HTTPS")
    p.add_argument(
        "--role-prefix", default="", help="role name prefix, e.g. 'tool:' (default none)"
    )
    p.add_argument("--read-only-role", default="read-only", help="composite of read-only tools")
    p.add_argument("--all-role", default="all", help="composite of every tool (default all)")
    p.add_argument("--dry-run", action="store_true", help="print the difference, change nothing")
    p.add_argument("--prune", action="store_true", help="delete managed roles of removed tools")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def _bundle_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bundle",
        help="write an OPA bundle (tar.gz) of the policy and its data",
        description="Write an OPA bundle holding the Rego modules (tests skipped), the data "
        "files as data.mcp.config and, if given, the tool catalogue as data.mcp.catalogue. "
        "Serve it with `opa run --server BUNDLE` (or a bundle service) and run the policy "
        "service with engine: opa and opa.load_policies: false.",
    )
    p.add_argument("--out", type=Path, required=True, help="bundle file to write (.tar.gz)")
    p.add_argument("--policies-dir", type=Path, default=Path("policies"), help="(policies)")
    p.add_argument(
        "--data-dir", type=Path, action="append", help="data files dir (default policies/data)"
    )
    p.add_argument("--catalogue-file", type=Path, help="JSON {server: [tool, ...]} to include")
    p.add_argument("--revision", default="", help="bundle revision string")


def _verify_parser(sub: Any) -> None:
    p = sub.add_parser(
        "verify-embedded",
        help="check that the embedded engine decides the policy like OPA",
        description="Run the policy's test corpus (testdata/corpus.json) and generated variants "
        "through the embedded engine (rego-cpp) and OPA itself (opa eval); fail on the first "
        "difference. --record writes embedded-verified.json next to the policy, which lets the "
        "embedded engine start where no OPA binary is installed.",
    )
    p.add_argument("--policies-dir", type=Path, default=Path("policies"), help="(policies)")
    p.add_argument(
        "--data-dir", type=Path, action="append", help="data files dir (default policies/data)"
    )
    p.add_argument("--opa", type=Path, help="OPA binary (default: opa on PATH)")
    p.add_argument(
        "--generated", type=int, default=200, help="generated cases besides the corpus (200)"
    )
    p.add_argument("--record", action="store_true", help="write the verification record")
    p.add_argument(
        "--record-file",
        type=Path,
        help="record path (default <policies>/" + "embedded-verified.json)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcp-policy",
        description="Rego tool policies for the MCP Gateway.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _sync_parser(sub)
    _bundle_parser(sub)
    _verify_parser(sub)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from gateway_plugins.common.service import run_app
    from gateway_plugins.policy.app import create_app
    from gateway_plugins.policy.config import SERVICE, PolicySettings
    from kmg_common.logging import configure_logging

    flags = {
        "host": args.host,
        "port": args.port,
        "engine": args.engine,
        "policies_dir": args.policies_dir,
        "catalogue_file": args.catalogue_file,
        "opa.url": args.opa_url,
        "wristband.signing_key_file": args.signing_key_file,
        "wristband.form": args.wristband_form,
        "decision_log": args.decision_log,
        "log_level": args.log_level,
    }
    settings = load_settings(PolicySettings, SERVICE, config_file=args.config, cli=flags)
    configure_logging(SERVICE, settings.log_level)
    app = create_app(settings)
    run_app(app, settings.host, settings.port)
    return 0


async def _sync(args: argparse.Namespace) -> int:
    from gateway_plugins.common.http_client import make_client_session
    from gateway_plugins.policy import sync_roles as sr
    from gateway_plugins.policy.keycloak_admin import AdminCredentials, KeycloakAdmin
    from gateway_plugins.policy.role_plan import tools_from_list

    token = None
    if args.backend_token_env:
        token = read_secret("backend token", file=None, env=args.backend_token_env)
    if args.tools_file:
        raw_tools = sr.tools_from_file(args.tools_file)
    else:
        raw_tools = await sr.tools_from_backend(args.backend_url, token, ca_file=args.ca_file)
    password = secret = None
    if args.admin_client_secret_env:
        secret = read_secret("admin client secret", file=None, env=args.admin_client_secret_env)
    elif args.admin_user:
        password = read_secret(
            "admin password", file=args.admin_password_file, env=args.admin_password_env
        )
    creds = AdminCredentials(
        realm=args.admin_realm,
        client_id=args.admin_client_id,
        username=args.admin_user,
        password=password,
        client_secret=secret,
    )
    async with make_client_session(ca_file=args.ca_file, timeout_s=30.0) as session:
        admin = KeycloakAdmin(session, args.keycloak_url, args.realm, creds)
        plan = await sr.sync_roles(
            admin,
            args.client,
            tools_from_list(raw_tools),
            prefix=args.role_prefix,
            read_only_role=args.read_only_role,
            all_role=args.all_role,
            prune=args.prune,
            dry_run=args.dry_run,
        )
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "client": args.client, **plan.as_json()}))
    else:
        verb = "would change" if args.dry_run else "changed"
        print(f"{args.client}: {verb}:" if not plan.empty else f"{args.client}: up to date")
        for line in plan.describe():
            print(f"  {line}")
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from gateway_plugins.policy.app import load_catalogue_file
    from gateway_plugins.policy.policy_source import load_policy_source, write_opa_bundle

    source = load_policy_source(
        args.policies_dir, args.data_dir, load_catalogue_file(args.catalogue_file)
    )
    out = write_opa_bundle(source, args.out, revision=args.revision)
    print(f"wrote {out}: {len(source.modules)} module(s), {len(source.config)} setting(s)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from gateway_plugins.policy.engine_guard import (
        RECORD_NAME,
        EmbeddedVerifySettings,
        verify_embedded,
        write_record,
    )
    from gateway_plugins.policy.policy_source import load_policy_source

    source = load_policy_source(args.policies_dir, args.data_dir)
    settings = EmbeddedVerifySettings(opa_binary=args.opa, generated_cases=args.generated)
    result = verify_embedded(source, args.policies_dir, settings, require_opa=True)
    print(f"ok: {result.summary()}")
    if args.record:
        path = args.record_file or args.policies_dir / RECORD_NAME
        write_record(path, result)
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from gateway_plugins.policy.engines import EngineUnavailable
    from gateway_plugins.policy.input import InputError
    from gateway_plugins.policy.policy_source import PolicySourceError
    from gateway_plugins.policy.role_plan import SyncError
    from gateway_plugins.policy.wristband import WristbandKeyError

    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "bundle":
            return _bundle(args)
        if args.command == "verify-embedded":
            return _verify(args)
        return asyncio.run(_sync(args))
    except (
        SettingsError,
        SyncError,
        PolicySourceError,
        WristbandKeyError,
        InputError,
        EngineUnavailable,
    ) as exc:
        print(f"mcp-policy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
