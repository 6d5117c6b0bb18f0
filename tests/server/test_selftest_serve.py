"""`hutch serve` with the isolation self-test: a failed check stops the start, listing it;
with HUTCH_ALLOW_DEGRADED=true the server serves, and says so on every response and in
/health. Failures are injected with HUTCH_SELFTEST_FAIL (the real checks pass on a test host,
which the degraded run shows: only the injected names are reported).

These servers get their own instance name and a /24 at the end of the test subnet, so they
never meet the session's server (its bridge, firewall table and DNS forwarder)."""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from tests.conftest import (
    TEST_DATA_DIR, TEST_INSTANCE, TEST_SUBNET, start_server, stop_server, teardown_instance,
)

INSTANCE = TEST_INSTANCE[:8] + "st"
SUBNET = str(list(ipaddress.ip_network(TEST_SUBNET).subnets(new_prefix=24))[-1])
DATA_DIR = TEST_DATA_DIR.parent / (TEST_DATA_DIR.name + "-selftest")


@pytest.fixture
def own_instance():
    (DATA_DIR / "server.log").unlink(missing_ok=True)   # each test reads only its own log
    try:
        yield
    finally:
        teardown_instance(DATA_DIR, INSTANCE, SUBNET)


def _start(**env):
    return start_server(DATA_DIR, extra_env=env, instance=INSTANCE, subnet=SUBNET)


def test_a_failed_check_refuses_to_serve(own_instance):
    with pytest.raises(RuntimeError) as err:
        _start(HUTCH_SELFTEST_FAIL="seccomp_mode")
    text = str(err.value)
    assert "exited with 1" in text
    assert "the isolation self-test failed, refusing to serve" in text
    assert "seccomp_mode: failed on purpose" in text
    assert "HUTCH_ALLOW_DEGRADED=true" in text
    assert list((DATA_DIR / "runtime" / "sandboxes").iterdir()) == []   # probe removed


def test_degraded_mode_marks_every_response(own_instance):
    srv = _start(HUTCH_SELFTEST_FAIL="seccomp_mode,pids_limit", HUTCH_ALLOW_DEGRADED="true")
    try:
        want = "seccomp_mode,pids_limit"
        health = httpx.get(srv.url + "/health")
        assert health.status_code == 200
        assert health.headers["hutch-degraded"] == want
        assert health.json()["degraded"] == ["seccomp_mode", "pids_limit"]
        listed = httpx.get(srv.url + "/sandboxes", headers={"X-API-KEY": srv.api_key})
        assert listed.status_code == 200 and listed.headers["hutch-degraded"] == want
        refused = httpx.get(srv.url + "/sandboxes")
        assert refused.status_code == 401 and refused.headers["hutch-degraded"] == want
        proxied = httpx.get(srv.url + "/health", headers={"Host": "49983-nosuch.hutch.test"})
        assert proxied.headers["hutch-degraded"] == want
        assert list((DATA_DIR / "runtime" / "sandboxes").iterdir()) == []
        assert "isolation self-test: failed seccomp_mode, pids_limit" in srv.log_tail(200)
    finally:
        stop_server(srv)


def test_a_passing_self_test_adds_nothing(own_instance):
    srv = _start()
    try:
        health = httpx.get(srv.url + "/health")
        assert "hutch-degraded" not in health.headers
        assert "degraded" not in health.json()
        assert "isolation self-test: passed" in srv.log_tail(200)
    finally:
        stop_server(srv)


def test_doctor_prints_the_same_checks(own_instance):
    import os
    import subprocess
    import sys

    from tests.conftest import TEST_TEMPLATES_DIR
    # (a data dir the sandbox's mapped root can traverse: under pytest's 0700 tmp the probe
    # fails, as any create would)
    data = DATA_DIR / "doctor"
    env = {**os.environ, "HUTCH_DATA_DIR": str(data), "HUTCH_INSTANCE": INSTANCE,
           "HUTCH_SUBNET": SUBNET, "HUTCH_TEMPLATES_DIR": str(TEST_TEMPLATES_DIR)}
    r = subprocess.run([sys.executable, "-m", "hutch", "doctor"], env=env, capture_output=True,
                       text=True, timeout=120)
    # No server of this instance runs: the firewall check is informational, the rest pass.
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("uid_map", "seccomp_denies", "memory_limit", "disk_quota"):
        assert f"[ok  ] isolation: {name}" in r.stdout
    assert "isolation: firewall_table" in r.stdout
    assert list((data / "runtime" / "sandboxes").iterdir()) == []
