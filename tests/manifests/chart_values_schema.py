"""The Helm chart's ``values.schema.json``: the release-wide values (auth mode, images, public
URL, Secrets), where the MCP Gateway runs and how the backend registers with it, the three
services (``chart_service_values.py``) and the chart's Redis. ``chart_schema.py`` writes it.
"""

from __future__ import annotations

from tests.manifests.chart_service_values import services
from tests.manifests.schema_blocks import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    Schema,
    boolean,
    label_map,
    name,
    obj,
    resources,
    string,
)


def build() -> Schema:
    """The whole ``values.schema.json``."""
    service_values, defs = services()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "kube-mcp-gateway values",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **release_values(),
            **gateway_values(),
            **service_values,
            **redis_values(),
        },
        "$defs": defs,
    }


def release_values() -> dict[str, Schema]:
    """Release-wide values: the auth mode, images, the public URL, the Secrets and the CA."""
    return {
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
    }


def gateway_values() -> dict[str, Schema]:
    """Where the MCP Gateway runs, how the backend registers with it, who may call the services
    (NetworkPolicies), and the Kuadrant and Istio auth modes."""
    return {
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
                    "Create that namespace (Pod Security restricted; helm uninstall deletes it)."
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
                    "Authorino's namespace (admitted to token-exchange and policy); empty: none.",
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
    }


def redis_values() -> dict[str, Schema]:
    """The chart's Redis for the shared token cache."""
    return {
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
    }
