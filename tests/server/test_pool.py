"""The warm pool: a create asking for the defaults gets a sandbox started ahead of time."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import httpx

from .conftest import DATA_DIR
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


def _wait_full(server, size: int) -> None:
    deadline = time.monotonic() + 120
    while httpx.get(server.url + "/health").json()["pool"]["ready"] < size:
        assert time.monotonic() < deadline, "the warm pool did not fill"
        time.sleep(0.1)


def test_warm_pool_hands_out_ready_sandboxes(server):
    server.stop()
    server.extra_env = {"HUTCH_POOL_SIZE": "2"}
    server.start()
    try:
        _wait_full(server, 2)
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
                stale = dict(sbx, envdAccessToken=old_token)
                assert _agent(server, stale, "/envs").status_code == 401
                d = api.get(f"/sandboxes/{sbx['sandboxID']}").json()
                assert d["metadata"] == {"from": "pool"} and d["state"] == "running"
                listed = api.get("/v2/sandboxes", params={"metadata": "from=pool"}).json()
                assert [s["sandboxID"] for s in listed] == [sbx["sandboxID"]]
                # Not what the pool holds: started fresh.
                r = api.post("/v2/sandboxes", json={"templateID": "base",
                                                    "allow_internet_access": False})
                assert r.status_code == 201 and "pool;dur=" not in r.headers["server-timing"]
                assert api.delete(f"/sandboxes/{r.json()['sandboxID']}").status_code == 204
                _wait_full(server, 2)                                    # refilled
                assert len(_pooled_ids()) == 2
            finally:
                api.delete(f"/sandboxes/{sbx['sandboxID']}")
        pooled = _pooled_ids()
    finally:
        server.stop()
        server.extra_env = {}
        server.start()
    # Stopping the server destroyed what the pool held.
    running = set(asyncio.run(_list_ids()))
    assert not running & set(pooled)
    assert _pooled_ids() == []


def test_the_sandbox_limit_is_a_429(server):
    with server.client() as api:
        already = len(api.get("/v2/sandboxes").json())   # normally 0
    server.stop()
    server.extra_env = {"HUTCH_MAX_SANDBOXES": str(already + 1)}
    server.start()
    try:
        with server.client() as api:
            first = api.post("/v2/sandboxes", json={"templateID": "base"})
            assert first.status_code == 201
            try:
                r = api.post("/v2/sandboxes", json={"templateID": "base"})
                assert r.status_code == 429 and "HUTCH_MAX_SANDBOXES" in r.json()["message"]
            finally:
                assert api.delete(f"/sandboxes/{first.json()['sandboxID']}").status_code == 204
            second = api.post("/v2/sandboxes", json={"templateID": "base"})
            assert second.status_code == 201
            api.delete(f"/sandboxes/{second.json()['sandboxID']}")
    finally:
        server.stop()
        server.extra_env = {}
        server.start()
