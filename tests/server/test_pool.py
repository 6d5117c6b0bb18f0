"""Warm pools: a create a pool can serve gets a sandbox started ahead of time, with what the
create asked for applied (env, metadata, timeout, size, egress policy); the rest start cold."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from hutch.runtime import cgroup

from ..interpreter.test_zygote import processes, zygotes
from .conftest import DATA_DIR, INSTANCE
from .test_api import _agent, _run
from .test_restart import _list_ids


def _pooled_ids() -> list[str]:
    db = sqlite3.connect(DATA_DIR / "hutch.db")
    try:
        return [r[0] for r in db.execute("SELECT id FROM sandboxes WHERE state='pooled'")]
    finally:
        db.close()


def _token_of(sid: str) -> str:
    db = sqlite3.connect(DATA_DIR / "hutch.db")
    try:
        return db.execute("SELECT access_token FROM sandboxes WHERE id=?", (sid,)).fetchone()[0]
    finally:
        db.close()


def pools(server) -> dict[str, dict]:
    return {p["template"]: p for p in httpx.get(server.url + "/health").json().get("pools", [])}


def wait_full(server, template: str, size: int, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while (p := pools(server)[template])["ready"] < size:
        assert time.monotonic() < deadline, f"the {template} pool did not fill: {p}"
        time.sleep(0.1)
    return p


@pytest.fixture
def pooled_server(server, request):
    """The suite's server restarted with HUTCH_POOL set to the test's parameter; restarted
    without it after (which destroys what the pools hold)."""
    server.stop()
    server.extra_env = {"HUTCH_POOL": request.param}
    server.start()
    try:
        yield server
    finally:
        pooled = _pooled_ids()
        server.stop()
        server.extra_env = {}
        server.start()
        assert not set(asyncio.run(_list_ids())) & set(pooled)
        assert _pooled_ids() == []


@pytest.mark.parametrize("pooled_server", ["base=2"], indirect=True)
def test_warm_pool_hands_out_ready_sandboxes(pooled_server):
    server = pooled_server
    wait_full(server, "base", 2)
    pooled = _pooled_ids()
    assert len(pooled) == 2
    old_token = _token_of(pooled[0])
    with server.client() as api:
        assert api.get(f"/sandboxes/{pooled[0]}").status_code == 404   # not handed out
        assert pooled[0] not in [s["sandboxID"] for s in api.get("/v2/sandboxes").json()]
        r = api.post("/v2/sandboxes", json={"templateID": "base", "envVars": {"A": "pool"},
                                            "metadata": {"from": "pool"}, "timeout": 60})
        assert r.status_code == 201, r.text
        assert "pool;dur=" in r.headers["server-timing"]
        print(f"\ncreate from the warm pool: {r.headers['server-timing']}")
        sbx = r.json()
        try:
            assert sbx["sandboxID"] == pooled[0]
            assert sbx["envdAccessToken"] != old_token
            assert _run(server, sbx, "echo $A; whoami") == ("pool\nuser\n", 0)
            # it waited at the lowest priority; what it runs once handed out does not
            assert _run(server, sbx, "nice") == ("0\n", 0)
            stale = dict(sbx, envdAccessToken=old_token)
            assert _agent(server, stale, "/envs").status_code == 401
            d = api.get(f"/sandboxes/{sbx['sandboxID']}").json()
            assert d["metadata"] == {"from": "pool"} and d["state"] == "running"
            listed = api.get("/v2/sandboxes", params={"metadata": "from=pool"}).json()
            assert [s["sandboxID"] for s in listed] == [sbx["sandboxID"]]
            # Not what the pool holds: started fresh, and not counted as a miss.
            for body in ({"allow_internet_access": False}, {"diskSizeMB": 1024},
                         {"secure": False}):
                r = api.post("/v2/sandboxes", json={"templateID": "base", **body})
                assert r.status_code == 201 and "pool;dur=" not in r.headers["server-timing"]
                assert api.delete(f"/sandboxes/{r.json()['sandboxID']}").status_code == 204
            stats = wait_full(server, "base", 2)                       # refilled
            assert (stats["hits"], stats["misses"], stats["refills"]) == (1, 0, 1)
            assert stats["last_refill_seconds"] > 0
            assert len(_pooled_ids()) == 2
        finally:
            api.delete(f"/sandboxes/{sbx['sandboxID']}")


def _limits(sandbox_id: str) -> tuple[int, str]:
    """Memory limit (bytes) and CPU quota of a sandbox, read from its cgroup on the host."""
    root = cgroup.ROOT
    rel = cgroup.cgroups_path(INSTANCE, sandbox_id).lstrip("/")
    if cgroup.is_v2():
        return (int((root / rel / "memory.max").read_text()),
                (root / rel / "cpu.max").read_text().split()[0])
    cpu = root / "cpu" / rel
    if not cpu.is_dir():
        cpu = root / "cpu,cpuacct" / rel
    return (int((root / "memory" / rel / "memory.limit_in_bytes").read_text()),
            (cpu / "cpu.cfs_quota_us").read_text().strip())


@pytest.mark.parametrize("pooled_server", ["base=1"], indirect=True)
def test_a_claim_applies_the_size_and_egress_policy_asked_for(pooled_server):
    server = pooled_server
    wait_full(server, "base", 1)
    with server.client() as api:
        r = api.post("/v2/sandboxes", json={
            "templateID": "base", "cpuCount": 1.5, "memoryMB": 300,
            "network": {"denyOut": ["198.51.100.7"]}})
        assert r.status_code == 201, r.text
        assert "pool;dur=" in r.headers["server-timing"]
        sbx = r.json()
        sid = sbx["sandboxID"]
        try:
            assert _limits(sid) == (300 * 2**20, "150000")
            d = api.get(f"/sandboxes/{sid}").json()
            assert (d["cpuCount"], d["memoryMB"]) == (2, 300)     # E2B counts whole cores
            ruleset = subprocess.run(["nft", "list", "chain", "inet", INSTANCE,
                                      f"egress_{sid}"], capture_output=True, text=True)
            assert ruleset.returncode == 0 and "198.51.100.7" in ruleset.stdout, ruleset
            # The limit is in force inside: a process past 300 MiB is killed there.
            out, code = _run(server, sbx, "python3 -c 'b = bytearray(400 << 20)'; echo $?")
            assert out.strip() == "137", out
            # A claim with the defaults leaves them as they were.
            wait_full(server, "base", 1)
            r = api.post("/v2/sandboxes", json={"templateID": "base"})
            assert "pool;dur=" in r.headers["server-timing"]
            other = r.json()["sandboxID"]
            assert _limits(other) == (1024 * 2**20, "100000")
            assert api.delete(f"/sandboxes/{other}").status_code == 204
        finally:
            api.delete(f"/sandboxes/{sid}")
    assert not Path(f"/sys/fs/cgroup/memory/{INSTANCE}/{sid}").exists()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("pooled_server", ["code-interpreter=1"], indirect=True)
def test_a_pooled_code_interpreter_has_its_kernel_warm(pooled_server, monkeypatch):
    from e2b_code_interpreter import Sandbox

    server = pooled_server
    for k, v in server.e2b_env().items():
        monkeypatch.setenv(k, v)
    wait_full(server, "code-interpreter", 1, timeout=600)
    # the SDK's default template (code-interpreter-v1), with variables the pooled sandbox
    # did not start with: its kernel gets them in place and stays warm
    sbx = Sandbox.create(envs={"FROM_CREATE": "it's set", "LANG": "C.UTF-8"})
    try:
        assert sbx.sandbox_id not in _pooled_ids()
        first = sbx.run_code("import os, sys; (sorted(m for m in ('numpy', 'pandas', "
                             "'matplotlib.pyplot') if m in sys.modules), "
                             "os.environ['FROM_CREATE'], os.environ['LANG'])")
        assert first.error is None, first.error
        assert first.text == "(['matplotlib.pyplot', 'numpy', 'pandas'], \"it's set\", 'C.UTF-8')"
        assert first.execution_count == 1            # the warming did not count
        # Nothing of the warming or of the variables' setting is in the user's namespace.
        names = sbx.run_code("sorted(n for n in dir() if n.startswith('_hutch'))")
        assert names.text == "[]"
        assert sbx.run_code("import subprocess; subprocess.run(['sh', '-c', "
                            "'echo $FROM_CREATE'], capture_output=True, text=True).stdout"
                            ).text == "\"it's set\\n\""
        stats = pools(server)["code-interpreter"]
        assert stats["hits"] == 1
        # The kernels' zygote was started with the pool: the first new context is its fork.
        (zygote,) = zygotes(processes(sbx))
        ctx = sbx.create_code_context()
        kernel = int(sbx.run_code("import os; os.getpid()", context=ctx).text)
        assert processes(sbx)[kernel]["ppid"] == zygote
    finally:
        sbx.kill()
    # A variable only read as Python starts: the kernel is restarted with it instead.
    wait_full(server, "code-interpreter", 1, timeout=600)
    sbx = Sandbox.create(envs={"PYTHONHASHSEED": "7"})
    try:
        r = sbx.run_code("import os, sys; (os.environ['PYTHONHASHSEED'], 'pandas' in "
                         "sys.modules, sys.flags.hash_randomization)")
        assert r.error is None, r.error
        assert r.text == "('7', False, 1)"
        assert pools(server)["code-interpreter"]["hits"] == 2
    finally:
        sbx.kill()
