"""A sandbox is isolated: checked from the host and from inside, on a real runc container."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from hutch.runtime.bundle import MASKED_PATHS, READONLY_PATHS

from .conftest import UID_BASE, box_spec, make_box
from .helpers import syscall_probe

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
async def box(runtime, rootfs):
    b = await make_box(runtime, box_spec("iso1", rootfs, network="none", memory_mb=64,
                                         pids=48, disk_mb=64, cpu=0.5))
    yield b
    await runtime.destroy(b.id)


async def test_root_inside_is_uid_base_outside(box):
    rc, out = await box.run("id -u; cat /proc/self/uid_map")
    assert rc == 0
    assert out.split()[:4] == ["0", "0", str(UID_BASE), "65536"]
    status = open(f"/proc/{box.init_pid}/status").read()
    uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
    assert uids == [str(UID_BASE)] * 4
    assert "Seccomp:\t2" in status
    assert "NoNewPrivs:\t0" in status  # sudo must keep working inside
    assert open(f"/proc/{box.init_pid}/oom_score_adj").read().strip() == "500"


async def test_pid_namespace_and_init(box):
    rc, out = await box.run("cat /proc/1/cmdline | tr '\\0' ' '; ls /proc | grep -c '^[0-9]'")
    assert rc == 0
    assert out.startswith("/.hutch-init -g -- /bin/sh -c")
    assert int(out.split()[-1]) < 20  # no host processes visible


async def test_disk_quota_gives_enospc(box, runtime):
    stats = await runtime.stats(box.id)
    assert 50 << 20 < stats["disk_total"] <= 64 << 20
    rc, out = await box.run("dd if=/dev/zero of=/fill bs=1M count=200 2>&1; echo rc=$?; "
                            "rm -f /fill; df -k / | tail -1")
    assert "No space left on device" in out
    assert "rc=1" in out
    rc, out = await box.run("echo still-writable > /after && cat /after")
    assert out.strip() == "still-writable"
    # The run dir (shared with the host) is on the same quota'd filesystem.
    rc, out = await box.run("dd if=/dev/zero of=/run/hutch/fill bs=1M count=200 2>&1; "
                            "rm -f /run/hutch/fill")
    assert "No space left on device" in out


async def test_memory_limit_kills_inside_only(box, runtime):
    stats = await runtime.stats(box.id)
    assert stats["memory_limit"] == 64 << 20
    # The shell keeps the whole command substitution in memory: ~200 MiB > the 64 MiB limit.
    rc, out = await box.run("x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}")
    assert rc != 0
    assert "200000000" not in out
    rc, out = await box.run("echo alive")  # the sandbox (its init and job loop) survived
    assert (rc, out.strip()) == (0, "alive")
    oom = open(f"/sys/fs/cgroup/memory/hutchr/{box.id}/memory.oom_control").read() \
        if os.path.isdir("/sys/fs/cgroup/memory/hutchr") else \
        open(f"/sys/fs/cgroup/hutchr/{box.id}/memory.events").read()
    assert re.search(r"oom_kill (\d+)", oom).group(1) != "0"


async def test_pids_limit(box, runtime):
    # Only shell builtins once the limit is reached: nothing else could fork.
    rc, out = await box.run(
        "(for i in $(seq 80); do sleep 30 & done) 2>&1; set -- /proc/[0-9]*; echo started $#; "
        "for p in /proc/[0-9]*; do read c < $p/comm; [ \"$c\" = sleep ] && kill ${p#/proc/}; "
        "done; echo cleaned")
    assert "can't fork" in out or "Resource temporarily unavailable" in out
    assert int(out.split("started")[1].split()[0]) <= 48
    stats = await runtime.stats(box.id)
    assert stats["pids"] is not None and stats["pids"] <= 48


async def test_sys_and_cgroupfs_and_proc_sys_are_read_only(box):
    rc, out = await box.run(
        "touch /sys/x 2>&1; echo x > /proc/sys/kernel/hostname 2>&1; "
        "mkdir /sys/fs/cgroup/memory/x 2>&1; mkdir /sys/fs/cgroup/pids/x 2>&1; ls /sys/class/net")
    assert out.count("Read-only file system") == 4, out
    assert out.split()[-1] == "lo" and "eth0" not in out  # network "none": loopback only


@pytest.mark.parametrize("path", [p for p in MASKED_PATHS + READONLY_PATHS if os.path.exists(p)])
async def test_masked_and_read_only_proc_paths(box, path):
    """Masked: a file reads empty, a directory lists empty; read-only: writes fail."""
    if path in MASKED_PATHS:
        cmd = f"ls -A {path} | wc -l" if os.path.isdir(path) else f"wc -c < {path}"
        rc, out = await box.run(cmd)
        assert out.strip() == "0", (path, out)
    else:
        rc, out = await box.run(f"grep ' {path} ' /proc/self/mountinfo")
        fields = out.split()
        assert fields[4] == path and "ro" in fields[5].split(","), (path, out)


async def test_dev_is_minimal(box):
    rc, out = await box.run("ls /dev; mknod /tmp/sda b 8 0 2>&1; cat /tmp/sda 2>&1 | head -c 80")
    names = set(out.split())
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue"} <= names
    assert "kmsg" not in names and "mem" not in names and "sda" not in names
    assert "Operation not permitted" in out or "Permission denied" in out


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the probes are x86_64 code")
@pytest.mark.parametrize("name,nr,args,expected", [
    ("unshare(CLONE_NEWUSER)", 272, (0x10000000,), errno.EPERM),
    ("unshare(CLONE_NEWNET)", 272, (0x40000000,), errno.EPERM),
    ("setns", 308, (0xFFFFFFFF, 0), errno.EPERM),
    ("keyctl", 250, (0, 0xFFFFFFFD), errno.EPERM),
    ("add_key", 248, (0, 0, 0, 0, 0), errno.EPERM),
    ("io_uring_setup", 425, (1, 0), errno.EPERM),
    ("bpf", 321, (0, 0, 0), errno.EPERM),
    ("perf_event_open", 298, (0, 0, 0xFFFFFFFF, 0xFFFFFFFF, 0), errno.EPERM),
    ("userfaultfd", 323, (0,), errno.EPERM),
    ("fsopen", 430, (0, 0), errno.EPERM),
    ("open_tree", 428, (0xFFFFFF9C, 0, 0), errno.EPERM),
    ("move_mount", 429, (0, 0, 0, 0, 0), errno.EPERM),
    ("mount", 165, (0, 0, 0, 0, 0), errno.EPERM),
    ("kexec_load", 246, (0, 0, 0, 0), errno.EPERM),
    ("init_module", 175, (0, 0, 0), errno.EPERM),
    ("clone3 (ENOSYS so libc falls back)", 435, (0, 0), errno.ENOSYS),
    ("clone(CLONE_NEWUSER)", 56, (0x10000000 | 17, 0, 0, 0, 0), errno.EPERM),
    ("socket(AF_ALG)", 41, (38, 5, 0), errno.EPERM),
    ("socket(AF_VSOCK)", 41, (40, 1, 0), errno.EPERM),
    ("ioctl(TIOCSTI)", 16, (0, 0x5412, 0), errno.EPERM),
    ("ioctl(TIOCSTI, high bits set)", 16, (0, (1 << 32) | 0x5412, 0), errno.EPERM),
    ("ioctl(TIOCLINUX)", 16, (0, 0x541C, 0), errno.EPERM),
    ("personality(ADDR_NO_RANDOMIZE)", 135, (0x0040000,), errno.EPERM),
    # Controls: allowed calls pass the filter (and fail or succeed on their own terms).
    ("getpid (allowed)", 39, (), 0),
    ("socket(AF_INET) (allowed)", 41, (2, 2, 0), 0),
    ("ioctl(TCGETS) on /dev/null (allowed: ENOTTY from the kernel)", 16, (0, 0x5401, 0),
     errno.ENOTTY),
])
async def test_seccomp(box, name, nr, args, expected):
    probe = box.run_dir / f"probe{nr}"
    probe.write_bytes(syscall_probe(nr, *args))
    os.chmod(probe, 0o755)
    rc, out = await box.run(f"/run/hutch/probe{nr} < /dev/null; echo rc=$?")
    assert f"rc={expected}" in out, (name, out)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the probes are x86_64 code")
async def test_seccomp_blocks_the_32bit_entry(box):
    probe = box.run_dir / "probe32"
    probe.write_bytes(syscall_probe(20, compat=True))  # i386 getpid via int 0x80
    os.chmod(probe, 0o755)
    rc, out = await box.run("/run/hutch/probe32; echo rc=$?")
    assert "rc=0" not in out, out  # killed (SIGSYS) or refused: never executed


async def test_run_dir_and_etc_files(box):
    rc, out = await box.run("touch /run/hutch/agent.sock.test && ls -ln /run/hutch/agent.sock.test;"
                            "cat /etc/hostname; cat /etc/resolv.conf | wc -c; hostname")
    assert (box.run_dir / "agent.sock.test").stat().st_uid == UID_BASE
    assert "sandbox" in out
    lines = out.split("\n")
    assert lines[2].strip() == "0"  # network none: no resolver
    rc, out = await box.run("echo '1.2.3.4 x' >> /etc/hosts && tail -1 /etc/hosts")
    assert out.strip() == "1.2.3.4 x"


async def test_capabilities_stay_inside(box):
    rc, out = await box.run("grep Cap /proc/self/status; hostname evil 2>&1; "
                            "mount -t tmpfs t /tmp 2>&1; echo done")
    capeff = int(re.search(r"CapEff:\s+([0-9a-f]+)", out).group(1), 16)
    assert capeff & (1 << 21) == 0  # no CAP_SYS_ADMIN
    assert capeff & (1 << 0)        # CAP_CHOWN (Docker's default set)
    low = out.lower()
    assert low.count("operation not permitted") + low.count("permission denied") >= 2


async def test_rlimits(box, runtime):
    rc, out = await box.run("ulimit -n; ulimit -c")
    assert out.split() == [str(runtime._nofile), "0"]
    assert runtime._nofile == 1048576 or runtime._nofile >= 1024


def _cgroup_file(kind: str, sid: str, v1: str, v2: str) -> Path | None:
    for p in (Path(f"/sys/fs/cgroup/{kind}/hutchr/{sid}/{v1}"),
              Path(f"/sys/fs/cgroup/hutchr/{sid}/{v2}")):
        if p.exists():
            return p
    return None


async def test_cgroup_limits_as_written(box):
    """memory 64 MiB with no swap on top, CPU 0.5 cores, 48 pids (cgroup v1 or v2 files)."""
    mem = _cgroup_file("memory", box.id, "memory.limit_in_bytes", "memory.max")
    assert int(mem.read_text()) == 64 << 20
    swap = _cgroup_file("memory", box.id, "memory.memsw.limit_in_bytes", "memory.swap.max")
    if swap is not None:
        assert int(swap.read_text()) in (64 << 20, 0)  # v1: mem+swap = mem; v2: swap 0
    quota = _cgroup_file("cpu", box.id, "cpu.cfs_quota_us", "cpu.max")
    assert quota.read_text().split()[0] == "50000"
    pids = _cgroup_file("pids", box.id, "pids.max", "pids.max")
    assert pids.read_text().strip() == "48"


async def test_stats(box, runtime):
    s = await runtime.stats(box.id)
    assert s["cpu_ns"] > 0 and s["memory_bytes"] > 0 and s["pids"] >= 2
    assert s["disk_used"] < s["disk_total"]
