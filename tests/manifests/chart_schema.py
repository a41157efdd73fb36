"""The Helm chart's ``values.schema.json`` and the README's values table, generated.

``python -m tests.manifests.chart_schema --write`` rewrites both; ``test_chart.py`` fails when
either is stale. The chart's own values are described here; each service's ``config`` is checked
against the JSON schema of the service's real settings model (``extra="forbid"`` there becomes
``additionalProperties: false``), so a misspelt setting fails ``helm install`` with the path of
the value, before any pod starts.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import yaml
from pydantic import BaseModel

from gateway_plugins.policy.config import PolicySettings
from gateway_plugins.token_exchange.config import Settings as TokenExchangeSettings
from mcp_backend.config import Settings as BackendSettings
from tests.testbed import paths

CHART = paths.REPO_ROOT / "charts" / "kube-mcp-gateway"
SCHEMA_FILE = CHART / "values.schema.json"
VALUES_FILE = CHART / "values.yaml"
README = paths.REPO_ROOT / "README.md"
BEGIN = "<!-- helm-values:begin (generated: python -m tests.manifests.chart_schema --write) -->"
END = "<!-- helm-values:end -->"

Schema = dict[str, Any]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
LABEL_KEY = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"


# -- building blocks ---------------------------------------------------------------------------
def obj(description: str, properties: Mapping[str, Schema], **extra: Any) -> Schema:
    """An object that refuses keys it does not list."""
    return {
        "type": "object",
        "description": description,
        "additionalProperties": False,
        "properties": dict(properties),
        **extra,
    }


def string(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def boolean(description: str) -> Schema:
    return {"type": "boolean", "description": description}


def integer(description: str, minimum: int = 0, **extra: Any) -> Schema:
    return {"type": "integer", "description": description, "minimum": minimum, **extra}


def name(description: str, pattern: str = DNS_LABEL, max_length: int = 63) -> Schema:
    return string(description, pattern=pattern, minLength=1, maxLength=max_length)


def string_map(description: str) -> Schema:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": {"type": "string"},
    }


def label_map(description: str) -> Schema:
    return {
        "type": "object",
        "description": description,
        "minProperties": 1,
        "patternProperties": {LABEL_KEY: {"type": "string", "maxLength": 63}},
        "additionalProperties": False,
    }


# (patternProperties, not propertyNames: helm's validator reports a propertyNames failure at the
# wrong path, patternProperties + additionalProperties names the key and where it is)
QUANTITIES: Schema = {
    "type": "object",
    "patternProperties": {
        LABEL_KEY: {
            "type": ["string", "number"],
            "pattern": r"^[0-9.]+([eE][-+]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$",
        }
    },
    "additionalProperties": False,
}


def resources(description: str) -> Schema:
    return obj(
        description,
        {"requests": QUANTITIES, "limits": QUANTITIES},
    )


def image_override(service: str) -> Schema:
    return obj(
        f"This service's image; empty: image.repositoryPrefix/{service}:image.tag.",
        {
            "repository": string("Repository; empty: <image.repositoryPrefix>/" + service + "."),
            "tag": string("Tag; empty: image.tag."),
        },
    )


def model_schema(model: type[BaseModel], prefix: str) -> tuple[Schema, dict[str, Schema]]:
    """The settings model's JSON schema, its ``$defs`` renamed ``<prefix>.<name>`` so the three
    services' definitions live side by side in the chart schema's ``$defs``."""
    raw = json.dumps(model.model_json_schema(mode="validation"))
    raw = re.sub(r'"#/\$defs/([^"]+)"', lambda m: f'"#/$defs/{prefix}.{m.group(1)}"', raw)
    schema: Schema = json.loads(raw)
    defs = {f"{prefix}.{k}": v for k, v in schema.pop("$defs", {}).items()}
    schema.pop("title", None)
    # the chart sets these itself (listen address, mounts); the values need not carry them
    schema.pop("required", None)
    return schema, defs


def service(
    key: str, svc: str, description: str, model: type[BaseModel], extra: Mapping[str, Schema]
) -> tuple[Schema, dict[str, Schema]]:
    config, defs = model_schema(model, key)
    config["description"] = (
        f"{svc} settings (README, Configuration); the chart sets the listen address, Host names, "
        "mounted files and the public URL over them."
    )
    props: dict[str, Schema] = {
        "image": image_override(svc),
        "replicas": integer("Replicas when autoscaling is off.", 1),
        "autoscaling": obj(
            "HorizontalPodAutoscaler on this service's container CPU; on: the Deployment sets "
            "no replicas (the HPA owns the count).",
            {
                "enabled": boolean("Create the HPA."),
                "minReplicas": integer("Fewest replicas.", 1),
                "maxReplicas": integer("Most replicas.", 1),
                "targetCPUUtilizationPercentage": integer("Target CPU utilization.", 1),
                "scaleDownStabilizationSeconds": integer(
                    "Scale-down stabilization window.", 0, maximum=3600
                ),
            },
        ),
        "podDisruptionBudget": obj(
            "PodDisruptionBudget for voluntary disruptions.",
            {
                "enabled": boolean("Create the PDB."),
                "maxUnavailable": {
                    "description": "Pods down at a time (a number or a percentage).",
                    "oneOf": [
                        {"type": "integer", "minimum": 0},
                        {"type": "string", "pattern": r"^[0-9]{1,3}%$"},
                    ],
                },
            },
        ),
        "topologySpread": boolean("Spread replicas over nodes (required) and zones (preferred)."),
        "terminationGracePeriodSeconds": integer("Grace period of a stopping pod.", 1),
        "preStopSleepSeconds": integer(
            "preStop sleep while the endpoints are removed (0: none).", 0
        ),
        "resources": resources("The service container's requests and limits."),
        "podAnnotations": string_map("Extra pod annotations."),
        "nodeSelector": string_map("Pod nodeSelector."),
        "tolerations": {
            "type": "array",
            "description": "Pod tolerations.",
            "items": {"type": "object"},
        },
        "affinity": {"type": "object", "description": "Pod affinity."},
        "extraAllowedHosts": {
            "type": "array",
            "description": "Host values accepted besides the Service names (and the route "
            "hostname for the backend); 'name' or 'name:*'.",
            "items": {"type": "string", "minLength": 1},
        },
        **extra,
        "config": config,
    }
    return obj(description, props), defs


def build() -> Schema:
    """The whole ``values.schema.json``."""
    defs: dict[str, Schema] = {}
    backend, d = service("mcpBackend", "mcp-backend", "The MCP backend.", BackendSettings, {})
    defs |= d
    exchange, d = service(
        "tokenExchange",
        "token-exchange",
        "The token-exchange plugin.",
        TokenExchangeSettings,
        {
            "sharedCache": obj(
                "Replicas share exchanged tokens through Redis (cache.backend: redis).",
                {
                    "enabled": boolean("Use the shared cache."),
                    "redisUrl": string(
                        "redis:// or rediss:// URL without credentials; empty: the chart's "
                        "Redis (redis.enabled).",
                        pattern=r"^$|^rediss?://[^@\s]+$",
                    ),
                    "passwordSecret": name("Secret with key 'password'.", DNS_SUBDOMAIN, 253),
                    "encryptionKeysSecret": name(
                        "Secret with key 'keys' (one per line, newest first).", DNS_SUBDOMAIN, 253
                    ),
                },
            )
        },
    )
    defs |= d
    policy, d = service(
        "policy",
        "policy",
        "The policy plugin.",
        PolicySettings,
        {
            "opa": obj(
                "The OPA sidecar; off: the embedded engine.",
                {
                    "enabled": boolean("Run OPA beside the service (decisions on loopback)."),
                    "image": string("OPA image.", minLength=1),
                    "resources": resources("The OPA container's requests and limits."),
                },
            ),
            "data": {
                "type": "object",
                "description": "The policy data: one JSON document per file of ConfigMap "
                "policy-data (default: policies/data/). Watched, reloaded without restarts.",
                "patternProperties": {r"^[A-Za-z0-9_-]+\.json$": {"type": "object"}},
                "additionalProperties": False,
            },
        },
    )
    defs |= d
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "kube-mcp-gateway values",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "authMode": {
                "description": "How the gateway asks the services: plain (the services only), "
                "kuadrant (AuthPolicies), istio-ext-authz (one CUSTOM provider).",
                "enum": ["plain", "kuadrant", "istio-ext-authz"],
            },
            "image": obj(
                "Images of the three services.",
                {
                    "repositoryPrefix": string("<prefix>/<service>.", minLength=1),
                    "tag": string("Tag of the three images; empty: the chart's appVersion."),
                    "pullPolicy": {
                        "description": "imagePullPolicy of every container.",
                        "enum": ["Always", "IfNotPresent", "Never"],
                    },
                },
            ),
            "imagePullSecrets": {
                "type": "array",
                "description": "Pod imagePullSecrets.",
                "items": obj("A Secret.", {"name": name("Secret name.", DNS_SUBDOMAIN, 253)}),
            },
            "publicUrl": string(
                "The gateway's public URL, scheme://host[:port] without a path: resource_url "
                "and the RFC 9728 metadata URL derive from it.",
                pattern=r"^https?://[^/\s?#]+$",
            ),
            "callerAuth": obj(
                "The gateway's shared secret on every check (caller_auth).",
                {
                    "secretName": name("Existing Secret, key 'secret'.", DNS_SUBDOMAIN, 253),
                    "header": string("Header carrying it.", pattern=r"^[a-z0-9-]+$", minLength=1),
                },
            ),
            "existingSecrets": obj(
                "Existing Secrets in the release namespace.",
                {
                    "tokenExchangeCredentials": name(
                        "token-exchange's client secrets (keys = the *_file names).",
                        DNS_SUBDOMAIN,
                        253,
                    ),
                    "policySigningKey": name(
                        "The tool-list signing key (key 'key.pem', EC P-256).", DNS_SUBDOMAIN, 253
                    ),
                },
            ),
            "keycloakCA": obj(
                "The token issuer's CA.",
                {"configMap": name("Existing ConfigMap, key 'ca.crt'.", DNS_SUBDOMAIN, 253)},
            ),
            "gateway": obj(
                "The Gateway the MCP Gateway runs on.",
                {
                    "name": name("Gateway name (the route's parent, the CUSTOM policy's target)."),
                    "namespace": name("Its namespace."),
                    "podLabels": label_map("Labels of its Envoy pods (NetworkPolicy peer)."),
                    "serviceAccount": name("Its Envoy's ServiceAccount (Istio principal)."),
                },
            ),
            "broker": obj(
                "The MCP Gateway broker/router.",
                {
                    "namespace": name("Its namespace."),
                    "podLabels": label_map("Labels of its pods (NetworkPolicy peer)."),
                    "serviceAccount": name("Its ServiceAccount (Istio principal)."),
                    "route": name("Its HTTPRoute (the Kuadrant broker AuthPolicy's target)."),
                },
            ),
            "registration": obj(
                "MCPServerRegistration, HTTPRoute and ReferenceGrant of the backend.",
                {
                    "enabled": boolean("Register the backend with the MCP Gateway."),
                    "namespace": name("Namespace of the route and registration."),
                    "createNamespace": boolean(
                        "Create that namespace (Pod Security restricted; helm uninstall deletes "
                        "it)."
                    ),
                    "name": name("Route and registration name (server = <namespace>/<name>)."),
                    "hostname": string(
                        "HTTPRoute hostname (the router's :authority).",
                        pattern=r"^(\*\.)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                    ),
                    "prefix": string(
                        "Tool name prefix in the aggregated list.", pattern=r"^[A-Za-z0-9_-]*$"
                    ),
                    "requestTimeout": string(
                        "Route request timeout (Gateway API duration, e.g. 310s).",
                        pattern=r"^([0-9]{1,5}(h|m|s|ms)){1,4}$",
                    ),
                },
            ),
            "discoveryCredential": obj(
                "The broker's discovery bearer (nobody's; listing only).",
                {
                    "create": boolean("Create both Secrets from token."),
                    "token": string("The value, 'Bearer ...'.", pattern=r"^Bearer \S+$"),
                    "backendSecret": name(
                        "The backend's Secret (release namespace, key 'token').", DNS_SUBDOMAIN, 253
                    ),
                    "registrationSecret": name(
                        "The registration's credentialRef Secret (key 'token').", DNS_SUBDOMAIN, 253
                    ),
                },
            ),
            "networkPolicies": obj(
                "Default-deny ingress and each service's callers.",
                {
                    "enabled": boolean("Create the NetworkPolicies."),
                    "authorinoNamespace": string(
                        "Authorino's namespace (admitted to token-exchange and policy); empty: "
                        "none.",
                        pattern=r"^$|" + DNS_LABEL,
                        maxLength=63,
                    ),
                },
            ),
            "kuadrant": obj(
                "authMode kuadrant: the AuthPolicies.",
                {
                    "issuerUrl": string("Token issuer Authorino trusts.", pattern=r"^https://\S+$"),
                    "gatewayAudience": string(
                        "aud a user's token must carry.", pattern=r"^[^'\\\s]+$", minLength=1
                    ),
                    "tokenExchangeClientSecret": name(
                        "Secret in Authorino's namespace, key 'authorization'.", DNS_SUBDOMAIN, 253
                    ),
                    "policyCallerSecret": name(
                        "Secret in Authorino's namespace, key 'secret'.", DNS_SUBDOMAIN, 253
                    ),
                },
            ),
            "istio": obj(
                "authMode istio-ext-authz.",
                {
                    "provider": name("meshConfig extension provider name."),
                    "injectSidecars": boolean("Label the pods sidecar.istio.io/inject=true."),
                    "meshSecurity": boolean("STRICT mTLS and an ALLOW policy per service."),
                },
            ),
            "mcpBackend": backend,
            "tokenExchange": exchange,
            "policy": policy,
            "redis": obj(
                "One Redis for the shared token cache (no persistence).",
                {
                    "enabled": boolean("Run it (needs tokenExchange.sharedCache.enabled)."),
                    "image": string("Redis 6+ image.", minLength=1),
                    "maxMemory": string(
                        "Memory bound (TTL eviction).", pattern=r"^[0-9]+([kKmMgG][bB]?)?$"
                    ),
                    "resources": resources("Redis' requests and limits."),
                },
            ),
        },
        "$defs": defs,
    }


def render_schema() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


# -- README table ------------------------------------------------------------------------------
def _rows(schema: Schema, values: Any, path: str) -> Iterator[tuple[str, str, str]]:
    props = schema.get("properties") if schema.get("additionalProperties") is False else None
    # a leaf: free-form, a service's settings, or parts without their own description
    if (
        props is None
        or path.endswith(".config")
        or not all(sub.get("description") for sub in props.values())
    ):
        default = json.dumps(values, separators=(", ", ": "))
        if len(default) > 60:
            default = "see values.yaml"
        yield path, default, schema.get("description", "")
        return
    for key, sub in props.items():
        yield from _rows(sub, (values or {}).get(key), f"{path}.{key}" if path else key)


def render_table() -> str:
    values = yaml.safe_load(VALUES_FILE.read_text(encoding="utf-8"))
    lines = ["| value | default | what |", "|---|---|---|"]
    for path, default, description in _rows(build(), values, ""):
        text = description.replace("|", "\\|").replace("<", "&lt;")
        lines.append(f"| `{path}` | `{default}` | {text} |")
    return "\n".join(lines)


def current_block(text: str) -> str | None:
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def write() -> None:
    SCHEMA_FILE.write_text(render_schema(), encoding="utf-8")
    text = README.read_text(encoding="utf-8")
    if current_block(text) is None:
        raise SystemExit(f"README.md lacks the markers {BEGIN} ... {END}")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    README.write_text(f"{head}{BEGIN}\n{render_table()}\n{END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the schema and README")
    args = parser.parse_args(argv)
    if args.write:
        write()
        return 0
    sys.stdout.write(render_schema())
    return 0


if __name__ == "__main__":
    sys.exit(main())
