"""Drive the ``helm`` CLI for one caller: their token travels in ``HELM_KUBETOKEN``, never argv.

Each command gets a private HOME/XDG tree (one per command, or one :meth:`HelmRunner.workdir`
shared by the commands of one tool call) and an empty kubeconfig, so no local credentials or
repositories leak in, and a timeout so a stuck chart cannot hold the call. helm reaches the
cluster only through an :class:`ApiGuard` of its own (``HELM_KUBEAPISERVER`` and
``HELM_KUBECAFILE`` name it), which refuses every request on a denied kind.

Also where a chart may come from (:func:`chart_source`); what it creates is read by
``chart_contents``, and checked again while helm installs by ``post_render``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from kmg_common.logging import redact
from mcp_backend.errors import AccessDenied, InvalidArguments, ToolFailure, Unauthorized
from mcp_backend.helm.api_guard import ApiGuard
from mcp_backend.kube.clusters import Api


class HelmRunner:
    """Runs helm commands with per-call credentials from the environment."""

    def __init__(self, binary: str, timeout_s: float, max_output_bytes: int) -> None:
        self.binary = binary
        self.timeout_s = timeout_s
        self.max_output_bytes = max_output_bytes

    def _resolve_binary(self) -> str:
        found = shutil.which(self.binary)
        if found is None:
            raise ToolFailure(
                f"the helm CLI ({self.binary!r}) is not installed on the server; set helm_binary"
            )
        return found

    def environment(self, api: Api, home: Path, guard: ApiGuard) -> dict[str, str]:
        """The child environment: the caller's token and the address and certificate of the
        command's :class:`ApiGuard`, which reaches the cluster; nothing else."""
        kubeconfig = home / "kubeconfig"
        kubeconfig.write_text("apiVersion: v1\nkind: Config\n", encoding="utf-8")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_CACHE_HOME": str(home / "cache"),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "data"),
            "KUBECONFIG": str(kubeconfig),
            "HELM_KUBEAPISERVER": guard.url,
            "HELM_KUBECAFILE": str(guard.ca_file),
            "HELM_KUBETOKEN": api.token,
        }
        return env

    @staticmethod
    @contextlib.contextmanager
    def workdir() -> Iterator[Path]:
        """A private directory to share between the helm commands of one call (``home=``)."""
        with tempfile.TemporaryDirectory(prefix="mcp-helm-") as tmp:
            yield Path(tmp)

    async def run(
        self,
        api: Api,
        args: list[str],
        *,
        files: dict[str, str] | None = None,
        home: Path | None = None,
    ) -> str:
        """Run ``helm <args>``; ``files`` are written into the private HOME (e.g. values),
        ``{home}`` in an argument is that directory; ``home`` shares one between commands."""
        if home is None:
            with self.workdir() as tmp:
                return await self.run(api, args, files=files, home=tmp)
        binary = self._resolve_binary()
        for name, content in (files or {}).items():
            (home / name).write_text(content, encoding="utf-8")
        argv = [a.replace("{home}", str(home)) for a in args]
        async with api.helm_guard() as guard:
            returncode, stdout, stderr = await self._exec(
                api, binary, argv, home, self.environment(api, home, guard)
            )
        err = redact(stderr.decode(errors="replace").strip()).replace(api.token, "<token>")
        if returncode != 0:
            if guard.refused:
                after = (
                    "nothing was changed: a dry run"
                    if "--dry-run=server" in args
                    else "the release may be left 'failed': helm_list shows it"
                )
                raise AccessDenied(
                    f"helm {args[0]} on cluster {api.name!r} was stopped ({after}): helm asked "
                    f"the cluster to {guard.refused[0]}"
                )
            if "Unauthorized" in err or "401" in err:
                raise Unauthorized(
                    f"helm {args[0]} on cluster {api.name!r}: the API server rejected the token: "
                    f"{err}",
                    status=401,
                )
            raise ToolFailure(
                f"helm {args[0]} on cluster {api.name!r} failed: {err or 'no output'}"
            )
        return stdout.decode(errors="replace")

    async def _exec(
        self, api: Api, binary: str, argv: list[str], home: Path, env: dict[str, str]
    ) -> tuple[int, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            binary,
            *argv,
            cwd=home,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            async with asyncio.timeout(self.timeout_s):
                stdout, stderr = await asyncio.gather(
                    self._read_bounded(proc, proc.stdout), self._read_bounded(proc, proc.stderr)
                )
                if stdout is None or stderr is None:
                    raise ToolFailure(
                        f"helm {argv[0]} on cluster {api.name!r} printed more than "
                        f"{self.max_output_bytes} bytes, the most this server reads of one "
                        "helm command (setting max_response_bytes); it was stopped there (what it "
                        "printed comes at its end: an install or uninstall may have completed, "
                        "helm_list shows the releases)"
                    )
                await proc.wait()
        except TimeoutError:
            raise ToolFailure(
                f"helm {argv[0]} on cluster {api.name!r} did not finish in {self.timeout_s:g}s"
            ) from None
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        return proc.returncode or 0, stdout, stderr

    async def _read_bounded(
        self, proc: asyncio.subprocess.Process, stream: asyncio.StreamReader
    ) -> bytes | None:
        """All of ``stream``; None once it passes ``max_output_bytes``: helm is killed then
        (which ends its other stream too)."""
        data = bytearray()
        while chunk := await stream.read(64 * 1024):
            data += chunk
            if len(data) > self.max_output_bytes:
                if proc.returncode is None:
                    proc.kill()
                return None
        return bytes(data)

    async def run_json(self, api: Api, args: list[str], **kwargs: Any) -> Any:
        out = await self.run(api, args, **kwargs)
        try:
            return json.loads(out) if out.strip() else None
        except ValueError:
            raise ToolFailure(f"helm {args[0]} printed unexpected output: {out[:300]}") from None


# ---------------------------------------------------------------------------------------------
# Where a chart may come from

SOURCES_SETTING = "helm_chart_sources (KMG_BACKEND_HELM_CHART_SOURCES, --helm-chart-sources)"
_REPO_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class ChartSource:
    """A chart reference helm_install may use: a URL / ``repo/chart`` reference, or (``local``)
    an absolute, resolved path."""

    ref: str
    local: bool


def _local_path(text: str) -> Path | None:
    """The resolved path a local reference (plain or ``file://``) names; None if it has none."""
    if text.startswith("file://"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            return None
        text = unquote(parts.path)
    try:
        return Path(text).resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def chart_source(chart: str, allowed: Sequence[str]) -> ChartSource:
    """Check a chart reference against the allowed sources (URL prefixes and local directories;
    ``repo/chart`` references always). Local paths, ``file://``, ``http://`` and every other
    scheme are refused unless a configured source matches them."""
    if not chart or chart.startswith("-") or any(c.isspace() or not c.isprintable() for c in chart):
        raise InvalidArguments(f"chart {chart!r} is not a chart reference, path or URL")
    url_prefixes = [a for a in allowed if "://" in a and not a.startswith("file://")]
    local = [_local_path(a) for a in allowed if "://" not in a or a.startswith("file://")]
    local_dirs = [d for d in local if d is not None]
    scheme, sep, _ = chart.partition("://")
    if sep and scheme != "file":
        if any(chart.startswith(prefix) for prefix in url_prefixes):
            return ChartSource(chart, local=False)
        accepted = ", ".join(url_prefixes) or "no URL"
        raise AccessDenied(
            f"chart source {chart!r} is not allowed: this server accepts charts from {accepted} "
            f"and repo/chart references; to allow this source add its prefix to the setting "
            f"{SOURCES_SETTING}"
        )
    if not sep and _REPO_REFERENCE.fullmatch(chart):
        return ChartSource(chart, local=False)
    path = _local_path(chart)
    if path is not None and any(path == d or path.is_relative_to(d) for d in local_dirs):
        return ChartSource(str(path), local=True)
    raise AccessDenied(
        f"chart {chart!r} is a local path, which this server does not allow"
        + (f" outside {', '.join(str(d) for d in local_dirs)}" if local_dirs else "")
        + f"; to allow local charts add their directory to the setting {SOURCES_SETTING}"
    )
