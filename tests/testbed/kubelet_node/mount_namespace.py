"""The real kubelet's private mount namespace: the node's own ``/var/log`` and ``/var/lib`` bound
over the machine's, and private copies of the ``/proc/sys`` files the kubelet writes (the machine
keeps its values)."""

from __future__ import annotations

import shlex
from pathlib import Path

# /proc/sys entries the kubelet writes when they differ from what it wants (setupKernelTunables).
KERNEL_TUNABLES = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)


def mount_namespace_script(
    *, node_dir: Path, var_lib: Path, var_log: Path, host_tunables: dict[str, str]
) -> str:
    """The shell script that prepares the kubelet's private mount namespace, then execs it;
    records the machine's values of :data:`KERNEL_TUNABLES` in ``host_tunables``."""
    binds: list[tuple[Path, str]] = []
    if Path("/var/lib/dbus").is_dir():  # machine id (/etc/machine-id is used first)
        (var_lib / "dbus").mkdir(exist_ok=True)
        binds.append((Path("/var/lib/dbus"), str(var_lib / "dbus")))
    for tunable in KERNEL_TUNABLES:
        host = Path("/proc/sys", tunable)
        if not host.exists():
            continue
        copy = node_dir / "sysctl" / tunable.replace("/", ".")
        host_tunables[tunable] = host.read_text().strip()
        copy.write_text(host_tunables[tunable] + "\n")
        binds.append((copy, str(host)))
    lines = ["set -e"]
    lines += [f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}" for src, dst in binds]
    lines += [
        f"mount --rbind {shlex.quote(str(var_lib))} /var/lib",  # with the dbus bind inside
        f"mount --bind {shlex.quote(str(var_log))} /var/log",
        'exec "$@"',
    ]
    return "\n".join(lines) + "\n"
