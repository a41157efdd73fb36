"""Tool specifications, the registry that refuses duplicates, and the per-call context.

Annotations alone decide what ``--read-only`` and ``--disable-destructive`` hide, as in the
reference server. Input schemas are written out by hand so names, defaults and types match the
reference server's exactly; the optional ``access_token`` argument never appears in any schema.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mcp_backend.config import Settings
from mcp_backend.errors import InvalidArguments
from mcp_backend.helm.runner import HelmRunner
from mcp_backend.kube.clusters import Api, ClusterRegistry
from mcp_backend.kube.discovery import ResourceInfo
from mcp_backend.operations.listing import ListBounds, ListQuery, list_objects
from mcp_backend.rendering.output import ToolOutput


@dataclass(frozen=True)
class Annotations:
    """MCP tool annotations (hints), in the order R/D/I/O of the catalogue."""

    read_only: bool
    destructive: bool
    idempotent: bool
    open_world: bool


R = Annotations(read_only=True, destructive=False, idempotent=False, open_world=True)
R_IDEMPOTENT = Annotations(read_only=True, destructive=False, idempotent=True, open_world=True)


@dataclass
class ToolContext:
    """Everything one tool call may use: settings, clusters, the caller's token, arguments."""

    settings: Settings
    clusters: ClusterRegistry
    helm: HelmRunner
    token: str = field(repr=False)
    args: dict[str, Any]

    async def api(self) -> Api:
        """The cluster picked by the ``context`` argument, bound to the caller's token (which
        may exchange it: handlers read and check their other arguments first)."""
        return await self.clusters.bind(self.text("context"), self.token)

    def text(self, name: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self.args.get(name)
        if value is None or value == "":
            if required:
                raise InvalidArguments(f"argument {name!r} is required")
            return default
        if not isinstance(value, str):
            raise InvalidArguments(
                f"argument {name!r} must be a string, got {type(value).__name__}"
            )
        return value

    def req(self, name: str) -> str:
        value = self.text(name, required=True)
        assert value is not None
        return value

    def integer(
        self, name: str, *, default: int | None = None, minimum: int | None = None
    ) -> int | None:
        value = self.args.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise InvalidArguments(f"argument {name!r} must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise InvalidArguments(f"argument {name!r} must be >= {minimum}, got {value}")
        return int(value)

    def flag(self, name: str, *, default: bool) -> bool:
        value = self.args.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise InvalidArguments(f"argument {name!r} must be true or false, got {value!r}")
        return value

    def str_list(self, name: str, *, required: bool = False) -> list[str]:
        value = self.args.get(name)
        if value is None or value == []:
            if required:
                raise InvalidArguments(f"argument {name!r} is required (a list of strings)")
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidArguments(f"argument {name!r} must be a list of strings")
        return list(value)

    def obj(self, name: str) -> dict[str, Any] | None:
        value = self.args.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise InvalidArguments(f"argument {name!r} must be an object")
        return value


Handler = Callable[[ToolContext], Awaitable[ToolOutput]]


@dataclass(frozen=True)
class ToolSpec:
    """One tool: name, description, JSON-schema properties, annotations, handler."""

    name: str
    description: str
    properties: dict[str, dict[str, Any]]
    required: tuple[str, ...]
    annotations: Annotations
    handler: Handler
    title: str | None = None
    cluster_aware: bool = True

    def input_schema(self) -> dict[str, Any]:
        props = dict(self.properties)
        if self.cluster_aware:
            props["context"] = {
                "type": "string",
                "description": "Cluster to target (configuration_contexts_list lists them); "
                "the default cluster when omitted",
            }
        schema: dict[str, Any] = {"type": "object", "properties": props}
        if self.required:
            schema["required"] = list(self.required)
        return schema


class DuplicateTool(ValueError):
    """Two tools with the same name: a programming error caught at start-up."""


class ToolRegistry:
    """Tools by name; refuses duplicates; filters by the safety settings."""

    def __init__(self, specs: Iterable[ToolSpec] = ()) -> None:
        self._tools: dict[str, ToolSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: ToolSpec) -> None:
        if spec.name in self._tools:
            raise DuplicateTool(f"tool {spec.name!r} is registered twice")
        self._tools[spec.name] = spec

    def names(self) -> list[str]:
        return list(self._tools)

    def get(self, name: str) -> ToolSpec | None:
        return self._tools.get(name)

    def select(self, settings: Settings) -> ToolRegistry:
        """The tools this server exposes under ``settings`` (read-only, destructive, lists)."""
        unknown = sorted(set(settings.enabled_tools + settings.disabled_tools) - set(self._tools))
        if unknown:
            raise ValueError(
                f"unknown tool names in enabled_tools/disabled_tools: {', '.join(unknown)}; "
                f"known tools: {', '.join(sorted(self._tools))}"
            )
        out = ToolRegistry()
        for spec in self._tools.values():
            if settings.read_only and not spec.annotations.read_only:
                continue
            if settings.disable_destructive and spec.annotations.destructive:
                continue
            if settings.enabled_tools and spec.name not in settings.enabled_tools:
                continue
            if spec.name in settings.disabled_tools:
                continue
            out.add(spec)
        return out

    def __iter__(self) -> Any:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)


def prop(kind: str, description: str, **extra: Any) -> dict[str, Any]:
    """A JSON-schema property."""
    return {"type": kind, "description": description, **extra}


LIST_PROPS: dict[str, dict[str, Any]] = {
    "limit": prop(
        "integer",
        "Maximum number of items to return in one page (server default applies when omitted; "
        "the server's maximum page size caps it)",
        minimum=1,
    ),
    "continue": prop("string", "Continue token from a previous page of the same list"),
    "output": prop(
        "string", "Output format: compact 'table' (default) or full 'yaml'", enum=["table", "yaml"]
    ),
}


def list_query(ctx: ToolContext, namespace: str | None) -> ListQuery:
    """The list arguments every list tool shares (selectors, ``limit``/``continue``, output)."""
    return ListQuery(
        namespace=namespace,
        label_selector=ctx.text("labelSelector"),
        field_selector=ctx.text("fieldSelector"),
        limit=ctx.integer("limit", minimum=1),
        cont=ctx.text("continue"),
        output=ctx.text("output", default="table") or "table",
    )


async def list_resource(
    ctx: ToolContext, api: Api, resource: ResourceInfo, query: ListQuery
) -> ToolOutput:
    """One page of ``resource`` with the configured default page size and output cap."""
    settings = ctx.settings
    bounds = ListBounds(
        settings.default_list_limit, settings.max_list_limit, settings.output_max_chars
    )
    return await list_objects(api, resource, query, bounds)


async def list_tool(ctx: ToolContext, resource: ResourceInfo, namespace: str | None) -> ToolOutput:
    """A list tool of a fixed kind: the arguments are checked before the cluster is bound."""
    query = list_query(ctx, namespace)
    return await list_resource(ctx, await ctx.api(), resource, query)
