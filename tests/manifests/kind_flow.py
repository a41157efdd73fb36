"""Everything ``make kind-up kind-deploy`` applies to the Kind cluster, stage by stage, and the demo
call of ``make kind-demo`` through the real gateway.

``python -m tests.manifests.kind_flow STAGE --pki DIR`` prints one stage as YAML (the Makefile
pipes it into ``kubectl apply --server-side``); the tests render the same stages with
:func:`render` and send every object to a testbed API server (``test_kind_flow.py``). The
MCP Gateway's own local environment is the model (its ``make local-env-setup``: Gateway API CRDs,
Istio through the Sail operator, the MCP Gateway, test servers), with our services in place of its
test servers:

* ``gateway-api-crds``: the Gateway API standard CRDs of :data:`versions.KIND_GATEWAY_API`;
* ``istio``: ``manifests/kind/istio.yaml``, the Sail operator's ``Istio`` resource (the operator
  itself is its released Helm chart, which ``make kind-up`` installs from its release URL);
* ``mcp-gateway-crds``: the three CRDs of the MCP Gateway's chart;
* ``mcp-gateway``: ``manifests/kind/gateway.yaml`` (namespaces, the Gateway), the chart's objects
  (``tests/manifests/mcp_gateway_install.py``), the broker's trusted-headers Secret (the public
  half of the policy service's signing key) and its session store Secret
  (``manifests/kind/mcp-gateway-session-store.yaml``: the Redis of the ``services`` stage);
* ``services``: ``manifests/overlays/kind`` (our services behind Istio's ext_authz, Keycloak, our
  gateway objects) and the Secrets/ConfigMaps made from ``--pki`` files (Keycloak's certificate,
  the demo CA, the policy signing key), each namespace before what lives in it.

``python -m tests.manifests.kind_flow demo --url URL --host HOST`` is the last step of
``make kind-demo``: the ``mcp`` client (protocol negotiated as a current client does), with the
bearer token from ``$KMG_TOKEN`` (never printed), lists the tools through the gateway and calls
the backend's ``namespaces_list`` under the registration's prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization

from tests.manifests import crds, mcp_gateway_install
from tests.manifests import render as kustomize
from tests.testbed import build, paths

Obj = dict[str, Any]

KIND_DIR = paths.REPO_ROOT / "manifests" / "kind"
ISTIO = KIND_DIR / "istio.yaml"
GATEWAY = KIND_DIR / "gateway.yaml"
STAGES = ("gateway-api-crds", "istio", "mcp-gateway-crds", "mcp-gateway", "services")
# The Sail operator's Istio kind: no CRD of it can be fetched here, so this stage is checked for
# consistency (test_kind_flow.py), not by the API server.
NOT_SERVER_VALIDATED = frozenset({"istio"})
TRUSTED_HEADERS_SECRET = "kmg-trusted-headers"  # manifests/kind/mcp-gateway-values.yaml
SESSION_STORE = KIND_DIR / "mcp-gateway-session-store.yaml"  # sessionStore of the same values
TOOL = "namespaces_list"


def _yaml_file(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if isinstance(d, dict)]


def _secret(namespace: str, name: str, files: dict[str, bytes], labels: dict[str, str]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in files.items()},
    }


def policy_public_key(pki: Path) -> bytes:
    """The PEM public half of ``policy-signing.pem`` (what verifies the signed tool list)."""
    key = serialization.load_pem_private_key((pki / "policy-signing.pem").read_bytes(), None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def pki_objects(pki: Path) -> list[Obj]:
    """What ``kubectl create secret/configmap --from-file`` made before: the demo CA, Keycloak's
    serving certificate, the policy signing key (files of ``make kind-up``'s ``$(KIND_PKI)``)."""
    labels = {"app.kubernetes.io/part-of": "kube-mcp-gateway"}
    ca = (pki / "ca.crt").read_bytes()
    tls = {
        "tls.crt": (pki / "keycloak.crt").read_bytes(),
        "tls.key": (pki / "keycloak.key").read_bytes(),
        "ca.crt": ca,
    }
    return [
        _secret("keycloak", "keycloak-tls", tls, labels),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "keycloak-ca", "namespace": "kmg-system", "labels": labels},
            "data": {"ca.crt": ca.decode()},
        },
        _secret(
            "kmg-system",
            "policy-signing-key",
            {"key.pem": (pki / "policy-signing.pem").read_bytes()},
            labels,
        ),
    ]


def render(stage: str, pki: Path) -> list[Obj]:
    """The objects of one stage, in apply order."""
    if stage == "gateway-api-crds":
        return crds.load_kind_crds()
    if stage == "istio":
        return _yaml_file(ISTIO)
    if stage == "mcp-gateway-crds":
        return mcp_gateway_install.render_crds()
    if stage == "mcp-gateway":
        trusted = _secret(
            mcp_gateway_install.NAMESPACE,
            TRUSTED_HEADERS_SECRET,
            {"key": policy_public_key(pki)},
            {"app.kubernetes.io/part-of": "kube-mcp-gateway"},
        )
        return [
            *_yaml_file(GATEWAY),
            trusted,
            *_yaml_file(SESSION_STORE),
            *mcp_gateway_install.render(),
        ]
    if stage == "services":
        overlay = kustomize.render("overlays/kind")
        namespaces = [o for o in overlay if o["kind"] == "Namespace"]
        rest = [o for o in overlay if o["kind"] != "Namespace"]
        return [*namespaces, *pki_objects(pki), *rest]
    raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")


# -- the demo call through the gateway ---------------------------------------------------------
async def demo_call(url: str, host: str, token: str, prefix: str) -> int:
    import httpx2
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}", "Host": host}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http), mode="auto") as client,
    ):
        names = sorted(t.name for t in (await client.list_tools()).tools)
        print(f"tools through the gateway ({len(names)}): {', '.join(names)}")
        result = await client.call_tool(f"{prefix}{TOOL}", {})
        text = "".join(getattr(c, "text", "") for c in result.content)
        print(f"{prefix}{TOOL} -> {'error: ' if result.is_error else ''}{text[:2000]}")
        return 1 if result.is_error else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The Kind flow's manifests, stage by stage.")
    parser.add_argument("stage", choices=[*STAGES, "demo", "which-helm"])
    parser.add_argument("--pki", type=Path, help="the demo PKI folder of make kind-up")
    parser.add_argument("--url", help="demo: the gateway's /mcp URL (a port-forward)")
    parser.add_argument("--host", help="demo: the Host the gateway's listener answers")
    parser.add_argument("--prefix", default="kube_", help="demo: the registration's tool prefix")
    args = parser.parse_args(argv)
    if args.stage == "which-helm":
        print(build.binary("helm"))
        return 0
    if args.stage == "demo":
        token = os.environ.get("KMG_TOKEN", "")
        if not (token and args.url and args.host):
            parser.error("demo needs --url, --host and the token in $KMG_TOKEN")
        return asyncio.run(demo_call(args.url, args.host, token, args.prefix))
    if args.stage in ("mcp-gateway", "services") and args.pki is None:
        parser.error(f"{args.stage} needs --pki (make kind-up creates it)")
    try:
        objs = render(args.stage, args.pki or Path("."))
    except (FileNotFoundError, mcp_gateway_install.RenderError, crds.CRDFetchError) as exc:
        print(f"kind_flow {args.stage}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(objs, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
