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
`kernel.pid_max` (32768 by default) is smaller than a few dozen sandboxes at their pids limit,
and `kernel.threads-max` (about 190,000 on a 24 GiB host) than a few hundred: past it every
fork on the host fails. Threads' kernel stacks are charged to the memory cgroup of the
sandbox that makes them, so with the count raised each sandbox's memory limit bounds them.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from hutch.errors import RuntimeError_
from hutch.runtime.command import stop_helper

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
    "kernel/threads-max": 1 << 22,
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


# The writer: a single-threaded helper process (a multi-threaded one, like the server, may
# not join a user namespace). For each request it forks; the child joins the sandbox's user
# namespace, where it holds every capability, writes the sysctls and exits. A fork of this
# small process costs a fraction of a millisecond, where nsenter + sysctl cost two program
# starts on the path of every create.
WRITER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER = 0x10000000
def child(pid, pairs):
    fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    if libc.setns(fd, CLONE_NEWUSER) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    for name, value in pairs:
        with open("/proc/sys/" + name.replace(".", "/"), "w") as f:
            f.write(value)
for line in sys.stdin:
    pid, *rest = line.split()
    pairs = [item.split("=", 1) for item in rest]
    r, w = os.pipe()
    child_pid = os.fork()
    if child_pid == 0:
        os.close(r)
        try:
            child(int(pid), pairs)
            os._exit(0)
        except BaseException as e:
            os.write(w, (type(e).__name__ + ": " + str(e)).encode()[:500])
            os._exit(1)
    os.close(w)
    message = os.read(r, 512).decode(errors="replace")
    os.close(r)
    status = os.waitpid(child_pid, 0)[1]
    answer = "ok" if status == 0 else "error " + (message or f"status {status}")
    sys.stdout.write(answer.replace("\n", " ") + "\n")
    sys.stdout.flush()
"""


class LimitWriter:
    """Sets SANDBOX_LIMITS in sandboxes' user namespaces through one long-lived helper
    process (started on first use, restarted if it ever dies)."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def _helper(self) -> asyncio.subprocess.Process:
        if self._proc is None or self._proc.returncode is not None:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-S", "-c", WRITER, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        return self._proc

    async def limit_sandbox(self, init_pid: int) -> None:
        """Apply SANDBOX_LIMITS to the user namespace of the sandbox whose init is
        ``init_pid`` (before anything but its init and agent runs in it)."""
        request = " ".join([str(init_pid), *(f"{k}={v}" for k, v in SANDBOX_LIMITS.items())])
        async with self._lock:
            proc = await self._helper()
            try:
                proc.stdin.write(request.encode() + b"\n")
                await proc.stdin.drain()
                answer = (await proc.stdout.readline()).decode().strip()
            except (BrokenPipeError, ConnectionResetError):
                answer = ""
            if not answer:
                await self.close()
                answer = "error the helper process ended"
        if answer != "ok":
            raise RuntimeError_(f"setting the sandbox's inotify limits failed: "
                                f"{answer.removeprefix('error ')}")

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            await stop_helper(proc)
