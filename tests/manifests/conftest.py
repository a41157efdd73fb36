"""Fixtures shared by the manifest and chart tests: the real CRDs on cluster A's API server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.manifests import crds
from tests.manifests.kube_apply import KubeApplier
from tests.testbed.cluster import Cluster


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
