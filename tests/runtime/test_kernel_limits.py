"""The per-sandbox kernel limits writer, against real user namespaces made by the test."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import pytest

from hutch.errors import RuntimeError_
from hutch.runtime.kernel_limits import SANDBOX_LIMITS, LimitWriter


def _in_userns(pid: int, name: str) -> int:
    """A user-namespace sysctl as seen from inside the namespace of ``pid``."""
    out = subprocess.run(["nsenter", "--preserve-credentials", f"--user=/proc/{pid}/ns/user",
                          "--", "cat", f"/proc/sys/{name.replace('.', '/')}"],
                         capture_output=True, text=True, check=True, timeout=10)
    return int(out.stdout)


@pytest.fixture
def userns_process():
    proc = subprocess.Popen(["unshare", "--user", "sleep", "60"])
    try:
        mine = os.readlink("/proc/self/ns/user")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{proc.pid}/ns/user") == mine:     # not unshared yet
            assert time.monotonic() < deadline
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


async def test_limits_land_in_the_namespace_and_the_writer_outlives_its_helper(userns_process):
    writer = LimitWriter()
    try:
        assert _in_userns(userns_process, "user.max_inotify_instances") != \
            SANDBOX_LIMITS["user.max_inotify_instances"]
        await writer.limit_sandbox(userns_process)
        for name, value in SANDBOX_LIMITS.items():
            assert _in_userns(userns_process, name) == value
        # the helper process dies (killed by someone): the next request starts a new one
        first = writer._proc                     # noqa: SLF001 - the helper under test
        first.kill()
        await first.wait()
        await writer.limit_sandbox(userns_process)
        assert writer._proc is not first         # noqa: SLF001
        # a process that is gone: a clear error, and the writer still serves
        with pytest.raises(RuntimeError_, match="inotify limits failed: FileNotFoundError"):
            await writer.limit_sandbox(2 ** 22 + 7)
        await asyncio.wait_for(writer.limit_sandbox(userns_process), 10)
    finally:
        await writer.close()
    assert writer._proc is None                   # noqa: SLF001
