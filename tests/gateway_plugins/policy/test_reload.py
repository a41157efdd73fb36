"""Policy changes at run time, with real Keycloak tokens, a real OPA and a real bundle server.

The watched folder is laid out and swapped the way kubelet updates a mounted ConfigMap
(:mod:`tests.testbed.configmap_volume`). Bundles are built by the real ``opa build`` and served
by a real nginx (ETag / ``If-None-Match``), whose access log shows the 304s of the polling.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway_plugins.policy.embedded_engine import EmbeddedEngine
from gateway_plugins.policy.live_engine import LiveEngine
from gateway_plugins.policy.service import reloader_of, service_of
from gateway_plugins.policy.wristband import LEGACY_HEADER, verify
from tests.gateway_plugins.policy.reloading import (
    DENY_FILE,
    FAST,
    allowed,
    denies,
    deny_list_with,
    deny_tool,
    metric_sum,
    policy_revision,
    post_decide,
    reload_settings,
    until,
)
from tests.gateway_plugins.policy.running import (
    POLICIES,
    SERVER,
    RunningPolicy,
    policy_settings,
    running_policy,
)
from tests.testbed.configmap_volume import ConfigMapVolume, policy_files
from tests.testbed.opa_server import OpaServer

pytestmark = pytest.mark.timeout(300)


async def _signed_tools(http: aiohttp.ClientSession, svc: RunningPolicy, token: str) -> set[str]:
    headers = {
        "x-mcp-method": "tools/list",
        "x-mcp-servername": "mcpBroker",
        "Authorization": f"Bearer {token}",
    }
    async with http.post(f"{svc.url}/check/mcp", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        claims = verify(resp.headers[LEGACY_HEADER], svc.public_key_pem)
    return set(json.loads(claims["allowed-tools"])[SERVER])


def _volume(tmp_path: Path) -> tuple[ConfigMapVolume, dict[str, str]]:
    volume = ConfigMapVolume(tmp_path / "policy-volume")
    files = policy_files(POLICIES)
    volume.write(files)
    return volume, files


# -- files (ConfigMap volume) -------------------------------------------------------------------
async def test_deny_list_change_in_a_configmap_volume_revokes_and_drops_cached_answers(
    keycloak: Any, http: aiohttp.ClientSession, mcp_token: str, tmp_path: Path
) -> None:
    volume, files = _volume(tmp_path)
    settings = reload_settings(keycloak, tmp_path, policies_dir=volume.root, data_dirs=None)
    async with running_policy(settings) as svc:
        service = service_of(svc.app)
        live = service.engine
        assert isinstance(live, LiveEngine)
        first = live.current
        assert isinstance(first, EmbeddedEngine)
        for _ in range(2):  # the second answer comes from the decision cache
            status, answer = await post_decide(http, svc, mcp_token, "pods_list")
            assert (status, answer["allow"]) == (200, True), answer
        assert first.cache_hits >= 1
        assert "pods_list" in await _signed_tools(http, svc, mcp_token)  # cached for 30 s
        revision_before = await policy_revision(http, svc)

        volume.write(
            {**files, DENY_FILE: deny_list_with(deny_tool("pods_list", "revoked at run time"))}
        )

        async def revoked() -> bool:
            _, answer = await post_decide(http, svc, mcp_token, "pods_list")
            return answer["allow"] is False

        await until(revoked, 10, "the deny-list entry to take effect")
        _, answer = await post_decide(http, svc, mcp_token, "pods_list")
        assert answer["reason"].endswith("revoked at run time"), answer
        # the same input was cached as "allow" by the old policy; the new engine has its own cache
        assert live.current is not first
        # the signed list computed before the change is not reused
        assert "pods_list" not in await _signed_tools(http, svc, mcp_token)
        assert (await post_decide(http, svc, mcp_token, "pods_get"))[1]["allow"] is True
        assert await metric_sum(http, svc, 'policy_reloads_total{result="ok",source="files"}') == 1
        assert await metric_sum(http, svc, "policy_reload_failing") == 0
        assert await policy_revision(http, svc) != revision_before

        volume.write(files)  # and back: the grant returns without a restart either
        await until(lambda: allowed(http, svc, mcp_token, "pods_list"), 10, "the entry's removal")


async def test_broken_policy_is_refused_and_the_last_good_one_stays(
    keycloak: Any,
    http: aiohttp.ClientSession,
    mcp_token: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    volume, files = _volume(tmp_path)
    settings = reload_settings(keycloak, tmp_path, policies_dir=volume.root, data_dirs=None)
    denied = {**files, DENY_FILE: deny_list_with(deny_tool("pods_log", "logs are off"))}
    volume.write(denied)
    caplog.set_level(logging.ERROR, logger="gateway_plugins.policy.reloader")
    async with running_policy(settings) as svc:
        assert not await allowed(http, svc, mcp_token, "pods_log")
        good = await policy_revision(http, svc)
        broken_versions = {
            "rego syntax": {**denied, "mcp/authz.rego": files["mcp/authz.rego"] + "\nallow if {"},
            "data json": {**denied, "data/roles.json": '{"role_prefixes": ['},
            "no decision rule": {
                **denied,
                "mcp/authz.rego": files["mcp/authz.rego"].replace(
                    "\ndecision := ", "\nrenamed_decision := "
                ),
            },
            "unsafe setting": {
                **denied,
                DENY_FILE: deny_list_with(deny_tool("pods_get", 'say "hi"')),
            },
        }
        for count, (what, version) in enumerate(broken_versions.items(), start=1):
            volume.write(version)

            async def refused(expected: int = count) -> bool:
                total = 'policy_reloads_total{result="refused",source="files"}'
                return await metric_sum(http, svc, total) == expected

            await until(refused, 10, f"the {what} version to be refused")
            assert await metric_sum(http, svc, "policy_reload_failing") == 1, what
            # the last good policy still decides, with its deny-list entry
            assert not await allowed(http, svc, mcp_token, "pods_log"), what
            assert await allowed(http, svc, mcp_token, "pods_get"), what
            assert await policy_revision(http, svc) == good, what
        messages = [r.getMessage() for r in caplog.records]
        refusals = [m for m in messages if "refused, the last good policy stays in force" in m]
        assert len(refusals) == len(broken_versions), messages
        # each names the file as mounted (not kubelet's hidden version folder) and where
        assert any("policy-volume/data/roles.json is not valid JSON" in m for m in refusals)
        assert any("mcp/authz.rego:" in m and "unclosed" in m for m in refusals), refusals
        assert not any("..20" in m for m in refusals), refusals
        assert any("quote, backslash" in m for m in refusals), refusals
        # fixed: loads again, the alarm clears
        volume.write({**files, DENY_FILE: deny_list_with(deny_tool("pods_top", "no top"))})
        await until(lambda: denies(http, svc, mcp_token, "pods_top"), 10, "the fixed version")
        assert await allowed(http, svc, mcp_token, "pods_log")
        assert await metric_sum(http, svc, "policy_reload_failing") == 0


async def test_module_and_data_changed_together_are_never_half_loaded(
    keycloak: Any, http: aiohttp.ClientSession, mcp_token: str, tmp_path: Path
) -> None:
    """Version A reads the deny list from ``deny_list``, version B from ``deny_list_v2``; both
    deny ``pods_delete`` with their own reason. Half of one and half of the other (new module,
    old data or the reverse) finds no deny list and allows: under load, across many swaps of the
    volume, no answer may be an allow or an error."""
    volume, files = _volume(tmp_path)
    rego = files["mcp/authz.rego"]
    assert 'object.get(_configured, "deny_list", [])' in rego
    version_a = {**files, DENY_FILE: deny_list_with(deny_tool("pods_delete", "version A"))}
    version_b = {
        **files,
        "mcp/authz.rego": rego.replace(
            'object.get(_configured, "deny_list", [])',
            'object.get(_configured, "deny_list_v2", [])',
        ),
        DENY_FILE: json.dumps(
            {
                "deny_list_v2": json.loads(deny_list_with(deny_tool("pods_delete", "version B")))[
                    "deny_list"
                ]
            }
        ),
    }
    volume.write(version_a)
    settings = reload_settings(
        keycloak, tmp_path, policies_dir=volume.root, data_dirs=None, decision_cache_size=0
    )
    answers: list[tuple[int, bool, str]] = []
    stop = asyncio.Event()

    async def load(svc: RunningPolicy) -> None:
        while not stop.is_set():
            status, answer = await post_decide(http, svc, mcp_token, "pods_delete")
            answers.append((status, answer["allow"], answer["reason"]))

    async with running_policy(settings) as svc:
        workers = [asyncio.create_task(load(svc)) for _ in range(4)]
        reloader = reloader_of(svc.app)
        assert reloader is not None
        for i in range(8):
            volume.write(version_b if i % 2 == 0 else version_a)
            target = i + 1
            await until(
                lambda target=target: _reloads_at_least(reloader, target), 10, f"swap {target}"
            )
        stop.set()
        await asyncio.gather(*workers)
    reasons = {reason.rsplit(": ", 1)[-1] for _, _, reason in answers}
    assert answers
    assert {status for status, _, _ in answers} == {200}
    assert not [a for a in answers if a[1]], "a request was decided by a half-loaded policy"
    assert reasons == {"version A", "version B"}, reasons


async def _reloads_at_least(reloader: Any, count: int) -> bool:
    return bool(reloader.reloads >= count)


# -- OPA server engine -------------------------------------------------------------------------
async def test_opa_engine_reload_pushes_the_new_policy_and_refuses_a_broken_one(
    keycloak: Any,
    http: aiohttp.ClientSession,
    mcp_token: str,
    tmp_path: Path,
    policy_opa: OpaServer,
) -> None:
    volume, files = _volume(tmp_path)
    settings = policy_settings(keycloak, tmp_path, engine="opa", opa_url=policy_opa.url)
    settings = settings.model_copy(
        update={"reload": FAST, "policies_dir": volume.root, "data_dirs": None}
    )
    async with running_policy(settings) as svc:
        assert await allowed(http, svc, mcp_token, "resources_scale")
        volume.write(
            {**files, DENY_FILE: deny_list_with(deny_tool("resources_scale", "no scaling"))}
        )
        await until(lambda: denies(http, svc, mcp_token, "resources_scale"), 10, "the push")
        # OPA itself holds the new data: the policy service pushed it
        config = policy_opa.query("mcp/config")
        assert any(e["reason"] == "no scaling" for e in config["deny_list"])
        volume.write({**files, "mcp/authz.rego": files["mcp/authz.rego"] + "\nallow if {"})

        async def refused() -> bool:
            total = 'policy_reloads_total{result="refused",source="files"}'
            return await metric_sum(http, svc, total) == 1

        await until(refused, 10, "OPA to refuse the broken module")
        assert await denies(http, svc, mcp_token, "resources_scale")  # the last good policy
        assert await allowed(http, svc, mcp_token, "pods_list")
