"""Generic resource tools for any served kind (CRDs included): list, get, apply, delete, scale."""

from __future__ import annotations

from mcp_backend.operations.apply import apply_all, parse_manifests, plan_apply
from mcp_backend.operations.objects import delete_object, get_object, object_yaml, scale_object
from mcp_backend.rendering.output import ToolOutput, to_yaml, truncate
from mcp_backend.tools.base import (
    LIST_PROPS,
    Annotations,
    R,
    ToolContext,
    ToolSpec,
    list_query,
    list_resource,
    prop,
)
from mcp_backend.tools.dry_run import DRY_RUN_PROP, dry_run_output
from mcp_backend.tools.pods import DEFAULT_NAMESPACE

_KIND = {
    "apiVersion": prop(
        "string",
        "apiVersion of the resources (examples of valid apiVersion "
        "are: v1, apps/v1, networking.k8s.io/v1)",
    ),
    "kind": prop(
        "string",
        "kind of the resources (examples of valid kind are: Pod, Service, Deployment, Ingress)",
    ),
}


async def resources_list(ctx: ToolContext) -> ToolOutput:
    api_version, kind = ctx.req("apiVersion"), ctx.req("kind")
    query = list_query(ctx, ctx.text("namespace"))
    api = await ctx.api()
    info = await api.resolve(api_version, kind)
    return await list_resource(ctx, api, info, query)


async def resources_get(ctx: ToolContext) -> ToolOutput:
    api_version, kind = ctx.req("apiVersion"), ctx.req("kind")
    name, namespace = ctx.req("name"), ctx.text("namespace", default=DEFAULT_NAMESPACE)
    api = await ctx.api()
    info = await api.resolve(api_version, kind)
    obj = await get_object(api, info, name, namespace)
    return object_yaml(obj, ctx.settings.output_max_chars)


async def resources_create_or_update(ctx: ToolContext) -> ToolOutput:
    if ctx.flag("dryRun", default=False):
        return await dry_run_output(ctx)
    objects = parse_manifests(ctx.req("resource"))
    api = await ctx.api()
    # Every object is checked before the first is applied: a refusal applies nothing.
    results = await apply_all(api, await plan_apply(api, objects, DEFAULT_NAMESPACE))
    text = (
        f"# {len(results)} object(s) applied on cluster {api.name!r} (server-side apply)\n"
        + to_yaml(results if len(results) > 1 else results[0])
    )
    text, _ = truncate(text, ctx.settings.output_max_chars, "The objects were applied in full")
    summary = [
        {
            "apiVersion": o.get("apiVersion"),
            "kind": o.get("kind"),
            "name": (o.get("metadata") or {}).get("name"),
            "namespace": (o.get("metadata") or {}).get("namespace"),
        }
        for o in results
    ]
    return ToolOutput(text=text, structured={"applied": summary})


async def resources_delete(ctx: ToolContext) -> ToolOutput:
    api_version, kind = ctx.req("apiVersion"), ctx.req("kind")
    name, namespace = ctx.req("name"), ctx.text("namespace", default=DEFAULT_NAMESPACE)
    grace = ctx.integer("gracePeriodSeconds", minimum=0)
    api = await ctx.api()
    info = await api.resolve(api_version, kind)
    text = await delete_object(api, info, name, namespace, grace)
    return ToolOutput(text=text)


async def resources_scale(ctx: ToolContext) -> ToolOutput:
    api_version, kind = ctx.req("apiVersion"), ctx.req("kind")
    name, namespace = ctx.req("name"), ctx.text("namespace", default=DEFAULT_NAMESPACE)
    scale = ctx.integer("scale", minimum=0)
    api = await ctx.api()
    info = await api.resolve(api_version, kind)
    return await scale_object(api, info, name, namespace, scale)


def tools() -> list[ToolSpec]:
    ns = prop(
        "string",
        "Optional Namespace to retrieve the namespaced resource from (ignored "
        "in case of cluster scoped resources). If not provided, will get resource from "
        "configured namespace",
    )
    return [
        ToolSpec(
            "resources_list",
            "List Kubernetes resources and objects in the current cluster by providing their "
            "apiVersion and kind and optionally the namespace and label selector (compact table; "
            "output='yaml' for full objects; limit/continue to page)",
            {
                **_KIND,
                "namespace": prop(
                    "string",
                    "Optional Namespace to retrieve the namespaced resources "
                    "from (ignored in case of cluster scoped resources). If not "
                    "provided, will list resources from all namespaces",
                ),
                "labelSelector": prop(
                    "string",
                    "Optional Kubernetes label selector (e.g. "
                    "'app=myapp,env=prod' or 'app in (myapp,yourapp)')",
                ),
                "fieldSelector": prop("string", "Optional Kubernetes field selector"),
                **LIST_PROPS,
            },
            ("apiVersion", "kind"),
            R,
            resources_list,
            title="Resources: List",
        ),
        ToolSpec(
            "resources_get",
            "Get a Kubernetes resource in the current cluster by providing its apiVersion, kind, "
            "optionally the namespace, and its name",
            {**_KIND, "name": prop("string", "Name of the resource"), "namespace": ns},
            ("apiVersion", "kind", "name"),
            R,
            resources_get,
            title="Resources: Get",
        ),
        ToolSpec(
            "resources_create_or_update",
            "Create or update a Kubernetes resource in the current cluster by providing a YAML or "
            "JSON representation of the resource (server-side apply; several YAML documents "
            "allowed; dryRun=true previews the API server's result and the diff against the live "
            "object without changing anything)",
            {
                "resource": prop(
                    "string",
                    "A JSON or YAML containing a representation of the "
                    "Kubernetes resource. Should include top-level fields such as "
                    "apiVersion,kind,metadata, and spec",
                ),
                "dryRun": DRY_RUN_PROP,
            },
            ("resource",),
            Annotations(False, True, True, True),
            resources_create_or_update,
            title="Resources: Create or Update",
        ),
        ToolSpec(
            "resources_delete",
            "Delete a Kubernetes resource in the current cluster by providing its apiVersion, "
            "kind, optionally the namespace, and its name",
            {
                **_KIND,
                "name": prop("string", "Name of the resource"),
                "namespace": prop(
                    "string",
                    "Optional Namespace to delete the namespaced resource "
                    "from (ignored in case of cluster scoped resources)",
                ),
                "gracePeriodSeconds": prop(
                    "integer",
                    "Optional duration in seconds before the object should be deleted",
                    minimum=0,
                ),
            },
            ("apiVersion", "kind", "name"),
            Annotations(False, True, True, True),
            resources_delete,
            title="Resources: Delete",
        ),
        ToolSpec(
            "resources_scale",
            "Get or update the scale of a Kubernetes resource in the current cluster by providing "
            "its apiVersion, kind, name, and optionally the namespace. If the scale is set in the "
            "tool call, the scale will be updated to that value. Always returns the current scale "
            "of the resource",
            {
                **_KIND,
                "name": prop("string", "Name of the resource"),
                "namespace": prop(
                    "string", "Optional Namespace to get/update the namespaced resource scale from"
                ),
                "scale": prop(
                    "integer",
                    "Optional scale to update the resources scale to. If not "
                    "provided, will return the current scale of the resource",
                    minimum=0,
                ),
            },
            ("apiVersion", "kind", "name"),
            Annotations(False, True, True, True),
            resources_scale,
            title="Resources: Scale",
        ),
    ]
