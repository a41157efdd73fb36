"""A real Redis server for the testbed (shared token-exchange cache, gateway sessions).

The program is ``redis-server`` (or ``valkey-server``) from PATH when the machine has one, else
Debian's ``redis-server`` package (7.0.x on bookworm) unpacked into the component cache by
``make testbed`` (see :mod:`tests.testbed.debian_packages`). It runs on a free loopback port with
a password (``requirepass``), no persistence (``save ""``, no AOF: a cache; tokens never reach a
disk) and its log in the run folder. ``stop()``/``start()`` keep the port (outage tests);
``pause()``/``resume()`` freeze it with SIGSTOP/SIGCONT (a Redis that accepts connections but
answers nothing: the "slow Redis" case).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.testbed import debian_packages, process
from tests.testbed.ports import free_port

PROGRAM = debian_packages.DebianProgram(
    name="redis",
    path_names=("redis-server", "valkey-server"),
    # Debian's redis-server package links /usr/bin/redis-server to redis-check-rdb (one binary
    # that behaves by the name it is called with); both files come from redis-tools.
    binary="usr/bin/redis-server",
    packages=("redis-server", "redis-tools", "libjemalloc2", "liblzf1"),
    libraries=("libatomic1", "libssl3", "libsystemd0"),
)


def provision(force: bool = False) -> debian_packages.Located:
    return debian_packages.provision(PROGRAM, force=force)


def _ping(port: int, password: str, timeout: float = 1.0) -> bool:
    """AUTH + PING in RESP, over a plain socket (no client library needed for readiness)."""
    request = (
        f"*2\r\n$4\r\nAUTH\r\n${len(password)}\r\n{password}\r\n*1\r\n$4\r\nPING\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        while answer.count(b"\r\n") < 2:
            chunk = sock.recv(256)
            if not chunk:
                return False
            answer += chunk
    return answer.startswith(b"+OK\r\n+PONG\r\n")


@dataclass
class RedisServer(process.Supervised):
    run_dir: Path
    name: str = "redis"
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    start_seconds: list[float] = field(default_factory=list)
    source: str = ""
    _proc: process.ManagedProcess | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``: no credentials (give the password separately)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def connection_string(self, db: int = 0) -> str:
        """``redis://:<password>@127.0.0.1:<port>/<db>``: for programs that take one string
        (e.g. the MCP Gateway broker's ``--cache-connection-string``)."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{db}"

    def write_password(self, path: Path) -> Path:
        """The password in a file (mode 600), as a mounted Secret would hold it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.password + "\n")
        path.chmod(0o600)
        return path

    @property
    def config_path(self) -> Path:
        return self.run_dir / f"{self.name}.conf"

    def _write_config(self) -> None:
        data = self.run_dir / f"{self.name}-data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            "protected-mode yes",
            f"requirepass {self.password}",
            'save ""',
            "appendonly no",
            f"dir {data}",
            'logfile ""',  # stdout: the ManagedProcess log
            "daemonize no",
            "databases 16",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")
        self.config_path.chmod(0o600)

    def start(self, timeout: float = 20.0) -> RedisServer:
        if self._proc is not None and self._proc.running:
            return self
        located = debian_packages.locate(PROGRAM)
        self.source = located.source
        self._write_config()
        took = self._start_process(
            self.name,
            [located.binary, self.config_path],
            self.run_dir / f"{self.name}.log",
            ready=lambda: _ping(self.port, self.password),
            what="answering PING",
            timeout=timeout,
            env=located.env,
        )
        self.start_seconds.append(took)
        return self

    @property
    def pid(self) -> int:
        proc = self._proc.proc if self._proc is not None else None
        if proc is None:
            raise process.ComponentError(f"{self.name} is not running")
        return proc.pid

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel, nothing is answered."""
        os.killpg(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.pid, signal.SIGCONT)

    def client(self, db: int = 0, **kwargs: Any) -> Any:
        """A synchronous redis-py client (for tests that look inside)."""
        import redis

        return redis.Redis(
            host="127.0.0.1", port=self.port, db=db, password=self.password, **kwargs
        )
