"""Run one program in a private network namespace, with chosen loopback ports bridged in and out.

For a component whose listeners are fixed (the MCP Gateway's controller binds ``:8081`` and
``:8082``, no flag changes that): inside its own network namespace those ports cannot collide
with another test session's, and nothing of it listens on the machine's interfaces. The bridges
are byte relays over Unix sockets (file paths cross network namespaces):

* ``--import 127.0.0.1:PORT``: inside, ``127.0.0.1:PORT`` reaches the host's ``127.0.0.1:PORT``
  (e.g. the testbed API server: the program's kubeconfig stays unchanged, TLS included);
* ``--export INNER=OUTER``: the host's ``127.0.0.1:OUTER`` reaches the program's ``INNER`` port
  inside (e.g. its health probe).

``python -m tests.testbed.netns --socket-dir DIR --import ... --export ... -- PROGRAM ARGS...``
runs the host half of the relays and starts ``unshare --net`` (as root; otherwise with
``--user --map-root-user``) on itself with ``--inside``, which brings ``lo`` up, runs the inner
half and then the program. Both halves end with the program and pass SIGTERM/SIGINT on to it;
the exit code is the program's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import struct
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

HOST = "127.0.0.1"
CONNECT_TIMEOUT_S = 5.0
STOP_GRACE_S = 8.0
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


def import_socket(socket_dir: Path, port: int) -> Path:
    return socket_dir / f"in-{port}.sock"


def export_socket(socket_dir: Path, port: int) -> Path:
    return socket_dir / f"out-{port}.sock"


def unshare_argv() -> list[str]:
    """``unshare`` for a new network namespace (a user namespace too when not root)."""
    if os.geteuid() == 0:
        return ["unshare", "--net", "--"]
    return ["unshare", "--user", "--map-root-user", "--net", "--"]


def command(
    socket_dir: Path,
    program: Sequence[str],
    *,
    imports: Sequence[int] = (),
    exports: Sequence[tuple[int, int]] = (),
    inside: bool = False,
) -> list[str]:
    """The argv that runs ``program`` in its own network namespace with these bridges."""
    argv = [sys.executable, "-m", "tests.testbed.netns", "--socket-dir", str(socket_dir)]
    if inside:
        argv.append("--inside")
    for port in imports:
        argv += ["--import", f"{HOST}:{port}"]
    for inner, outer in exports:
        argv += ["--export", f"{inner}={outer}"]
    return [*argv, "--", *program]


# -- relays --------------------------------------------------------------------------------------
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


def _relay_to(
    opener: Opener,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(opener(), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    return handle


def _tcp(port: int) -> Opener:
    return lambda: asyncio.open_connection(HOST, port)


def _unix(path: Path) -> Opener:
    return lambda: asyncio.open_unix_connection(str(path))


def _remove_stale(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _owner_only(path: Path) -> None:
    path.chmod(0o600)


async def _unix_server(path: Path, opener: Opener) -> asyncio.Server:
    _remove_stale(path)
    server = await asyncio.start_unix_server(_relay_to(opener), str(path))
    _owner_only(path)
    return server


# -- the two halves ------------------------------------------------------------------------------
def loopback_up() -> None:
    """``ip link set lo up`` (a new network namespace starts with ``lo`` down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | _IFF_UP))


async def _servers(args: argparse.Namespace) -> list[asyncio.Server]:
    socket_dir: Path = args.socket_dir
    servers: list[asyncio.Server] = []
    for port in args.imports:
        if args.inside:
            opener = _unix(import_socket(socket_dir, port))
            servers.append(await asyncio.start_server(_relay_to(opener), HOST, port))
        else:
            servers.append(await _unix_server(import_socket(socket_dir, port), _tcp(port)))
    for inner, outer in args.exports:
        if args.inside:
            servers.append(await _unix_server(export_socket(socket_dir, inner), _tcp(inner)))
        else:
            opener = _unix(export_socket(socket_dir, inner))
            servers.append(await asyncio.start_server(_relay_to(opener), HOST, outer))
    return servers


async def _run(args: argparse.Namespace) -> int:
    if args.inside:
        loopback_up()
    servers = await _servers(args)
    if args.inside:
        program = list(args.program)
    else:
        inner = command(
            args.socket_dir, args.program, imports=args.imports, exports=args.exports, inside=True
        )
        program = [*unshare_argv(), *inner]
    child = await asyncio.create_subprocess_exec(*program)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _forward, child, sig)
    try:
        return await child.wait()
    finally:
        for server in servers:
            server.close()


def _forward(child: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(sig)


def _port(text: str) -> int:
    host, _, port = text.rpartition(":")
    if host not in ("", HOST):
        raise argparse.ArgumentTypeError(f"only {HOST} ports can be bridged, not {text!r}")
    return int(port)


def _pair(text: str) -> tuple[int, int]:
    inner, _, outer = text.partition("=")
    return int(inner), int(outer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--socket-dir", type=Path, required=True)
    parser.add_argument("--import", dest="imports", type=_port, action="append", default=[])
    parser.add_argument("--export", dest="exports", type=_pair, action="append", default=[])
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("program", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.program[:1] == ["--"]:
        args.program = args.program[1:]
    if not args.program:
        parser.error("no program given after --")
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
