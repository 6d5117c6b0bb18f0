"""The OCI runtime driver: runc (or crun) verbs as async calls, and the probe.

A narrow seam: run (create+start, detached), kill, delete, state. The sandbox's processes are
not children of hutch: with `run --detach` the runtime exits once the container's init runs,
so sandboxes keep running while the server restarts.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hutch.errors import RuntimeError_
from hutch.runtime import cgroup, command

CANDIDATES = ("runc", "crun")


class OciRuntime:
    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root   # the runtime's state dir (--root), private to this instance

    def _argv(self, *args: str, log: Path | None = None) -> list[str]:
        argv = [self.binary, "--root", str(self.root)]
        if log is not None:
            argv += ["--log", str(log), "--log-format", "json"]
        return argv + list(args)

    async def run(self, container_id: str, bundle: Path, *, stdio: Path, log: Path,
                  pid_file: Path, background: bool = False) -> None:
        """Create and start the container detached; its stdout/stderr go to `stdio`.
        ``background``: the runtime's own processes run at the lowest priority."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(stdio, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        # --no-new-keyring: a session keyring per container would be one more kernel key
        # charged to the uid every sandbox's root maps to, and the kernel's per-uid quota
        # (kernel.keys.maxkeys, 200 by default) would stop the 201st sandbox. Sandboxes
        # cannot use keyrings at all (seccomp denies keyctl, add_key and request_key).
        argv = self._argv("run", "--detach", "--no-new-keyring", "--bundle", str(bundle),
                          "--pid-file", str(pid_file), container_id, log=log)
        if background:
            argv = ["nice", "-n", "19", *argv]
        try:
            done = await command.run(argv, stdout=fd, stderr=fd)
        finally:
            os.close(fd)
        if done.returncode != 0:
            raise RuntimeError_(f"{self.binary} run failed: {_last_error(log)}")

    async def delete(self, container_id: str, *, force: bool = True) -> None:
        """Delete (with force: kill first); no error if the container does not exist."""
        done = await command.run(self._argv("delete", *(["--force"] if force else []),
                                            container_id))
        text = done.stderr.decode(errors="replace")
        if done.returncode != 0 and "does not exist" not in text and "not exist" not in text:
            raise RuntimeError_(f"{self.binary} delete failed: {text.strip()}")

    async def pause(self, container_id: str, paused: bool = True) -> None:
        """Freeze every process of the container (its cgroup's freezer), or thaw them."""
        done = await command.run(self._argv("pause" if paused else "resume", container_id))
        if done.returncode != 0:
            raise RuntimeError_(f"{self.binary} {'pause' if paused else 'resume'} failed: "
                                f"{done.stderr.decode(errors='replace').strip()}")

    async def state(self, container_id: str) -> dict | None:
        done = await command.run(self._argv("state", container_id), stdout=command.PIPE,
                                 stderr=command.DEVNULL)
        if done.returncode != 0:
            return None
        return json.loads(done.stdout)

    def list_ids(self) -> list[str]:
        """Containers the runtime keeps state for (its --root holds one dir per container)."""
        try:
            return [e for e in os.listdir(self.root) if (self.root / e).is_dir()]
        except FileNotFoundError:
            return []


async def kill_init(pid: int, cgroup_marker: str, timeout: float = 10.0) -> bool:
    """SIGKILL a container's init and wait for it to be gone, without polling: a pidfd
    becomes readable when the process exits. The kernel then kills every other process of
    the pid namespace. The pid is checked to still belong to the container (its cgroup path
    contains `cgroup_marker`) after the pidfd pinned it, so a reused pid is never hit.
    Returns False if there was no such process."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                if cgroup_marker not in f.read():
                    return False
        except (FileNotFoundError, ProcessLookupError):
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        gone = loop.create_future()
        loop.add_reader(pidfd, lambda: gone.done() or gone.set_result(None))
        try:
            await asyncio.wait_for(gone, timeout)
        finally:
            loop.remove_reader(pidfd)
        return True
    finally:
        os.close(pidfd)


def _last_error(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            return line
        if rec.get("level") in ("error", "fatal"):
            return rec.get("msg", line)
    return lines[-1] if lines else "(empty log)"


@dataclass(frozen=True)
class ProbeResult:
    name: str
    path: str | None
    version: str | None
    ok: bool
    reason: str


def probe_one(name: str, init: Path, uid_base: int, uid_count: int,
              cgroup_parent: str = "hutch-probe") -> ProbeResult:
    """Does `name` run a minimal container here the way hutch runs sandboxes (user
    namespace, cgroup limits, seccomp)? The container runs the static init's --version."""
    path = shutil.which(name) if "/" not in name else (name if os.access(name, os.X_OK) else None)
    if path is None:
        return ProbeResult(name, None, None, False, "not installed")
    ver = subprocess.run([path, "--version"], capture_output=True, text=True)
    version = (ver.stdout or ver.stderr).splitlines()[0] if (ver.stdout or ver.stderr) else None
    if ver.returncode != 0:
        return ProbeResult(name, path, version, False, "--version failed")
    with tempfile.TemporaryDirectory(prefix="hutch-probe-") as tmp:
        os.chmod(tmp, 0o755)
        rootfs = Path(tmp) / "rootfs"
        rootfs.mkdir()
        (rootfs / "init").touch()
        os.chown(rootfs, uid_base, uid_base)
        cid = f"probe{os.getpid()}"
        cfg = {
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["/init", "--version"],
                        "cwd": "/", "env": [], "noNewPrivileges": False},
            "root": {"path": str(rootfs), "readonly": True},
            "mounts": [{"destination": "/init", "type": "bind", "source": str(init),
                        "options": ["bind", "ro"]},
                       {"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {
                "uidMappings": [{"containerID": 0, "hostID": uid_base, "size": uid_count}],
                "gidMappings": [{"containerID": 0, "hostID": uid_base, "size": uid_count}],
                "namespaces": [{"type": t} for t in
                               ("pid", "mount", "ipc", "uts", "user", "network", "cgroup")],
                "cgroupsPath": f"/{cgroup_parent}/{cid}",
                "resources": {"memory": {"limit": 64 << 20}, "pids": {"limit": 16}},
                "seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                            "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO"}]},
            },
        }
        Path(tmp, "config.json").write_text(json.dumps(cfg))
        state = Path(tmp) / "state"
        try:
            proc = subprocess.run([path, "--root", str(state), "run", "--bundle", tmp, cid],
                                  capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            return ProbeResult(name, path, version, False, "timed out running a container")
        finally:
            subprocess.run([path, "--root", str(state), "delete", "--force", cid],
                           capture_output=True)
            cgroup.remove(cgroup_parent, cid)
            cgroup.remove_parent(cgroup_parent)
        if proc.returncode != 0:
            err = (proc.stderr or proc.stdout).strip().splitlines()
            return ProbeResult(name, path, version, False, err[-1] if err else "run failed")
    return ProbeResult(name, path, version, True, "runs user-namespaced containers with limits")


def probe(candidates: tuple[str, ...] = CANDIDATES, *, init: Path, uid_base: int = 100000,
          uid_count: int = 65536) -> list[ProbeResult]:
    return [probe_one(c, init, uid_base, uid_count) for c in candidates]
