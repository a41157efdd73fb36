"""Rollouts of Deployments, StatefulSets and DaemonSets, as ``kubectl rollout`` does them.

:func:`rollout_status` reads the object's status once (kubectl's status viewers, without the
watch), :func:`history` lists its revisions (ReplicaSets of a Deployment, ControllerRevisions of
the others, picked by controller owner reference), :func:`restart` stamps the pod template with
``kubectl.kubernetes.io/restartedAt`` and :func:`undo` puts back the pod template of an earlier
revision (the previous one by default). Every call carries the caller's token.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from mcp_backend.errors import InvalidArguments, ToolFailure
from mcp_backend.kube.clusters import Api
from mcp_backend.kube.discovery import ResourceInfo
from mcp_backend.kube.label_selector import selector_query
from mcp_backend.operations.apply import FIELD_MANAGER

APPS = "apps/v1"
KINDS = {
    "deployment": "Deployment",
    "deployments": "Deployment",
    "deploy": "Deployment",
    "statefulset": "StatefulSet",
    "statefulsets": "StatefulSet",
    "sts": "StatefulSet",
    "daemonset": "DaemonSet",
    "daemonsets": "DaemonSet",
    "ds": "DaemonSet",
}
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
CHANGE_CAUSE = "kubernetes.io/change-cause"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
TEMPLATE_HASH = "pod-template-hash"
# Annotations of a ReplicaSet that an undo does not copy back to its Deployment (kubectl's list).
_SKIPPED_ANNOTATIONS = frozenset(
    {
        "kubectl.kubernetes.io/last-applied-configuration",
        REVISION_ANNOTATION,
        "deployment.kubernetes.io/revision-history",
        "deployment.kubernetes.io/desired-replicas",
        "deployment.kubernetes.io/max-replicas",
        "deprecated.deployment.rollback.to",
    }
)


@dataclass
class Workload:
    """One Deployment, StatefulSet or DaemonSet as read from the cluster."""

    info: ResourceInfo
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.obj["metadata"].get("namespace") or "")

    @property
    def spec(self) -> dict[str, Any]:
        return self.obj.get("spec") or {}

    @property
    def status(self) -> dict[str, Any]:
        return self.obj.get("status") or {}

    def describe(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class Revision:
    """One revision of a workload: its number, the object holding it, its pod template."""

    number: int
    source: dict[str, Any]  # the ReplicaSet or ControllerRevision
    template: dict[str, Any]
    current: bool = False

    @property
    def change_cause(self) -> str:
        annotations = (self.source.get("metadata") or {}).get("annotations") or {}
        return str(annotations.get(CHANGE_CAUSE) or "")

    @property
    def images(self) -> list[str]:
        containers = ((self.template.get("spec") or {}).get("containers")) or []
        return [str(c.get("image", "")) for c in containers if isinstance(c, dict)]


@dataclass
class Status:
    """A rollout's state: ``done``, a kubectl-like ``message``, the figures it is made of."""

    done: bool
    message: str
    figures: dict[str, Any] = field(default_factory=dict)
    failed: bool = False


def workload_kind(text: str) -> str:
    kind = KINDS.get(text.strip().lower())
    if kind is None:
        raise InvalidArguments(
            f"kind {text!r} has no rollout: use Deployment, StatefulSet or DaemonSet"
        )
    return kind


async def read_workload(api: Api, kind: str, name: str, namespace: str) -> Workload:
    info = await api.resolve(APPS, workload_kind(kind))
    obj = await api.get(info.path(namespace, name))
    return Workload(info, obj)


# -- status ---------------------------------------------------------------------------------------


def rollout_status(w: Workload) -> Status:
    """kubectl's status viewers (``polymorphichelpers/rollout_status.go``), one reading."""
    meta_gen = int(w.obj["metadata"].get("generation") or 0)
    observed = int(w.status.get("observedGeneration") or 0)
    if meta_gen > observed:
        return Status(False, f"Waiting for {w.describe()} spec update to be observed...")
    if w.kind == "Deployment":
        return _deployment_status(w)
    if w.kind == "StatefulSet":
        return _statefulset_status(w)
    return _daemonset_status(w)


def _deployment_status(w: Workload) -> Status:
    s = w.status
    want = int(w.spec.get("replicas", 1))
    updated = int(s.get("updatedReplicas") or 0)
    total = int(s.get("replicas") or 0)
    available = int(s.get("availableReplicas") or 0)
    figures = {"replicas": want, "updated": updated, "current": total, "available": available}
    for cond in s.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return Status(
                False,
                f"{w.describe()} exceeded its progress deadline: {cond.get('message', '')}",
                figures,
                failed=True,
            )
    if updated < want:
        msg = f"{updated} out of {want} new replicas have been updated"
    elif total > updated:
        msg = f"{total - updated} old replicas are pending termination"
    elif available < updated:
        msg = f"{available} of {updated} updated replicas are available"
    else:
        return Status(True, f"{w.describe()} successfully rolled out", figures)
    return Status(False, f"Waiting for {w.describe()} rollout to finish: {msg}...", figures)


def _statefulset_status(w: Workload) -> Status:
    s, strategy = w.status, w.spec.get("updateStrategy") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        return Status(
            False,
            f"rollout status is only available for the RollingUpdate strategy; {w.describe()} "
            f"uses {strategy.get('type')}: its pods change only when deleted",
            failed=True,
        )
    want = int(w.spec.get("replicas", 1))
    ready = int(s.get("readyReplicas") or 0)
    updated = int(s.get("updatedReplicas") or 0)
    figures = {
        "replicas": want,
        "ready": ready,
        "updated": updated,
        "currentRevision": s.get("currentRevision"),
        "updateRevision": s.get("updateRevision"),
    }
    if ready < want:
        return Status(False, f"Waiting for {want - ready} pods of {w.describe()} to be ready...")
    partition = int(((strategy.get("rollingUpdate") or {}).get("partition")) or 0)
    if partition > 0:
        target = want - partition
        if updated < target:
            return Status(
                False,
                f"Waiting for partitioned roll out of {w.describe()} to finish: {updated} out of "
                f"{target} new pods have been updated...",
                figures,
            )
        return Status(
            True,
            f"partitioned roll out of {w.describe()} complete: {updated} new pods have been "
            "updated",
            figures,
        )
    if s.get("updateRevision") != s.get("currentRevision"):
        return Status(
            False,
            f"Waiting for {w.describe()} rolling update to complete {updated} pods at revision "
            f"{s.get('updateRevision')}...",
            figures,
        )
    return Status(
        True,
        f"{w.describe()} roll out complete: {ready} pods at revision {s.get('currentRevision')}",
        figures,
    )


def _daemonset_status(w: Workload) -> Status:
    s, strategy = w.status, w.spec.get("updateStrategy") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        return Status(
            False,
            f"rollout status is only available for the RollingUpdate strategy; {w.describe()} "
            f"uses {strategy.get('type')}: its pods change only when deleted",
            failed=True,
        )
    desired = int(s.get("desiredNumberScheduled") or 0)
    updated = int(s.get("updatedNumberScheduled") or 0)
    available = int(s.get("numberAvailable") or 0)
    figures = {"desired": desired, "updated": updated, "available": available}
    if updated < desired:
        msg = f"{updated} out of {desired} new pods have been updated"
    elif available < desired:
        msg = f"{available} of {desired} updated pods are available"
    else:
        return Status(True, f"{w.describe()} successfully rolled out", figures)
    return Status(False, f"Waiting for {w.describe()} rollout to finish: {msg}...", figures)


# -- history --------------------------------------------------------------------------------------


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("controller") and r.get("uid") == uid for r in refs)


async def history(api: Api, w: Workload) -> list[Revision]:
    """The workload's revisions, oldest first, the current one marked."""
    uid = w.obj["metadata"].get("uid")
    selector = selector_query(w.spec.get("selector") or {})
    params = {"labelSelector": selector} if selector else {}
    if w.kind == "Deployment":
        rs_info = await api.resolve(APPS, "ReplicaSet")
        body = await api.get(rs_info.path(w.namespace), params=params)
        current = str((w.obj["metadata"].get("annotations") or {}).get(REVISION_ANNOTATION, ""))
        revisions = []
        for rs in body.get("items") or []:
            if not _owned_by(rs, uid):
                continue
            number = (rs["metadata"].get("annotations") or {}).get(REVISION_ANNOTATION)
            if number is None or not str(number).isdigit():
                continue
            template = (rs.get("spec") or {}).get("template") or {}
            revisions.append(Revision(int(number), rs, template, str(number) == current))
        return sorted(revisions, key=lambda r: r.number)
    cr_info = await api.resolve(APPS, "ControllerRevision")
    body = await api.get(cr_info.path(w.namespace), params=params)
    owned = [cr for cr in body.get("items") or [] if _owned_by(cr, uid)]
    owned.sort(key=lambda cr: int(cr.get("revision") or 0))
    update = w.status.get("updateRevision")  # StatefulSets name their current revision
    revisions = []
    for i, cr in enumerate(owned):
        template = ((cr.get("data") or {}).get("spec") or {}).get("template") or {}
        is_current = cr["metadata"]["name"] == update if update is not None else i == len(owned) - 1
        revisions.append(Revision(int(cr.get("revision") or 0), cr, template, is_current))
    return revisions


# -- restart and undo -----------------------------------------------------------------------------


def _refuse_paused(w: Workload, what: str) -> None:
    if w.kind == "Deployment" and w.spec.get("paused"):
        raise ToolFailure(
            f"{w.describe()} is paused: it cannot be {what} until it is resumed (set "
            "spec.paused to false, e.g. with resources_create_or_update)"
        )


async def restart(api: Api, w: Workload, now: dt.datetime | None = None) -> dict[str, Any]:
    """Stamp the pod template with the restart time: the controller replaces every pod."""
    _refuse_paused(w, "restarted")
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
    result: dict[str, Any] = await api.call(
        "PATCH",
        w.info.path(w.namespace, w.name),
        params={"fieldManager": FIELD_MANAGER},
        body=patch,
        content_type="application/strategic-merge-patch+json",
    )
    return result


def pick_revision(revisions: list[Revision], number: int | None, w: Workload) -> Revision:
    """Revision ``number``, or the previous one (the second highest) when None."""
    if not revisions:
        raise ToolFailure(f"{w.describe()} has no rollout history")
    if number is None:
        if len(revisions) < 2:
            raise ToolFailure(
                f"{w.describe()} has only revision {revisions[-1].number}: there is no previous "
                "revision to go back to"
            )
        return revisions[-2]
    for rev in revisions:
        if rev.number == number:
            return rev
    known = ", ".join(str(r.number) for r in revisions)
    raise InvalidArguments(f"{w.describe()} has no revision {number}; its revisions: {known}")


def _plain_template(template: dict[str, Any]) -> dict[str, Any]:
    """A ReplicaSet's pod template without the label its Deployment does not carry."""
    meta = dict(template.get("metadata") or {})
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k != TEMPLATE_HASH}
    meta["labels"] = labels
    return {**template, "metadata": meta}


async def undo(api: Api, w: Workload, target: Revision) -> tuple[bool, dict[str, Any]]:
    """Put back the pod template of ``target``: (changed, the object after the undo). Nothing is
    changed when the current template already is that revision's."""
    _refuse_paused(w, "rolled back")
    path = w.info.path(w.namespace, w.name)
    if w.kind == "Deployment":
        template = _plain_template(target.template)
        if template == _plain_template(w.spec.get("template") or {}):
            return False, w.obj
        annotations = {
            k: v
            for k, v in ((target.source.get("metadata") or {}).get("annotations") or {}).items()
            if k not in _SKIPPED_ANNOTATIONS
        }
        patch = [
            {"op": "replace", "path": "/spec/template", "value": template},
            {"op": "add", "path": "/metadata/annotations", "value": annotations},
        ]
        result = await api.call(
            "PATCH",
            path,
            params={"fieldManager": FIELD_MANAGER},
            body=patch,
            content_type="application/json-patch+json",
        )
        return True, result
    # StatefulSet / DaemonSet: the ControllerRevision's data is a strategic merge patch that
    # replaces the template. A dry run first tells whether it changes anything.
    data = target.source.get("data") or {}
    kwargs: dict[str, Any] = {
        "body": data,
        "content_type": "application/strategic-merge-patch+json",
    }
    preview = await api.call(
        "PATCH", path, params={"fieldManager": FIELD_MANAGER, "dryRun": "All"}, **kwargs
    )
    if (preview.get("spec") or {}).get("template") == w.spec.get("template"):
        return False, w.obj
    result = await api.call("PATCH", path, params={"fieldManager": FIELD_MANAGER}, **kwargs)
    return True, result
