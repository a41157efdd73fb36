"""Compare what the Helm chart renders with what a kustomize target builds, object by object.

Objects are matched by (kind, namespace, name), kustomize's content-hash suffixes removed from the
names of generated ConfigMaps and Secrets and from every reference to them. A matched pair must
agree on everything but what Helm adds by design:

* metadata: only the labels count; kustomize's must all be there, and the chart may add only
  Helm's own (managed-by, instance, version, helm.sh/chart) and ``part-of``;
* pod templates: the chart adds ``app.kubernetes.io/instance`` (not a selector) and the
  ``checksum/config`` annotation (kustomize rolls the pods by renaming the ConfigMap instead);
* ConfigMap ``config.yaml`` and ``*.json`` data are compared parsed (the chart writes the same
  settings from values, key order and comments differ); Secrets by decoded value;
* ``volumes`` and ``volumeMounts`` as sets by name (their order means nothing; kustomize's
  strategic merge puts a component's mounts first, the chart appends them);
* CEL (``expression``, ``predicate``) with runs of whitespace made one space: CEL ignores them,
  and YAML parsers disagree on the line breaks of a folded scalar with more-indented lines
  (kustomize's go-yaml re-emits ``manifests/overlays/kuadrant``'s 403 body with an extra blank
  line that PyYAML does not read).

Everything else (container args, env, ports, probes, mounts, volumes, resources, selectors,
NetworkPolicy peers, AuthPolicy rules, HPA and PDB specs ...) must be equal.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from collections.abc import Iterable
from typing import Any

import yaml

Obj = dict[str, Any]
Key = tuple[str, str, str]  # kind, namespace ("" when cluster-scoped), name

HELM_LABELS = frozenset(
    {
        "app.kubernetes.io/managed-by",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/version",
        "helm.sh/chart",
    }
)
CHART_MAY_ADD = {"app.kubernetes.io/part-of": "kube-mcp-gateway"}
# kustomize's name hash: 10 characters of its consonant-and-digit alphabet
_HASH = re.compile(r"^(?P<base>.+)-[bcdfghkmt2-9]{10}$")


def key(obj: Obj) -> Key:
    meta = obj["metadata"]
    return (obj["kind"], meta.get("namespace") or "", meta["name"])


def _hashed_names(objs: Iterable[Obj]) -> dict[str, str]:
    out: dict[str, str] = {}
    for obj in objs:
        if obj["kind"] in ("ConfigMap", "Secret"):
            match = _HASH.match(obj["metadata"]["name"])
            if match:
                out[obj["metadata"]["name"]] = match.group("base")
    return out


def unhash(objs: list[Obj]) -> list[Obj]:
    """Copies of kustomize's objects with generated names (and references) back to their base."""
    names = _hashed_names(objs)
    text = json.dumps(objs)
    for hashed, base in names.items():
        text = text.replace(json.dumps(hashed), json.dumps(base))
    return list(json.loads(text))


def _data(obj: Obj) -> dict[str, Any]:
    if obj["kind"] == "Secret":
        data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return data | dict(obj.get("stringData") or {})
    out: dict[str, Any] = {}
    for name, text in (obj.get("data") or {}).items():
        if name.endswith((".yaml", ".yml")):
            out[name] = yaml.safe_load(text)
        elif name.endswith(".json"):
            out[name] = json.loads(text)
        else:
            out[name] = text
    return out


def _body(obj: Obj, *, chart: bool) -> Obj:
    """The object without metadata, with data decoded and Helm's pod-template additions gone."""
    body = {k: copy.deepcopy(v) for k, v in obj.items() if k not in ("metadata", "data")}
    body.pop("stringData", None)
    if obj["kind"] in ("ConfigMap", "Secret"):
        body["data"] = _data(obj)
    template = (body.get("spec") or {}).get("template")
    if chart and isinstance(template, dict):
        meta = template.get("metadata", {})
        labels = meta.get("labels", {})
        labels.pop("app.kubernetes.io/instance", None)
        annotations = meta.get("annotations", {})
        for name in [a for a in annotations if a.startswith("checksum/")]:
            annotations.pop(name)
    return body


def label_problems(chart_obj: Obj, kustomize_obj: Obj) -> list[str]:
    chart_labels = dict(chart_obj["metadata"].get("labels") or {})
    want = dict(kustomize_obj["metadata"].get("labels") or {})
    problems = [
        f"label {k}={v!r} missing (chart has {chart_labels.get(k)!r})"
        for k, v in want.items()
        if chart_labels.get(k) != v
    ]
    for k, v in chart_labels.items():
        if k in want or k in HELM_LABELS or CHART_MAY_ADD.get(k) == v:
            continue
        problems.append(f"label {k}={v!r} added by the chart only")
    return problems


UNORDERED = frozenset({"volumes", "volumeMounts"})
CEL = frozenset({"expression", "predicate"})


def _by_name(items: list[Any]) -> list[Any]:
    return sorted(items, key=lambda i: str(i.get("name")) if isinstance(i, dict) else str(i))


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where ``a`` (chart) and ``b`` (kustomize) differ, with both values."""
    field = path.rsplit(".", 1)[-1]
    if field in UNORDERED and isinstance(a, list) and isinstance(b, list):
        a, b = _by_name(a), _by_name(b)
    if field in CEL and isinstance(a, str) and isinstance(b, str):
        a, b = " ".join(a.split()), " ".join(b.split())
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a:
                out.append(f"{path}.{k}: only in kustomize: {b[k]!r}")
            elif k not in b:
                out.append(f"{path}.{k}: only in the chart: {a[k]!r}")
            else:
                out += _diff(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _diff(x, y, f"{path}[{i}]")
        ]
    if a != b:
        return [f"{path}: chart {a!r} != kustomize {b!r}"]
    return []


def compare(chart_objs: list[Obj], kustomize_objs: list[Obj]) -> dict[str, Any]:
    """``{"only_chart": [keys], "only_kustomize": [keys], "differ": {key: [problems]}}``."""
    ours = {key(o): o for o in chart_objs}
    theirs = {key(o): o for o in unhash(kustomize_objs)}
    differ: dict[Key, list[str]] = {}
    for k in sorted(set(ours) & set(theirs)):
        problems = label_problems(ours[k], theirs[k])
        problems += _diff(_body(ours[k], chart=True), _body(theirs[k], chart=False))
        if problems:
            differ[k] = problems
    return {
        "only_chart": sorted(set(ours) - set(theirs)),
        "only_kustomize": sorted(set(theirs) - set(ours)),
        "differ": differ,
    }


def report(result: dict[str, Any]) -> str:
    lines = [f"only in the chart: {k}" for k in result["only_chart"]]
    lines += [f"only in kustomize: {k}" for k in result["only_kustomize"]]
    for k, problems in result["differ"].items():
        lines.append(f"{k}:")
        lines += [f"    {p}" for p in problems]
    return "\n".join(lines)
