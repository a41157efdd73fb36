"""The Grafana dashboard (``manifests/observability``) asks only for metrics the services export.

The exported names are read from the real services' ``/metrics`` (the local gateway's token
exchange, policy and backend, after one tool call through the gateway), not from a list kept by
hand: a renamed metric or label makes a panel query fail here instead of showing "No data".
"""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.manifests import render
from tests.testbed import paths
from tests.testbed.mcp_gateway.stack import LocalGateway

DASHBOARD = paths.REPO_ROOT / "manifests" / "observability" / "dashboard.json"
SERVICES = ("backend", "token-exchange", "policy")

# PromQL words that are not metric names (functions, aggregations, operators, keywords)
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile",
    "vector", "or", "and", "unless", "by", "without", "on", "ignoring", "group_left",
    "group_right", "label_values", "topk", "bottomk", "clamp_min", "clamp_max",
}  # fmt: skip
# what each metric type exposes, by the suffix of its sample names
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "unknown": ("",),
}


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template variables."""
    found = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var.get("type") == "query":  # label_values(<series selector>, <label>)
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", var["definition"])
            assert match, var["definition"]
            found.append(match.group(1))
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label matchers, grouping clauses, ranges,
    strings and numbers removed first)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", text)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return {w for w in words if w not in PROMQL_WORDS}


def exported_names(exposition: str) -> set[str]:
    """Every sample name the exposition text declares (HELP/TYPE lines included, so a labelled
    metric nobody has observed yet counts too)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


@pytest.fixture(scope="module")
def exported(local_gateway: LocalGateway) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name in SERVICES:
        url = f"{local_gateway.services[name].url}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback
            out[name] = exported_names(resp.read().decode())
    return out


def test_every_query_names_an_exported_metric(
    dashboard: dict[str, Any], exported: dict[str, set[str]]
) -> None:
    everything = set().union(*exported.values())
    asked = {name for expr in queries(dashboard) for name in metric_names(expr)}
    assert len(asked) >= 10, asked  # the parse found the dashboard's metrics, not nothing
    assert asked - everything == set(), f"not exported by any service: {asked - everything}"
    # each service is on the dashboard
    for service, names in exported.items():
        assert asked & names, f"no panel shows a metric of {service}"


def test_the_dashboard_covers_what_operators_ask(dashboard: dict[str, Any]) -> None:
    """Per tool and cluster calls, errors and latency; the exchange cache hit ratio and Keycloak
    latency; decisions by result."""
    exprs = queries(dashboard)

    def one(*needles: str) -> bool:
        return any(all(n in e for n in needles) for e in exprs)

    assert one("kmg_backend_tool_calls_total", "tool, cluster")
    assert one("kmg_backend_tool_calls_total", 'outcome!="ok"')
    assert one("histogram_quantile", "kmg_backend_tool_duration_seconds_bucket", "cluster")
    assert one("token_exchange_requests_total", '"hit|coalesced"', "/")
    assert one("histogram_quantile", "token_exchange_sts_call_duration_seconds_bucket")
    assert one("policy_decisions_total", "decision")


def test_the_checker_sees_a_wrong_name() -> None:
    """Negative control: the parse keeps metric names and drops labels, ranges and clauses."""
    expr = (
        'histogram_quantile(0.95, sum by (le, tool) (rate(kmg_backend_tool_seconds_bucket{tool="x",'
        'cluster=~"a|b"}[5m]))) / on (tool) group_left count(policy_decisions_total)'
    )
    assert metric_names(expr) == {"kmg_backend_tool_seconds_bucket", "policy_decisions_total"}
    assert "kmg_backend_tool_seconds_bucket" not in exported_names(
        "# HELP kmg_backend_tool_duration_seconds d\n# TYPE kmg_backend_tool_duration_seconds "
        "histogram\n"
    )


def test_the_configmap_carries_the_dashboard_for_grafanas_sidecar() -> None:
    (cm,) = render.render("observability")
    assert cm["kind"] == "ConfigMap"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["kube-mcp-gateway.json"]) == json.loads(DASHBOARD.read_text())
