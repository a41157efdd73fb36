"""Lifecycle of one real component process: start with its log in a file, wait for readiness with
a timeout and a clear failure message (component name + log tail), stop the whole process group.

Every started process is registered so that an interpreter exit (normal, exception, SIGTERM)
stops it: no stray processes. PIDs are also written under the run folder, and ``reap_stale``
stops leftovers of an earlier run that was killed with SIGKILL.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tests.testbed import paths

_RUNNING: list[ManagedProcess] = []


class ComponentError(RuntimeError):
    """A testbed component failed to start or become ready."""


class ManagedProcess:
    """One child process with a log file, a readiness wait and a clean stop."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = [os.fspath(a) for a in argv]
        self.log_path = log_path
        self.env = dict(os.environ, **(env or {}))
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # own process group: stop() reaches grandchildren too
            )
        except OSError as exc:
            raise ComponentError(f"{self.name}: cannot start {self.argv[0]}: {exc}") from exc
        finally:
            log.close()
        _RUNNING.append(self)
        _record_pid(self)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL after ``timeout``; idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(5)
        else:
            _signal_group(proc.pid, signal.SIGKILL)  # leftovers of the group, if any
        with contextlib.suppress(ValueError):
            _RUNNING.remove(self)

    def kill(self) -> None:
        """SIGKILL at once (fault injection)."""
        if self.proc is not None and self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        with contextlib.suppress(ValueError):
            _RUNNING.remove(self)

    # -- readiness ---------------------------------------------------------------------------
    def wait_until(self, check: Callable[[], bool], *, timeout: float, what: str = "ready") -> None:
        """Poll ``check`` until it returns True; fail with the log tail on exit or timeout."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise ComponentError(
                    f"{self.name} exited with code {self.proc.returncode} before it was {what}.\n"
                    f"Log {self.log_path} ends with:\n{self.tail()}"
                )
            try:
                if check():
                    return
            except Exception:  # noqa: S110 - readiness probes fail until the component is up
                pass
            if time.monotonic() > deadline:
                raise ComponentError(
                    f"{self.name} was not {what} within {timeout:.0f}s.\n"
                    f"Log {self.log_path} ends with:\n{self.tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class Supervised:
    """What a component wrapper holding one :class:`ManagedProcess` in ``_proc`` offers
    (Envoy, OPA, Authorino, Keycloak): start-and-wait, stop, kill, ``running``, log tail."""

    _proc: ManagedProcess | None
    stop_timeout: float = 10.0

    def _start_process(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        log_path: Path,
        *,
        ready: Callable[[], bool],
        what: str,
        timeout: float,
        env: dict[str, str] | None = None,
    ) -> float:
        """Start ``argv`` as this component's process, wait until ``ready``; seconds it took."""
        started = time.monotonic()
        self._proc = ManagedProcess(name, argv, log_path, env=env).start()
        self._proc.wait_until(ready, timeout=timeout, what=what)
        return time.monotonic() - started

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(timeout=self.stop_timeout)

    def kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.running

    def tail(self, lines: int = 30) -> str:
        return self._proc.tail(lines) if self._proc is not None else "(not started)"


def http_ok(
    url: str,
    *,
    ca_file: Path | None = None,
    headers: Mapping[str, str] | None = None,
    expect: Callable[[int, bytes], bool] | None = None,
    timeout: float = 2.0,
) -> bool:
    """True when ``url`` answers 200 (or ``expect(status, body)`` holds)."""
    ctx = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    req = urllib.request.Request(url, headers=dict(headers or {}))  # noqa: S310 - test URLs
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:  # noqa: S310
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, body = err.code, err.read()
    return expect(status, body) if expect else status == 200


def stop_all() -> None:
    """Stop every process still registered (reverse start order)."""
    for proc in reversed(list(_RUNNING)):
        with contextlib.suppress(Exception):
            proc.stop(timeout=5)


def reap_stale() -> int:
    """Kill process groups left by earlier runs whose owning process died; returns how many."""
    killed = 0
    for pid_file in paths.run_root().glob("*/**/pids/*.pid"):
        try:
            pid, owner = (int(x) for x in pid_file.read_text().split())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue  # another live test session or demo owns it
        if _alive(pid) and _is_ours(pid):
            _signal_group(pid, signal.SIGKILL)
            killed += 1
        with contextlib.suppress(OSError):
            pid_file.unlink()
    return killed


def _record_pid(proc: ManagedProcess) -> None:
    assert proc.proc is not None
    pid_dir = proc.log_path.parent / "pids"
    pid_dir.mkdir(exist_ok=True)
    (pid_dir / f"{proc.name}.pid").write_text(f"{proc.proc.pid} {os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _is_ours(pid: int) -> bool:
    """Only reap processes whose command line points into our cache or run folders."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return str(paths.cache_dir()) in cmdline or str(paths.run_root()) in cmdline


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _on_signal(signum: int, _frame: object) -> None:
    # KeyboardInterrupt (not SystemExit) so pytest ends the whole session instead of failing one
    # test and carrying on against stopped components.
    stop_all()
    raise KeyboardInterrupt(f"stopped by signal {signum}")


atexit.register(stop_all)
if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
    signal.signal(signal.SIGTERM, _on_signal)
