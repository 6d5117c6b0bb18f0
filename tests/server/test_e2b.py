"""The official `e2b` SDK, unchanged, through this server's control and data planes."""

from __future__ import annotations

import time
import uuid

import pytest
from e2b import AsyncSandbox, Sandbox, SandboxQuery
from e2b.exceptions import AuthenticationException, SandboxException


def test_sdk_lifecycle_commands_and_files(e2b_env):
    tag = uuid.uuid4().hex
    t0 = time.perf_counter()
    sbx = Sandbox.create(metadata={"tag": tag}, envs={"LEVEL": "sandbox"}, timeout=120)
    print(f"\nSandbox.create: {(time.perf_counter() - t0) * 1e3:.1f} ms")
    try:
        r = sbx.commands.run("echo $LEVEL; whoami; pwd")
        assert r.stdout.split() == ["sandbox", "user", "/home/user"]
        rtts = []
        for _ in range(10):
            t = time.perf_counter()
            sbx.commands.run("true")
            rtts.append(time.perf_counter() - t)
        rtts.sort()
        print(f"commands.run('true') round trip: median {rtts[5] * 1e3:.1f} ms, "
              f"min {rtts[0] * 1e3:.1f} ms")

        sbx.files.write("/home/user/hello.txt", "hello through the proxy")
        assert sbx.files.read("/home/user/hello.txt") == "hello through the proxy"
        blob = bytes(range(256)) * 4096
        sbx.files.write("/home/user/blob.bin", blob)
        assert sbx.files.read("/home/user/blob.bin", format="bytes") == blob

        listed = Sandbox.list(query=SandboxQuery(metadata={"tag": tag})).next_items()
        assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]
        info = sbx.get_info()
        assert info.metadata == {"tag": tag} and info.template_id == "base"
        metrics = sbx.get_metrics()
        assert metrics and metrics[-1].mem_used > 0 and metrics[-1].mem_total >= metrics[-1].mem_used
        assert metrics[-1].disk_total > 0 and 0 <= metrics[-1].cpu_used_pct <= 100
        again = Sandbox.connect(sbx.sandbox_id)
        assert again.commands.run("echo again").stdout == "again\n"
        assert sbx.is_running()
    finally:
        assert sbx.kill() is True
    assert not sbx.is_running()
    assert Sandbox.kill(sbx.sandbox_id) is False


def test_sdk_set_timeout_expires_the_sandbox(e2b_env):
    sbx = Sandbox.create(timeout=120)
    try:
        sbx.set_timeout(2)
        deadline = time.monotonic() + 60
        while sbx.is_running() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not sbx.is_running()
    finally:
        sbx.kill()


def test_kill_drops_open_streams(e2b_env):
    sbx = Sandbox.create()
    handle = sbx.commands.run("sleep 60", background=True)
    assert sbx.kill() is True
    with pytest.raises(SandboxException):
        handle.wait()
    assert not sbx.is_running()


def test_sdk_pagination(e2b_env):
    tag = uuid.uuid4().hex
    made = [Sandbox.create(metadata={"page": tag}) for _ in range(3)]
    try:
        pager = Sandbox.list(query=SandboxQuery(metadata={"page": tag}), limit=2)
        seen = []
        while pager.has_next:
            seen += [s.sandbox_id for s in pager.next_items()]
        assert seen == [s.sandbox_id for s in made]
    finally:
        for s in made:
            s.kill()


def test_sdk_bad_key_is_an_authentication_error(e2b_env, monkeypatch):
    monkeypatch.setenv("E2B_API_KEY", "e2b_" + "1" * 40)
    with pytest.raises(AuthenticationException):
        Sandbox.create()


async def test_async_sdk(e2b_env):
    sbx = await AsyncSandbox.create()
    try:
        r = await sbx.commands.run("echo async-$((6*7))")
        assert r.stdout == "async-42\n"
        await sbx.files.write("/home/user/a.bin", b"\x00\xff")
        assert await sbx.files.read("/home/user/a.bin", format="bytes") == b"\x00\xff"
    finally:
        assert await sbx.kill() is True


def test_requests_right_behind_a_streamed_download(e2b_env):
    """A download is streamed by the agent; the next request must not be garbled by it."""
    sbx = Sandbox.create()
    try:
        blob = bytes(range(256)) * 4096
        sbx.files.write("/home/user/blob.bin", blob)
        for i in range(20):
            assert sbx.files.read("/home/user/blob.bin", format="bytes") == blob
            assert sbx.commands.run(f"echo {i}").stdout == f"{i}\n"
    finally:
        sbx.kill()
