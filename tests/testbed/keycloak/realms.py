"""The realm files of ``manifests/keycloak/`` as templates: ``${KEYCLOAK_URL}`` substituted when
they are copied into a run's import folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.testbed import paths, process

REALM_TEMPLATES = paths.REPO_ROOT / "manifests" / "keycloak"
URL_PLACEHOLDER = "${KEYCLOAK_URL}"


def render_realms(dest: Path, keycloak_url: str, templates: Path = REALM_TEMPLATES) -> list[Path]:
    """Copy ``templates/*.json`` into ``dest`` with ``${KEYCLOAK_URL}`` substituted."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sorted(templates.glob("*.json")):
        text = src.read_text().replace(URL_PLACEHOLDER, keycloak_url)
        try:
            json.loads(text)  # fail here, naming the file, rather than deep inside Keycloak
        except ValueError as exc:
            raise process.ComponentError(f"realm file {src} is not valid JSON: {exc}") from None
        out = dest / src.name
        out.write_text(text)
        written.append(out)
    if not written:
        raise process.ComponentError(f"no realm files (*.json) in {templates}")
    return written
