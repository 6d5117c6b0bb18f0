"""Checks run with the official e2b SDK in debug mode (envd = http://localhost:49983).

Not collected by pytest: ``test_e2b_sdk.py`` runs this file inside a private network
namespace, so port 49983 there never collides with anything on the host.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import e2b
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.agent.conftest import AgentProcess  # noqa: E402


def sync_checks(workdir):
    sbx = e2b.Sandbox.create()
    assert sbx.is_running()
    r = sbx.commands.run("echo hi; echo err >&2; echo $HOME", envs={"X": "1"})
    assert r.stdout == "hi\n/root\n" and r.stderr == "err\n" and r.exit_code == 0
    with pytest.raises(e2b.CommandExitException) as info:
        sbx.commands.run("exit 4")
    assert info.value.exit_code == 4
    assert sbx.commands.run("id -un", user="nobody").stdout == "nobody\n"
    with pytest.raises(e2b.TimeoutException):
        sbx.commands.run("sleep 10", timeout=1)

    handle = sbx.commands.run("sleep 30", background=True)
    assert handle.pid in [p.pid for p in sbx.commands.list()]
    assert sbx.commands.kill(handle.pid) is True
    assert sbx.commands.kill(handle.pid) is False

    bg = sbx.commands.run("read line; echo got:$line", background=True, stdin=True)
    sbx.commands.send_stdin(bg.pid, "x\n")
    assert bg.wait().stdout == "got:x\n"

    base = str(workdir)
    info_ = sbx.files.write(f"{base}/w/a.txt", "hello", metadata={"Kind": "note"})
    assert info_.path == f"{base}/w/a.txt"
    assert sbx.files.read(f"{base}/w/a.txt") == "hello"
    assert sbx.files.read(f"{base}/w/a.txt", format="bytes") == bytearray(b"hello")
    assert sbx.files.get_info(f"{base}/w/a.txt").metadata == {"kind": "note"}
    sbx.files.write_files([{"path": f"{base}/w/b", "data": b"B"}, {"path": f"{base}/w/c", "data": "C"}])
    sbx.files.write(f"{base}/w/big", io.BytesIO(b"z" * 2_000_000), gzip=True)
    assert len(sbx.files.read(f"{base}/w/big", format="bytes", gzip=True)) == 2_000_000
    assert [e.name for e in sbx.files.list(f"{base}/w")] == ["a.txt", "b", "big", "c"]
    assert sbx.files.exists(f"{base}/w/b") and not sbx.files.exists(f"{base}/w/zz")
    assert sbx.files.make_dir(f"{base}/w/d") is True and sbx.files.make_dir(f"{base}/w/d") is False
    moved = sbx.files.rename(f"{base}/w/b", f"{base}/w/d/b2")
    assert moved.path == f"{base}/w/d/b2"
    sbx.files.remove(f"{base}/w/d")
    with pytest.raises(e2b.FileNotFoundException):
        sbx.files.read(f"{base}/w/d/b2")

    # Watchers, as the SDK's own suite uses them: events are there right after the write.
    sbx.files.make_dir(f"{base}/wd")
    handle = sbx.files.watch_dir(f"{base}/wd")
    sbx.files.write(f"{base}/wd/t.txt", "watched")
    events = handle.get_new_events()
    assert [(e.type, e.name) for e in events] == [
        (e2b.FilesystemEventType.CREATE, "t.txt"), (e2b.FilesystemEventType.CHMOD, "t.txt"),
        (e2b.FilesystemEventType.WRITE, "t.txt")]
    handle.stop()
    handle = sbx.files.watch_dir(f"{base}/wd", recursive=True)
    sbx.files.make_dir(f"{base}/wd/nested")
    sbx.files.write(f"{base}/wd/nested/f.txt", "x")
    assert (e2b.FilesystemEventType.WRITE, "nested/f.txt") in [(e.type, e.name) for e in handle.get_new_events()]
    handle.stop()
    with pytest.raises(e2b.NotFoundException):
        sbx.files.watch_dir(f"{base}/absent")
    with pytest.raises(e2b.SandboxException):
        sbx.files.watch_dir(f"{base}/wd/t.txt")

    # Metadata: returned by the write, kept by rename, cleared by an overwrite without it.
    meta = {"author": "mish", "purpose": "upload"}
    assert sbx.files.write(f"{base}/m.txt", "m", metadata=meta).metadata == meta
    assert sbx.files.write(f"{base}/m2.txt", "m", metadata=meta, use_octet_stream=True).metadata == meta
    assert sbx.files.rename(f"{base}/m.txt", f"{base}/m3.txt").metadata == meta
    assert sbx.files.write(f"{base}/m3.txt", "again").metadata is None
    assert sbx.files.get_info(f"{base}/m3.txt").metadata is None
    with pytest.raises(Exception, match="depth should be at least 1"):
        sbx.files.list(base, depth=-1)

    watch = sbx.files.watch_dir(base, recursive=True)
    sbx.files.write(f"{base}/w/new.txt", "n")
    deadline = time.monotonic() + 10
    names = set()
    while "w/new.txt" not in names:
        assert time.monotonic() < deadline
        names |= {ev.name for ev in watch.get_new_events()}
        time.sleep(0.05)
    watch.stop()

    terminal = sbx.pty.create(e2b.PtySize(rows=24, cols=80))
    sbx.pty.resize(terminal.pid, e2b.PtySize(rows=30, cols=100))
    sbx.pty.send_stdin(terminal.pid, b"stty size; exit\n")
    out = bytearray()
    result = terminal.wait(on_pty=lambda data: out.extend(data))
    assert b"30 100" in out and result.exit_code == 0


def async_checks(workdir):
    async def main():
        sbx = await e2b.AsyncSandbox.create()
        events = []
        handle = await sbx.files.watch_dir(str(workdir), on_event=events.append)
        await sbx.files.write(str(workdir / "async.txt"), "a")
        for _ in range(200):
            if any(e.name == "async.txt" for e in events):
                break
            await asyncio.sleep(0.05)
        await handle.stop()
        assert any(e.name == "async.txt" for e in events)
        t0 = time.monotonic()
        with pytest.raises(e2b.TimeoutException):
            await sbx.commands.run("sleep 20", timeout=1)
        assert time.monotonic() - t0 < 10

    asyncio.run(main())


if __name__ == "__main__":
    os.environ["E2B_DEBUG"] = "true"
    agent = AgentProcess(port=49983)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sync_checks(Path(tmp))
        with tempfile.TemporaryDirectory() as tmp:
            async_checks(Path(tmp))
    finally:
        agent.stop()
    print("e2b SDK checks passed")
