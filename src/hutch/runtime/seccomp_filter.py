"""The sandbox's seccomp profile compiled to the kernel's filter program (classic BPF).

The OCI runtime compiles the profile itself each time it starts a container (a few
milliseconds of runc's start here: the benchmarks' floor rows). A sandbox's agent is not
started by the runtime when hutch forks it from its pre-imported copy (see
hutch/runtime/zygote.py): it installs the same filter itself, and this module makes that
filter once per server, with the same library the runtime uses (libseccomp, through ctypes),
following the runtime's reading of the profile:

- every listed architecture; the native one is always in the program;
- names the library does not know are skipped (the profile may run ahead of the host);
- a rule whose action is the default one is left out (the library refuses it: it is a no-op);
- the comparisons of one rule are ANDed when they test different arguments; when two test
  the same argument the rule becomes one rule per comparison (ORed), as runc does.

One difference from runc: runc also makes system calls newer than the profile answer ENOSYS
(its "patchbpf" stub) where this program answers the default EPERM. The profile lists the call
for which that matters (clone3, which C libraries retry as clone on ENOSYS) with ENOSYS itself.
"""

from __future__ import annotations

import ctypes
import functools
import os

from hutch.errors import RuntimeError_

_ACTIONS = {"SCMP_ACT_ALLOW": 0x7FFF0000, "SCMP_ACT_KILL_PROCESS": 0x80000000,
            "SCMP_ACT_KILL_THREAD": 0x00000000, "SCMP_ACT_KILL": 0x00000000,
            "SCMP_ACT_TRAP": 0x00030000, "SCMP_ACT_LOG": 0x7FFC0000}
_ERRNO, _TRACE = 0x00050000, 0x7FF00000
_OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
        "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
_ARCHES = {"SCMP_ARCH_X86": 0x40000003, "SCMP_ARCH_X86_64": 0xC000003E,
           "SCMP_ARCH_X32": 0x4000003E, "SCMP_ARCH_ARM": 0x40000028,
           "SCMP_ARCH_AARCH64": 0xC00000B7}
_SCMP_ERROR = -1


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _action(name: str, errno_ret: int | None, default_errno: int) -> int:
    if name == "SCMP_ACT_ERRNO":
        return _ERRNO | ((default_errno if errno_ret is None else errno_ret) & 0xFFFF)
    if name == "SCMP_ACT_TRACE":
        return _TRACE | ((errno_ret or 0) & 0xFFFF)
    try:
        return _ACTIONS[name]
    except KeyError:
        raise RuntimeError_(f"seccomp profile: unknown action {name!r}") from None


def _groups(args: list[dict]) -> list[list[dict]]:
    """The comparisons of one rule, as the rules the library gets (see the module doc)."""
    if len({a["index"] for a in args}) == len(args):
        return [args]
    return [[a] for a in args]


@functools.lru_cache(maxsize=None)
def _lib() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as exc:
        raise RuntimeError_(f"libseccomp is not installed: {exc}") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def sandbox_program() -> bytes:
    """The filter program of the sandbox profile (runtime/seccomp.py) for this machine."""
    from hutch.runtime import seccomp

    return compile_profile(seccomp.profile(seccomp.native_arch()))


def compile_profile(profile: dict) -> bytes:
    """The filter program of an OCI ``linux.seccomp`` object: an array of struct sock_filter
    (8 bytes each) ready for seccomp(SECCOMP_SET_MODE_FILTER). RuntimeError_ if libseccomp
    is missing or refuses the profile."""
    lib = _lib()
    default_errno = profile.get("defaultErrnoRet", 1)
    default = _action(profile["defaultAction"], default_errno, default_errno)
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise RuntimeError_("seccomp_init failed")
    try:
        for arch in profile.get("architectures", ()):
            token = _ARCHES.get(arch)
            if token is None:
                raise RuntimeError_(f"seccomp profile: unknown architecture {arch!r}")
            rc = lib.seccomp_arch_add(ctx, token)
            if rc not in (0, -17):      # -EEXIST: the native one is there already
                raise RuntimeError_(f"seccomp_arch_add({arch}): {os.strerror(-rc)}")
        for rule in profile.get("syscalls", ()):
            action = _action(rule["action"], rule.get("errnoRet"), default_errno)
            if action == default:
                continue
            for name in rule["names"]:
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr == _SCMP_ERROR:
                    continue
                for group in _groups(rule.get("args") or []):
                    cmps = (_ArgCmp * max(len(group), 1))(*[
                        _ArgCmp(a["index"], _OPS[a["op"]], a["value"], a.get("valueTwo", 0))
                        for a in group])
                    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(group), cmps)
                    if rc < 0:
                        raise RuntimeError_(f"seccomp rule for {name}: {os.strerror(-rc)}")
        fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise RuntimeError_(f"seccomp_export_bpf: {os.strerror(-rc)}")
            program = os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
    if not program or len(program) % 8:
        raise RuntimeError_(f"seccomp_export_bpf gave {len(program)} bytes")
    return program
