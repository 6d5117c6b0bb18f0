"""Lifecycle of sandboxes: the process as specified, cleanup of failed and half-made
sandboxes, reconciliation, and a teardown that leaves nothing on the host."""

from __future__ import annotations

import asyncio
import glob
import os
import subprocess
from pathlib import Path

import pytest

from hutch.errors import AlreadyExistsError, RuntimeError_, SandboxNotFoundError
from hutch.runtime import network
from hutch.runtime.spec import Mount, SandboxSpec

from .conftest import INSTANCE, STATE_DIR, box_spec, make_box

pytestmark = pytest.mark.timeout(300)


def host_objects(sandbox_id: str | None = None) -> dict[str, list[str]]:
    """Every host object of the test instance (or of one sandbox of it) that still exists."""
    key = f"{INSTANCE}-{sandbox_id}" if sandbox_id else f"{INSTANCE}-"
    netns = [n for n in os.listdir("/run/netns") if n.startswith(key)] \
        if os.path.isdir("/run/netns") else []
    netns = [n for n in netns if not n.startswith(f"{INSTANCE}x-")]  # test fake hosts
    where = str(STATE_DIR / "sandboxes" / sandbox_id) if sandbox_id else str(STATE_DIR)
    mounts = [ln.split()[4] for ln in open("/proc/self/mountinfo") if where in ln.split()[4]]
    loops = []
    for f in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            if where in open(f).read():
                loops.append(f)
        except OSError:
            pass
    cg = f"{INSTANCE}/{sandbox_id}" if sandbox_id else INSTANCE
    cgroups = [p for p in glob.glob(f"/sys/fs/cgroup/*/{cg}") + glob.glob(f"/sys/fs/cgroup/{cg}")
               if os.path.isdir(p)]
    out = {"netns": netns, "mounts": mounts, "loops": loops, "cgroups": cgroups}
    if sandbox_id:
        out["dir"] = [where] if os.path.exists(where) else []
        out["address"] = [a for a, o in network.AddressPool(
            STATE_DIR / "addresses", "10.182.0.0/24").owners().items() if o == sandbox_id]
    else:
        tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        out["nft"] = [t for t in tables.splitlines() if t.split()[-1:] == [INSTANCE]]
        prefix = network.veth_prefix(INSTANCE)
        out["links"] = [n for n in os.listdir("/sys/class/net")
                        if n == f"{INSTANCE}0" or n.startswith(prefix)]
    return {k: v for k, v in out.items() if v}


async def test_args_env_cwd_and_hostname(runtime, rootfs):
    spec = SandboxSpec(id="life1", layers=(rootfs,), network="none", hostname="h1",
                       args=("/bin/sh", "-c", "pwd > /run/hutch/pwd; echo $FOO > /run/hutch/foo;"
                             " hostname > /run/hutch/host; exec sleep 1000"),
                       env=(("PATH", "/bin"), ("FOO", "bar baz")), cwd="/tmp")
    h = await runtime.create(spec)
    try:
        assert h.address is None and h.agent_socket == h.run_dir / "agent.sock"
        for _ in range(500):
            if (h.run_dir / "host").exists() and (h.run_dir / "host").read_text():
                break
            await asyncio.sleep(0.01)
        assert (h.run_dir / "pwd").read_text().strip() == "/tmp"
        assert (h.run_dir / "foo").read_text().strip() == "bar baz"
        assert (h.run_dir / "host").read_text().strip() == "h1"
        assert "life1" in await runtime.list()
        assert await runtime.is_running("life1")
        with pytest.raises(AlreadyExistsError):
            await runtime.create(spec)
    finally:
        await runtime.destroy("life1")
    assert host_objects("life1") == {}
    assert not await runtime.is_running("life1")
    await runtime.destroy("life1")  # idempotent
    with pytest.raises(SandboxNotFoundError):
        await runtime.stats("life1")


async def test_concurrent_creates_get_distinct_objects(runtime, rootfs):
    ids = [f"conc{i}" for i in range(4)]
    boxes = await asyncio.gather(*(make_box(runtime, box_spec(i, rootfs)) for i in ids))
    try:
        assert len({b.handle.address for b in boxes}) == 4
        outs = await asyncio.gather(*(b.run("cat /etc/hostname; ip -4 addr show eth0")
                                      for b in boxes))
        for b, (rc, out) in zip(boxes, outs):
            assert rc == 0 and f"inet {b.handle.address}/" in out
    finally:
        await asyncio.gather(*(runtime.destroy(i) for i in ids))
    for i in ids:
        assert host_objects(i) == {}


async def test_init_reaps_orphans(runtime, rootfs):
    box = await make_box(runtime, box_spec("life2", rootfs, network="none"))
    try:
        rc, out = await box.run("for i in 1 2 3 4 5; do (sleep 0.1 &); done; sleep 1; "
                                "cat /proc/[0-9]*/stat 2>/dev/null | grep -c ') Z '")
        assert out.strip().splitlines()[-1] == "0"
    finally:
        await runtime.destroy(box.id)


async def test_bind_mounts_ro_and_rw(runtime, rootfs, tmp_path_factory):
    base = STATE_DIR.parent / "hutch-test-runtime-mounts"
    (base / "ro").mkdir(parents=True, exist_ok=True)
    (base / "rw").mkdir(parents=True, exist_ok=True)
    os.chown(base / "rw", 100000, 100000)
    (base / "ro" / "f").write_text("data\n")
    spec = box_spec("life3", rootfs, network="none",
                    mounts=(Mount(base / "ro", "/mnt/ro"), Mount(base / "rw", "/mnt/rw", False)))
    box = await make_box(runtime, spec)
    try:
        rc, out = await box.run("cat /mnt/ro/f; touch /mnt/ro/x 2>&1; echo w > /mnt/rw/y; echo ok")
        assert "data" in out and "Read-only file system" in out and "ok" in out
        assert (base / "rw" / "y").read_text() == "w\n"
        assert not (base / "ro" / "x").exists()
    finally:
        await runtime.destroy(box.id)
        subprocess.run(["rm", "-rf", str(base)])


async def test_failed_create_leaves_nothing(runtime, rootfs):
    # A layer that does not exist: the overlay mount fails after disk and netns were made.
    spec = SandboxSpec(id="fail1", layers=(Path("/nonexistent/layer"),), args=("/bin/true",))
    with pytest.raises(RuntimeError_):
        await runtime.create(spec)
    assert host_objects("fail1") == {}
    # A bind mount source that does not exist: the OCI runtime itself fails.
    spec = box_spec("fail2", rootfs, mounts=(Mount(Path("/nonexistent/src"), "/x"),))
    with pytest.raises(RuntimeError_) as e:
        await runtime.create(spec)
    assert "run failed" in str(e.value)
    assert host_objects("fail2") == {}
    assert "fail1" not in await runtime.list() and "fail2" not in await runtime.list()


async def test_destroy_removes_half_made_sandboxes(runtime):
    """What a crash mid-create leaves (a dir, a netns, an address) is found and removed."""
    sid = "half1"
    (STATE_DIR / "sandboxes" / sid / "disk").mkdir(parents=True)
    await network.create_netns(network.netns_path(INSTANCE, sid))
    runtime.addresses.allocate(sid)
    assert sid in await runtime.list()
    assert not await runtime.is_running(sid)
    await runtime.destroy(sid)
    assert host_objects(sid) == {}
    assert sid not in await runtime.list()


async def test_start_reconciles_leftovers(runtime):
    """A netns and an address of a sandbox whose directory is gone go at start()."""
    sid = "orphan1"
    await network.create_netns(network.netns_path(INSTANCE, sid))
    runtime.addresses.allocate(sid)
    await runtime.start()
    assert host_objects(sid) == {}


async def test_teardown_leaves_nothing(runtime, rootfs):
    try:
        a = await make_box(runtime, box_spec("down1", rootfs, network="internet", disk_mb=128))
        b = await make_box(runtime, box_spec("down2", rootfs, network="none"))
        before = host_objects()
        assert before["mounts"] and before["loops"] and before["cgroups"] and before["nft"]
        assert len(before["netns"]) >= 2
        pids = [a.init_pid, b.init_pid]
        await runtime.teardown()
        assert host_objects() == {}
        for pid in pids:  # the sandboxes' processes are gone (or dead, awaiting their reaper)
            try:
                state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                continue
            assert state in ("Z", "X") or \
                f"/{INSTANCE}/" not in open(f"/proc/{pid}/cgroup").read()
    finally:
        await runtime.start()  # the session's runtime stays usable for other modules


@pytest.mark.parametrize("bad", [
    dict(id="Bad-Id"), dict(id="a" * 49), dict(network="bridge"), dict(layers=()),
    dict(layers=(Path("/x,upperdir=/etc"),)), dict(hostname="bad\nname"),
])
async def test_invalid_specs_are_refused_before_anything_is_made(runtime, rootfs, bad):
    from hutch.errors import InvalidArgumentError
    fields = dict(id="inval1", layers=(rootfs,), args=("/bin/true",))
    fields.update(bad)
    with pytest.raises(InvalidArgumentError):
        await runtime.create(SandboxSpec(**fields))
    assert host_objects(fields["id"] if fields["id"] == "inval1" else "inval1") == {}


def test_probe_reports_what_works_and_why_not(runtime):
    from hutch.runtime import LocalRuntime
    results = LocalRuntime.probe(("runc", "hutch-no-such-runtime", "/bin/false"))
    by_name = {r.name: r for r in results}
    assert by_name["runc"].ok and by_name["runc"].version.startswith("runc")
    assert not by_name["hutch-no-such-runtime"].ok
    assert by_name["hutch-no-such-runtime"].reason == "not installed"
    assert not by_name["/bin/false"].ok and by_name["/bin/false"].reason
    # the probe cleans up after itself
    assert not glob.glob(f"/sys/fs/cgroup/*/hutch-probe/probe{os.getpid()}")


def _keys_of(uid: int) -> int:
    """Kernel keys charged to host ``uid`` (/proc/key-users: ``uid: usage nkeys/...``)."""
    for line in open("/proc/key-users"):
        owner, _, rest = line.partition(":")
        if int(owner) == uid:
            return int(rest.split()[1].split("/")[0])
    return 0


async def test_sandboxes_charge_no_kernel_keys(runtime, rootfs):
    """Every sandbox's root is one host uid, and the kernel's per-uid key quota
    (kernel.keys.maxkeys, 200) would stop the 201st sandbox if each had a keyring."""
    before = _keys_of(runtime.uid_base)
    ids = [f"keys{i}" for i in range(3)]
    await asyncio.gather(*(runtime.create(box_spec(i, rootfs, network="none")) for i in ids))
    try:
        assert _keys_of(runtime.uid_base) <= before     # (others may end meanwhile)
    finally:
        await asyncio.gather(*(runtime.destroy(i) for i in ids))


def _cpu_cgroup(sandbox_id: str) -> Path:
    for d in (f"/sys/fs/cgroup/cpu/{INSTANCE}/{sandbox_id}",
              f"/sys/fs/cgroup/cpu,cpuacct/{INSTANCE}/{sandbox_id}",
              f"/sys/fs/cgroup/{INSTANCE}/{sandbox_id}"):
        if os.path.isdir(d):
            return Path(d)
    raise AssertionError(f"no cpu cgroup for {sandbox_id}")


def _niceness_of(cgroup_dir: Path) -> list[int]:
    """The niceness of every thread in a cgroup, from the host's /proc (field 19 of stat)."""
    out = []
    for pid in (cgroup_dir / "cgroup.procs").read_text().split():
        for tid in os.listdir(f"/proc/{pid}/task"):
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            out.append(int(stat.rsplit(")", 1)[1].split()[16]))
    assert out, f"no process in {cgroup_dir}"
    return out


async def test_a_background_sandbox_waits_at_the_lowest_weight_until_resized(runtime, rootfs):
    await runtime.create(box_spec("bg1", rootfs, network="none", background=True))
    try:
        cpu = _cpu_cgroup("bg1")
        v2 = (cpu / "cpu.weight").exists()
        weight = cpu / ("cpu.weight" if v2 else "cpu.shares")
        assert int(weight.read_text()) == (1 if v2 else 2)
        # its processes inherited the background niceness of the runtime that started them
        assert set(_niceness_of(cpu)) == {19}
        await runtime.resize("bg1", 0.5, 200)
        assert int(weight.read_text()) == (100 if v2 else 1024)
        assert set(_niceness_of(cpu)) == {0}      # every thread of every process
        stats = await runtime.stats("bg1")
        assert stats["memory_limit"] == 200 * 2**20
        quota = (cpu / "cpu.max").read_text().split()[0] if v2 else \
            (cpu / "cpu.cfs_quota_us").read_text().strip()
        assert quota == "50000"
        await runtime.resize("bg1", 1, 2000)        # raising memory: swap limit first (v1)
        assert (await runtime.stats("bg1"))["memory_limit"] == 2000 * 2**20
    finally:
        await runtime.destroy("bg1")
    with pytest.raises(SandboxNotFoundError):
        await runtime.resize("bg1", 1, 100)
