"""The install's own render is checked before helm creates anything (``post_render``): a chart
rendering differently the second time (``rand``, ``now``) installs nothing that went unchecked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mcp_backend.errors import AccessDenied
from mcp_backend.helm.post_render import refusal
from tests.mcp_backend.conftest import (
    NS,
    Tokens,
    mcp_client,
    text_of,
)
from tests.mcp_backend.helm.releases import (
    CRB,
    SA,
    exists,
    install_of,
    release_records,
    write_chart,
)
from tests.testbed.cluster import Cluster


async def test_the_installs_own_render_is_checked_before_helm_creates_anything(
    backend: Any,
    tokens: Tokens,
    charts_dir: Path,
    tmp_path: Path,
    cluster_a: Cluster,
    workloads: Any,
) -> None:
    """helm renders the chart again for the install; ``post_render`` (helm's
    post-renderer) refuses any kind the dry run did not approve. Played deterministically: only
    ConfigMap counts as approved here, as if the dry run had rendered the chart without the
    Secret (a ``rand``/``now`` template)."""
    release, added = "hrender", "Secret"
    secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: NAME-s}\nstringData: {a: b}\n"
    chart = write_chart(
        charts_dir / tmp_path.name,
        {"templates/secret.yaml": secret.replace("NAME", "{{ .Release.Name }}")},
    )
    async with install_of(backend, tokens.admin, chart, release) as install:
        with pytest.raises(AccessDenied) as refused:
            await install({("", "ConfigMap")})
        assert not await exists(cluster_a, "ConfigMap", f"{release}-cm")
        assert await release_records(cluster_a, release) == []
        # The same install with the kind approved goes through: the renderer hands helm its
        # manifests back unchanged.
        installed = await install({("", "ConfigMap"), ("", added)})
    assert f"{added} (core)" in refused.value.message
    assert "rendered differently for the install" in refused.value.message
    assert installed["name"] == release
    assert await release_records(cluster_a, release) == [f"sh.helm.release.v1.{release}.v1"]
    assert await exists(cluster_a, "ConfigMap", f"{release}-cm")
    assert await exists(cluster_a, added, f"{release}-s")
    async with mcp_client(backend.url, tokens.admin) as client:
        removed = await client.call_tool("helm_uninstall", {"name": release, "namespace": NS})
    assert not removed.is_error, text_of(removed)


def test_post_render_refusal_names_unapproved_kinds_and_fails_closed() -> None:
    approved = {("", "ConfigMap")}
    assert refusal(approved, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n") is None
    reason = refusal(approved, CRB.replace("NAME", "x") + "---\n" + SA.replace("NAME", "x"))
    assert reason is not None
    assert "ServiceAccount (core), ClusterRoleBinding (rbac.authorization.k8s.io)," in reason
    unparsable = refusal(approved, "kind: [unclosed\n")
    assert unparsable is not None
    assert "cannot check the kinds the chart as rendered for the install creates" in unparsable
