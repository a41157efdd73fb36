"""The configuration files the local gateway stack writes for our services (``<run>/<subdir>/``):
secrets (mode 0600), the wristband signing key pair, each backend's, the token exchange's and the
policy service's settings, and the policy's catalogue (each backend's real ``tools/list``)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.testbed import build, paths, process
from tests.testbed import keycloak as kc
from tests.testbed.cluster import Cluster
from tests.testbed.identity_plan import REALM_CLUSTER_B, REALM_MCP, SERVER_B_AUDIENCE
from tests.testbed.mcp_gateway.stack import (
    CLUSTER_B_TARGET,
    FACADE_CLIENT_ID,
    GATEWAY_AUDIENCE,
    SERVER_PLANS,
    ServerPlan,
)


def write_secret(directory: Path, name: str, value: str) -> Path:
    """``value`` in ``directory/name``, readable by the owner only."""
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    """``data`` as YAML at ``path``, keys in the order given."""
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def wristband_key(directory: Path) -> tuple[Path, Path]:
    """An ES256 (P-256) key pair for the signed tool list: private for policy, public for broker."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private = directory / "wristband-signing.key"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public = directory / "wristband-public.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def _cluster_entry(cluster: Cluster, **extra: Any) -> dict[str, Any]:
    return {
        "name": cluster.name,
        "server": cluster.server,
        "ca_file": str(cluster.ca_file),
        **extra,
    }


def fetch_tools(backend_url: str, token: str) -> list[Any]:
    """A backend's real tools/list (for the policy's catalogue: names and annotations)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}).encode()
    req = urllib.request.Request(  # noqa: S310 - loopback URL of our own backend
        backend_url,
        data=body,
        headers={
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "authorization": f"Bearer {token}",
        },
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
        text = resp.read().decode()
    tools = (json.loads(text).get("result") or {}).get("tools")
    if not isinstance(tools, list):
        raise process.ComponentError(f"backend tools/list gave no tools: {text[:300]}")
    return tools


def backend_config(
    plan: ServerPlan,
    port: int,
    *,
    cluster: Cluster,
    gateway_url: str,
    issuer: str,
    token_exchange_port: int,
    facade_secret: Path,
    discovery_credential: Path,
) -> dict[str, Any]:
    """Settings of one backend: the one cluster it serves (cluster B through the exchange).

    Token binding (issue 14): only tokens the gateway exchanged for this server (aud = its name,
    azp = the gateway's client) and the broker's discovery credential (listing only) are
    accepted; a user's own token or another server's sent around the gateway gets 401."""
    if plan.cluster == "cluster-b":
        entry = _cluster_entry(
            cluster,
            default=True,
            domain=REALM_CLUSTER_B,
            token_exchange={
                "url": f"http://127.0.0.1:{token_exchange_port}/token",
                "audience": CLUSTER_B_TARGET,
                "client_id": FACADE_CLIENT_ID,
                "client_secret_file": str(facade_secret),
            },
        )
    else:
        entry = _cluster_entry(cluster, default=True)
    return {
        "host": "127.0.0.1",
        "port": port,
        # The v0.9.0 broker serves a server that speaks the 2026 protocol to 2026 clients only.
        "modern_protocol": False,
        "resource_url": f"{gateway_url}/mcp",
        # Host checks (DNS rebinding protection): the router sends calls (and its hairpin
        # initialize) with :authority = the server's hostname; the broker's discovery comes
        # straight to 127.0.0.1:<port>, a loopback name the backend accepts anyway.
        "allowed_hosts": [plan.hostname],
        "authorization_servers": [issuer],
        "accepted_audiences": [plan.name],
        "authorized_parties": [GATEWAY_AUDIENCE],
        "opaque_tokens": "reject",
        "discovery_credential_file": str(discovery_credential),
        "helm_binary": str(build.binary("helm")),
        "clusters": [entry],
    }


def token_exchange_config(
    port: int,
    *,
    keycloak: kc.Keycloak,
    ca_file: Path,
    secrets: Path,
    facade_secret: Path,
    extra_facade_clients: Mapping[str, str],
    metadata_url: str,
    caller_auth: Mapping[str, Any],
) -> dict[str, Any]:
    """Audiences (issue 14): user tokens are addressed to the gateway (``/check`` takes no other);
    server B's tokens (exchanged for it) reach ``POST /token`` for cluster B, the only caller
    that may get a cluster-b token; ``/check`` issues tokens for the routed servers only."""
    return {
        "host": "127.0.0.1",
        "port": port,
        "ca_file": str(ca_file),
        "validation": {
            "issuers": [
                {
                    "issuer": keycloak.issuer(REALM_MCP),
                    "audiences": [GATEWAY_AUDIENCE, SERVER_B_AUDIENCE],
                }
            ]
        },
        "sts": {
            "mcp": {
                "token_url": keycloak.token_url(REALM_MCP),
                "client_id": keycloak.gateway_client_id,
                "client_secret_file": str(
                    write_secret(secrets, "sts-mcp.secret", keycloak.gateway_client_secret)
                ),
            },
            "cluster-b": {
                "token_url": keycloak.token_url(REALM_CLUSTER_B),
                "client_id": kc.CLUSTER_B_CLIENT_ID,
                "client_secret_file": str(
                    write_secret(secrets, "sts-cluster-b.secret", kc.CLUSTER_B_CLIENT_SECRET)
                ),
            },
        },
        "targets": [
            # One target per MCP server: x-mcp-servername = the server's Keycloak client id.
            *(
                {
                    "audience": plan.name,
                    "steps": [{"sts": "mcp"}],
                    "skip_when": "aud_exact",
                    "subject_audiences": [GATEWAY_AUDIENCE],
                }
                for plan in SERVER_PLANS
            ),
            {
                "audience": CLUSTER_B_TARGET,
                # only server B's tokens (it serves cluster B); POST /token only
                "subject_audiences": [SERVER_B_AUDIENCE],
                "steps": [
                    {"sts": "mcp", "audience": [keycloak.issuer(REALM_CLUSTER_B)]},
                    {"sts": "cluster-b", "grant": "jwt_bearer"},
                ],
            },
        ],
        "facade": {
            "clients": [
                {"client_id": FACADE_CLIENT_ID, "client_secret_file": str(facade_secret)},
                *(
                    {
                        "client_id": client_id,
                        "client_secret_file": str(
                            write_secret(secrets, f"facade-{client_id}.secret", secret)
                        ),
                    }
                    for client_id, secret in extra_facade_clients.items()
                ),
            ]
        },
        "ext_authz": {
            "resource_metadata_url": metadata_url,
            "targets": [plan.name for plan in SERVER_PLANS],
            "audiences": [GATEWAY_AUDIENCE],
        },
        "caller_auth": dict(caller_auth),
    }


def policy_config(
    port: int,
    *,
    keycloak: kc.Keycloak,
    ca_file: Path,
    engine: str,
    opa_url: str,
    catalogue_file: Path,
    metadata_url: str,
    caller_auth: Mapping[str, Any],
    signing_key: Path,
    wristband_form: str,
    decision_log: Path,
) -> dict[str, Any]:
    """Settings of the policy service: the users' tokens (broker route: lists) and the tokens
    exchanged for a server are accepted; it signs the tool lists with ``signing_key``."""
    return {
        "host": "127.0.0.1",
        "port": port,
        "engine": engine,
        "policies_dir": str(paths.REPO_ROOT / "policies"),
        "catalogue_file": str(catalogue_file),
        "opa": {"url": opa_url, "load_policies": True},
        "auth": {
            # the users' tokens (broker route: lists) and the tokens exchanged for a server
            "issuers": [
                {
                    "issuer": keycloak.issuer(REALM_MCP),
                    "audiences": [GATEWAY_AUDIENCE, *(p.name for p in SERVER_PLANS)],
                }
            ],
            "ca_file": str(ca_file),
            "resource_metadata_url": metadata_url,
        },
        "caller_auth": dict(caller_auth),
        "wristband": {"signing_key_file": str(signing_key), "form": wristband_form},
        "decision_log": str(decision_log),
    }
