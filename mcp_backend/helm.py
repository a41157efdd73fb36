"""Drive the ``helm`` CLI for one caller: their token travels in ``HELM_KUBETOKEN``, never argv.

Each command gets a private HOME/XDG tree and an empty kubeconfig, so no local credentials or
repositories leak in, and a timeout so a stuck chart cannot hold the call.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mcp_backend.clusters import Api
from mcp_backend.errors import ToolFailure, Unauthorized
from mcp_backend.log import scrub


class HelmRunner:
    """Runs helm commands with per-call credentials from the environment."""

    def __init__(self, binary: str, timeout_s: float) -> None:
        self.binary = binary
        self.timeout_s = timeout_s

    def _resolve_binary(self) -> str:
        found = shutil.which(self.binary)
        if found is None:
            raise ToolFailure(
                f"the helm CLI ({self.binary!r}) is not installed on the server; set helm_binary"
            )
        return found

    def environment(self, api: Api, home: Path) -> dict[str, str]:
        """The child environment: the caller's token and the cluster's server + CA only."""
        cluster = api.cluster
        kubeconfig = home / "kubeconfig"
        kubeconfig.write_text("apiVersion: v1\nkind: Config\n", encoding="utf-8")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_CACHE_HOME": str(home / "cache"),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "data"),
            "KUBECONFIG": str(kubeconfig),
            "HELM_KUBEAPISERVER": cluster.config.server,
            "HELM_KUBETOKEN": api.token,
        }
        if cluster.ca_file is not None:
            env["HELM_KUBECAFILE"] = str(cluster.ca_file)
        if cluster.config.insecure_skip_tls_verify:
            env["HELM_KUBEINSECURE_SKIP_TLS_VERIFY"] = "true"
        return env

    async def run(self, api: Api, args: list[str], *, files: dict[str, str] | None = None) -> str:
        """Run ``helm <args>``; ``files`` are written into the private HOME (e.g. values)."""
        binary = self._resolve_binary()
        with tempfile.TemporaryDirectory(prefix="mcp-helm-") as tmp:
            home = Path(tmp)
            for name, content in (files or {}).items():
                (home / name).write_text(content, encoding="utf-8")
            argv = [a.replace("{home}", tmp) for a in args]
            proc = await asyncio.create_subprocess_exec(
                binary,
                *argv,
                cwd=tmp,
                env=self.environment(api, home),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                stdout, stderr = await asyncio.wait_for(proc.communicate(), self.timeout_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise ToolFailure(
                    f"helm {args[0]} on cluster {api.name!r} did not finish in {self.timeout_s:g}s"
                ) from None
        err = scrub(stderr.decode(errors="replace").strip()).replace(api.token, "<token>")
        if proc.returncode != 0:
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

    async def run_json(self, api: Api, args: list[str], **kwargs: Any) -> Any:
        out = await self.run(api, args, **kwargs)
        try:
            return json.loads(out) if out.strip() else None
        except ValueError:
            raise ToolFailure(f"helm {args[0]} printed unexpected output: {out[:300]}") from None
