"""The agent's Landlock step, run for real on the host in a child process (as root: the
restriction needs CAP_SYS_ADMIN without no_new_privs, exactly as inside a sandbox)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hutch.agent import landlock

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CAP_SYS_ADMIN)")

CHILD = r"""
import json, os, sys
from hutch.agent import landlock
root = sys.argv[1]
status = open("/proc/self/status")     # opened before: /proc lies outside the root given
out = {"abi": landlock.restrict(root)}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as e:
        out[name] = e.errno
attempt("write_inside", lambda: open(os.path.join(root, "sub", "f"), "w").write("x"))
attempt("rename_inside", lambda: os.rename(os.path.join(root, "sub", "f"), os.path.join(root, "g")))
attempt("read_outside", lambda: open("/etc/hostname").read())
attempt("list_outside", lambda: os.listdir("/"))
attempt("exec_outside", lambda: __import__("subprocess").run(["/bin/true"]))
for line in status:
    if line.startswith(("CapEff", "CapBnd", "CapPrm")):
        k, v = line.split(":")
        out[k] = int(v, 16)
print(json.dumps(out))
"""


def test_rights_follow_the_kernels_abi():
    assert landlock.fs_rights(1) == (1 << 13) - 1
    assert landlock.fs_rights(3) == (1 << 15) - 1
    assert landlock.fs_rights(7) == (1 << 16) - 1
    assert landlock.scopes(5) == 0 and landlock.scopes(6) == 3


def test_a_confined_process_reaches_nothing_outside_its_root_and_loses_sys_admin(tmp_path):
    if landlock.abi() == 0:
        pytest.skip("this kernel has no Landlock")
    (tmp_path / "sub").mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["abi"] == landlock.abi()
    assert out["write_inside"] == "ok" and out["rename_inside"] == "ok"
    assert (tmp_path / "g").read_text() == "x"
    for outside in ("read_outside", "list_outside", "exec_outside"):
        assert out[outside] == 13, (outside, out)          # EACCES
    sys_admin = 1 << landlock.CAP_SYS_ADMIN
    assert not (out["CapEff"] | out["CapBnd"] | out["CapPrm"]) & sys_admin
