"""The identity and policy testbed is real: Keycloak issues user tokens the kube-apiserver
accepts (RBAC applies to that user), performs standard token exchange for the backend's audience
with the tool roles in ``resource_access``, bridges realm ``mcp`` to realm ``cluster-b`` (two hops)
so cluster B accepts the user, OPA answers from a policy on disk, and Envoy proxies to a local
upstream."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException

from tests.testbed import opa_test
from tests.testbed.cluster import Cluster
from tests.testbed.fixtures_identity import EnvoyFactory, SessionKeycloak
from tests.testbed.identity_plan import BACKEND_AUDIENCE, REALM_CLUSTER_B, REALM_MCP
from tests.testbed.keycloak import TokenError, decode_jwt
from tests.testbed.opa_server import FIXTURE_DIR, OpaServer
from tests.testbed.ports import free_port

# tool-catalogue.md (23 tools of containers/kubernetes-mcp-server) + our workload_diagnose and
# day-2 tools (helm status/history/upgrade/rollback, rollout_*, can_i).
READ_ONLY_TOOLS = {
    "configuration_contexts_list",
    "configuration_view",
    "events_list",
    "namespaces_list",
    "nodes_log",
    "nodes_stats_summary",
    "nodes_top",
    "pods_list",
    "pods_list_in_namespace",
    "pods_get",
    "pods_top",
    "pods_log",
    "resources_list",
    "resources_get",
    "helm_list",
    "workload_diagnose",
    "helm_status",
    "helm_history",
    "rollout_status",
    "rollout_history",
    "can_i",
}
WRITE_TOOLS = {
    "pods_delete",
    "pods_exec",
    "pods_run",
    "resources_create_or_update",
    "resources_delete",
    "resources_scale",
    "helm_install",
    "helm_uninstall",
    "helm_upgrade",
    "helm_rollback",
    "rollout_restart",
    "rollout_undo",
}
ALL_TOOLS = READ_ONLY_TOOLS | WRITE_TOOLS
PROMPT_ROLES = {"prompt:cluster-health-check"}  # prompts are granted by role prompt:<name>
MCP_GROUPS = {"mcp-users", "engineering", "accounting"}
RBAC_NAMESPACE = "tb-identity"
RBAC_SETTLE = 15.0  # the RBAC authorizer sees new bindings through an informer: allow a moment


def _aud(claims: dict[str, object]) -> list[str]:
    aud = claims.get("aud")
    return [aud] if isinstance(aud, str) else list(aud or [])  # type: ignore[call-overload]


async def _bind_pod_reader(admin: k8s.ApiClient, user: str) -> None:
    core, rbac = k8s.CoreV1Api(admin), k8s.RbacAuthorizationV1Api(admin)
    meta = k8s.V1ObjectMeta
    for create in (
        lambda: core.create_namespace(k8s.V1Namespace(metadata=meta(name=RBAC_NAMESPACE))),
        lambda: rbac.create_namespaced_role(
            RBAC_NAMESPACE,
            k8s.V1Role(
                metadata=meta(name="pod-lister"),
                rules=[k8s.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["list"])],
            ),
        ),
        lambda: rbac.create_namespaced_role_binding(
            RBAC_NAMESPACE,
            k8s.V1RoleBinding(
                metadata=meta(name=f"pod-lister-{user}"),
                role_ref=k8s.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name="pod-lister"
                ),
                subjects=[
                    k8s.RbacV1Subject(kind="User", name=user, api_group="rbac.authorization.k8s.io")
                ],
            ),
        ),
    ):
        try:
            await create()
        except ApiException as exc:
            if exc.status != 409:
                raise


async def _status_of(call: object) -> int:
    try:
        await call  # type: ignore[misc]
    except ApiException as exc:
        return int(exc.status)
    return 200


@pytest.mark.usefixtures("keycloak_launched")  # Keycloak's JVM starts while cluster A starts
async def test_realm_mcp_user_token_authenticates_to_cluster_a_and_rbac_applies(
    cluster_a: Cluster, admin_client: k8s.ApiClient, keycloak: SessionKeycloak
) -> None:
    token = await keycloak.auser_token("mcp", "mcp")
    claims = decode_jwt(token)
    assert claims["iss"] == keycloak.issuer(REALM_MCP)
    assert claims["preferred_username"] == "mcp"
    assert set(claims["groups"]) == MCP_GROUPS  # group mapper without full path: no "/"
    assert keycloak.gateway_client_id in _aud(claims)  # so the gateway may exchange it

    user = await cluster_a.wait_token_accepted(token, within=40)
    assert user.username == "mcp"
    assert MCP_GROUPS | {"system:authenticated"} <= set(user.groups)

    await _bind_pod_reader(admin_client, "mcp")
    async with cluster_a.client_for_token(token) as api:
        core = k8s.CoreV1Api(api)
        deadline = time.monotonic() + RBAC_SETTLE
        while (status := await _status_of(core.list_namespaced_pod(RBAC_NAMESPACE))) == 403:
            assert time.monotonic() < deadline, "RoleBinding for user mcp never took effect"
            await asyncio.sleep(0.3)
        assert status == 200
        # Bound to list pods in one namespace only: other verbs and namespaces are forbidden.
        assert await _status_of(core.delete_namespaced_pod("any", RBAC_NAMESPACE)) == 403
        assert await _status_of(core.list_namespaced_pod("kube-system")) == 403
        assert await _status_of(core.list_namespaced_secret(RBAC_NAMESPACE)) == 403

    viewer = await keycloak.auser_token("viewer", "viewer")
    async with cluster_a.client_for_token(viewer) as api:
        assert await _status_of(k8s.CoreV1Api(api).list_namespaced_pod(RBAC_NAMESPACE)) == 403


async def test_standard_token_exchange_narrows_to_backend_audience_with_tool_roles(
    keycloak: SessionKeycloak, cluster_a: Cluster
) -> None:
    subject = await keycloak.auser_token("mcp", "mcp")
    answer = await keycloak.aexchange(subject, audience=BACKEND_AUDIENCE, scope="openid")
    exchanged = decode_jwt(answer["access_token"])
    assert answer["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert _aud(exchanged) == [BACKEND_AUDIENCE]
    assert exchanged["azp"] == keycloak.gateway_client_id
    assert exchanged["preferred_username"] == "mcp"
    assert set(exchanged["groups"]) == MCP_GROUPS
    assert set(exchanged["resource_access"][BACKEND_AUDIENCE]["roles"]) == ALL_TOOLS | PROMPT_ROLES

    viewer = await keycloak.aexchange(
        await keycloak.auser_token("viewer", "viewer"), audience=BACKEND_AUDIENCE
    )
    viewer_roles = set(
        decode_jwt(viewer["access_token"])["resource_access"][BACKEND_AUDIENCE]["roles"]
    )
    assert viewer_roles == READ_ONLY_TOOLS | PROMPT_ROLES
    assert not viewer_roles & WRITE_TOOLS

    # The exchanged token is what the backend sends on: cluster A accepts it as the same user.
    user = await cluster_a.wait_token_accepted(answer["access_token"], within=40)
    assert user.username == "mcp"

    # Keycloak refuses an audience that is not a client of the realm: a clear OAuth error.
    with pytest.raises(TokenError) as err:
        await keycloak.aexchange(subject, audience="no-such-server/anywhere")
    assert err.value.status in (400, 403)
    assert err.value.error in ("invalid_request", "invalid_client", "access_denied")
    # ... and a confidential client without standard.token.exchange.enabled cannot exchange.
    with pytest.raises(TokenError) as err:
        await keycloak.aexchange(
            subject,
            audience=BACKEND_AUDIENCE,
            client_id="cluster-a",
            client_secret="cluster-a-secret-demo-only",
        )
    assert err.value.status in (400, 401, 403)


async def test_cross_domain_two_hops_give_a_token_cluster_b_accepts(
    keycloak: SessionKeycloak, cluster_b: Cluster
) -> None:
    subject = await keycloak.auser_token("mcp", "mcp")
    # Realm mcp's own token means nothing to cluster B (it trusts only realm cluster-b).
    with pytest.raises(ApiException) as rejected:
        await cluster_b.whoami(subject)
    assert rejected.value.status == 401

    # Hop 1 (realm mcp, standard exchange): exactly one audience, realm cluster-b's issuer URL.
    hop1 = await keycloak.aexchange(subject, audience=keycloak.issuer(REALM_CLUSTER_B))
    assertion = hop1["access_token"]
    hop1_claims = decode_jwt(assertion)
    assert _aud(hop1_claims) == [keycloak.issuer(REALM_CLUSTER_B)]
    assert hop1_claims["iss"] == keycloak.issuer(REALM_MCP)

    # Hop 2 (realm cluster-b, JWT authorization grant): the linked user's token in realm cluster-b.
    hop2 = await keycloak.ajwt_bearer(assertion, realm=REALM_CLUSTER_B)
    claims = decode_jwt(hop2["access_token"])
    assert claims["iss"] == keycloak.issuer(REALM_CLUSTER_B)
    assert _aud(claims) == ["cluster-b"]
    assert claims["preferred_username"] == "mcp"
    assert "refresh_token" not in hop2

    user = await cluster_b.wait_token_accepted(hop2["access_token"], within=40)
    assert user.username == "mcp"
    assert set(user.groups) >= MCP_GROUPS

    # The assertion is single use (jti), as RFC 7523 allows and Keycloak enforces by default.
    with pytest.raises(TokenError) as reused:
        await keycloak.ajwt_bearer(assertion, realm=REALM_CLUSTER_B)
    assert reused.value.error == "invalid_grant"
    # A token with several audiences (the plain user token) is not accepted as an assertion.
    with pytest.raises(TokenError) as wide:
        await keycloak.ajwt_bearer(subject, realm=REALM_CLUSTER_B)
    assert wide.value.error == "invalid_grant"


def test_opa_answers_a_query_for_a_policy_loaded_from_disk(opa_server: OpaServer) -> None:
    policy_ids = _get_json(f"{opa_server.url}/v1/policies")["result"]
    assert any(p["id"].endswith("opa_fixture/testbed_fixture.rego") for p in policy_ids)
    assert opa_server.query("testbed/fixture/allow", {"user": "mcp", "tool": "pods_list"}) is True
    assert (
        opa_server.query("testbed/fixture/allow", {"user": "mcp", "tool": "pods_delete"}) is False
    )
    assert opa_server.query("testbed/fixture/allow", {"user": "eve", "tool": "pods_list"}) is False
    assert opa_server.query("testbed/fixture/no_such_rule", {}) is None  # undefined, not an error


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback test URL
        return dict(json.loads(resp.read()))


async def test_envoy_proxies_a_request_to_a_local_upstream(envoy: EnvoyFactory) -> None:
    seen: list[dict[str, str]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"path": request.path_qs, "method": request.method})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    upstream_up = True
    try:
        proxy = await asyncio.to_thread(envoy, UPSTREAM_PORT=port)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{proxy.url}/mcp?x=1", json={"jsonrpc": "2.0"}) as resp:
                assert resp.status == 200
                assert await resp.json() == {"path": "/mcp?x=1", "method": "POST"}
                assert resp.headers["server"] == "envoy"
            assert "x-request-id" in {k.lower() for k in seen[-1]}  # added by Envoy
            await runner.cleanup()
            upstream_up = False
            async with http.get(f"{proxy.url}/mcp") as resp:  # upstream gone: Envoy answers 503
                assert resp.status == 503
    finally:
        if upstream_up:
            await runner.cleanup()


async def test_keycloak_restarts_on_the_same_port_with_the_same_signing_keys(
    keycloak: SessionKeycloak,
) -> None:
    jwks_url = keycloak.jwks_url(REALM_MCP)
    before = await asyncio.to_thread(_get_json_tls, keycloak, jwks_url)
    token = await keycloak.auser_token("mcp", "mcp")
    await asyncio.to_thread(keycloak.stop)
    assert not keycloak.running
    with pytest.raises(urllib.error.URLError, match="Connection refused"):  # nothing listens
        await asyncio.to_thread(_get_json_tls, keycloak, jwks_url)
    await asyncio.to_thread(keycloak.start)
    after = await asyncio.to_thread(_get_json_tls, keycloak, jwks_url)
    assert {k["kid"] for k in after["keys"]} == {k["kid"] for k in before["keys"]}
    again = decode_jwt(await keycloak.auser_token("mcp", "mcp"))
    assert again["iss"] == decode_jwt(token)["iss"]


def _get_json_tls(keycloak: SessionKeycloak, url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10, context=keycloak.ssl_context()) as resp:  # noqa: S310
        return dict(json.loads(resp.read()))


def test_opa_test_runner_reports_coverage_and_fails_on_a_failing_rego_test(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert opa_test.main([str(FIXTURE_DIR)]) == 0
    out = capfd.readouterr().out
    assert "PASS: 3/3" in out
    assert "policy coverage: 100.0%" in out

    (tmp_path / "p.rego").write_text("package p\n\nanswer := 41\n\nunused if input.x == 1\n")
    (tmp_path / "p_test.rego").write_text(
        "package p_test\n\nimport data.p\n\ntest_answer if p.answer == 42\n"
    )
    assert opa_test.main([str(tmp_path)]) != 0
    assert "FAIL" in capfd.readouterr().out

    (tmp_path / "p.rego").write_text("package p\n\nanswer := 42\n\nunused if input.x == 1\n")
    assert opa_test.main([str(tmp_path), "--threshold", "99"]) == 1  # `unused` is not covered
    captured = capfd.readouterr()
    assert "below the threshold" in captured.err
