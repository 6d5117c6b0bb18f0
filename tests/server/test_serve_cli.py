"""`hutch serve` and `hutch doctor` as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import server_env


def _hutch(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = server_env(0)
    full.update(env)
    return subprocess.run([sys.executable, "-m", "hutch", *args], env=full,
                          capture_output=True, text=True, timeout=300)


def test_doctor_passes_on_this_host():
    r = _hutch("doctor")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all checks passed" in r.stdout and "templates" in r.stdout


def test_doctor_fails_for_a_runtime_that_cannot_work():
    r = _hutch("doctor", HUTCH_OCI_RUNTIME="no-such-runtime")
    assert r.returncode != 0
    assert "FAIL" in r.stdout and "no-such-runtime" in r.stdout


def test_bad_settings_stop_serve_with_the_variable_named():
    r = _hutch("serve", HUTCH_PORT="http")
    assert r.returncode != 0
    assert "HUTCH_PORT" in r.stderr and "expected a number" in r.stderr
    r = _hutch("serve", HUTCH_DEFAULT_NETWORK="everything")
    assert r.returncode != 0 and "HUTCH_DEFAULT_NETWORK" in r.stderr
