"""The slim Table decoder renders exactly what a full parse renders.

Against a real API server's Tables (pods, namespaces, events; across namespaces with row
metadata and within one namespace without), then against generated Table-like bodies, including
ones msgspec refuses, where the decoder must step aside for the full parse.
"""

from __future__ import annotations

import json
import ssl
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_backend.kube.client import TABLE_ACCEPT
from mcp_backend.kube.tables import decode_table
from mcp_backend.rendering.output import continuation_note, render_table
from tests.testbed.cluster import Cluster


def _rendered(body: dict[str, Any], with_namespace: bool) -> tuple[str, list[Any], str]:
    table = render_table(body, with_namespace=with_namespace)
    return table.text, table.rows, continuation_note(body, len(table.rows))


def _assert_same_rendering(raw: bytes) -> None:
    full = json.loads(raw)
    slim = decode_table(raw)
    assert slim is not None
    for with_namespace in (True, False):
        assert _rendered(slim, with_namespace) == _rendered(full, with_namespace)


async def _fetch(cluster: Cluster, path: str, params: dict[str, str]) -> bytes:
    ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
    ctx.load_cert_chain(str(cluster.admin_cert.cert), str(cluster.admin_cert.key))
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{cluster.server}{path}", params=params, headers={"Accept": TABLE_ACCEPT}, ssl=ctx
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.read()


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/pods", {}),
        ("/api/v1/namespaces", {}),
        ("/api/v1/events", {}),
        ("/api/v1/namespaces/kube-system/configmaps", {"includeObject": "None"}),
        ("/api/v1/serviceaccounts", {"limit": "2"}),  # a continue token and remainingItemCount
    ],
)
async def test_real_tables_render_the_same(
    cluster_a: Cluster, path: str, params: dict[str, str]
) -> None:
    raw = await _fetch(cluster_a, path, params)
    full = json.loads(raw)
    assert full["kind"] == "Table"
    _assert_same_rendering(raw)
    if params.get("limit"):
        assert (decode_table(raw) or {})["metadata"]["continue"] == full["metadata"]["continue"]


def test_slim_rows_keep_only_cells_and_namespace() -> None:
    raw = json.dumps(
        {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": "7", "remainingItemCount": 3, "continue": "c1"},
            "columnDefinitions": [{"name": "Name", "type": "string", "priority": 0}],
            "rows": [
                {
                    "cells": ["a"],
                    "object": {
                        "kind": "PartialObjectMetadata",
                        "metadata": {
                            "name": "a",
                            "namespace": "ns1",
                            "annotations": {"big": "x" * 1000},
                            "managedFields": [{"manager": "m", "fieldsV1": {"f:spec": {}}}],
                        },
                    },
                },
                {"cells": ["b"]},
            ],
        }
    ).encode()
    assert decode_table(raw) == {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"continue": "c1", "remainingItemCount": 3},
        "columnDefinitions": [{"name": "Name", "type": "string", "priority": 0}],
        "rows": [{"cells": ["a"], "object": {"metadata": {"namespace": "ns1"}}}, {"cells": ["b"]}],
    }


@pytest.mark.parametrize(
    "raw",
    [
        b'{"kind": "PodList", "items": []}',  # an aggregated API without Table support
        b'{"kind": "Table", "rows": [{"cells": [NaN]}]}',  # json.loads reads NaN, msgspec not
        b'{"kind": "Table", "rows": [{"cells": ["\\ud800"]}]}',  # a lone surrogate
        b'\xef\xbb\xbf{"kind": "Table", "rows": []}',  # a byte order mark
        b'{"kind": "Table", "rows": [{"cells": [], "object": {"metadata": {"namespace": 5}}}]}',
        b'{"kind": "Table", "rows": {"not": "a list"}}',
        b"not json",
    ],
)
def test_declines_what_it_cannot_read_exactly(raw: bytes) -> None:
    assert decode_table(raw) is None


_cell = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.lists(st.text(max_size=5), max_size=3),
)
_column = st.fixed_dictionaries(
    {"name": st.text(min_size=1, max_size=8), "priority": st.integers(0, 1)},
    optional={"type": st.sampled_from(["string", "integer", "date"]), "format": st.text()},
)
_row = st.fixed_dictionaries(
    {"cells": st.lists(_cell, max_size=4)},
    optional={
        "object": st.fixed_dictionaries(
            {},
            optional={
                "metadata": st.fixed_dictionaries(
                    {},
                    optional={
                        "namespace": st.text(max_size=8),
                        "labels": st.dictionaries(st.text(max_size=4), st.text(max_size=4)),
                    },
                ),
                "kind": st.just("PartialObjectMetadata"),
            },
        ),
        "conditions": st.just([{"type": "Completed", "status": "True"}]),
    },
)
_table = st.fixed_dictionaries(
    {"kind": st.just("Table"), "columnDefinitions": st.lists(_column, max_size=4)},
    optional={
        "apiVersion": st.just("meta.k8s.io/v1"),
        "rows": st.lists(_row, max_size=5),
        "metadata": st.fixed_dictionaries(
            {},
            optional={
                "continue": st.text(max_size=10),
                "remainingItemCount": st.integers(0, 10**6),
                "resourceVersion": st.text(max_size=5),
            },
        ),
    },
)


@settings(max_examples=300, deadline=None)
@given(_table)
def test_generated_tables_render_the_same(table: dict[str, Any]) -> None:
    _assert_same_rendering(json.dumps(table, ensure_ascii=False).encode())
