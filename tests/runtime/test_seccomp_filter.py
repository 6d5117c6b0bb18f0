"""The sandbox's seccomp profile compiled by hutch (for agents forked in from the zygote),
checked by what the kernel does to a process that installed it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hutch.errors import RuntimeError_
from hutch.runtime import seccomp, seccomp_filter

SRC = Path(__file__).resolve().parents[2] / "src"

# Installs the program read from stdin with the zygote's own code, then reports what a few
# system calls answer (errno, or 0 when they succeed).
PROBE = r"""
import ctypes, errno, json, os, socket, sys
from hutch.agent.zygote import _Filter
_Filter(bytes.fromhex(sys.stdin.read())).install()
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return 0 if r >= 0 else ctypes.get_errno()
def sock(family):
    try:
        socket.socket(family, socket.SOCK_STREAM if family != 38 else socket.SOCK_SEQPACKET).close()
        return 0
    except OSError as e:
        return e.errno
out = {
    "getpid": call(39),
    "unshare": call(272, 0x10000000),          # unshare(CLONE_NEWUSER)
    "clone3": call(435, 0, 0),
    "mount": call(165, 0, 0, 0, 0, 0),
    "keyctl": call(250, 0),
    "personality_norandom": call(135, 0x0040000),
    "personality_query": call(135, 0xFFFFFFFF),
    "af_unix": sock(socket.AF_UNIX),
    "af_alg": sock(38),
    "tiocsti": call(16, 0, 0x5412, 0),         # ioctl(0, TIOCSTI, NULL)
    "tiocsti_high_bits": call(16, 0, 0x100005412, 0),
}
print(json.dumps(out))
"""

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="seccomp is Linux's")


@pytest.fixture(scope="module")
def program() -> bytes:
    try:
        return seccomp_filter.compile_profile(seccomp.profile(seccomp.native_arch()))
    except RuntimeError_ as exc:
        pytest.skip(f"cannot compile here: {exc}")


def test_program_is_whole_instructions(program):
    assert len(program) > 0 and len(program) % 8 == 0


def test_installed_program_enforces_the_profile(program):
    if seccomp.native_arch() != "SCMP_ARCH_X86_64":
        pytest.skip("the probe uses x86-64 system call numbers")
    done = subprocess.run([sys.executable, "-c", PROBE], input=program.hex(), text=True,
                          capture_output=True, env={"PYTHONPATH": str(SRC)}, timeout=60)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["getpid"] == 0 and got["af_unix"] == 0 and got["personality_query"] == 0
    assert got["clone3"] == 38                      # ENOSYS: C libraries fall back to clone
    for name in ("unshare", "mount", "keyctl", "personality_norandom", "af_alg"):
        assert got[name] == 1, (name, got)          # EPERM, the profile's default
    # TIOCSTI is refused whatever the upper 32 bits say; ENOTTY would mean it got through
    assert got["tiocsti"] == 1 and got["tiocsti_high_bits"] == 1, got


def test_comparisons_on_one_argument_become_separate_rules():
    a = {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}
    b = {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}
    c = {"index": 1, "value": 3, "op": "SCMP_CMP_EQ"}
    assert seccomp_filter._groups([a, c]) == [[a, c]]
    assert seccomp_filter._groups([a, b]) == [[a], [b]]
    assert seccomp_filter._groups([]) == [[]]


def test_unknown_names_are_skipped_and_bad_profiles_refused():
    base = {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"]}
    ok = dict(base, syscalls=[{"names": ["no_such_call_at_all", "getpid"],
                               "action": "SCMP_ACT_ALLOW"}])
    assert seccomp_filter.compile_profile(json.loads(json.dumps(ok)))
    with pytest.raises(RuntimeError_, match="unknown action"):
        seccomp_filter.compile_profile(dict(base, syscalls=[{"names": ["getpid"],
                                                            "action": "SCMP_ACT_MAYBE"}]))
    with pytest.raises(RuntimeError_, match="unknown architecture"):
        seccomp_filter.compile_profile(dict(base, architectures=["SCMP_ARCH_PDP11"]))
