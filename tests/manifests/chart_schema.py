"""The Helm chart's ``values.schema.json`` and the README's values table, generated.

``python -m tests.manifests.chart_schema --write`` rewrites both; ``test_chart.py`` fails when
either is stale. The schema is built in ``chart_values_schema.py`` (release and gateway values,
the chart's Redis), ``chart_service_values.py`` (the three services) and ``schema_blocks.py``.
The chart's own values are described there; each service's ``config`` is checked against the
JSON schema of the service's real settings model (``extra="forbid"`` there becomes
``additionalProperties: false``), so a misspelt setting fails ``helm install`` with the path of
the value, before any pod starts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any

import yaml

from tests.manifests.chart_values_schema import build
from tests.manifests.schema_blocks import Schema
from tests.testbed import paths

CHART = paths.REPO_ROOT / "charts" / "kube-mcp-gateway"
SCHEMA_FILE = CHART / "values.schema.json"
VALUES_FILE = CHART / "values.yaml"
README = paths.REPO_ROOT / "README.md"
BEGIN = "<!-- helm-values:begin (generated: python -m tests.manifests.chart_schema --write) -->"
END = "<!-- helm-values:end -->"


def render_schema() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


# -- README table ------------------------------------------------------------------------------
def _rows(schema: Schema, values: Any, path: str) -> Iterator[tuple[str, str, str]]:
    props = schema.get("properties") if schema.get("additionalProperties") is False else None
    # a leaf: free-form, a service's settings, or parts without their own description
    if (
        props is None
        or path.endswith(".config")
        or not all(sub.get("description") for sub in props.values())
    ):
        default = json.dumps(values, separators=(", ", ": "))
        if len(default) > 60:
            default = "see values.yaml"
        yield path, default, schema.get("description", "")
        return
    for key, sub in props.items():
        yield from _rows(sub, (values or {}).get(key), f"{path}.{key}" if path else key)


def render_table() -> str:
    values = yaml.safe_load(VALUES_FILE.read_text(encoding="utf-8"))
    lines = ["| value | default | what |", "|---|---|---|"]
    for path, default, description in _rows(build(), values, ""):
        text = description.replace("|", "\\|").replace("<", "&lt;")
        lines.append(f"| `{path}` | `{default}` | {text} |")
    return "\n".join(lines)


def current_block(text: str) -> str | None:
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def write() -> None:
    SCHEMA_FILE.write_text(render_schema(), encoding="utf-8")
    text = README.read_text(encoding="utf-8")
    if current_block(text) is None:
        raise SystemExit(f"README.md lacks the markers {BEGIN} ... {END}")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    README.write_text(f"{head}{BEGIN}\n{render_table()}\n{END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the schema and README")
    args = parser.parse_args(argv)
    if args.write:
        write()
        return 0
    sys.stdout.write(render_schema())
    return 0


if __name__ == "__main__":
    sys.exit(main())
