"""Policy changes from a bundle service, with real Keycloak tokens, the real ``opa build`` and a
real nginx serving the bundles (ETag / ``If-None-Match``), whose access log shows the 304s of the
polling.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway_plugins.policy.config import BundleSettings
from tests.gateway_plugins.policy.reloading import (
    DENY_FILE,
    denies,
    deny_tool,
    metric_sum,
    policy_revision,
    post_decide,
    reload_settings,
    until,
)
from tests.gateway_plugins.policy.running import (
    POLICIES,
    RunningPolicy,
    running_policy,
)
from tests.testbed import build
from tests.testbed.fixtures_redis import StaticServerFactory

pytestmark = pytest.mark.timeout(300)


def _opa_build(layout: Path, out: Path, revision: str) -> None:
    """``opa build`` (the real OPA CLI) of a folder holding mcp/authz.rego and
    mcp/config/data.json; written next to ``out`` then renamed (nginx never serves half)."""
    tmp = out.with_name(out.name + ".tmp")
    subprocess.run(
        [str(build.binary("opa")), "build", "-b", ".", "-o", str(tmp), "--revision", revision],
        cwd=layout,
        check=True,
        capture_output=True,
        timeout=60,
    )
    # nginx's ETag is mtime + size: give every new bundle a new mtime, as any publisher does
    stamp = time.time() + 10 * int(revision.rsplit("-", 1)[-1])
    os.utime(tmp, (stamp, stamp))
    os.replace(tmp, out)


def _bundle_layout(root: Path, deny: list[dict[str, Any]]) -> Path:
    layout = root / "layout"
    (layout / "mcp" / "config").mkdir(parents=True, exist_ok=True)
    (layout / "mcp" / "authz.rego").write_text((POLICIES / "mcp" / "authz.rego").read_text())
    config: dict[str, Any] = {}
    for path in sorted((POLICIES / "data").glob("*.json")):
        config.update(json.loads(path.read_text()))
    config["deny_list"] = deny
    (layout / "mcp" / "config" / "data.json").write_text(json.dumps(config))
    return layout


async def test_bundle_service_is_polled_with_etags_and_changes_apply(
    keycloak: Any,
    http: aiohttp.ClientSession,
    mcp_token: str,
    tmp_path: Path,
    static_server: StaticServerFactory,
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    bundle = site / "mcp.tar.gz"
    base_deny = json.loads((POLICIES / DENY_FILE).read_text())["deny_list"]
    nginx = static_server(site)
    path = "/mcp.tar.gz"
    settings = reload_settings(
        keycloak,
        tmp_path,
        policies_dir=tmp_path / "no-such-folder",  # the bundle is the only source
        bundle=BundleSettings(url=nginx.url + path, min_delay_s=0.1, max_delay_s=0.2),
    )
    async with running_policy(settings) as svc:
        # no bundle yet: fail closed and not ready
        status, answer = await post_decide(http, svc, mcp_token, "pods_list")
        assert (status, answer["allow"]) == (503, False)
        assert "waiting for the first bundle" in answer["reason"]
        async with http.get(f"{svc.url}/readyz") as resp:
            assert resp.status == 503

        _opa_build(_bundle_layout(tmp_path / "v1", base_deny), bundle, "rev-1")
        await until(lambda: _ok(http, svc, mcp_token, "pods_list"), 10, "the first bundle")
        await until(lambda: _polled_unchanged(nginx, path, 3), 10, "three 304 answers")
        statuses = nginx.statuses(path)
        assert statuses.count(200) == 1, statuses  # one download, then If-None-Match → 304
        assert await policy_revision(http, svc) == "rev-1"

        deny = [*base_deny, deny_tool("pods_list", "bundle rev-2 says no")]
        _opa_build(_bundle_layout(tmp_path / "v2", deny), bundle, "rev-2")
        await until(lambda: denies(http, svc, mcp_token, "pods_list"), 10, "bundle rev-2")
        assert await policy_revision(http, svc) == "rev-2"
        assert nginx.statuses(path).count(200) == 2

        bundle.write_bytes(b"this is not a bundle")  # broken: refused, rev-2 stays
        stamp = time.time() + 100
        os.utime(bundle, (stamp, stamp))

        async def refused() -> bool:
            total = 'policy_reloads_total{result="refused",source="bundle"}'
            return await metric_sum(http, svc, total) == 1

        await until(refused, 10, "the broken bundle to be refused")
        assert await denies(http, svc, mcp_token, "pods_list")
        downloads = nginx.statuses(path).count(200)
        await until(lambda: _polled_unchanged(nginx, path, 3, after=downloads), 10, "304s")
        assert nginx.statuses(path).count(200) == downloads  # not downloaded again
        assert await policy_revision(http, svc) == "rev-2"


async def _ok(http: aiohttp.ClientSession, svc: RunningPolicy, token: str, tool: str) -> bool:
    status, answer = await post_decide(http, svc, token, tool)
    return status == 200 and answer["allow"] is True


async def _polled_unchanged(nginx: Any, path: str, count: int, after: int = 0) -> bool:
    statuses = nginx.statuses(path)
    downloads = [i for i, s in enumerate(statuses) if s == 200]
    start = downloads[after - 1] + 1 if after and len(downloads) >= after else 0
    return statuses[start:].count(304) >= count
