"""Hostile JSON-RPC against the real MCP backend (in front of the real cluster A).

Raw HTTP where no MCP client would produce the input (malformed JSON, wrong types, huge bodies,
batches, deep nesting); the real MCP client for hostile tool arguments (path traversal and
injection in names and selectors, a YAML bomb in ``resources_create_or_update``). Every answer
must be a clear 4xx or a JSON-RPC / tool error: no 500, no stack trace, no hang, no data that the
arguments were not meant to reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from mcp_backend.config import Settings
from tests.mcp_backend.conftest import (
    RunningBackend,
    cluster_entry,
    mcp_client,
    start_backend,
    stop_backend,
    text_of,
)
from tests.testbed import leak_scan
from tests.testbed.cluster import Cluster

pytestmark = pytest.mark.timeout(600)

NS = "rel-hostile"
SECRET_VALUE = "rel-hostile-secret-value-7f3a9c"
ACCEPT = "application/json, text/event-stream"


@pytest.fixture(scope="module")
async def admin_token(cluster_a: Cluster, service_account_token: Any) -> str:
    token: str = await service_account_token(
        cluster_a, name="rel-hostile-admin", cluster_role="cluster-admin", cluster_wide=True
    )
    return token


@pytest.fixture(scope="module")
async def seeded(cluster_a: Cluster) -> None:
    """Namespace NS with a Secret (its value must never come out) and a ConfigMap."""
    leak_scan.register_secret(SECRET_VALUE, "Secret rel-hostile/creds")
    async with cluster_a.admin_client() as api:
        core = k8s.CoreV1Api(api)
        for call in (
            core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NS))),
            core.create_namespaced_secret(
                NS,
                k8s.V1Secret(
                    metadata=k8s.V1ObjectMeta(name="creds"),
                    string_data={"password": SECRET_VALUE},
                ),
            ),
            core.create_namespaced_config_map(
                NS, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="plain"), data={"k": "v"})
            ),
        ):
            with contextlib.suppress(ApiException):
                await call


@pytest.fixture(scope="module")
async def backend(cluster_a: Cluster) -> AsyncIterator[RunningBackend]:
    running = await start_backend(
        Settings.model_validate(
            {"clusters": [cluster_entry(cluster_a, default=True)], "request_timeout_s": 10}
        )
    )
    yield running
    await stop_backend(running)


async def _post(
    backend: RunningBackend,
    body: bytes,
    token: str | None,
    *,
    content_type: str = "application/json",
) -> tuple[int, str]:
    headers = {"Accept": ACCEPT, "Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
        http.post(backend.url, data=body, headers=headers) as resp,
    ):
        text = await resp.text()
        leak_scan.record_output("backend raw answer", text)
        return resp.status, text


def _rpc(method: str, params: Any = None, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method, **extra}
    if params is not None:
        message["params"] = params
    return message


def _assert_clean(status: int, text: str, what: str) -> None:
    assert status < 500, (what, status, text[:300])
    assert "Traceback" not in text, what
    assert 'File "' not in text, what


async def _alive(backend: RunningBackend, token: str) -> None:
    status, text = await _post(backend, json.dumps(_rpc("ping")).encode(), token)
    assert status == 200, text


PROTOCOL_ATTACKS: dict[str, tuple[bytes, set[int]]] = {
    "malformed JSON": (b"{not json", {400}),
    "empty body": (b"", {400}),
    "JSON but not an object": (b'"tools/list"', {400}),
    "wrong jsonrpc version": (json.dumps(_rpc("tools/list") | {"jsonrpc": "1.0"}).encode(), {400}),
    "method is a number": (json.dumps(_rpc("tools/list") | {"method": 7}).encode(), {400}),
    # The SDK answers 202 and drops a message whose id is not a string/number (not a request).
    "id is an object": (json.dumps(_rpc("tools/list") | {"id": {"x": 1}}).encode(), {202, 400}),
    "params is a string": (json.dumps(_rpc("tools/call", "pods_list")).encode(), {200, 400}),
    "tool name is a number": (json.dumps(_rpc("tools/call", {"name": 5})).encode(), {200, 400}),
    "arguments is a list": (
        json.dumps(_rpc("tools/call", {"name": "pods_list", "arguments": [1, 2]})).encode(),
        {200, 400},
    ),
    "deeply nested JSON (100k levels)": (b"[" * 100_000 + b"]" * 100_000, {400, 413}),
    "deeply nested arguments": (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"pods_list",'
        b'"arguments":{"labelSelector":' + b"[" * 50_000 + b"]" * 50_000 + b"}}}",
        {200, 400, 413},
    ),
    "batch of 1000 requests": (json.dumps([_rpc("tools/list")] * 1000).encode(), {400}),
    "empty batch": (b"[]", {400}),
    "unknown method": (json.dumps(_rpc("admin/shutdown", {})).encode(), {200}),
    "notification for an unknown method": (
        json.dumps({"jsonrpc": "2.0", "method": "evil/notify"}).encode(),
        {202, 400},
    ),
    "NaN and huge numbers": (
        b'{"jsonrpc":"2.0","id":1e400,"method":"tools/list","params":{"x":NaN}}',
        {200, 202, 400},
    ),
    "invalid UTF-8": (b'{"jsonrpc":"2.0","id":1,"method":"tools/\xff\xfe"}', {400}),
}


@pytest.mark.parametrize("attack", sorted(PROTOCOL_ATTACKS))
async def test_protocol_attacks_get_clear_errors(
    backend: RunningBackend, admin_token: str, attack: str
) -> None:
    body, expected = PROTOCOL_ATTACKS[attack]
    started = time.monotonic()
    status, text = await _post(backend, body, admin_token)
    assert time.monotonic() - started < 30, attack
    _assert_clean(status, text, attack)
    assert status in expected, (attack, status, text[:300])
    if status in (200, 400) and text:
        answer = json.loads(text)
        if status == 400 or attack == "unknown method":
            assert answer.get("error", {}).get("message"), (attack, text[:300])
        if attack == "unknown method":
            assert answer["error"]["code"] == -32601, text
    await _alive(backend, admin_token)


async def test_wrong_content_type_is_refused(backend: RunningBackend, admin_token: str) -> None:
    status, text = await _post(
        backend, json.dumps(_rpc("tools/list")).encode(), admin_token, content_type="text/plain"
    )
    assert status in (400, 415), (status, text[:200])
    assert "Content-Type" in text


async def test_huge_body_is_refused_with_413(backend: RunningBackend, admin_token: str) -> None:
    """8 MiB of JSON-RPC: a size limit must refuse it (413), not buffer and parse it."""
    padding = "x" * (8 * 1024 * 1024)
    body = json.dumps(
        _rpc("tools/call", {"name": "pods_list", "arguments": {"labelSelector": padding}})
    ).encode()
    status, text = await _post(backend, body, admin_token)
    _assert_clean(status, text, "8 MiB body")
    assert status == 413, (status, text[:300])
    await _alive(backend, admin_token)


# -- hostile tool arguments, through the real MCP client --------------------------------------
TRAVERSALS: list[tuple[str, dict[str, Any]]] = [
    ("pods_get", {"name": "../secrets/creds", "namespace": NS}),
    ("pods_get", {"name": "../serviceaccounts/default", "namespace": NS}),
    ("pods_get", {"name": "x", "namespace": "../../api/v1/namespaces/rel-hostile/secrets"}),
    ("pods_get", {"name": "..%2Fsecrets%2Fcreds", "namespace": NS}),
    ("pods_log", {"name": "../../secrets/creds", "namespace": NS}),
    ("resources_get", {"apiVersion": "v1", "kind": "ConfigMap", "name": "../secrets/creds",
                       "namespace": NS}),
    ("resources_get", {"apiVersion": "v1", "kind": "ConfigMap",
                       "name": "../serviceaccounts/default", "namespace": NS}),
    ("resources_get", {"apiVersion": "v1/../../apis/rbac.authorization.k8s.io/v1",
                       "kind": "ClusterRole", "name": "cluster-admin"}),
    ("resources_delete", {"apiVersion": "v1", "kind": "ConfigMap", "name": "../secrets/creds",
                          "namespace": NS}),
    ("pods_list_in_namespace", {"namespace": f"{NS}/secrets?x="}),
    ("pods_list_in_namespace", {"namespace": NS, "labelSelector": "a=b&fieldSelector=x"}),
    ("pods_list_in_namespace", {"namespace": NS, "fieldSelector": "metadata.name=x\r\nX-Evil: 1"}),
    ("resources_list", {"apiVersion": "v1", "kind": "Secret/../ServiceAccount",
                        "namespace": NS}),
]  # fmt: skip


# A selector with '&' or CR/LF is one (odd) selector value, URL-encoded: the API server may answer
# an empty list, which reaches nothing else.
HARMLESS_SUCCESS = [
    ("pods_list_in_namespace", {"namespace": NS, "labelSelector": "a=b&fieldSelector=x"}),
    ("pods_list_in_namespace", {"namespace": NS, "fieldSelector": "metadata.name=x\r\nX-Evil: 1"}),
]


async def test_path_traversal_and_injection_in_arguments_reach_nothing_else(
    backend: RunningBackend, admin_token: str, seeded: None
) -> None:
    """A name, namespace or apiVersion must never let a call reach another resource: no Secret
    value, no ServiceAccount or RBAC object (denied kinds), nothing deleted."""
    findings: dict[str, str] = {}
    async with mcp_client(backend.url, admin_token) as client:
        for tool, args in TRAVERSALS:
            started = time.monotonic()
            result = await client.call_tool(tool, args)
            assert time.monotonic() - started < 30
            text = text_of(result)
            structured = json.dumps(result.structured_content or {})
            leak_scan.record_output(f"{tool} {args}", text + structured)
            assert "Traceback" not in text
            assert "internal error" not in text, (tool, args, text[:300])
            leaked = [
                marker
                for marker in (
                    SECRET_VALUE,
                    "kind: ServiceAccount",
                    '"kind": "ServiceAccount"',
                    "kind: ClusterRole",
                    "secrets:",
                )
                if marker in text or marker in structured
            ]
            if leaked:
                findings[f"{tool} {json.dumps(args)}"] = f"leaked {leaked}: {text[:160]!r}"
            elif not result.is_error and (tool, args) not in HARMLESS_SUCCESS:
                findings[f"{tool} {json.dumps(args)}"] = f"succeeded: {text[:160]!r}"
    assert not findings, "traversal/injection reached something:\n" + "\n".join(
        f"{k} -> {v}" for k, v in findings.items()
    )
    # The Secret is still there: a traversal did not delete it.
    async with mcp_client(backend.url, admin_token) as client:
        still = await client.call_tool(
            "resources_get",
            {"apiVersion": "v1", "kind": "Secret", "name": "creds", "namespace": NS},
        )
    leak_scan.record_output("resources_get Secret creds", text_of(still))
    assert not still.is_error, text_of(still)
    assert SECRET_VALUE not in text_of(still)  # redacted


def _billion_laughs(levels: int = 9) -> str:
    lines = [
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata: {name: lol-bomb, namespace: " + NS + "}",
        'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
    ]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    lines.append(f"data: {{bomb: *a{levels - 1}}}")
    return "\n".join(lines) + "\n"


async def test_yaml_bomb_in_create_or_update_is_refused_quickly(
    backend: RunningBackend, admin_token: str, seeded: None, cluster_a: Cluster
) -> None:
    bombs = {
        "billion laughs (10^9 strings via aliases)": _billion_laughs(),
        "alias chain in data values": _billion_laughs(6),
        "python object tag": "!!python/object/apply:os.system ['true']\n",
        "deeply nested flow sequence": "a: " + "[" * 20_000 + "]" * 20_000 + "\n",
    }
    rss_before = _rss_kib()
    async with mcp_client(backend.url, admin_token) as client:
        for what, text in bombs.items():
            started = time.monotonic()
            result = await asyncio.wait_for(
                client.call_tool("resources_create_or_update", {"resource": text}), 60
            )
            elapsed = time.monotonic() - started
            out = text_of(result)
            leak_scan.record_output(f"resources_create_or_update {what}", out)
            assert result.is_error, (what, out[:300])
            assert "internal error" not in out, (what, out[:300])
            assert "Traceback" not in out
            assert elapsed < 30, (what, elapsed)
            assert len(out) <= backend.backend.settings.output_max_chars + 500, what
        await _alive(backend, admin_token)
    # Nothing from the bombs was created.
    async with cluster_a.admin_client() as api:
        names = [
            c.metadata.name for c in (await k8s.CoreV1Api(api).list_namespaced_config_map(NS)).items
        ]
    assert "lol-bomb" not in names
    # The bomb was not expanded in memory (the backend runs in this process).
    assert _rss_kib() - rss_before < 512 * 1024


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")
