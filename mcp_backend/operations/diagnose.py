"""``workload_diagnose``: everything about a failing workload in one call.

Owner chain, desired/ready counts, each pod's phase and container states (reasons, restarts),
recent events of all those objects, and log tails of containers that are not ready or restarted.
A part the caller may not read (RBAC) becomes a note; the rest is still reported.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from mcp_backend.errors import ClusterError, InvalidArguments
from mcp_backend.kube.clusters import Api
from mcp_backend.kube.discovery import EVENT, POD, ResourceInfo
from mcp_backend.kube.label_selector import selector_query
from mcp_backend.operations.objects import read_log
from mcp_backend.rendering.output import ToolOutput, align

WORKLOADS: dict[str, ResourceInfo] = {
    "deployment": ResourceInfo("apps", "v1", "deployments", "Deployment", True),
    "statefulset": ResourceInfo("apps", "v1", "statefulsets", "StatefulSet", True),
    "daemonset": ResourceInfo("apps", "v1", "daemonsets", "DaemonSet", True),
    "replicaset": ResourceInfo("apps", "v1", "replicasets", "ReplicaSet", True),
    "job": ResourceInfo("batch", "v1", "jobs", "Job", True),
    "cronjob": ResourceInfo("batch", "v1", "cronjobs", "CronJob", True),
    "pod": POD,
}
ENTRY_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "Pod")
MAX_LOG_CONTAINERS = 6
MAX_EVENTS = 25


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def replica_summary(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if kind in ("Deployment", "StatefulSet", "ReplicaSet"):
        out = {
            "desired": spec.get("replicas", 1),
            "ready": status.get("readyReplicas", 0),
            "updated": status.get("updatedReplicas", 0),
            "available": status.get("availableReplicas", 0),
        }
    elif kind == "DaemonSet":
        out = {
            "desired": status.get("desiredNumberScheduled", 0),
            "ready": status.get("numberReady", 0),
            "unavailable": status.get("numberUnavailable", 0),
        }
    elif kind == "Job":
        out = {
            "completions": spec.get("completions", 1),
            "active": status.get("active", 0),
            "succeeded": status.get("succeeded", 0),
            "failed": status.get("failed", 0),
        }
    else:
        return {}
    bad = [
        f"{c.get('type')}={c.get('status')}"
        + (f" ({c.get('reason')}: {c.get('message')})" if c.get("reason") else "")
        for c in status.get("conditions") or []
        if (c.get("status") != "True") != (c.get("type") in ("Failed", "ReplicaFailure"))
    ]
    if bad:
        out["conditions"] = bad
    return out


def container_states(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """Per container: ready, restarts, current state with reason, last termination."""
    status = pod.get("status") or {}
    out = []
    for kind, key in (("init", "initContainerStatuses"), ("main", "containerStatuses")):
        for cs in status.get(key) or []:
            state = cs.get("state") or {}
            ((state_name, detail),) = state.items() if len(state) == 1 else [("unknown", {})]
            entry: dict[str, Any] = {
                "name": cs.get("name"),
                "type": kind,
                "ready": bool(cs.get("ready")),
                "restarts": cs.get("restartCount", 0),
                "state": state_name,
            }
            if detail.get("reason"):
                entry["reason"] = detail["reason"]
            if detail.get("message"):
                entry["message"] = str(detail["message"])[:300]
            if "exitCode" in detail:
                entry["exitCode"] = detail["exitCode"]
            last = (cs.get("lastState") or {}).get("terminated")
            if last:
                entry["lastTermination"] = {
                    k: last.get(k) for k in ("reason", "exitCode", "finishedAt")
                }
            out.append(entry)
    return out


async def _safe(report: Report, what: str, coro: Any) -> Any:
    try:
        return await coro
    except ClusterError as exc:
        report.notes.append(f"{what}: {exc.message}")
        return None


async def owner_chain(
    api: Api, obj: dict[str, Any], namespace: str, report: Report
) -> list[dict[str, Any]]:
    chain: list[dict[str, Any]] = []
    current = obj
    for _ in range(4):
        refs = [
            r
            for r in (current.get("metadata") or {}).get("ownerReferences") or []
            if r.get("controller")
        ]
        if not refs:
            break
        ref = refs[0]
        entry = {"kind": ref.get("kind"), "name": ref.get("name")}
        chain.append(entry)
        info = WORKLOADS.get(str(ref.get("kind", "")).lower())
        if info is None:
            break
        parent = await _safe(
            report,
            f"get {ref.get('kind')} {ref.get('name')}",
            api.get(info.path(namespace, str(ref.get("name")))),
        )
        if parent is None:
            break
        entry["replicas"] = replica_summary(info.kind, parent)
        current = parent
    return chain


async def diagnose(api: Api, kind: str, name: str, namespace: str, log_lines: int) -> ToolOutput:
    info = WORKLOADS.get(kind.lower())
    if info is None or info.kind not in ENTRY_KINDS:
        raise InvalidArguments(f"kind must be one of {', '.join(ENTRY_KINDS)}, got {kind!r}")
    obj = await api.get(info.path(namespace, name))
    report = Report()
    header = f"{info.kind} {namespace}/{name} on cluster {api.name!r}"
    report.data = {"cluster": api.name, "kind": info.kind, "name": name, "namespace": namespace}
    chain = await owner_chain(api, obj, namespace, report)
    if chain:
        report.data["owners"] = chain
    summary = replica_summary(info.kind, obj)
    if summary:
        report.data["replicas"] = summary

    if info.kind == "Pod":
        pods = [obj]
    else:
        selector = selector_query((obj.get("spec") or {}).get("selector") or {})
        listing = (
            await _safe(
                report,
                "list pods",
                api.get(POD.path(namespace), params={"labelSelector": selector, "limit": 200}),
            )
            if selector
            else None
        )
        pods = (listing or {}).get("items") or []
    pod_rows: list[dict[str, Any]] = []
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        pod_rows.append(
            {
                "name": meta.get("name"),
                "phase": status.get("phase"),
                "node": (pod.get("spec") or {}).get("nodeName"),
                "reason": status.get("reason"),
                "containers": container_states(pod),
            }
        )
    report.data["pods"] = pod_rows

    names = {name, *(c["name"] for c in chain), *(p["name"] for p in pod_rows)}
    ev_list = await _safe(
        report, "list events", api.get(EVENT.path(namespace), params={"limit": 500})
    )
    events = [
        e
        for e in (ev_list or {}).get("items") or []
        if (e.get("involvedObject") or {}).get("name") in names
    ]
    events.sort(key=_event_time)
    report.data["events"] = [
        {
            "type": e.get("type"),
            "reason": e.get("reason"),
            "object": _involved(e),
            "count": e.get("count"),
            "message": str(e.get("message", ""))[:300],
            "last": e.get("lastTimestamp") or e.get("eventTime"),
        }
        for e in events[-MAX_EVENTS:]
    ]

    wanted = [
        (p["name"], c)
        for p in pod_rows
        for c in p["containers"]
        if not c["ready"] or c["restarts"] > 0
    ][:MAX_LOG_CONTAINERS]
    logs = await asyncio.gather(
        *(_log_tail(api, namespace, pod, c, log_lines, report) for pod, c in wanted)
    )
    report.data["logs"] = [entry for entry in logs if entry]
    return ToolOutput(
        text=render(header, report), structured={**report.data, "notes": report.notes}
    )


async def _log_tail(
    api: Api, namespace: str, pod: str, c: dict[str, Any], lines: int, report: Report
) -> dict[str, Any] | None:
    previous = c["restarts"] > 0 and c["state"] != "terminated"
    text = await _safe(
        report,
        f"logs of {pod}/{c['name']}",
        read_log(
            api,
            namespace,
            pod,
            container=c["name"],
            previous=previous,
            tail=lines,
            limit_bytes=64 * 1024,
        ),
    )
    if text is None:
        return None
    return {
        "pod": pod,
        "container": c["name"],
        "previous": previous,
        "lines": text.splitlines()[-lines:],
    }


def _event_time(event: dict[str, Any]) -> str:
    """Sortable time of an event: RFC 3339 with or without fractions ('…24Z' vs '…24.3Z')."""
    stamp = str(event.get("lastTimestamp") or event.get("eventTime") or "")
    return stamp.rstrip("Z")


def _involved(event: dict[str, Any]) -> str:
    obj = event.get("involvedObject") or {}
    return f"{obj.get('kind')}/{obj.get('name')}"


def render(header: str, report: Report) -> str:
    d = report.data
    out = [f"# {header}"]
    if d.get("owners"):
        out.append("owners: " + " <- ".join(f"{o['kind']}/{o['name']}" for o in d["owners"]))
    if d.get("replicas"):
        out.append("replicas: " + ", ".join(f"{k}={v}" for k, v in d["replicas"].items()))
    out.append(f"\n## pods ({len(d['pods'])})")
    if d["pods"]:
        rows = [["POD", "PHASE", "NODE", "CONTAINER", "READY", "RESTARTS", "STATE", "REASON"]]
        for p in d["pods"]:
            for c in p["containers"] or [
                {"name": "-", "ready": False, "restarts": 0, "state": "-"}
            ]:
                reason = c.get("reason") or ""
                if c.get("exitCode") is not None:
                    reason += f" exit={c['exitCode']}"
                if c.get("lastTermination"):
                    lt = c["lastTermination"]
                    reason += f" (last: {lt.get('reason')} exit={lt.get('exitCode')})"
                rows.append(
                    [
                        p["name"],
                        p["phase"] or "",
                        p["node"] or "",
                        c["name"],
                        str(c["ready"]).lower(),
                        str(c["restarts"]),
                        c["state"],
                        reason.strip(),
                    ]
                )
        out.append(align(rows).rstrip())
    out.append(f"\n## events ({len(d['events'])} recent)")
    for e in d["events"]:
        out.append(
            f"{e['last'] or '-'} {e['type']} {e['reason']} {e['object']} x{e['count'] or 1}: "
            f"{e['message']}"
        )
    for entry in d.get("logs") or []:
        tag = " (previous)" if entry["previous"] else ""
        out.append(
            f"\n## logs {entry['pod']}/{entry['container']}{tag}, last {len(entry['lines'])} lines"
        )
        out += entry["lines"] or ["(empty)"]
    if report.notes:
        out.append("\n## not available")
        out += [f"- {n}" for n in report.notes]
    return "\n".join(out) + "\n"
