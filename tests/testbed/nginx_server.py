"""A real nginx serving a folder of static files (the testbed's OPA bundle server).

OPA itself cannot serve bundles; a bundle service is any HTTP server that serves the bundle file
and answers ``If-None-Match`` with 304 while it is unchanged. nginx's static file handler does
exactly that (``ETag`` = last-modified time and size, in hex). The program is ``nginx`` from PATH,
else Debian's ``nginx`` package unpacked into the component cache by ``make testbed``.

It runs in the foreground as one process (``master_process off``), every path it writes (pid,
logs, temp folders) under the run folder. The access log records status, request and the
``If-None-Match`` it got, so tests can count 200s and 304s from the server's own point of view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tests.testbed import debian_packages, placeholders, process
from tests.testbed.ports import free_port

PROGRAM = debian_packages.DebianProgram(
    name="nginx",
    path_names=("nginx",),
    binary="usr/sbin/nginx",
    packages=("nginx",),
    libraries=("libpcre2-8-0", "libssl3", "zlib1g", "libcrypt1"),
    version_args=("-v",),
)

# nginx.conf with @NAME@ placeholders (the access log's format is in it)
CONFIG_TEMPLATE = Path(__file__).with_name("nginx_static.conf")


def provision(force: bool = False) -> debian_packages.Located:
    return debian_packages.provision(PROGRAM, force=force)


@dataclass
class NginxStaticServer(process.Supervised):
    run_dir: Path
    root: Path
    name: str = "nginx"
    port: int = field(default_factory=free_port)
    source: str = ""
    _proc: process.ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def home(self) -> Path:
        return self.run_dir / self.name

    @property
    def access_log(self) -> Path:
        return self.home / "access.log"

    def _config(self) -> str:
        temp = self.home / "temp"
        for part in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (temp / part).mkdir(parents=True, exist_ok=True)
        values = {
            "HOME": self.home,
            "ACCESS_LOG": self.access_log,
            "TEMP": temp,
            "PORT": self.port,
            "ROOT": self.root,
        }
        return placeholders.fill(CONFIG_TEMPLATE, values)

    def start(self, timeout: float = 20.0) -> NginxStaticServer:
        if self._proc is not None and self._proc.running:
            return self
        located = debian_packages.locate(PROGRAM)
        self.source = located.source
        self.home.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.home / "nginx.conf"
        config.write_text(self._config())
        took = self._start_process(
            self.name,
            [located.binary, "-p", self.home, "-e", self.home / "error.log", "-c", config],
            self.run_dir / f"{self.name}.log",
            ready=lambda: process.http_ok(
                f"{self.url}/", expect=lambda status, _: status in (200, 403, 404)
            ),
            what="serving",
            timeout=timeout,
            env=located.env,
        )
        del took
        return self

    def statuses(self, path: str) -> list[int]:
        """HTTP statuses nginx answered for GETs of ``path``, in order."""
        if not self.access_log.exists():
            return []
        out = []
        for line in self.access_log.read_text().splitlines():
            status, _, rest = line.partition(" ")
            if f'"GET {path} ' in rest:
                out.append(int(status))
        return out
