"""The Kuadrant overlay's AuthPolicies as the Authorino AuthConfigs Kuadrant would make of them.

Kuadrant (``kuadrant-operator`` v1.2.0, ``internal/controller/authconfigs_reconciler.go``,
``buildDesiredAuthConfig``) copies an AuthPolicy's ``spec.rules`` sections (``authentication``,
``metadata``, ``authorization``, ``response``, ``callbacks``) and ``patterns`` into AuthConfig
(``authorino.kuadrant.io/v1beta3``) ``spec`` fields of the same names, sets
``hosts: [<AuthConfig name>]`` and has the gateway name that AuthConfig in each check request's
context extension ``host``. The AuthPolicy's top-level ``when`` is evaluated by the gateway before
it calls Authorino; here it becomes the AuthConfig's top-level ``when``, which Authorino evaluates
with the same meaning (no match: the request is not subject to this auth).

:func:`overlay_authconfigs` renders ``manifests/overlays/kuadrant`` with kustomize (as
``tests/manifests`` does) and translates each AuthPolicy. Only environment-specific strings are
rewritten, through an explicit table (:class:`Environment`): the in-cluster service URLs of our
two services, the Keycloak issuer, and the gateway's public URL in the ``WWW-Authenticate``
challenge. Every rule, CEL expression, header and body stays the overlay's own; a table entry that
matches nothing is an error, so a changed overlay cannot silently escape the rewrite.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tests.manifests import render
from tests.testbed.authorino import authconfig

OVERLAY = "overlays/kuadrant"
AUTHPOLICY_API = "kuadrant.io/v1"
RULE_SECTIONS = ("authentication", "metadata", "authorization", "response", "callbacks")

# The environment the overlay is written for (Kind + Kuadrant): in-cluster and public addresses.
CLUSTER_TOKEN_EXCHANGE = "http://token-exchange.kmg-system.svc.cluster.local:8080"
CLUSTER_POLICY = "http://policy.kmg-system.svc.cluster.local:8080"
CLUSTER_KEYCLOAK_REALMS = "https://keycloak.keycloak.svc.cluster.local:8443/realms/"
PUBLIC_GATEWAY = "http://mcp.127-0-0-1.sslip.io:8888"


class OverlayMismatch(RuntimeError):
    """The overlay no longer has what the translation expects (an AuthPolicy, a URL, ...)."""


@dataclass(frozen=True)
class Environment:
    """Where the overlay's environment-specific addresses live in the testbed."""

    token_exchange_url: str  # http://127.0.0.1:<port>
    policy_url: str
    keycloak_realms_url: str  # https://<host>:<port>/realms/
    gateway_url: str  # the local Envoy

    def rewrites(self) -> dict[str, str]:
        """Overlay string -> testbed string (substring replacement, each must match)."""
        return {
            CLUSTER_TOKEN_EXCHANGE: self.token_exchange_url.rstrip("/"),
            CLUSTER_POLICY: self.policy_url.rstrip("/"),
            CLUSTER_KEYCLOAK_REALMS: self.keycloak_realms_url,
            PUBLIC_GATEWAY: self.gateway_url.rstrip("/"),
        }


def overlay_authpolicies() -> dict[str, dict[str, Any]]:
    """The AuthPolicies of the rendered overlay, by name."""
    policies = {
        obj["metadata"]["name"]: obj
        for obj in render.render(OVERLAY)
        if obj.get("apiVersion") == AUTHPOLICY_API and obj.get("kind") == "AuthPolicy"
    }
    if not policies:
        raise OverlayMismatch(f"manifests/{OVERLAY} renders no {AUTHPOLICY_API} AuthPolicy")
    return policies


def authconfig_spec(policy: Mapping[str, Any], host: str) -> dict[str, Any]:
    """The AuthConfig ``spec`` Kuadrant derives from one AuthPolicy (before any rewrite)."""
    spec = policy.get("spec") or {}
    rules = spec.get("rules") or {}
    out: dict[str, Any] = {"hosts": [host]}
    if spec.get("patterns"):
        out["patterns"] = copy.deepcopy(spec["patterns"])
    if spec.get("when"):
        out["when"] = copy.deepcopy(spec["when"])
    for section in RULE_SECTIONS:
        if section in rules:
            out[section] = copy.deepcopy(rules[section])
    unknown = set(rules) - set(RULE_SECTIONS)
    if unknown:
        raise OverlayMismatch(f"AuthPolicy rules sections not translated: {sorted(unknown)}")
    return out


def rewrite(spec: Any, rewrites: Mapping[str, str], used: dict[str, int]) -> Any:
    """``spec`` with every string's occurrences of a key replaced; counts uses in ``used``."""
    if isinstance(spec, str):
        for old, new in rewrites.items():
            if old in spec:
                used[old] = used.get(old, 0) + spec.count(old)
                spec = spec.replace(old, new)
        return spec
    if isinstance(spec, list):
        return [rewrite(item, rewrites, used) for item in spec]
    if isinstance(spec, dict):
        return {key: rewrite(value, rewrites, used) for key, value in spec.items()}
    return spec


def overlay_authconfigs(
    env: Environment, namespace: str, hosts: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """AuthConfigs (in ``namespace``) of the overlay's AuthPolicies named in ``hosts``.

    ``hosts`` maps AuthPolicy name -> the AuthConfig's host key (also its name, as Kuadrant does).
    """
    policies = overlay_authpolicies()
    missing = set(hosts) - set(policies)
    if missing:
        raise OverlayMismatch(f"manifests/{OVERLAY} has no AuthPolicy {sorted(missing)}")
    rewrites = env.rewrites()
    used: dict[str, int] = {}
    out = {
        name: authconfig(
            host, namespace, rewrite(authconfig_spec(policies[name], host), rewrites, used)
        )
        for name, host in hosts.items()
    }
    unused = [old for old in rewrites if not used.get(old)]
    if unused:
        raise OverlayMismatch(f"manifests/{OVERLAY} no longer contains {unused}: update the table")
    return out
