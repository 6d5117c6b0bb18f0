"""The agent's fork into a sandbox (runtime/zygote.py): into an init the OCI runtime has not
yet let exec, and the pieces that need no sandbox (where `sleep` is in a stack of layers,
which cgroups a process is in)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from hutch.runtime import cgroup, command
from hutch.runtime.local import _find_in_layers, _wait_command
from hutch.runtime.spec import AgentFork, Mount
from hutch.server import agent_lib

from .conftest import box_spec, make_box


async def test_the_agent_enters_an_init_that_has_not_exec_yet(runtime, rootfs, monkeypatch,
                                                             tmp_path):
    """`runc run` returns once its init may go on, often before the init has exec'd: it is
    then still runc's own non-dumpable process, which a process in the sandbox's user
    namespace may not look into. The agent must enter all the same. `runc create` alone holds
    the init there for as long as the test needs."""
    if os.path.basename(runtime.driver.binary) not in ("runc", "crun"):
        pytest.skip("agents are forked in with runc and crun only")
    driver = runtime.driver

    async def create_only(container_id, bundle, *, stdio, log, pid_file, background=False):
        fd = os.open(stdio, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            done = await command.run(driver._argv(
                "create", "--no-new-keyring", "--bundle", str(bundle), "--pid-file",
                str(pid_file), container_id, log=log), stdout=fd, stderr=fd)
        finally:
            os.close(fd)
        assert done.returncode == 0, log.read_text()

    monkeypatch.setattr(driver, "run", create_only)
    lib = agent_lib.stage(tmp_path)
    spec = box_spec("forkearly", rootfs, network="none",
                    mounts=(Mount(lib, "/opt/hutch/lib/hutch"),),
                    agent_fork=AgentFork(lib=lib.parent, lib_inside="/opt/hutch/lib",
                                         socket="/run/hutch/agent.sock"))
    handle = await runtime.create(spec)
    try:
        init = int((runtime.sandboxes_dir / spec.id / "init.pid").read_text())
        assert "(runc:[2:INIT])" in Path(f"/proc/{init}/stat").read_text()
        deadline = time.monotonic() + 20
        while not handle.agent_socket.exists():
            assert time.monotonic() < deadline, "the forked agent never listened"
            await asyncio.sleep(0.02)
        reader, writer = await asyncio.open_unix_connection(str(handle.agent_socket))
        writer.write(b"GET /health HTTP/1.1\r\nHost: agent\r\n\r\n")
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 20)
        writer.close()
        assert status.startswith(b"HTTP/1.1 2"), status
    finally:
        await runtime.destroy(spec.id)


async def test_destroy_ends_a_host_process_that_joined_the_sandboxs_cgroups(runtime, rootfs):
    """What a forked agent's first step is while it enters: a host process in the sandbox's
    cgroups but not in its pid namespace, so killing the init does not end it. Destroy must
    end it and leave no cgroup (a server killed mid-create leaves its zygote finishing the
    fork while the next server removes the sandbox)."""
    import subprocess

    box = await make_box(runtime, box_spec("joined", rootfs, network="none"))
    joiner = subprocess.Popen(["sleep", "600"])
    try:
        for procs in cgroup.procs_files_of(box.init_pid):
            procs.write_text(str(joiner.pid))
        await runtime.destroy(box.id)
        assert joiner.wait(timeout=10) == -9
        assert box.id not in cgroup.list_ids(runtime.instance)
    finally:
        if joiner.poll() is None:
            joiner.kill()
            joiner.wait()


def test_sleep_is_found_in_the_topmost_layer_that_names_it(tmp_path):
    low, high = tmp_path / "low", tmp_path / "high"
    (low / "usr/bin").mkdir(parents=True)
    (low / "usr/bin/sleep").write_text("")
    (high / "usr").mkdir(parents=True)
    names = ("usr/bin/sleep", "bin/sleep")
    assert _find_in_layers((high, low), names) == "/usr/bin/sleep"
    assert _find_in_layers((high,), names) is None
    # /bin a link into /usr, as in a merged-/usr layout
    only_bin = tmp_path / "merged"
    (only_bin / "usr/bin").mkdir(parents=True)
    (only_bin / "bin").symlink_to("usr/bin")
    (only_bin / "usr/bin/sleep").write_text("")
    assert _find_in_layers((only_bin,), ("bin/sleep",)) == "/bin/sleep"


def test_a_whiteout_hides_sleep_of_the_layers_below(tmp_path):
    low, high = tmp_path / "low", tmp_path / "high"
    (low / "usr/bin").mkdir(parents=True)
    (low / "usr/bin/sleep").write_text("")
    (high / "usr/bin").mkdir(parents=True)
    os.mknod(high / "usr/bin/sleep", 0o600 | 0o020000, os.makedev(0, 0))  # overlayfs whiteout
    assert _find_in_layers((high, low), ("usr/bin/sleep",)) is None
    assert _find_in_layers((low,), ("usr/bin/sleep",)) == "/usr/bin/sleep"


def test_procs_files_name_every_hierarchy_this_process_is_in():
    files = cgroup.procs_files_of(os.getpid())
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    assert len(files) == len(lines)
    for f in files:
        assert f.name == "cgroup.procs" and str(os.getpid()) in f.read_text().split()


def test_a_sleep_of_its_own_runs_under_the_pause_name(tmp_path):
    layer = tmp_path / "debian"
    (layer / "usr/bin").mkdir(parents=True)
    (layer / "usr/bin/sleep").write_text("")
    (layer / "bin").symlink_to("usr/bin")
    link, args = _wait_command((layer,))
    assert link == "/usr/bin/sleep" and args == ("/run/hutch/hutch-pause", "2147483647")


def test_a_multi_call_sleep_is_run_by_its_binarys_name(tmp_path):
    """busybox picks its tool by the name it was run as: through a link named hutch-pause
    it would know no such tool, and the sandbox would end with its init's child."""
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "bin").mkdir(parents=True)
    (lower / "bin/busybox").write_text("")
    (upper / "bin").mkdir(parents=True)
    (upper / "bin/sleep").symlink_to("busybox")
    link, args = _wait_command((upper, lower))
    assert link is None and args == ("/bin/busybox", "sleep", "2147483647")
    assert _wait_command((lower,)) is None
