"""The install's own render, checked before helm creates anything.

``helm_install`` checks the kinds of a server-side dry run, then installs, and helm renders the
chart a second time for the install. Templates using ``rand*``, ``now``, ``uuidv4`` and the like
may render other objects the second time. helm runs this module as the install's post-renderer:
it reads the manifests helm is about to create on stdin and refuses, with exit status 1, any
(group, kind) the dry run did not approve; otherwise it writes stdin back unchanged. helm then
creates nothing of the release. Hooks are not covered here: helm 3 does not pass them to a
post-renderer (``renderResources`` in helm v3.22.0 post-renders the manifests only); a hook of a
denied kind is stopped on the wire by ``api_guard``.

Run by helm as ``python -I <helm-home>/post-render.py APPROVED.json``, where the script only puts
this package on ``sys.path`` and calls :func:`main`. The refusal is also written to
``post-render-refusal.txt`` beside ``APPROVED.json`` for ``helm_install`` to report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mcp_backend.errors import ToolFailure
from mcp_backend.helm.chart_contents import manifest_kinds

REFUSAL_FILE = "post-render-refusal.txt"


def launcher() -> str:
    """The script helm runs: this package on ``sys.path`` (the interpreter runs isolated, ``-I``),
    then :func:`main`."""
    package_parent = str(Path(__file__).resolve().parents[2])
    return (
        "import sys\n"
        f"sys.path.insert(0, {package_parent!r})\n"
        "from mcp_backend.helm.post_render import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )


def refusal(approved: set[tuple[str, str]], rendered: str) -> str | None:
    """Why the install's render must not be installed, or None when every kind was approved."""
    try:
        kinds = manifest_kinds(rendered, "the chart as rendered for the install")
    except ToolFailure as exc:
        return exc.message
    unapproved = sorted(kinds - approved)
    if not unapproved:
        return None
    names = ", ".join(f"{kind} ({group or 'core'})" for group, kind in unapproved)
    return (
        f"the chart rendered differently for the install than for the checked dry run (random "
        f"or time-dependent templates?): it would also create {names}, which was never checked"
    )


def main(argv: list[str]) -> int:
    approved_file = Path(argv[0])
    approved = {(group, kind) for group, kind in json.loads(approved_file.read_text())}
    rendered = sys.stdin.buffer.read()
    reason = refusal(approved, rendered.decode("utf-8", errors="replace"))
    if reason is not None:
        (approved_file.parent / REFUSAL_FILE).write_text(reason, encoding="utf-8")
        print(reason, file=sys.stderr)
        return 1
    sys.stdout.buffer.write(rendered)
    return 0
