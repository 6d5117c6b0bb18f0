"""Tenant quotas: per-key limits on sandboxes, CPU, memory and creates per minute.

The admission logic is checked directly (races included, without timing); the rest drives the
public API of a real server with keys made through ``POST /keys``. Every key made here is
revoked at the end, which also kills whatever sandboxes it still runs.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from types import SimpleNamespace

import httpx
import pytest
from e2b import Sandbox
from e2b.exceptions import RateLimitException

from hutch.errors import InvalidArgumentError, RateLimitError
from hutch.server.config import load
from hutch.server.quotas import Ledger, Quotas, effective, parse_overrides
from hutch.server.store import Store

TIMEOUT = 120
SMALL = {"cpuCount": 1, "memoryMB": 256}


# -- admission, without a server ---------------------------------------------------------------


def _rec(id_: str, owner: str, cpu: float = 1, mem: int = 256, state: str = "running"):
    return SimpleNamespace(id=id_, owner=owner, cpu=cpu, memory_mb=mem, state=state)


def _quotas(**kw) -> Quotas:
    base = dict(max_sandboxes=0, max_cpu=0.0, max_memory_mb=0, creates_per_minute=0)
    return Quotas(**{**base, **kw})


def test_reservations_count_until_released():
    ledger = Ledger()
    q = _quotas(max_sandboxes=2)
    live = [_rec("a", "k1")]
    first = ledger.admit(live, "k1", q, 1, 256, max_sandboxes=100)
    # The first create has not shown up as live yet: its reservation holds the last slot.
    with pytest.raises(RateLimitError, match=r"at most 2 concurrent sandboxes per key "
                                             r"\(2 running\)"):
        ledger.admit(live, "k1", q, 1, 256, max_sandboxes=100)
    # Booting, its record is live and reserved at once: counted once, not twice.
    first.sandbox_id = "b"
    live.append(_rec("b", "k1", state="creating"))
    assert ledger.holding(live, "k1").sandboxes == 2
    ledger.release(first)
    assert ledger.holding(live, "k1").sandboxes == 2
    live.pop()                                   # it failed, or was killed
    ledger.admit(live, "k1", q, 1, 256, max_sandboxes=100)


def test_server_wide_limit_counts_every_tenant_and_reservation():
    ledger = Ledger()
    live = [_rec("a", "k1"), _rec("p", None, state="pooled")]
    ledger.admit(live, "admin", None, 1, 256, max_sandboxes=2)
    with pytest.raises(RateLimitError, match="HUTCH_MAX_SANDBOXES"):
        ledger.admit(live, "k2", _quotas(), 1, 256, max_sandboxes=2)


def test_resources_and_rate():
    ledger = Ledger()
    live = [_rec("a", "k1", cpu=1, mem=512), _rec("b", "k2", cpu=4, mem=4096)]
    with pytest.raises(RateLimitError) as exc:
        ledger.admit(live, "k1", _quotas(max_cpu=1.5), 1, 256, max_sandboxes=100)
    assert exc.value.message == ("tenant quota: at most 1.5 CPU cores per key "
                                 "(1 in use, this create asks for 1)")
    ledger.admit(live, "k1", _quotas(max_cpu=1.5), 0.5, 256, max_sandboxes=100)
    with pytest.raises(RateLimitError) as exc:
        ledger.admit(live, "k1", _quotas(max_memory_mb=1024), 1, 512, max_sandboxes=100)
    assert exc.value.message == ("tenant quota: at most 1024 MiB of memory per key "
                                 "(768 MiB in use, this create asks for 512 MiB)")
    # Creates are counted per key, whatever became of them; the window slides.
    rate = Ledger()
    q = _quotas(creates_per_minute=2)
    for _ in range(2):
        rate.release(rate.admit([], "k1", q, 1, 256, max_sandboxes=100))
    with pytest.raises(RateLimitError) as exc:
        rate.admit([], "k1", q, 1, 256, max_sandboxes=100)
    assert exc.value.message == ("tenant quota: at most 2 creates per minute per key "
                                 "(2 in the last minute)")
    rate.admit([], "k2", q, 1, 256, max_sandboxes=100)
    for times in rate._recent.values():
        for i in range(len(times)):
            times[i] -= 61
    rate.admit([], "k1", q, 1, 256, max_sandboxes=100)


def test_the_exempt_and_the_unlimited_pass():
    ledger = Ledger()
    live = [_rec(str(i), "admin") for i in range(10)]
    ledger.admit(live, "admin", None, 8, 8192, max_sandboxes=100)
    ledger.admit([_rec(str(i), "k1") for i in range(10)], "k1", _quotas(), 8, 8192,
                 max_sandboxes=100)


def test_defaults_come_from_settings_and_overrides_win():
    cfg = load({"HUTCH_TENANT_MAX_SANDBOXES": "7", "HUTCH_TENANT_MAX_CPU": "3.5",
                "HUTCH_TENANT_MAX_MEMORY_MB": "2048", "HUTCH_TENANT_CREATES_PER_MINUTE": "0"})
    assert effective({}, cfg) == Quotas(7, 3.5, 2048, 0)
    assert effective({"max_sandboxes": 0, "max_cpu": 1.0}, cfg) == Quotas(0, 1.0, 2048, 0)
    d = load({})
    assert effective(None, d) == Quotas(50, 50.0, 51200, 60)


def test_override_validation():
    assert parse_overrides({"max_sandboxes": 3, "max_cpu": 2, "creates_per_minute": None}) == \
        {"max_sandboxes": 3, "max_cpu": 2.0, "creates_per_minute": None}
    for bad in ([], {"max_gpus": 1}, {"max_sandboxes": -1}, {"max_sandboxes": 1.5},
                {"max_memory_mb": "1"}, {"max_cpu": True}, {"max_cpu": float("inf")}):
        with pytest.raises(InvalidArgumentError):
            parse_overrides(bad)


def test_overrides_are_stored_and_an_older_store_gains_them(tmp_path):
    path = tmp_path / "hutch.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, "
               "hash TEXT NOT NULL UNIQUE, created_at REAL NOT NULL, revoked_at REAL, "
               "is_admin INTEGER NOT NULL DEFAULT 0)")
    db.execute("INSERT INTO api_keys (id, name, hash, created_at) VALUES ('old', 'o', 'h', 1)")
    db.commit()
    db.close()
    store = Store(path)
    try:
        assert store.get_key("old").quotas == {}
        store.add_key("new", "n", "e2b_plain", quotas={"max_sandboxes": 3, "max_cpu": None})
        assert store.key_for("e2b_plain").quotas == {"max_sandboxes": 3}
        store.set_key_quotas("new", {"max_cpu": 2.5, "max_sandboxes": None})
        assert store.get_key("new").quotas == {"max_cpu": 2.5}
        store.set_key_quotas("old", {"creates_per_minute": 0})
        assert store.get_key("old").quotas == {"creates_per_minute": 0}   # 0 is a value
    finally:
        store.close()
    store = Store(path)      # kept, and a migrated store opens again unchanged
    try:
        assert {k.id: k.quotas for k in store.keys()} == {
            "old": {"creates_per_minute": 0}, "new": {"max_cpu": 2.5}}
    finally:
        store.close()


# -- through the API ---------------------------------------------------------------------------


@pytest.fixture
def admin(hutch_server):
    with httpx.Client(base_url=hutch_server.url, timeout=TIMEOUT,
                      headers={"X-API-KEY": hutch_server.api_key}) as client:
        yield client


@pytest.fixture
def tenant(hutch_server, admin):
    """Make keys with quotas (each with a client); revoked at the end, killing what they run."""
    made: list[tuple[str, httpx.Client]] = []

    def make(quotas: dict | None = None) -> tuple[dict, httpx.Client]:
        body: dict = {"name": f"quota-{uuid.uuid4().hex[:8]}"}
        if quotas is not None:
            body["quotas"] = quotas
        r = admin.post("/keys", json=body)
        assert r.status_code == 201, r.text
        key = r.json()
        client = httpx.Client(base_url=hutch_server.url, timeout=TIMEOUT,
                              headers={"X-API-KEY": key["key"]})
        made.append((key["id"], client))
        return key, client

    yield make
    for key_id, client in made:
        client.close()
        assert admin.delete(f"/keys/{key_id}").status_code == 204


def _create(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/v2/sandboxes", json={"templateID": "base", "timeout": 300,
                                              **SMALL, **body})


def _created(client: httpx.Client, **body) -> str:
    r = _create(client, **body)
    assert r.status_code == 201, r.text
    return r.json()["sandboxID"]


def _refused(client: httpx.Client, message: str, **body) -> None:
    r = _create(client, **body)
    assert r.status_code == 429, r.text
    assert r.json() == {"code": 429, "message": message}


def _kill(client: httpx.Client, sandbox_id: str) -> None:
    assert client.delete(f"/sandboxes/{sandbox_id}").status_code == 204


def _running(client: httpx.Client) -> int:
    r = client.get("/v2/sandboxes")
    assert r.status_code == 200, r.text
    return len(r.json())


def test_concurrent_sandboxes_and_a_kill_frees_the_slot(tenant):
    key, client = tenant({"max_sandboxes": 2})
    assert key["quotas"]["max_sandboxes"] == 2
    first, second = _created(client), _created(client)
    _refused(client, "tenant quota: at most 2 concurrent sandboxes per key (2 running)")
    assert _running(client) == 2          # the refusal made nothing
    _kill(client, first)
    third = _created(client)
    _refused(client, "tenant quota: at most 2 concurrent sandboxes per key (2 running)")
    for sid in (second, third):
        _kill(client, sid)


def test_cpu_quota(tenant):
    _, client = tenant({"max_cpu": 1.5})
    first = _created(client)
    _refused(client, "tenant quota: at most 1.5 CPU cores per key "
                     "(1 in use, this create asks for 1)")
    half = _created(client, cpuCount=0.5)    # exactly at the limit
    _refused(client, "tenant quota: at most 1.5 CPU cores per key "
                     "(1.5 in use, this create asks for 0.5)", cpuCount=0.5)
    _kill(client, first)
    again = _created(client)
    for sid in (half, again):
        _kill(client, sid)


def test_memory_quota(tenant):
    _, client = tenant({"max_memory_mb": 512})
    made = [_created(client), _created(client)]
    _refused(client, "tenant quota: at most 512 MiB of memory per key "
                     "(512 MiB in use, this create asks for 256 MiB)")
    _kill(client, made.pop())
    made.append(_created(client))
    for sid in made:
        _kill(client, sid)


def test_creates_per_minute_and_a_patch_takes_effect_at_once(tenant, admin):
    key, client = tenant({"creates_per_minute": 2})
    for _ in range(2):
        _kill(client, _created(client))       # killing does not give a create back
    _refused(client, "tenant quota: at most 2 creates per minute per key "
                     "(2 in the last minute)")
    r = admin.patch(f"/keys/{key['id']}", json={"quotas": {"creates_per_minute": 3}})
    assert r.status_code == 200, r.text
    assert r.json()["quotas"]["creates_per_minute"] == 3
    sid = _created(client)
    _refused(client, "tenant quota: at most 3 creates per minute per key "
                     "(3 in the last minute)")
    r = admin.patch(f"/keys/{key['id']}", json={"quotas": {"creates_per_minute": 0}})
    assert r.json()["quotas"]["creates_per_minute"] == 0          # 0: no limit
    _kill(client, _created(client))
    _kill(client, sid)


def test_racing_creates_for_the_last_slot(tenant):
    _, client = tenant({"max_sandboxes": 2})
    held = _created(client)
    barrier = threading.Barrier(2)
    answers: list[httpx.Response] = []

    def race() -> None:
        barrier.wait()
        answers.append(_create(client))

    threads = [threading.Thread(target=race) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in answers) == [201, 429], [r.text for r in answers]
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.json()["message"] == \
        "tenant quota: at most 2 concurrent sandboxes per key (2 running)"
    assert _running(client) == 2
    _kill(client, held)
    _kill(client, next(r for r in answers if r.status_code == 201).json()["sandboxID"])


def test_overrides_through_post_get_and_patch(tenant, admin):
    plain, _ = tenant()
    defaults = plain["quotas"]
    assert set(defaults) == {"max_sandboxes", "max_cpu", "max_memory_mb", "creates_per_minute"}
    key, client = tenant({"max_sandboxes": 1, "max_memory_mb": 1024})
    assert key["quotas"] == {**defaults, "max_sandboxes": 1, "max_memory_mb": 1024}
    listed = {k["id"]: k for k in admin.get("/keys").json()}
    assert listed[key["id"]]["quotas"] == key["quotas"]
    assert listed[plain["id"]]["quotas"] == defaults
    assert listed["admin"]["quotas"] is None and listed["admin"]["admin"] is True

    sid = _created(client)
    _refused(client, "tenant quota: at most 1 concurrent sandboxes per key (1 running)")
    # Fields not named keep their value; null goes back to the server's default.
    r = admin.patch(f"/keys/{key['id']}", json={"quotas": {"max_sandboxes": None,
                                                            "max_cpu": 4}})
    assert r.status_code == 200, r.text
    assert r.json()["quotas"] == {**defaults, "max_memory_mb": 1024, "max_cpu": 4}
    other = _created(client)
    # Lowering a limit leaves running sandboxes alone and refuses the next create.
    r = admin.patch(f"/keys/{key['id']}", json={"quotas": {"max_sandboxes": 1}})
    assert r.json()["quotas"]["max_sandboxes"] == 1
    assert _running(client) == 2
    _refused(client, "tenant quota: at most 1 concurrent sandboxes per key (2 running)")
    for s in (sid, other):
        _kill(client, s)
    listed = {k["id"]: k for k in admin.get("/keys").json()}
    assert listed[key["id"]]["quotas"] == {**defaults, "max_sandboxes": 1,
                                           "max_memory_mb": 1024, "max_cpu": 4}


def test_key_changes_are_checked(tenant, admin):
    key, client = tenant()
    path = f"/keys/{key['id']}"
    r = client.patch(path, json={"quotas": {"max_sandboxes": 100}})
    assert r.status_code == 403                       # only the admin key manages keys
    for body in ({"quotas": {"max_sandboxes": -1}}, {"quotas": {"max_gpus": 1}},
                 {"quotas": "lots"}, {"name": "renamed"}, {"quotas": {"max_cpu": "2"}}):
        r = admin.patch(path, json=body)
        assert r.status_code == 400 and r.json()["code"] == 400, (body, r.text)
    r = admin.post("/keys", json={"quotas": {"max_sandboxes": 1.5}})
    assert r.status_code == 400, r.text
    r = admin.patch("/keys/admin", json={"quotas": {"max_sandboxes": 1}})
    assert r.status_code == 409 and "exempt" in r.json()["message"]
    assert admin.patch("/keys/nosuchkey", json={"quotas": {}}).status_code == 404


def test_revocation_and_the_admin_are_unchanged(tenant, admin):
    key, client = tenant({"max_sandboxes": 1})
    _created(client)
    # The admin key is exempt: a tenant at its limit does not hold the admin back, and
    # the admin's own sandboxes do not count against the tenant.
    mine = admin.post("/v2/sandboxes", json={"templateID": "base", **SMALL}).json()["sandboxID"]
    _refused(client, "tenant quota: at most 1 concurrent sandboxes per key (1 running)")
    assert admin.delete(f"/keys/{key['id']}").status_code == 204
    # Revoked: refused as unknown (401) before any quota is looked at, its sandbox killed.
    r = _create(client)
    assert r.status_code == 401, r.text
    r = admin.patch(f"/keys/{key['id']}", json={"quotas": {"max_sandboxes": 5}})
    assert r.status_code == 409, r.text
    _kill(admin, mine)


def test_the_e2b_sdk_sees_a_rate_limit(tenant, hutch_server, monkeypatch):
    key, client = tenant({"max_sandboxes": 1})
    monkeypatch.setenv("E2B_API_URL", hutch_server.url)
    monkeypatch.setenv("E2B_SANDBOX_URL", hutch_server.url)
    monkeypatch.setenv("E2B_API_KEY", key["key"])
    monkeypatch.delenv("E2B_DOMAIN", raising=False)
    held = _created(client)
    with pytest.raises(RateLimitException, match=r"tenant quota: at most 1 concurrent "
                                                 r"sandboxes per key \(1 running\)"):
        Sandbox.create("base", timeout=60)
    _kill(client, held)


def _wait_pool(srv, size: int) -> None:
    deadline = time.monotonic() + 120
    while httpx.get(srv.url + "/health").json()["pools"][0]["ready"] < size:
        assert time.monotonic() < deadline, "the warm pool did not fill"
        time.sleep(0.1)


def test_settings_give_the_defaults_and_a_pool_race_is_admitted_once(server):
    """A server whose defaults come from HUTCH_TENANT_*, with a warm pool: a create served
    from the pool is only counted as a tenant's sandbox once its claim has finished (an
    await), so without reservations both racers would pass the check."""
    server.stop()
    server.extra_env = {"HUTCH_POOL": "base=2", "HUTCH_DEFAULT_MEMORY_MB": "256",
                        "HUTCH_TENANT_MAX_SANDBOXES": "2", "HUTCH_TENANT_MAX_CPU": "8",
                        "HUTCH_TENANT_MAX_MEMORY_MB": "4096",
                        "HUTCH_TENANT_CREATES_PER_MINUTE": "30"}
    server.start()
    made: list[tuple[httpx.Client, str]] = []
    try:
        with server.client() as admin:
            r = admin.post("/keys", json={"name": "pool-race"})
            assert r.status_code == 201, r.text
            key = r.json()
            assert key["quotas"] == {"max_sandboxes": 2, "max_cpu": 8.0, "max_memory_mb": 4096,
                                     "creates_per_minute": 30}
            client = httpx.Client(base_url=server.url, timeout=TIMEOUT,
                                  headers={"X-API-KEY": key["key"]})
            try:
                made.append((client, _created(client, allow_internet_access=False)))
                _wait_pool(server, 2)
                barrier = threading.Barrier(2)
                answers: list[httpx.Response] = []

                def race() -> None:
                    barrier.wait()
                    answers.append(client.post("/v2/sandboxes", json={
                        "templateID": "base", "timeout": 300}))

                threads = [threading.Thread(target=race) for _ in range(2)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                made += [(client, r.json()["sandboxID"]) for r in answers
                         if r.status_code == 201]
                assert sorted(r.status_code for r in answers) == [201, 429], \
                    [r.text for r in answers]
                assert "pool;dur=" in next(r for r in answers
                                           if r.status_code == 201).headers["server-timing"]
                assert _running(client) == 2
                # The admin key is exempt from the defaults too (three at once here).
                for _ in range(3):
                    made.append((admin, _created(admin, allow_internet_access=False)))
                assert admin.delete(f"/keys/{key['id']}").status_code == 204
            finally:
                for owner, sid in made:
                    owner.delete(f"/sandboxes/{sid}")
                client.close()
    finally:
        server.stop()
        server.extra_env = {}
        server.start()
