"""The access-control layer (pure): path parsing, denied kinds, Secret redaction."""

from __future__ import annotations

import json

import pytest

from mcp_backend.access.policy import AccessPolicy, ApiPath, parse_path, plural, redact_tree
from mcp_backend.config import DEFAULT_DENIED, DeniedKind
from mcp_backend.errors import AccessDenied


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/v1/pods", ApiPath("", "v1", "pods")),
        ("/api/v1/namespaces/ns/pods/p/log", ApiPath("", "v1", "pods", "ns", "p", "log")),
        ("/api/v1/namespaces/ns", ApiPath("", "v1", "namespaces", None, "ns")),
        (
            "/apis/apps/v1/namespaces/x/deployments/web/scale",
            ApiPath("apps", "v1", "deployments", "x", "web", "scale"),
        ),
        (
            "/api/v1/nodes/n1/proxy/logs/kubelet.log",
            ApiPath("", "v1", "nodes", None, "n1", "proxy/logs/kubelet.log"),
        ),
        ("/apis", None),
        ("/version", None),
    ],
)
def test_parse_path(path: str, expected: ApiPath | None) -> None:
    assert parse_path(path) == expected


@pytest.mark.parametrize(
    ("kind", "resource"),
    [
        ("Pod", "pods"),
        ("Ingress", "ingresses"),
        ("NetworkPolicy", "networkpolicies"),
        ("ServiceAccount", "serviceaccounts"),
        ("Gateway", "gateways"),
        ("Endpoints", "endpoints"),
        ("Status", "statuses"),
    ],
)
def test_plural(kind: str, resource: str) -> None:
    assert plural(kind) == resource


def test_default_policy_denies_rbac_and_service_accounts_on_every_path() -> None:
    policy = AccessPolicy(DEFAULT_DENIED)
    for method, path in [
        ("GET", "/api/v1/serviceaccounts"),
        ("POST", "/api/v1/namespaces/x/serviceaccounts/default/token"),
        ("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin"),
        ("DELETE", "/apis/rbac.authorization.k8s.io/v1/namespaces/x/rolebindings/b"),
    ]:
        with pytest.raises(AccessDenied, match="denied by this server's policy"):
            policy.check_request(method, path)
    assert policy.check_request("GET", "/api/v1/pods") == ApiPath("", "v1", "pods")
    with pytest.raises(AccessDenied, match="ClusterRole"):
        policy.check_kind("rbac.authorization.k8s.io", "ClusterRole")


def test_error_names_the_verb() -> None:
    policy = AccessPolicy([DeniedKind.model_validate({"kind": "Secret"})])
    with pytest.raises(AccessDenied, match=r"^list secrets: kind Secret is denied"):
        policy.check_request("GET", "/api/v1/namespaces/a/secrets")


def test_secret_redaction_in_objects_lists_and_annotations() -> None:
    policy = AccessPolicy([])
    single = {
        "kind": "Secret",
        "data": {"a": "c2VjcmV0"},
        "stringData": {"b": "x"},
        "metadata": {
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": '{"data":{"a":"c2VjcmV0"}}',
                "keep": "me",
            }
        },
    }
    policy.filter_response(parse_path("/api/v1/namespaces/n/secrets/s"), single)
    assert single["data"] == {"a": "***"}
    assert single["stringData"] == {"b": "***"}
    annotations = single["metadata"]["annotations"]
    assert annotations["kubectl.kubernetes.io/last-applied-configuration"] == "***"
    assert annotations["keep"] == "me"
    listing = {"kind": "SecretList", "items": [{"metadata": {"name": "x"}, "data": {"k": "dg=="}}]}
    policy.filter_response(parse_path("/api/v1/secrets"), listing)
    assert listing["items"][0]["data"] == {"k": "***"}
    mixed = {
        "kind": "List",
        "items": [
            {"kind": "Secret", "data": {"k": "v"}},
            {"kind": "ConfigMap", "data": {"k": "v"}},
        ],
    }
    redact_tree(mixed)
    assert mixed["items"][0]["data"] == {"k": "***"}
    assert mixed["items"][1]["data"] == {"k": "v"}


def test_secret_table_rows_lose_the_last_applied_annotation() -> None:
    last = "kubectl.kubernetes.io/last-applied-configuration"
    table = {
        "kind": "Table",
        "rows": [
            {
                "cells": ["s", "Opaque", 1],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "metadata": {"name": "s", "annotations": {last: '{"data":{"k":"c2VjcmV0"}}'}},
                },
            }
        ],
    }
    AccessPolicy([]).filter_response(parse_path("/api/v1/namespaces/n/secrets"), table)
    assert table["rows"][0]["object"]["metadata"]["annotations"][last] == "***"
    assert table["rows"][0]["cells"] == ["s", "Opaque", 1]


def test_non_secret_responses_are_left_alone() -> None:
    cm = {"kind": "ConfigMap", "data": {"k": "v"}}
    AccessPolicy([]).filter_response(parse_path("/api/v1/namespaces/n/configmaps/c"), cm)
    assert cm["data"] == {"k": "v"}


def test_redaction_can_be_switched_off() -> None:
    body = {"kind": "Secret", "data": {"a": "b"}}
    AccessPolicy([], redact_secrets=False).filter_response(None, body)
    assert body["data"] == {"a": "b"}


def test_names_must_be_plain_path_segments() -> None:
    from mcp_backend.errors import InvalidArguments
    from mcp_backend.kube.client import _check_path
    from mcp_backend.kube.discovery import POD, segment

    assert POD.path("ns", "system:node:x") == "/api/v1/namespaces/ns/pods/system:node:x"
    for bad in ("..", ".", "a/b", "a%2F", "a?b", "a#b", "a b", "a\nb"):
        with pytest.raises(InvalidArguments, match="not a valid Kubernetes object name"):
            segment(bad, "name")
    for path in ("/api/v1/namespaces/x/pods/../secrets", "/api/v1/pods?x=1", "/api/v1/%2e%2e"):
        with pytest.raises(InvalidArguments, match="invalid object name"):
            _check_path(path)


@pytest.mark.parametrize("configured", ["Secret", "secret", "secrets", "SECRETS"])
def test_denied_kind_matches_kind_or_resource_name_case_insensitively(configured: str) -> None:
    policy = AccessPolicy([DeniedKind.model_validate({"kind": configured})])
    with pytest.raises(AccessDenied, match="denied by this server's policy"):
        policy.check_request("GET", "/api/v1/namespaces/a/secrets/s")
    with pytest.raises(AccessDenied, match="denied by this server's policy"):
        policy.check_kind("", "Secret")
    with pytest.raises(AccessDenied, match="denied by this server's policy"):
        policy.check_kind("", "Secret", "secrets")
    assert policy.check_request("GET", "/api/v1/namespaces/a/configmaps") is not None
    assert policy.denial("apps", "secrets") is None  # the group still has to match


TOKEN_TYPE = "kubernetes.io/service-account-token"
SECRETS = parse_path("/api/v1/namespaces/n/secrets")
SECRET = parse_path("/api/v1/namespaces/n/secrets/s")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (json.dumps({"kind": "Secret", "type": TOKEN_TYPE}), "application/json"),
        # duplicate keys: the API server's JSON decoding keeps the last one
        ('{"type": "Opaque", "type": "' + TOKEN_TYPE + '"}', "application/json"),
        # a JSON escape, a key of another case, tabs (which YAML does not read)
        ('{"Type":\t"\\u006bubernetes.io/service-account-token"}', "application/json"),
        (f"kind: Secret\ntype: {TOKEN_TYPE}\n", "application/apply-patch+yaml"),
        (f"base: &b {{type: {TOKEN_TYPE}}}\n<<: *b\n", "application/apply-patch+yaml"),
        (f'type: "{TOKEN_TYPE.upper()} "\n', "application/apply-patch+yaml"),
        ("\x0a\x06Secret" + TOKEN_TYPE, "application/vnd.kubernetes.protobuf"),
    ],
)
def test_service_account_token_secrets_are_found_in_any_body(body: str, content_type: str) -> None:
    policy = AccessPolicy(DEFAULT_DENIED)
    for method, path in (("POST", SECRETS), ("PUT", SECRET), ("PATCH", SECRET)):
        with pytest.raises(
            AccessDenied, match="makes the cluster issue a token of a ServiceAccount"
        ):
            policy.check_body(method, path, body.encode(), content_type)


def test_other_secrets_and_other_kinds_pass_and_allowing_service_accounts_allows_them() -> None:
    policy = AccessPolicy(DEFAULT_DENIED)
    opaque = json.dumps({"kind": "Secret", "type": "Opaque", "data": {"type": TOKEN_TYPE}})
    policy.check_body("POST", SECRETS, opaque.encode(), "application/json")
    token_secret = json.dumps({"kind": "Secret", "type": TOKEN_TYPE}).encode()
    configmaps = parse_path("/api/v1/namespaces/n/configmaps")
    policy.check_body("POST", configmaps, token_secret, "application/json")
    policy.check_body("GET", SECRETS, token_secret, "application/json")
    patch = json.dumps([{"op": "add", "path": "/type", "value": TOKEN_TYPE}]).encode()
    policy.check_body("PATCH", SECRET, patch, "application/json-patch+json")  # type is immutable
    allowing = AccessPolicy([DeniedKind.model_validate({"group": "rbac.authorization.k8s.io"})])
    allowing.check_body("POST", SECRETS, token_secret, "application/json")
    assert allowing.token_secret_denial() is None
    with pytest.raises(AccessDenied, match=r"^Secret 'x': a Secret of type"):
        policy.check_object("", "secrets", {"type": TOKEN_TYPE}, "Secret 'x'")


def test_list_elements_are_redacted_one_by_one() -> None:
    policy = AccessPolicy([])
    item = {"metadata": {"name": "s"}, "data": {"k": "dg=="}}
    assert policy.filter_element(SECRETS, item)["data"] == {"k": "***"}
    mixed = {"kind": "Secret", "data": {"k": "dg=="}}
    assert policy.filter_element(parse_path("/api/v1/configmaps"), mixed)["data"] == {"k": "***"}
    kept = {"data": {"k": "v"}}
    assert policy.filter_element(parse_path("/api/v1/configmaps"), kept)["data"] == {"k": "v"}


def test_admit_checks_the_request_then_its_body_for_every_transport() -> None:
    """``admit`` is the one check the backend's client and the helm guard both call."""
    policy = AccessPolicy(DEFAULT_DENIED)
    token_secret = json.dumps({"kind": "Secret", "type": TOKEN_TYPE}).encode()
    assert policy.admit("POST", "/api/v1/namespaces/n/secrets") == SECRETS
    assert policy.admit("POST", "/version", b"{}") is None
    with pytest.raises(AccessDenied, match="ServiceAccount"):
        policy.admit("GET", "/api/v1/namespaces/n/serviceaccounts")
    with pytest.raises(AccessDenied, match="makes the cluster issue a token of a ServiceAccount"):
        policy.admit("POST", "/api/v1/namespaces/n/secrets", token_secret)
    with pytest.raises(AccessDenied, match="makes the cluster issue a token of a ServiceAccount"):
        policy.admit("PUT", "/api/v1/namespaces/n/secrets/s", token_secret)
