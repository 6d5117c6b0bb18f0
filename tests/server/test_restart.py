"""Sandboxes survive a server restart; what has no record is reaped; expired ones are killed."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time

import httpx
import pytest
from e2b import Sandbox

from hutch.runtime.spec import SandboxSpec
from hutch.server.store import SandboxRecord, Store

from .conftest import DATA_DIR, INSTANCE, SUBNET, TEMPLATES_DIR


def _runtime():
    from hutch.server.app import build_runtime
    from hutch.server.config import load
    return build_runtime(load({"HUTCH_DATA_DIR": str(DATA_DIR), "HUTCH_INSTANCE": INSTANCE,
                               "HUTCH_SUBNET": SUBNET}))


async def _list_ids() -> list[str]:
    # Reads what is on the host only: no start(), which would compete with a running server.
    return list(await _runtime().list())


async def _make_orphan(sid: str) -> None:
    """Create a sandbox straight through the runtime, so the store has no record of it."""
    from hutch.templates import TemplateStore
    base = TemplateStore(TEMPLATES_DIR).get("base")
    rt = _runtime()
    await rt.start()
    try:
        await rt.create(SandboxSpec(id=sid, layers=tuple(base.layers), args=("sleep", "600"),
                                    env=(("PATH", "/usr/bin:/bin"),)))
    finally:
        await rt.close()


def test_restart_keeps_sandboxes_and_reaps_orphans(server, e2b_env):
    keep = Sandbox.create(timeout=300)
    short = Sandbox.create(timeout=4)
    keep.files.write("/home/user/state.txt", "before restart")
    bg = keep.commands.run("sleep 300", background=True)

    assert server.stop() == 0
    orphan = "orphan" + os.urandom(7).hex()
    asyncio.run(_make_orphan(orphan))
    # A create the server never finished (record still "creating", container made) and a
    # record whose sandbox is gone (say after a host reboot).
    halfway = "halfway" + os.urandom(6).hex() + "0"
    asyncio.run(_make_orphan(halfway))
    gone = "gone" + os.urandom(8).hex()
    store = Store(DATA_DIR / "hutch.db")
    now = time.time()
    for sid, state in ((halfway, "creating"), (gone, "running")):
        store.insert(SandboxRecord(id=sid, template="base", state=state, created_at=now,
                                   end_at=now + 600, cpu=1, memory_mb=256, disk_mb=256,
                                   pids=64, network="none"))
    store.close()
    assert {orphan, halfway} <= set(asyncio.run(_list_ids()))
    time.sleep(5)             # `short` expires while the server is down
    server.start()

    assert keep.is_running()
    assert keep.files.read("/home/user/state.txt") == "before restart"
    assert keep.commands.run("echo after").stdout == "after\n"
    assert any(p.pid == bg.pid for p in keep.commands.list())
    assert not short.is_running()
    running = asyncio.run(_list_ids())
    assert orphan not in running and short.sandbox_id not in running
    assert halfway not in running
    assert keep.sandbox_id in running

    db = sqlite3.connect(DATA_DIR / "hutch.db")
    try:
        state, reason = db.execute("SELECT state, reason FROM sandboxes WHERE id=?",
                                   (short.sandbox_id,)).fetchone()
        halfway_state = db.execute("SELECT state FROM sandboxes WHERE id=?",
                                   (halfway,)).fetchone()[0]
        gone_state = db.execute("SELECT state, reason FROM sandboxes WHERE id=?",
                                (gone,)).fetchone()
    finally:
        db.close()
    assert (state, reason) == ("killed", "timeout")
    assert halfway_state == "error"
    assert gone_state == ("killed", "not found at server start")
    assert keep.kill() is True


def test_restart_keeps_kernels_and_egress_policies(server, e2b_env):
    """A code-interpreter sandbox keeps its kernel's state, and a sandbox its egress policy
    (in the store and in the host's firewall), across a server restart."""
    import subprocess

    from e2b_code_interpreter import Sandbox as CodeSandbox

    from hutch.templates import TemplateStore, TerminalProgress
    asyncio.run(TemplateStore(TEMPLATES_DIR).ensure("code-interpreter", TerminalProgress()))
    ci = CodeSandbox.create(timeout=300, network={"deny_out": ["198.51.100.0/24"]})
    try:
        assert ci.run_code("kept = 41").error is None
        assert server.stop() == 0
        server.start()
        assert ci.run_code("kept + 1").text == "42"
        info = httpx.get(f"{server.url}/sandboxes/{ci.sandbox_id}",
                         headers={"X-API-KEY": server.key}).json()
        assert info["network"]["denyOut"] == ["198.51.100.0/24"]
        table = subprocess.run(["nft", "list", "table", "inet", INSTANCE],
                               capture_output=True, text=True).stdout
        assert f"egress_{ci.sandbox_id}" in table
    finally:
        ci.kill()
