"""What a chart creates, read without helm: :func:`manifest_kinds` (every object of a rendered
manifest, the items of ``List`` documents included) and :func:`chart_crd_files` (the ``crds/``
files of a chart archive and of its subcharts, which helm creates as they are, unrendered).

Light on imports on purpose: ``post_render`` runs it in a fresh interpreter per install.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from pathlib import Path
from typing import Any

import yaml

from mcp_backend.errors import ToolFailure

MAX_CHART_BYTES = 100 * 1024 * 1024  # helm's own limit on a decompressed chart
_MANIFEST_EXTENSIONS = (".yaml", ".yml", ".json")
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def manifest_kinds(text: str, source: str = "the rendered chart") -> set[tuple[str, str]]:
    """(group, kind) of every object in a YAML stream: each document, and the ``items`` of any
    document holding a list of items (helm flattens ``List``/``*List`` documents and creates
    the items), at any depth. Unparsable YAML fails closed."""
    kinds: set[tuple[str, str]] = set()
    for node in manifest_objects(text, source):
        group = str(node.get("apiVersion") or "").rpartition("/")[0]
        kinds.add((group, str(node["kind"])))
    return kinds


def manifest_objects(text: str, source: str = "the rendered chart") -> list[dict[str, Any]]:
    """Every object (a mapping with a ``kind``) of a YAML stream, the items of list documents
    at any depth included (see :func:`manifest_kinds`). Unparsable YAML fails closed."""
    try:
        docs = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ToolFailure(
            f"cannot check the kinds {source} creates ({problem}), so it is not installed"
        ) from None
    objects: list[dict[str, Any]] = []
    seen: set[int] = set()
    stack: list[Any] = list(docs)
    while stack:
        node = stack.pop()
        if id(node) in seen:  # YAML anchors can make shared or recursive nodes
            continue
        seen.add(id(node))
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if node.get("kind"):
                objects.append(node)
            if isinstance(node.get("items"), list):
                stack.extend(node["items"])
    return objects


def chart_crd_files(archive: Path) -> list[tuple[str, str]]:
    """(path, text) of every ``crds/`` manifest of a chart archive and of its subcharts (helm
    creates those objects unrendered, whatever their kind, before installing the templates)."""
    budget = [MAX_CHART_BYTES]
    try:
        files = _archive_files(archive.read_bytes(), budget)
    except (OSError, tarfile.TarError, EOFError, ValueError) as exc:
        raise ToolFailure(f"cannot read the chart archive: {exc}") from None
    return _crd_files(files, "", budget)


def _archive_files(data: bytes, budget: list[int]) -> dict[str, bytes]:
    """Files of a chart archive by path below its top directory, as helm's loader names them."""
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            delimiter = "\\" if "\\" in member.name else "/"
            name = posixpath.normpath("/".join(member.name.split(delimiter)[1:]))
            if not name.startswith(("crds/", "charts/")):
                continue
            budget[0] -= member.size
            if budget[0] < 0:
                raise ValueError(f"the chart is larger than {MAX_CHART_BYTES} bytes")
            extracted = tar.extractfile(member)
            if extracted is not None:
                files[name] = extracted.read()
    return files


def _crd_files(files: dict[str, bytes], where: str, budget: list[int]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    subcharts: dict[str, dict[str, bytes]] = {}
    for name, data in sorted(files.items()):
        if name.startswith("crds/") and name.lower().endswith(_MANIFEST_EXTENSIONS):
            out.append((where + name, data.decode("utf-8", errors="replace")))
        elif name.startswith("charts/") and not name.endswith(".prov"):
            sub, _, inner = name[len("charts/") :].partition("/")
            if inner:
                subcharts.setdefault(sub, {})[inner] = data
            elif sub.endswith(".tgz"):
                nested = _archive_files(data, budget)
                out += _crd_files(nested, f"{where}charts/{sub}/", budget)
    for sub, sub_files in sorted(subcharts.items()):
        out += _crd_files(sub_files, f"{where}charts/{sub}/", budget)
    return out
