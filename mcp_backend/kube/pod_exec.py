"""``pods/exec`` over the API server's WebSocket (channel protocol v5/v4): a command's output,
read up to a bound."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

import aiohttp

from mcp_backend.audit import caller_headers
from mcp_backend.errors import Unreachable
from mcp_backend.kube.client import KubeClient, subject_of
from mcp_backend.kube.discovery import segment
from mcp_backend.kube.failures import ERROR_BODY_MAX, client_error_text

_EXIT_STATUS = re.compile(r"exit (?:status|code) (\d+)\s*$")


@dataclass(frozen=True)
class ExecResult:
    """Output of one ``pods/exec``; ``truncated``: the output passed the bound, reading stopped
    there and the stream was closed (no exit code then)."""

    stdout: str
    stderr: str
    exit_code: int | None
    error: str | None
    truncated: bool = False
    bytes_read: int = 0


async def exec_in_pod(
    client: KubeClient,
    token: str,
    namespace: str,
    pod: str,
    command: list[str],
    container: str | None,
    timeout_s: float,
) -> ExecResult:
    """Run ``command`` in a container over the exec WebSocket (v5/v4 channel protocol)."""
    path = f"/api/v1/namespaces/{segment(namespace, 'namespace')}/pods/{segment(pod, 'name')}/exec"
    parsed = subject_of(path)
    params: list[tuple[str, str]] = [("command", c) for c in command]
    params += [("stdout", "true"), ("stderr", "true")]
    if container:
        params.append(("container", container))
    limit = client.settings.exec_output_max_bytes()
    output = _ExecOutput(limit)
    try:
        async with asyncio.timeout(timeout_s):
            async with client.session().ws_connect(
                path.lstrip("/"),
                params=params,
                headers=caller_headers(token),
                protocols=("v5.channel.k8s.io", "v4.channel.k8s.io"),
                max_msg_size=limit + 1,  # one frame larger than the bound: truncated too
                # Leaving early (bound reached, timeout) closes at once: without this the
                # close would read (and drop) whatever the command still prints for 10 s.
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=0),
            ) as ws:
                async for msg in ws:
                    if not output.take(msg):
                        break
    except TimeoutError:
        raise Unreachable(
            f"cluster {client.name!r}: exec in pod {namespace}/{pod} did not finish within "
            f"{timeout_s:g}s; run a shorter command"
        ) from None
    except aiohttp.WSServerHandshakeError as exc:
        raise await client.refusal(
            token, "POST", path, parsed, exc.status, exc.message.encode()
        ) from None
    except aiohttp.ClientError as exc:
        raise Unreachable(
            f"cluster {client.name!r} at {client.cluster.server} is unreachable: "
            f"{client_error_text(exc)}"
        ) from None
    finally:
        client.metrics.upstream_bytes.labels(client.name).inc(output.read)
    return output.result()


class _ExecOutput:
    """What one exec's messages carried: stdout and stderr up to ``limit`` bytes together, and
    the status channel."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.out, self.err, self.status = bytearray(), bytearray(), b""
        self.truncated = False
        self.read = 0

    def take(self, msg: aiohttp.WSMessage) -> bool:
        """Keep one message's payload; False once the bound is reached (stop reading)."""
        if msg.type == aiohttp.WSMsgType.ERROR:
            if _frame_too_big(msg.data):
                self.truncated = True
                return False
            raise aiohttp.ClientError(str(msg.data))
        if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
            return True
        channel, payload = msg.data[0], msg.data[1:]
        self.read += len(payload)
        if channel in (1, 2):
            room = self.limit - len(self.out) - len(self.err)
            (self.out if channel == 1 else self.err).extend(payload[:room])
            if len(payload) > room:
                self.truncated = True
                return False
        elif channel == 3:
            self.status += payload[:ERROR_BODY_MAX]
        return True

    def result(self) -> ExecResult:
        stdout, stderr = self.out.decode(errors="replace"), self.err.decode(errors="replace")
        if self.truncated:
            return ExecResult(stdout, stderr, None, None, True, self.read)
        exit_code, error = _exec_status(self.status)
        return ExecResult(stdout, stderr, exit_code, error, False, self.read)


def _frame_too_big(error: Any) -> bool:
    """Whether a WebSocket ERROR message is aiohttp's refusal of a frame above max_msg_size."""
    return (
        isinstance(error, aiohttp.WebSocketError)
        and error.code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    )


def _exec_status(raw: bytes) -> tuple[int | None, str | None]:
    if not raw:
        return None, None
    try:
        status = json.loads(raw)
    except ValueError:
        return None, raw.decode(errors="replace")
    if status.get("status") == "Success":
        return 0, None
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            try:
                return int(cause.get("message", "")), None
            except ValueError:
                break
    message = str(status.get("message") or "exec failed")
    code = _EXIT_STATUS.search(message)  # runtimes without an ExitCode cause (kwok, some CRIs)
    if code:
        return int(code.group(1)), None
    return None, message
