"""Resource exhaustion from the attacker's side: hostile commands run through the public SDK
against real sandboxes, and what must hold afterwards.

Each test starts a second "canary" sandbox before the attack; after it the canary must still
answer a command correctly, the server must answer /health, and the server's resident memory
must not have grown by more than ``RSS_SLACK`` (a relay that buffered what it relays would).
The runtime-level checks of the limits themselves (pids.max, memory.max, the disk quota as
written) are in tests/runtime/test_isolation.py; the basic "a fork bomb / a memory hog / a full
disk stays inside" checks with the e2b SDK are in tests/security/test_isolation.py. This file
goes further: what the API reports, whether the sandbox is still usable, what is left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import time
import urllib.request
from pathlib import Path

import pytest

from hutch import CommandExitError, Sandbox
from hutch.errors import TimeoutError_

pytestmark = pytest.mark.timeout(900)

#: How much the server's RSS may grow across one attack (allocator noise, caches, the
#: canary's connections): far below what buffering a flood (gigabytes) would cost.
RSS_SLACK_KB = 200 * 1024


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def host_pids_of(sandbox_id: str) -> list[int]:
    """Host pids of every process in the sandbox's cgroup (named by its id)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cgroups = Path(f"/proc/{entry}/cgroup").read_text()
        except OSError:
            continue
        if f"/{sandbox_id}" in cgroups:
            pids.append(int(entry))
    return pids


def health_ok(url: str) -> bool:
    with urllib.request.urlopen(url + "/health", timeout=30) as r:
        return r.status == 200


@contextlib.contextmanager
def sandbox(**kwargs):
    sbx = Sandbox.create(timeout=600, **kwargs)
    try:
        yield sbx
    finally:
        with contextlib.suppress(Exception):
            sbx.kill()
        with contextlib.suppress(Exception):
            sbx.close()


@pytest.fixture
def host(server_env, hutch_server):
    """The canary sandbox and the server's health, checked after the test's attack."""
    with sandbox() as canary:
        assert canary.commands.run("echo canary").stdout == "canary\n"
        before = rss_kb(hutch_server.process.pid)
        yield canary
        assert canary.commands.run("echo canary", timeout=120).stdout == "canary\n"
        assert health_ok(hutch_server.url)
        after = rss_kb(hutch_server.process.pid)
        assert after - before < RSS_SLACK_KB, f"server RSS grew from {before} kB to {after} kB"


def wait_until(check, timeout: float = 120, step: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def answers(sbx, timeout: float = 180) -> bool:
    """Whether the sandbox runs a command correctly within ``timeout`` (retrying: a fork
    bomb's last processes may take a moment to die and give the pids back)."""
    def once():
        try:
            return sbx.commands.run("echo alive", timeout=30, request_timeout=60).stdout == "alive\n"
        except Exception:
            return False
    return wait_until(once, timeout, step=2)


# -- 1. processes and threads -----------------------------------------------------------------

def test_a_fork_bomb_is_held_by_pids_and_ends_with_its_command(host, hutch_server):
    with sandbox() as sbx:
        bomb = sbx.commands.run("bash -c ':(){ :|:& };:' >/dev/null 2>&1; sleep 1000",
                                background=True, timeout=20)
        time.sleep(8)
        assert len(host_pids_of(sbx.sandbox_id)) <= 1024 + 8  # pids.max, plus a race margin
        with pytest.raises(TimeoutError_):
            bomb.wait()
        # The command's timeout killed its process group, forks included: the sandbox answers.
        assert answers(sbx)
        # Its processes are gone (the dead ones are reaped by the sandbox's init meanwhile).
        def bashes() -> int:
            return int(sbx.commands.run("ps -e -o comm= | grep -c bash || true").stdout)
        assert wait_until(lambda: bashes() <= 2, 60), bashes()
        sbx.kill()
        assert wait_until(lambda: not host_pids_of(sbx.sandbox_id), 60)


def test_a_thread_explosion_stops_at_the_pids_limit(host):
    code = ("import threading, time\n"
            "n = 0\n"
            "try:\n"
            "    while True:\n"
            "        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
            "        n += 1\n"
            "except RuntimeError as e:\n"
            "    print(n, e, flush=True)\n")
    with sandbox() as sbx:
        sbx.files.write("/tmp/threads.py", code)
        r = sbx.commands.run("python3 /tmp/threads.py", timeout=300)
        count, _, message = r.stdout.partition(" ")
        assert 100 < int(count) < 1024, r.stdout
        assert "can't start new thread" in message
        assert answers(sbx)


# -- 2. memory --------------------------------------------------------------------------------

def test_a_memory_balloon_is_oom_killed_inside_and_reported(host):
    balloon = ("python3 -c \"chunks = []\n"
               "while True: chunks.append(bytearray(b'x' * (32 << 20)))\"")
    with sandbox() as sbx:
        assert Sandbox.get_metrics(sbx.sandbox_id)[0].oom_kills == 0
        # What commands start is the OOM killer's first choice, before the agent (init's 500;
        # the agent raises a command's score just after its exec, hence the sleep).
        assert sbx.commands.run("sleep 1; cat /proc/self/oom_score_adj /proc/1/oom_score_adj"
                                ).stdout == "1000\n500\n"
        with pytest.raises(CommandExitError) as err:
            sbx.commands.run(balloon, timeout=300)
        # killed by SIGKILL: exit code -1 and "signal: killed" as envd says it; 137 through a shell
        assert (err.value.exit_code, err.value.error) == (-1, "signal: killed") \
            or err.value.exit_code == 137, (err.value.exit_code, err.value.error)
        assert answers(sbx)
        metrics = sbx.get_metrics()[0]
        assert metrics.oom_kills >= 1
        assert metrics.mem_used < metrics.mem_total
    assert host.get_metrics()[0].oom_kills == 0


# -- 3. disk ----------------------------------------------------------------------------------

def _df(sbx, flag: str) -> int:
    """Used blocks (1K) or inodes of the sandbox's root filesystem."""
    out = sbx.commands.run(f"df -P {flag} / | tail -1").stdout.split()
    return int(out[2])


def test_filling_the_disk_is_enospc_inside_and_deleting_frees_it(host):
    with sandbox(disk_mb=256) as sbx:
        used = _df(sbx, "-k")
        with pytest.raises(CommandExitError) as err:
            sbx.commands.run("dd if=/dev/zero of=/home/user/fill bs=1M status=none", timeout=300)
        assert "No space left on device" in err.value.stderr
        assert _df(sbx, "-k") > used + 200 * 1024
        # Full inside; the other sandbox writes on.
        assert host.commands.run("head -c 1M /dev/zero > /tmp/c && wc -c < /tmp/c").stdout == "1048576\n"
        sbx.commands.run("rm /home/user/fill")
        assert _df(sbx, "-k") < used + 16 * 1024
        r = sbx.commands.run("head -c 64M /dev/zero > /home/user/again && wc -c < /home/user/again")
        assert r.stdout == f"{64 << 20}\n"


def test_filling_the_inodes_is_enospc_inside_and_deleting_frees_them(host):
    fill = ("import errno, os\n"
            "os.makedirs('/home/user/many', exist_ok=True)\n"
            "n = 0\n"
            "try:\n"
            "    while True:\n"
            "        if n % 10000 == 0: os.makedirs(f'/home/user/many/{n // 10000}', exist_ok=True)\n"
            "        open(f'/home/user/many/{n // 10000}/{n}', 'x').close()\n"
            "        n += 1\n"
            "except OSError as e:\n"
            "    print(n, errno.errorcode[e.errno], flush=True)\n")
    with sandbox(disk_mb=256) as sbx:
        sbx.files.write("/tmp/fill.py", fill)
        r = sbx.commands.run("python3 /tmp/fill.py", timeout=600)
        count, code = r.stdout.split()
        assert code == "ENOSPC" and int(count) > 1000, r.stdout
        free = sbx.commands.run("df -P -i / | tail -1").stdout.split()[3]
        assert int(free) == 0
        with pytest.raises(CommandExitError):
            sbx.commands.run("touch /home/user/one-more")
        assert host.commands.run("touch /tmp/c1 /tmp/c2 && ls /tmp/c1 /tmp/c2").exit_code == 0
        sbx.commands.run("rm -rf /home/user/many", timeout=600)
        assert sbx.commands.run("touch /home/user/one-more && echo ok").stdout == "ok\n"


# -- 4. output --------------------------------------------------------------------------------

class RssWatch:
    """The server's highest RSS seen while a flood runs (sampled from a thread)."""

    def __init__(self, pid: int) -> None:
        import threading

        self.pid, self.peak, self._stop = pid, rss_kb(pid), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, rss_kb(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def test_an_output_flood_streams_through_with_bounded_memory(host, hutch_server):
    """2 GiB of output: the server relays it without holding it (its RSS stays within
    RSS_SLACK_KB) and the SDK keeps at most OUTPUT_CAP of it, with a marker saying so,
    while a callback still sees every byte."""
    from hutch.sdk import OUTPUT_CAP

    seen = [0]
    with sandbox() as sbx:
        before = rss_kb(hutch_server.process.pid)
        watch = RssWatch(hutch_server.process.pid)
        try:
            r = sbx.commands.run("yes | head -c 2G", timeout=1200, request_timeout=1200,
                                 on_stdout=lambda text: seen.__setitem__(0, seen[0] + len(text)))
        finally:
            peak = watch.stop()
        assert seen[0] == 2 << 30
        assert peak - before < RSS_SLACK_KB, f"server RSS went from {before} kB to {peak} kB"
        assert len(r.stdout) < OUTPUT_CAP + 1024
        assert r.stdout.startswith("y\ny\n")
        assert r.stdout.endswith(f"[hutch: output truncated: {(2 << 30) - OUTPUT_CAP} more characters not kept]\n")
        assert answers(sbx)


def test_endless_output_ends_at_the_timeout_with_bounded_memory(host, hutch_server):
    from hutch.sdk import OUTPUT_CAP

    with sandbox() as sbx:
        before = rss_kb(hutch_server.process.pid)
        handle = sbx.commands.run("yes flood", background=True, timeout=30)
        with pytest.raises(TimeoutError_):
            handle.wait()
        assert rss_kb(hutch_server.process.pid) - before < RSS_SLACK_KB
        assert len(handle.stdout) < OUTPUT_CAP + 1024
        assert "[hutch: output truncated:" in handle.stdout
        assert sbx.commands.run("pgrep -x yes || echo none").stdout == "none\n"


# -- 5. processes left behind -----------------------------------------------------------------

def _sleepers(sbx) -> set[str]:
    out = sbx.commands.run("ps -e -o args= | grep '^sleep 10[0-9][0-9]$' || true").stdout
    return set(out.split("\n")) - {""}


def test_background_children_outlive_their_command_and_die_with_the_sandbox(host):
    with sandbox() as sbx:
        # Both return at once, though the second's child still holds the output pipe open.
        sbx.commands.run("nohup sleep 1001 >/dev/null 2>&1 &", timeout=60)
        sbx.commands.run("setsid sleep 1002 &", timeout=60)
        sbx.commands.run("(setsid sleep 1003 &)", timeout=60)
        assert _sleepers(sbx) == {"sleep 1001", "sleep 1002", "sleep 1003"}
        assert len(host_pids_of(sbx.sandbox_id)) >= 4
        sbx.kill()
        assert wait_until(lambda: not host_pids_of(sbx.sandbox_id), 60), \
            host_pids_of(sbx.sandbox_id)


def test_a_timeout_kills_the_whole_process_tree_setsid_children_included(host):
    with sandbox() as sbx:
        with pytest.raises(TimeoutError_):
            sbx.commands.run("setsid sleep 1004 & nohup sleep 1005 >/dev/null 2>&1 & "
                             "bash -c 'setsid sleep 1006 & sleep 1007' & sleep 1008", timeout=5)
        assert wait_until(lambda: not _sleepers(sbx), 30), _sleepers(sbx)
        # An explicit kill of a background command does the same.
        handle = sbx.commands.run("setsid sleep 1009 & sleep 1010", background=True, timeout=0)
        assert wait_until(lambda: len(_sleepers(sbx)) == 2, 30)
        assert handle.kill()
        assert wait_until(lambda: not _sleepers(sbx), 30), _sleepers(sbx)


# -- 6. file descriptors ----------------------------------------------------------------------

HOARD = """\
import errno, os, sys, time
# Children open files until they fail and report how; the parent counts the reports and the
# children that died (the OOM killer may take some once their kernel memory fills the cgroup).
n_children = int(sys.argv[1])
r, w = os.pipe()
for _ in range(n_children):
    if os.fork() == 0:
        os.close(r)
        n = 0
        try:
            while True:
                os.open("/dev/null", os.O_RDONLY)
                n += 1
        except OSError as e:
            os.write(w, f"{errno.errorcode[e.errno]} {n}\\n".encode())
        time.sleep(600)
        os._exit(0)
os.close(w)
codes, died, buf = {}, 0, b""
while sum(codes.values()) + died < n_children:
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
        died += pid != 0
    except ChildProcessError:
        break
    os.set_blocking(r, False)
    try:
        buf += os.read(r, 65536)
    except BlockingIOError:
        time.sleep(0.05)
    *lines, buf = buf.split(b"\\n")
    for line in lines:
        codes[line.split()[0].decode()] = codes.get(line.split()[0].decode(), 0) + 1
print(" ".join(f"{k}={v}" for k, v in sorted(codes.items())), f"died={died}", flush=True)
time.sleep(600)
"""


def test_fd_exhaustion_inside_leaves_the_agent_and_the_host_working(host, hutch_server):
    """150 processes each opening files until they fail: together more than a default
    fs.file-max (about 2.5 million on a 24 GiB host, while each sandbox process may hold
    RLIMIT_NOFILE of them). The host-wide count must not be what stops them, or every other
    sandbox would get ENFILE; their memory cgroup (struct files are charged to it) must."""
    with sandbox() as sbx:
        sbx.files.write("/tmp/hoard.py", HOARD)
        sbx.commands.run("python3 /tmp/hoard.py 150 > /tmp/hoard.out 2>&1", background=True,
                         timeout=0)
        report = wait_until(lambda: sbx.commands.run("cat /tmp/hoard.out").stdout.strip(),
                            600, step=2)
        assert report and "ENFILE" not in report, report
        assert "EMFILE" in report or "ENOMEM" in report or "died=0" not in report, report
        # While they hold it all: the agent runs commands and reads files, the other sandbox
        # and the host open files.
        assert sbx.commands.run("echo works").stdout == "works\n"
        assert sbx.files.read("/tmp/hoard.py") == HOARD
        assert host.commands.run("cat /etc/hostname > /tmp/h && wc -l < /tmp/h").stdout == "1\n"
        with open("/etc/hostname") as f:
            f.read()


# -- 7. CPU -----------------------------------------------------------------------------------

def _p50_true(sbx, n: int = 15) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        sbx.commands.run("true")
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def test_a_cpu_hog_does_not_starve_another_sandbox(host):
    """Two busy loops in sandbox A (held to its 1-CPU quota) while sandbox B (the canary)
    runs `true`: B's median latency stays under max(10 x its idle median, 250 ms). A
    containment bound, deliberately generous for a shared 2-core machine, not a speed goal."""
    idle = _p50_true(host)
    with sandbox() as sbx:
        for _ in range(2):
            sbx.commands.run("while :; do :; done", background=True, timeout=0)
        time.sleep(3)
        busy = _p50_true(host)
        bound = max(10 * idle, 0.25)
        assert busy < bound, f"p50 of `true` {busy * 1e3:.0f} ms with the hog, " \
                             f"{idle * 1e3:.0f} ms idle (bound {bound * 1e3:.0f} ms)"
        assert sbx.get_metrics()[0].cpu_used_pct > 50
