"""The API server's egress to the testbed's "cluster network": an HTTP CONNECT proxy on a Unix
socket, used through kube-apiserver's ``EgressSelectorConfiguration`` (selection ``cluster``).

kube-apiserver refuses to proxy to a node whose address is not global unicast (node proxy
``/api/v1/nodes/<n>/proxy/...`` answers 400 ``address not allowed`` for 127.0.0.1), so the kwok
fake nodes carry a documentation address (:data:`NODE_IP`, TEST-NET-3, never routed) as their
InternalIP, and every connection the API server makes into the cluster (node proxy, pod logs and
exec, aggregated API servers) goes through this proxy, which sends connections for
:data:`NODE_IP` to kwok on 127.0.0.1. kwok thus stays on the loopback interface: nothing of the
testbed listens on the machine's network (kwok's kubelet port authenticates nobody and runs
``exec`` commands on this machine).

The same relay as konnectivity's, reduced to what the testbed needs: only loopback targets are
served (anything else gets 403), and the socket is readable by its owner only.

Run as ``python -m tests.testbed.egress_proxy --socket PATH --map NODE_IP=127.0.0.1``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import signal
from pathlib import Path

NODE_IP = "203.0.113.10"  # RFC 5737 TEST-NET-3: the kwok nodes' InternalIP
HEAD_LIMIT = 8192
CONNECT_TIMEOUT_S = 5.0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def _target(head: bytes, mapping: dict[str, str]) -> tuple[str, int] | str:
    """(host, port) of a ``CONNECT host:port HTTP/1.1`` head, or the HTTP status line to send."""
    try:
        method, authority, _ = head.split(b"\r\n", 1)[0].decode("ascii").split(" ", 2)
        host, _, port_text = authority.rpartition(":")
        port = int(port_text)
    except (UnicodeDecodeError, ValueError):
        return "400 Bad Request"
    if method != "CONNECT":
        return "405 Method Not Allowed"
    host = mapping.get(host.strip("[]"), host.strip("[]"))
    try:
        if not ipaddress.ip_address(host).is_loopback:
            return "403 Forbidden"
    except ValueError:
        return "403 Forbidden"
    return host, port


async def _serve(
    mapping: dict[str, str], client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
) -> None:
    try:
        head = await client_r.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        client_w.close()
        return
    target = _target(head, mapping)
    if isinstance(target, str):
        client_w.write(f"HTTP/1.1 {target}\r\nContent-Length: 0\r\n\r\n".encode())
        client_w.close()
        return
    try:
        upstream_r, upstream_w = await asyncio.wait_for(
            asyncio.open_connection(*target), CONNECT_TIMEOUT_S
        )
    except (OSError, TimeoutError):
        client_w.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        client_w.close()
        return
    client_w.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await asyncio.gather(_pipe(client_r, upstream_w), _pipe(upstream_r, client_w))


async def serve(socket_path: Path, mapping: dict[str, str]) -> None:
    """Serve until SIGTERM/SIGINT (the caller removes a stale socket first)."""
    old_umask = os.umask(0o177)  # the socket: owner read/write only
    try:
        server = await asyncio.start_unix_server(
            lambda r, w: _serve(mapping, r, w), path=str(socket_path), limit=HEAD_LIMIT
        )
    finally:
        os.umask(old_umask)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        print(f"egress proxy serving on {socket_path}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--map", action="append", default=[], help="FROM_IP=TO_IP")
    args = parser.parse_args(argv)
    mapping = dict(item.split("=", 1) for item in args.map)
    args.socket.unlink(missing_ok=True)
    try:
        asyncio.run(serve(args.socket, mapping))
    finally:
        args.socket.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
