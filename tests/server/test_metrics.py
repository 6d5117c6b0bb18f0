"""``GET /metrics``: a real server's Prometheus metrics follow a sandbox from create through a
command and a code run to its kill; only the admin key reads them. The scrape-time collection
(warm pools, a runtime whose ``stats`` is sync or async) is also checked on its own."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hutch.server.metrics import Metrics
from tests.conftest import TEST_TEMPLATES_DIR, restarted_server

TIMEOUT = 120


def scrape(server, **headers: str) -> list:
    """The server's samples (admin key unless other headers are given)."""
    r = httpx.get(server.url + "/metrics", timeout=TIMEOUT,
                  headers=headers or {"X-API-KEY": server.api_key})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return [s for family in text_string_to_metric_families(r.text) for s in family.samples]


def value(samples: list, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0: none)."""
    return sum(s.value for s in samples
               if s.name == name and labels.items() <= s.labels.items())


def test_a_sandbox_is_seen_from_create_to_kill(hutch_server, server_env):
    from e2b import Sandbox

    before = scrape(hutch_server)
    sbx = Sandbox.create(timeout=TIMEOUT)
    sid = sbx.sandbox_id
    try:
        result = sbx.commands.run("head -c 50000000 /dev/urandom | md5sum")
        assert result.exit_code == 0
        after = scrape(hutch_server)
    finally:
        sbx.kill()

    created = "hutch_sandbox_create_seconds_count"
    assert value(after, created, template="base", source="cold") == \
        value(before, created, template="base", source="cold") + 1
    assert value(after, "hutch_exec_seconds_count", kind="exec") >= \
        value(before, "hutch_exec_seconds_count", kind="exec") + 1
    assert value(after, "hutch_proxy_requests_total", service="envd", status="200") > \
        value(before, "hutch_proxy_requests_total", service="envd", status="200")
    assert value(after, "hutch_sandboxes", state="running") == \
        value(before, "hutch_sandboxes", state="running") + 1
    memory = [s for s in after if s.name == "hutch_sandbox_memory_bytes"
              and s.labels["sandbox_id"] == sid]
    assert len(memory) == 1 and memory[0].value > 0
    assert memory[0].labels["template"] == "base"
    cpu = [s for s in after if s.name == "hutch_sandbox_cpu_seconds_total"
           and s.labels["sandbox_id"] == sid]
    assert len(cpu) == 1 and cpu[0].value > 0

    gone = scrape(hutch_server)
    assert not [s for s in gone if s.labels.get("sandbox_id") == sid]
    assert value(gone, "hutch_sandboxes", state="running") == \
        value(before, "hutch_sandboxes", state="running")


def test_a_code_run_is_timed(hutch_server, server_env):
    from hutch.templates import TemplateStore
    if TemplateStore(TEST_TEMPLATES_DIR).get("code-interpreter") is None:
        pytest.skip("the code-interpreter template is not built (tests/conftest.py "
                    "code_interpreter builds it)")
    from e2b_code_interpreter import Sandbox as CodeSandbox

    before = scrape(hutch_server)
    sbx = CodeSandbox.create(timeout=TIMEOUT)
    try:
        assert sbx.run_code("6 * 7").text == "42"
        after = scrape(hutch_server)
    finally:
        sbx.kill()
    assert value(after, "hutch_exec_seconds_count", kind="run_code") == \
        value(before, "hutch_exec_seconds_count", kind="run_code") + 1
    assert value(after, "hutch_proxy_requests_total", service="code_interpreter",
                 status="200") > value(before, "hutch_proxy_requests_total",
                                       service="code_interpreter", status="200")
    assert value(after, "hutch_sandbox_create_seconds_count", template="code-interpreter",
                 source="cold") == value(before, "hutch_sandbox_create_seconds_count",
                                         template="code-interpreter", source="cold") + 1


def test_only_the_admin_key_reads_them(hutch_server):
    # What Prometheus sends: the key as a bearer token.
    assert value(scrape(hutch_server, Authorization=f"Bearer {hutch_server.api_key}"),
                 "hutch_sandboxes", state="running") >= 0
    url = hutch_server.url + "/metrics"
    with httpx.Client(timeout=TIMEOUT, headers={"X-API-KEY": hutch_server.api_key}) as admin:
        made = admin.post(hutch_server.url + "/keys", json={"name": "metrics-tenant"})
        assert made.status_code == 201, made.text
        tenant = made.json()
        try:
            for headers in ({"X-API-KEY": tenant["key"]},
                            {"Authorization": f"Bearer {tenant['key']}"}):
                r = httpx.get(url, headers=headers, timeout=TIMEOUT)
                assert r.status_code == 403, r.text
                assert r.json() == {"code": 403, "message": "reading metrics needs the admin key"}
        finally:
            admin.delete(f"{hutch_server.url}/keys/{tenant['id']}")
    for headers in ({}, {"X-API-KEY": "e2b_" + "0" * 40}, {"Authorization": "Bearer nope"}):
        r = httpx.get(url, headers=headers, timeout=TIMEOUT)
        assert r.status_code == 401 and r.json()["code"] == 401, (headers, r.text)


@pytest.fixture
def pooled_server(hutch_server):
    """The session's server restarted with a warm pool of one base sandbox; restarted
    without it after (the session's fixtures follow the new process)."""
    with restarted_server(hutch_server, {"HUTCH_POOL": "base=1"}) as pooled:
        yield pooled


def test_a_create_from_the_warm_pool(pooled_server):
    server = pooled_server
    deadline = time.monotonic() + 300
    while value(scrape(server), "hutch_pool_ready", template="base") < 1:
        assert time.monotonic() < deadline, "the pool did not fill"
        time.sleep(0.2)
    before = scrape(server)
    assert value(before, "hutch_pool_size", template="base") == 1
    with httpx.Client(base_url=server.url, timeout=TIMEOUT,
                      headers={"X-API-KEY": server.api_key}) as api:
        r = api.post("/sandboxes", json={"templateID": "base"})
        assert r.status_code == 201, r.text
        try:
            after = scrape(server)
        finally:
            api.delete(f"/sandboxes/{r.json()['sandboxID']}")
    count = "hutch_sandbox_create_seconds_count"
    assert value(after, count, template="base", source="pool") == \
        value(before, count, template="base", source="pool") + 1
    assert value(after, count, source="cold") == value(before, count, source="cold")
    assert value(after, "hutch_pool_claims_total", template="base", result="hit") == \
        value(before, "hutch_pool_claims_total", template="base", result="hit") + 1


# -- the scrape-time collection on its own ----------------------------------------------------


def _live(sid: str, state: str = "running", template: str = "base"):
    return SimpleNamespace(record=SimpleNamespace(id=sid, state=state, template=template))


def _samples(manager) -> list:
    text = asyncio.run(Metrics().render(manager)).decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


class _AsyncRuntime:
    async def stats(self, sandbox_id: str) -> dict:
        if sandbox_id == "gone":
            raise LookupError(sandbox_id)
        return {"cpu_ns": 2_500_000_000, "memory_bytes": 4096}


class _SyncRuntime:
    def stats(self, sandbox_id: str) -> dict:
        return {"cpu_ns": 1_000_000_000, "memory_bytes": None}


class _LoopRuntime:
    """A runtime whose stats really waits on the event loop."""

    async def stats(self, sandbox_id: str) -> dict:
        await asyncio.sleep(0)
        return {"cpu_ns": 3_000_000_000, "memory_bytes": 1}


class _Pool:
    def stats(self) -> dict:
        return {"template": "code-interpreter", "size": 2, "ready": 1, "starting": 1,
                "hits": 5, "misses": 2, "refills": 4, "refill_seconds_sum": 6.0,
                "last_refill_seconds": None}


@pytest.mark.parametrize("runtime, cpu, memory", [
    (_AsyncRuntime(), 2.5, 4096), (_SyncRuntime(), 1.0, None), (_LoopRuntime(), 3.0, 1)])
def test_usage_is_read_from_any_runtime(runtime, cpu, memory):
    manager = SimpleNamespace(runtime=runtime, _live={
        "a": _live("a"), "gone": _live("gone"), "p": _live("p", "pooled")})
    samples = _samples(manager)
    assert value(samples, "hutch_sandbox_cpu_seconds_total", sandbox_id="a",
                 template="base") == cpu
    mem = [s for s in samples if s.name == "hutch_sandbox_memory_bytes"]
    assert [s.value for s in mem if s.labels["sandbox_id"] == "a"] == \
        ([] if memory is None else [memory])
    assert not [s for s in samples if s.labels.get("sandbox_id") == "p"]   # not handed out
    if isinstance(runtime, _AsyncRuntime):
        assert not [s for s in samples if s.labels.get("sandbox_id") == "gone"]
    assert value(samples, "hutch_sandboxes", state="running") == 2
    assert value(samples, "hutch_sandboxes", state="pooled") == 1
    assert value(samples, "hutch_sandboxes", state="creating") == 0


def test_pools_from_their_stats_and_from_the_single_pool():
    samples = _samples(SimpleNamespace(_live={}, runtime=None,
                                       pools={"code-interpreter": _Pool()}))
    t = {"template": "code-interpreter"}
    assert value(samples, "hutch_pool_size", **t) == 2
    assert value(samples, "hutch_pool_ready", **t) == 1
    assert value(samples, "hutch_pool_starting", **t) == 1
    assert value(samples, "hutch_pool_claims_total", result="hit", **t) == 5
    assert value(samples, "hutch_pool_claims_total", result="miss", **t) == 2
    assert value(samples, "hutch_pool_refill_seconds_count", **t) == 4
    assert value(samples, "hutch_pool_refill_seconds_sum", **t) == 6.0
    assert not [s for s in samples if s.name == "hutch_pool_last_refill_seconds"]

    single = SimpleNamespace(template="base", size=3, ready=2)
    samples = _samples(SimpleNamespace(_live={}, runtime=None, pool=single))
    assert value(samples, "hutch_pool_size", template="base") == 3
    assert value(samples, "hutch_pool_ready", template="base") == 2
    assert not [s for s in samples if s.name.startswith(("hutch_pool_claims",
                                                         "hutch_pool_starting"))]
