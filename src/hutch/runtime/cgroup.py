"""Reading and removing a sandbox's cgroups, on cgroup v2 and on v1/hybrid hosts.

The OCI runtime creates the cgroups and writes the limits (from `linux.resources`); this
module finds them: for stats, for list() after a restart, and to remove what a half-made or
killed sandbox left behind. It also changes a running sandbox's memory and CPU limits (a
warm-pool sandbox handed out with the size the create asked for): a few file writes, where the
runtime's own `update` command would be a process start.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def is_v2(root: Path = ROOT) -> bool:
    """Pure v2 (unified) host: the root itself is cgroup2 and lists controllers."""
    return (root / "cgroup.controllers").exists()


def cgroups_path(instance: str, sandbox_id: str) -> str:
    return f"/{instance}/{sandbox_id}"


def hierarchies(root: Path = ROOT) -> list[Path]:
    """Mount points of every hierarchy (v1 controllers, named ones, the hybrid v2 mount)."""
    if is_v2(root):
        return [root]
    out = []
    try:
        for entry in sorted(os.listdir(root)):
            p = root / entry
            if p.is_dir() and not p.is_symlink() and (p / "cgroup.procs").exists():
                out.append(p)
    except FileNotFoundError:
        pass
    return out


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _stat_field(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == key:
                return int(v)
    except (OSError, ValueError):
        pass
    return None


def stats(instance: str, sandbox_id: str, root: Path = ROOT) -> dict | None:
    """cpu_ns, memory_bytes, memory_limit, pids and oom_kills (processes the OOM killer took
    because the sandbox hit its memory limit, since it started) of the sandbox; None if it
    has no cgroup."""
    rel = cgroups_path(instance, sandbox_id).lstrip("/")
    if is_v2(root):
        d = root / rel
        if not d.is_dir():
            return None
        usec = _stat_field(d / "cpu.stat", "usage_usec")
        return {
            "cpu_ns": usec * 1000 if usec is not None else None,
            "memory_bytes": _read_int(d / "memory.current"),
            "memory_limit": _read_int(d / "memory.max"),
            "pids": _read_int(d / "pids.current"),
            "oom_kills": _stat_field(d / "memory.events", "oom_kill"),
        }
    mem = root / "memory" / rel
    if not mem.is_dir():
        return None
    cpuacct = root / "cpuacct" / rel
    if not cpuacct.is_dir():
        cpuacct = root / "cpu,cpuacct" / rel
    return {
        "cpu_ns": _read_int(cpuacct / "cpuacct.usage"),
        "memory_bytes": _read_int(mem / "memory.usage_in_bytes"),
        "memory_limit": _read_int(mem / "memory.limit_in_bytes"),
        "pids": _read_int(root / "pids" / rel / "pids.current"),
        "oom_kills": _stat_field(mem / "memory.oom_control", "oom_kill"),  # kernel 4.13+
    }


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def set_limits(instance: str, sandbox_id: str, memory_bytes: int, cpu_quota_us: int,
               cpu_period_us: int, root: Path = ROOT) -> None:
    """Memory (no swap on top) and CPU limits of a running sandbox, as the runtime sets them
    at start, and the default CPU weight. Raises OSError when the sandbox has no cgroup, or
    when it already uses more memory than the new limit (the kernel refuses)."""
    rel = cgroups_path(instance, sandbox_id).lstrip("/")
    if is_v2(root):
        d = root / rel
        _write(d / "memory.max", str(memory_bytes))
        if (d / "memory.swap.max").exists():
            _write(d / "memory.swap.max", "0")
        _write(d / "cpu.max", f"{cpu_quota_us} {cpu_period_us}")
        _write(d / "cpu.weight", "100")
        return
    mem = root / "memory" / rel
    memsw = mem / "memory.memsw.limit_in_bytes"
    limit = mem / "memory.limit_in_bytes"
    # v1 keeps memory ≤ memory+swap at every step: raise the pair top first, lower it bottom
    # first.
    order = [limit, memsw]
    if memory_bytes > (_read_int(limit) or 0):
        order.reverse()
    for path in order:
        if path is limit or path.exists():
            _write(path, str(memory_bytes))
    cpu = root / "cpu" / rel
    if not cpu.is_dir():
        cpu = root / "cpu,cpuacct" / rel
    _write(cpu / "cpu.cfs_period_us", str(cpu_period_us))
    _write(cpu / "cpu.cfs_quota_us", str(cpu_quota_us))
    _write(cpu / "cpu.shares", "1024")


def _procs_file(instance: str, sandbox_id: str, root: Path) -> Path:
    rel = cgroups_path(instance, sandbox_id).lstrip("/")
    return (root / rel / "cgroup.procs") if is_v2(root) else (root / "pids" / rel / "cgroup.procs")


def renice(instance: str, sandbox_id: str, niceness: int = 0, root: Path = ROOT,
           proc: Path = Path("/proc")) -> int:
    """Set the niceness of every thread in the sandbox's cgroup; returns how many changed.

    A warm-pool sandbox's processes inherit the low priority its OCI runtime was started at
    (so that refills never slow a live request); a claim gives them back the default. Only the
    host can: lowering a niceness needs CAP_SYS_NICE, which sandboxes lack. Niceness is per
    thread on Linux, so every task is set, and a pass is repeated while it still finds threads
    at another value (one created by a not yet reniced thread inherits the old niceness).
    Raises FileNotFoundError when the sandbox has no cgroup."""
    procs = _procs_file(instance, sandbox_id, root)
    changed = 0
    for _ in range(4):
        found = 0
        for pid in procs.read_text().split():
            try:
                tids = os.listdir(proc / pid / "task")
            except FileNotFoundError:
                continue
            for tid in tids:
                try:
                    if os.getpriority(os.PRIO_PROCESS, int(tid)) != niceness:
                        os.setpriority(os.PRIO_PROCESS, int(tid), niceness)
                        found += 1
                except (ProcessLookupError, FileNotFoundError):
                    continue
        changed += found
        if not found:
            break
    return changed


def list_ids(instance: str, root: Path = ROOT) -> set[str]:
    ids: set[str] = set()
    for h in hierarchies(root):
        try:
            ids.update(e for e in os.listdir(h / instance) if (h / instance / e).is_dir())
        except (FileNotFoundError, NotADirectoryError):
            continue
    return ids


def remove(instance: str, sandbox_id: str, root: Path = ROOT) -> bool:
    """rmdir the sandbox's cgroups in every hierarchy (they must be empty of processes;
    leaf-first, so nested cgroups a runtime made below them go too). False if one stayed."""
    rel = cgroups_path(instance, sandbox_id).lstrip("/")
    return all([_rmdir_tree(h / rel) for h in hierarchies(root)])


def remove_parent(instance: str, root: Path = ROOT) -> None:
    for h in hierarchies(root):
        try:
            (h / instance).rmdir()
        except OSError:
            pass


def _rmdir_tree(path: Path) -> bool:
    if not path.is_dir():
        return True
    for child in path.iterdir():
        if child.is_dir():
            _rmdir_tree(child)
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def kill_all(instance: str, sandbox_id: str, root: Path = ROOT) -> None:
    """SIGKILL every process left in the sandbox's cgroup (when the OCI runtime could not)."""
    import signal

    rel = cgroups_path(instance, sandbox_id).lstrip("/")
    if is_v2(root):
        try:
            (root / rel / "cgroup.kill").write_text("1")
            return
        except OSError:
            pass
    procs = _procs_file(instance, sandbox_id, root)
    for _ in range(3):
        try:
            pids = [int(p) for p in procs.read_text().split()]
        except OSError:
            return
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _mounts() -> dict[frozenset, Path]:
    """Hierarchy → mount point: each v1 hierarchy keyed by its controllers (and "name=x" of
    a named one), as /proc/PID/cgroup lists them; the v2 hierarchy by the empty set."""
    with open("/proc/cgroups") as f:
        controllers = {line.split()[0] for line in f if not line.startswith("#")}
    out: dict[frozenset, Path] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, options = fields[sep + 1], fields[sep + 3]
            if fields[3] != "/" or fstype not in ("cgroup", "cgroup2"):
                continue       # a bind of a subtree is not where the hierarchy's paths start
            key = frozenset(o for o in options.split(",")
                            if fstype == "cgroup" and (o in controllers or o.startswith("name=")))
            out.setdefault(key, Path(fields[4]))
    return out


_MOUNTS: dict[frozenset, Path] | None = None


def procs_files_of(pid: int) -> list[Path]:
    """The cgroup.procs file of every cgroup ``pid`` is in: writing a pid into each of them
    puts a process exactly where ``pid`` is (as a runtime's exec does)."""
    global _MOUNTS
    if _MOUNTS is None:
        _MOUNTS = _mounts()
    out = []
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, names, path = line.rstrip("\n").split(":", 2)
            mount = _MOUNTS.get(frozenset(n for n in names.split(",") if n))
            if mount is not None:
                out.append(mount / path.lstrip("/") / "cgroup.procs")
    return out
