"""Fixtures shared by the manifest and chart tests: every kustomization rendered, and the real
CRDs on cluster A's API server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.manifests import crds, render
from tests.manifests.kube_apply import KubeApplier
from tests.manifests.rendered_objects import Obj
from tests.testbed.cluster import Cluster


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    """Every kustomization a user can build (``render.TARGETS``), by target."""
    return {target: render.render(target) for target in render.TARGETS}


@pytest.fixture(scope="session")
def crd_objects() -> list[dict[str, Any]]:
    return crds.load_crds()


@pytest.fixture(scope="session")
async def applier(
    cluster_a: Cluster, crd_objects: list[dict[str, Any]]
) -> AsyncIterator[KubeApplier]:
    """Cluster A's API server with the real CRDs installed; test namespaces removed afterwards."""
    async with KubeApplier(cluster_a) as api:
        await api.install_crds(crd_objects)
        yield api
        for name in sorted(api.created_namespaces):
            await api.delete_namespace(name)
