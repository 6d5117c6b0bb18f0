"""The agent forked into each sandbox from the host's zygote holds exactly the sandbox's
confinement, asserted from outside: on the host, against the sandbox's own init (which the
OCI runtime started), and from inside as root."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from e2b import CommandExitException, PtySize, Sandbox

from tests.conftest import TEST_DATA_DIR, restarted_server
from tests.security.test_isolation import host_pids_of

NAMESPACES = ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup")
CAP_SYS_ADMIN = 21


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def init_and_agent(sandbox_id: str) -> tuple[int, int]:
    pids = host_pids_of(sandbox_id)
    init = [p for p in pids if cmdline(p).startswith(b"/.hutch-init\0")]
    agent = [p for p in pids if cmdline(p).startswith(b"hutch.agent\0")]
    assert len(init) == 1 and len(agent) == 1, [(p, cmdline(p)) for p in pids]
    return init[0], agent[0]


def status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def test_agent_is_in_every_namespace_cgroup_and_root_of_the_sandbox(sbx):
    init, agent = init_and_agent(sbx.sandbox_id)
    for ns in NAMESPACES:
        assert os.readlink(f"/proc/{agent}/ns/{ns}") == os.readlink(f"/proc/{init}/ns/{ns}"), ns
    assert Path(f"/proc/{agent}/cgroup").read_text() == Path(f"/proc/{init}/cgroup").read_text()
    inside, theirs = os.stat(f"/proc/{agent}/root/"), os.stat(f"/proc/{init}/root/")
    assert (inside.st_dev, inside.st_ino) == (theirs.st_dev, theirs.st_ino)
    # a process of the sandbox's pid namespace: it has a pid there, and its parent is outside
    assert status(agent)["NSpid"].split()[-1] != "1"
    assert len(status(agent)["NSpid"].split()) == 2


def test_agent_holds_the_sandbox_ids_capabilities_and_filter(sbx):
    init, agent = init_and_agent(sbx.sandbox_id)
    mine, its_init = status(agent), status(init)
    assert mine["Uid"] == its_init["Uid"] and mine["Gid"] == its_init["Gid"]
    assert all(int(u) >= 100000 for u in mine["Uid"].split())  # root inside, nobody outside
    assert mine["Groups"] == ""
    bounding = int(mine["CapBnd"], 16)
    # the init's bounding set, less CAP_SYS_ADMIN (dropped once Landlock is in place)
    assert bounding == int(its_init["CapBnd"], 16) & ~(1 << CAP_SYS_ADMIN)
    assert int(mine["CapEff"], 16) == int(mine["CapPrm"], 16) == bounding
    assert int(mine["CapInh"], 16) == 0 and int(mine["CapAmb"], 16) == 0
    assert mine["Seccomp"] == "2" and mine["NoNewPrivs"] == "0"
    assert Path(f"/proc/{agent}/oom_score_adj").read_text().strip() == "500"
    limits = Path(f"/proc/{agent}/limits").read_text()
    assert limits == Path(f"/proc/{init}/limits").read_text()


def test_agent_shows_no_host_path_and_root_inside_cannot_look_into_it(sbx):
    init, agent = init_and_agent(sbx.sandbox_id)
    listing = sbx.commands.run("ps -eo args", user="root").stdout
    assert "hutch.agent --forked" in listing
    assert str(TEST_DATA_DIR) not in listing and "/.venv" not in listing, listing
    inner = status(agent)["NSpid"].split()[-1]
    for what in ("exe", "root", "cwd", "maps", "environ", "fd"):
        with pytest.raises(CommandExitException):
            sbx.commands.run(f"ls -l /proc/{inner}/{what}/ /proc/{inner}/{what} >/dev/null",
                             user="root")
    # the sandbox's own python is what kernels and user code get, not the host's
    assert sbx.commands.run("python3 -c 'import sys; print(sys.base_prefix)'").stdout.strip()


@pytest.fixture
def unforked_server(hutch_server):
    """The session's server restarted with agents started inside each sandbox; restarted as
    it was after (the session's fixtures follow the new process)."""
    with restarted_server(hutch_server, {"HUTCH_AGENT_FORK": "false"}) as server:
        yield server


def test_agent_starts_inside_when_forking_is_off(unforked_server, monkeypatch):
    for k, v in unforked_server.env.items():
        monkeypatch.setenv(k, v)
    sandbox = Sandbox.create(timeout=120)
    try:
        pids = host_pids_of(sandbox.sandbox_id)
        lines = [cmdline(p) for p in pids]
        assert any(b"-m\0hutch.agent\0" in c and c.startswith(b"/.hutch-init\0")
                   for c in lines), lines
        assert not any(c.startswith(b"hutch.agent\0") for c in lines)
        assert sandbox.commands.run("echo hi").stdout == "hi\n"
    finally:
        sandbox.kill()


def test_the_inits_waiting_child_survives_a_pkill_sleep(sbx):
    """The init's child is the template's sleep under a name of its own: killing every
    `sleep` inside, as root, must not end the sandbox with it."""
    assert "hutch-pause" in sbx.commands.run("ps -eo comm").stdout
    sbx.commands.run("sleep 600", background=True)
    sbx.commands.run("pkill -x sleep; sleep 0.2; true", user="root")
    assert sbx.commands.run("echo still here").stdout == "still here\n"
    assert "sleep" not in sbx.commands.run("ps -eo comm").stdout.split()


def test_a_killed_zygote_is_started_again(hutch_server, server_env):
    """The zygote is one process: if it dies (the OOM killer, an operator), the next create
    starts a new one, and sandboxes forked from the old one go on."""
    before = Sandbox.create(timeout=120)
    try:
        server = hutch_server.process.pid
        zygotes = [p for p in map(int, filter(str.isdigit, os.listdir("/proc")))
                   if _parent(p) == server and _cmdline_or_empty(p).startswith(
                       b"hutch.agent\0--zygote\0")]
        assert len(zygotes) == 1, zygotes
        os.kill(zygotes[0], 9)
        deadline = time.monotonic() + 10
        while _cmdline_or_empty(zygotes[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        after = Sandbox.create(timeout=120)
        try:
            assert after.commands.run("echo new").stdout == "new\n"
        finally:
            after.kill()
        assert before.commands.run("echo old").stdout == "old\n"
    finally:
        before.kill()


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _cmdline_or_empty(pid: int) -> bytes:
    try:
        return cmdline(pid)
    except OSError:
        return b""


def test_the_agent_needs_nothing_of_the_templates_python(sbx):
    """The forked agent is the host's Python with its modules loaded before the fork: with
    the template's standard library gone, every API it serves still works (a template whose
    python3 is another version, or another layout, cannot break it)."""
    stdlib = sbx.commands.run("python3 -c 'import os; print(os.path.dirname(os.__file__))'",
                              user="root").stdout.strip()
    assert stdlib.startswith("/usr/lib/python3")
    sbx.commands.run(f"mv {stdlib} {stdlib}.gone", user="root")
    assert sbx.commands.run("echo still", envs={"A": "1"}).stdout == "still\n"
    handle = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(handle.pid, "typed\n")
    assert handle.pid in {p.pid for p in sbx.commands.list()}
    sbx.commands.kill(handle.pid)
    sbx.files.write("/tmp/f.txt", "data")
    assert sbx.files.read("/tmp/f.txt") == "data"
    assert [e.name for e in sbx.files.list("/tmp") if e.name == "f.txt"] == ["f.txt"]
    sbx.files.make_dir("/tmp/d")
    sbx.files.rename("/tmp/f.txt", "/tmp/d/g.txt")
    assert sbx.files.exists("/tmp/d/g.txt")
    watcher = sbx.files.watch_dir("/tmp/d")
    sbx.files.write("/tmp/d/h.txt", "x")
    events = []
    deadline = time.monotonic() + 10
    while not events and time.monotonic() < deadline:
        events = watcher.get_new_events()
        time.sleep(0.05)
    watcher.stop()
    assert events
    sbx.files.remove("/tmp/d")
    terminal = sbx.pty.create(size=PtySize(rows=24, cols=80))
    sbx.pty.resize(terminal.pid, PtySize(rows=30, cols=100))
    sbx.pty.kill(terminal.pid)
