"""The testbed's configuration data files (kwok resources, ``containerd.toml``, nginx's config)
name run-time values as ``@NAME@``: :func:`fill` puts the values in and refuses a placeholder
left without one (comment lines, starting with ``#``, may mention ``@NAME@``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def fill(template: Path, values: Mapping[str, object]) -> str:
    """The text of ``template`` with each ``@KEY@`` replaced by ``str(values[KEY])``."""
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    if "@" in "".join(line for line in text.splitlines() if not line.lstrip().startswith("#")):
        raise ValueError(f"{template.name}: a @NAME@ placeholder has no value")
    return text
