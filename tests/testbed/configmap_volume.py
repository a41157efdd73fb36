"""A folder laid out and updated the way kubelet updates a mounted ConfigMap volume.

Kubelet's atomic writer (``pkg/volume/util/atomic_writer.go``) never edits files in place. Each
version of the ConfigMap is written into a fresh hidden folder ``..<timestamp>``; a symlink
``..data`` points at the current one and is replaced in one ``rename`` of a new link; the names
the pod sees are symlinks ``<first path element> -> ..data/<first path element>``; the old
version's folder is removed afterwards. :class:`ConfigMapVolume` does the same steps in the same
order on a local folder, so the policy service's watcher meets exactly the layout and the swap
it meets in a pod (kubelet itself is not what is under test here).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

DATA_LINK = "..data"


class ConfigMapVolume:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = 0
        root.mkdir(parents=True, exist_ok=True)

    def write(self, files: Mapping[str, str | bytes]) -> Path:
        """Publish a new version holding exactly ``files`` (relative paths, ``a/b.json`` ok)."""
        self.versions += 1
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
        version = self.root / f"..{stamp}.{time.time_ns() % 10**9:09d}{self.versions}"
        version.mkdir()
        for name, content in files.items():
            path = version / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
            path.chmod(0o644)
        old = self._current()
        tmp_link = self.root / "..data_tmp"
        if tmp_link.is_symlink():
            tmp_link.unlink()
        tmp_link.symlink_to(version.name)
        os.replace(tmp_link, self.root / DATA_LINK)  # the atomic step
        visible = {Path(name).parts[0] for name in files}
        for name in visible:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"{DATA_LINK}/{name}")
        for entry in self.root.iterdir():
            if not entry.name.startswith("..") and entry.name not in visible:
                entry.unlink()
        if old is not None and old != version:
            shutil.rmtree(old, ignore_errors=True)
        return version

    def _current(self) -> Path | None:
        link = self.root / DATA_LINK
        return link.resolve() if link.is_symlink() else None


def policy_files(policies_dir: Path) -> dict[str, str]:
    """The repo's policy (``*.rego``, tests skipped) and data files as ConfigMap items."""
    files: dict[str, str] = {}
    for path in sorted(policies_dir.rglob("*")):
        rel = path.relative_to(policies_dir).as_posix()
        if (path.suffix == ".rego" and not path.name.endswith("_test.rego")) or (
            path.suffix == ".json" and rel.startswith("data/")
        ):
            files[rel] = path.read_text(encoding="utf-8")
    return files
