"""The OCI bundle of one sandbox, built by small pure functions.

The order below is the containment pipeline, readable top to bottom: namespaces → id maps →
mounts → cgroup limits → rlimits → capabilities → seccomp → the process. Every function
takes plain values and returns plain JSON-ready data, so each has a golden-file test and the
whole config can be read in one place. Host facts (paths, the mapped uid range, which paths
to mask) are passed in by the caller; nothing here touches the host.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hutch.runtime.seccomp import profile_json
from hutch.runtime.spec import Mount, SandboxSpec

OCI_VERSION = "1.0.2"
INIT_PATH = "/.hutch-init"      # where the host's static init binary appears inside
RUN_PATH = "/run/hutch"         # the run dir: the agent's socket lives here

# Docker's default capability set. It applies only inside the sandbox's user namespace:
# root inside is an unprivileged uid on the host, and the network namespace belongs to the
# host's user namespace, so NET_RAW/NET_ADMIN-like powers never reach the real network.
CAPABILITIES: tuple[str, ...] = (
    "CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_MKNOD", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETFCAP", "CAP_SETGID",
    "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT",
)
#: The kernel's numbers for the capabilities above (linux/capability.h), for a process that
#: hutch confines itself (the agent forked into a sandbox, runtime/zygote.py).
CAPABILITY_NUMBERS: dict[str, int] = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5,
    "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_RAW": 13, "CAP_SYS_CHROOT": 18, "CAP_SYS_ADMIN": 21, "CAP_MKNOD": 27,
    "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31,
}

# Docker's masked paths: files get /dev/null bound over them, directories an empty ro tmpfs.
MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
    "/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware",
)
READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)

# Character devices the sandbox may use (the OCI runtime creates or binds them in /dev).
DEVICES: tuple[tuple[int, int], ...] = (
    (1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2), (136, -1),
)

CPU_PERIOD_US = 100_000
#: cgroup v1 cpu.shares of a sandbox started ahead of need (the minimum; runc turns it into
#: the smallest cpu.weight on v2); normal sandboxes keep the default of 1024.
BACKGROUND_SHARES = 2
# When the host itself runs out of memory, sandbox processes go before the server and the
# rest of the host (each sandbox is also capped by its own memory cgroup).
OOM_SCORE_ADJ = 500


@dataclass(frozen=True)
class Placement:
    """Host facts the bundle needs, resolved by the caller."""

    rootfs: Path                  # the mounted overlay (merged dir)
    run_dir: Path                 # mounted at RUN_PATH, owned by uid_base
    init: Path                    # host path of a static init (tini)
    sysfs: Path                   # a read-only sysfs mounted from inside the sandbox's netns
    netns: Path                   # the network namespace made for the sandbox
    cgroups_path: str             # "/<instance>/<id>"
    uid_base: int
    uid_count: int
    nofile: int                   # RLIMIT_NOFILE soft = hard
    extra_masked: tuple[str, ...] = ()   # e.g. per-CPU thermal_throttle dirs of this host


def namespaces(netns: Path) -> list[dict]:
    """Every namespace is new except the network one, which hutch made (and the host's
    user namespace owns, so root inside cannot reconfigure its own interfaces or firewall)."""
    return [{"type": t} for t in ("pid", "mount", "ipc", "uts", "cgroup", "user")] + [
        {"type": "network", "path": str(netns)}]


def id_mappings(uid_base: int, uid_count: int) -> dict:
    """Root inside is uid_base outside; nothing maps to host root."""
    m = [{"containerID": 0, "hostID": uid_base, "size": uid_count}]
    return {"uidMappings": m, "gidMappings": [dict(x) for x in m]}


def _bind(source: Path | str, destination: str, *, read_only: bool) -> dict:
    opts = ["rbind", "nosuid", "nodev", "ro" if read_only else "rw"]
    return {"destination": destination, "type": "bind", "source": str(source), "options": opts}


def mounts(run_dir: Path, init: Path, sysfs: Path, extra: tuple[Mount, ...]) -> list[dict]:
    """A minimal /dev, read-only /sys and cgroupfs, the run dir, the init, then the spec's.

    /sys is a bind of a sysfs hutch mounted from inside the sandbox's network namespace: the
    sandbox's user namespace does not own that netns, so the kernel refuses it a sysfs."""
    out = [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "bind", "source": str(sysfs),
         "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        {"destination": INIT_PATH, "type": "bind", "source": str(init),
         "options": ["bind", "nosuid", "nodev", "ro"]},
        _bind(run_dir, RUN_PATH, read_only=False),
    ]
    out += [_bind(m.source, m.destination, read_only=m.read_only) for m in extra]
    return out


def cpu_quota(cores: float) -> int:
    """CPU time per period (µs) for a share of ``cores``; the kernel's minimum is 1 ms."""
    return max(1000, round(cores * CPU_PERIOD_US))


def resources(spec: SandboxSpec) -> dict:
    """cgroup limits: memory with no swap on top, CPU as a quota of cores, a pids cap, and a
    device allowlist. The disk quota is not a cgroup: it is the size of the upper layer's fs."""
    memory = spec.memory_mb * 1024 * 1024
    devices = [{"allow": False, "access": "rwm"}]
    devices += [{"allow": True, "type": "c", "major": ma, "minor": mi, "access": "rwm"}
                for ma, mi in DEVICES]
    cpu = {"quota": cpu_quota(spec.cpu), "period": CPU_PERIOD_US}
    if spec.background:
        cpu["shares"] = BACKGROUND_SHARES
    return {
        "devices": devices,
        "memory": {"limit": memory, "swap": memory},
        "cpu": cpu,
        "pids": {"limit": spec.pids},
    }


def rlimits(nofile: int) -> list[dict]:
    return [
        {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
        {"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile},
    ]


#: Only in the bounding set, and only for a process that confines itself with Landlock as it
#: starts (SandboxSpec.landlock): restricting oneself takes CAP_SYS_ADMIN when no_new_privs is
#: off, and the agent drops it from every set right after (agent/landlock.py). Root inside
#: gets the bounding set on exec, so the init holds it too; no sandbox process can reach the
#: init (ptrace needs its capabilities, and Landlock scopes ptrace and signals to the domain).
LANDLOCK_CAPABILITY = "CAP_SYS_ADMIN"


def capabilities(landlock: bool = False) -> dict:
    caps = list(CAPABILITIES)
    bounding = caps + [LANDLOCK_CAPABILITY] if landlock else list(caps)
    return {"bounding": bounding, "effective": list(caps), "permitted": list(caps)}


def process(spec: SandboxSpec, nofile: int) -> dict:
    """PID 1 is the init (it reaps orphans and forwards signals to the process group); it
    runs spec.args as root inside. no_new_privs stays off so sudo/su work inside."""
    return {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": [INIT_PATH, "-g", "--", *spec.args],
        "env": [f"{k}={v}" for k, v in spec.env],
        "cwd": spec.cwd,
        "capabilities": capabilities(spec.landlock),
        "rlimits": rlimits(nofile),
        "noNewPrivileges": False,
        "oomScoreAdj": OOM_SCORE_ADJ,
    }


SECCOMP_PLACEHOLDER = "__hutch_seccomp__"


def config(spec: SandboxSpec, where: Placement) -> dict:
    """The whole config.json as data (seccomp left as a placeholder, see :func:`render`)."""
    linux = {
        **id_mappings(where.uid_base, where.uid_count),
        "namespaces": namespaces(where.netns),
        "cgroupsPath": where.cgroups_path,
        "resources": resources(spec),
        "maskedPaths": list(MASKED_PATHS) + list(where.extra_masked),
        "readonlyPaths": list(READONLY_PATHS),
        "seccomp": SECCOMP_PLACEHOLDER,
    }
    return {
        "ociVersion": OCI_VERSION,
        "process": process(spec, where.nofile),
        "root": {"path": str(where.rootfs), "readonly": False},
        "hostname": spec.hostname,
        "mounts": mounts(where.run_dir, where.init, where.sysfs, spec.mounts),
        "linux": linux,
    }


def render(cfg: dict, seccomp: str | None = None) -> str:
    """Serialize a config, splicing in the seccomp profile serialized once per process."""
    text = json.dumps(cfg, separators=(",", ":"))
    return text.replace(json.dumps(SECCOMP_PLACEHOLDER), seccomp or profile_json(), 1)


def etc_files(spec: SandboxSpec, address: str | None, nameserver: str | None) -> dict[str, str]:
    """/etc/hostname, /etc/hosts and /etc/resolv.conf of the sandbox: written into its own
    writable layer, so root inside may edit them like on any machine."""
    hosts = ["127.0.0.1\tlocalhost", f"127.0.1.1\t{spec.hostname}"]
    if address:
        hosts.append(f"{address}\t{spec.hostname}")
    resolv = f"nameserver {nameserver}\noptions edns0\n" if nameserver else ""
    return {
        "hostname": spec.hostname + "\n",
        "hosts": "\n".join(hosts) + "\n",
        "resolv.conf": resolv,
    }
