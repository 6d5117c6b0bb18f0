"""Limits on kernel objects that the kernel counts per user, not per cgroup.

inotify instances and watches are counted per user namespace and, in the same count, against
whoever created that namespace in its parent: every sandbox's user namespace is created by the
OCI runtime as host root, so by default all sandboxes and host root's own processes (the init
system, the server) draw on one shared `fs.inotify.max_user_instances` (128 on most hosts).
One sandbox could take them all and leave other sandboxes, and the host, without any.

So each sandbox's user namespace gets limits of its own (set from inside it, where root's
CAP_SYS_RESOURCE over it applies; the sandbox itself lacks that capability and sees /proc/sys
read-only, so it cannot raise them), and the host-wide count is raised to make room for
many sandboxes at their limits next to the host's own use.

Two host-wide counts are raised for the same reason. `fs.file-max` (open files, about 100
per MiB of RAM by default) is checked for everyone but host root, and one sandbox's processes
may each hold RLIMIT_NOFILE files: a few hundred of them reach it, and then every other
sandbox gets ENFILE. Open files are charged to the opener's memory cgroup, so with the
host-wide count out of the way each sandbox's memory limit bounds them (as systemd sets it).
`kernel.pid_max` (32768 by default) is smaller than a few dozen sandboxes at their pids limit.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from hutch.errors import RuntimeError_

# Per sandbox (what a busy development machine uses comfortably).
SANDBOX_LIMITS = {
    "user.max_inotify_instances": 128,
    "user.max_inotify_watches": 65536,
}
# Host-wide floor: room for hundreds of sandboxes at their limits. Only ever raised, never
# lowered; watches and instances are charged to each sandbox's memory cgroup as they are made.
HOST_LIMITS = {
    "fs/inotify/max_user_instances": 1 << 16,
    "fs/inotify/max_user_watches": 1 << 23,
    "fs/file-max": (1 << 63) - 1,
    "kernel/pid_max": 1 << 22,
}


def raise_host_limits(proc_sys: Path = Path("/proc/sys")) -> None:
    for name, floor in HOST_LIMITS.items():
        path = proc_sys / name
        try:
            if int(path.read_text()) >= floor:
                continue
            path.write_text(str(floor))
        except (OSError, ValueError) as e:
            raise RuntimeError_(f"cannot raise {name} to {floor}: {e}") from e


async def limit_sandbox(init_pid: int) -> None:
    """Apply SANDBOX_LIMITS to the user namespace of the sandbox whose init is `init_pid`.

    A process is needed: a multi-threaded process cannot join a user namespace, and
    /proc/sys/user shows the namespace of whoever reads it."""
    proc = await asyncio.create_subprocess_exec(
        "nsenter", f"--user=/proc/{init_pid}/ns/user", "--", "sysctl", "-q", "-w",
        *(f"{k}={v}" for k, v in SANDBOX_LIMITS.items()),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError_(f"setting the sandbox's inotify limits failed: "
                            f"{err.decode(errors='replace').strip()}")
