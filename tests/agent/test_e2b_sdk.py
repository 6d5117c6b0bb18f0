"""The official e2b SDK (debug mode) against the real agent, in a private network namespace.

Debug mode hard-wires envd to http://localhost:49983. Running agent and SDK inside a fresh
network namespace (own loopback) keeps that fixed port from colliding with anything else.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("e2b")

SCRIPT = Path(__file__).with_name("e2b_sdk_checks.py")


def test_official_sdk_sync_and_async():
    if not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs unshare and ip to make a private network namespace")
    cmd = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$0" "$1"', sys.executable, str(SCRIPT)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "e2b SDK checks passed" in res.stdout
