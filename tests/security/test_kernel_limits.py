"""Kernel objects counted per user, not per cgroup, cannot be hoarded by one sandbox.

Every sandbox's user namespace is made by host root, so the kernel charges inotify instances
made inside any sandbox to host root as well: without a limit per sandbox, one sandbox's
unprivileged user could take all of them, leaving other sandboxes (and host root's own
services) unable to watch files.
"""

from __future__ import annotations

import ctypes
import os
import time

import pytest
from e2b import Sandbox

from hutch.runtime.kernel_limits import HOST_LIMITS, SANDBOX_LIMITS

HOARD = ("import ctypes, time; l = ctypes.CDLL(None, use_errno=True); "
         "fds = [l.inotify_init() for _ in range({n})]; "
         "print(sum(1 for f in fds if f >= 0), flush=True); time.sleep(120)")


@pytest.fixture
def two(server_env):
    a, b = Sandbox.create(timeout=180), Sandbox.create(timeout=180)
    yield a, b
    a.kill()
    b.kill()


def test_one_sandbox_cannot_take_every_inotify_instance(two):
    a, b = two
    share = SANDBOX_LIMITS["user.max_inotify_instances"]
    want = max(1000, 4 * share)
    a.commands.run(f"python3 -c '{HOARD.format(n=want)}' > /tmp/hoard 2>&1",
                   background=True, user="user")
    deadline = time.monotonic() + 60
    while not (got := a.commands.run("cat /tmp/hoard").stdout.strip()):
        assert time.monotonic() < deadline, "the hoarding process did not report"
        time.sleep(0.2)
    assert int(got) <= share
    # While it holds them, host root and the other sandbox still get theirs.
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init()
    assert fd >= 0, os.strerror(ctypes.get_errno())
    os.close(fd)
    handle = b.files.watch_dir("/tmp")
    b.files.write("/tmp/seen", "x")
    deadline = time.monotonic() + 30
    while not any(e.name == "seen" for e in handle.get_new_events()):
        assert time.monotonic() < deadline, "the other sandbox's watch saw nothing"
        time.sleep(0.1)
    handle.stop()


def test_host_wide_counts_leave_room_for_every_sandbox_at_its_limits(hutch_server):
    """Counts the kernel keeps for the whole host (open files, pids, threads, inotify) are
    raised at start past what many sandboxes at their own limits use together, so none of
    them is what stops a sandbox (each one's pids and memory limits do that)."""
    for name, floor in HOST_LIMITS.items():
        assert int(open(f"/proc/sys/{name}").read()) >= floor, name
