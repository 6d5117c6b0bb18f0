"""`hutch doctor` on this host: every check passes, and a missing tool is named with its fix."""

import os
import subprocess
import sys


def _doctor(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hutch", "doctor"], env=env,
                          capture_output=True, text=True, timeout=120)


def test_this_host_passes(tmp_path):
    r = _doctor({**os.environ, "HUTCH_DATA_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all checks passed" in r.stdout
    assert "[ok  ] OCI runtime runc" in r.stdout


def test_a_missing_tool_fails_with_its_exact_fix(tmp_path):
    # Without /usr/sbin on PATH, nft and mkfs.ext4 are not found (they live there on Debian).
    env = {**os.environ, "HUTCH_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    r = _doctor(env)
    assert r.returncode == 1, r.stdout
    assert "[FAIL] nftables" in r.stdout
    assert "fix: apt-get install -y nftables" in r.stdout
    assert "check(s) failed" in r.stdout
