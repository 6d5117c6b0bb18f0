"""Landlock: the agent confines itself, and every process it will ever start, to the sandbox's
own root, then gives up the capability that allowed it.

Why: the namespaces, seccomp and the user namespace all hold while every path a process
reaches lies inside the sandbox. The one way out they do not cover is a host file descriptor
that leaks in (an OCI runtime bug of the CVE-2024-21626 class left one open in the container's
first process; ``openat`` relative to it, or a cwd on it, walks the host's tree). Landlock
checks every path open against a rule set by hierarchy: with a single rule granting everything
beneath the sandbox's ``/``, nothing inside changes, and any path reached through a leaked
fd lies outside that rule and is refused (EACCES).

A process may only restrict itself with ``no_new_privs`` set or ``CAP_SYS_ADMIN`` in its user
namespace. ``no_new_privs`` would stop ``sudo`` inside, so the runtime puts CAP_SYS_ADMIN in the
sandbox's bounding set for this one step (see ``SandboxSpec.landlock``). The agent restricts
itself first thing, while it is the only code running besides the init, then drops the
capability from its bounding, effective, permitted and inheritable sets: nothing it starts can
get it back. The restriction also scopes signals and abstract unix sockets to the sandbox's
processes (ABI 6), and Landlock itself forbids ptrace of processes outside the domain: the init
(PID 1), which keeps the capability, is out of every sandbox process's reach.

Standard library only (ctypes), as all of the agent.
"""

from __future__ import annotations

import os

CAP_SYS_ADMIN = 21
PR_CAPBSET_READ, PR_CAPBSET_DROP = 23, 24
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# The syscall numbers are the same on every architecture (they are newer than the split).
SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1 << 0
RULE_PATH_BENEATH = 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1


def fs_rights(abi: int) -> int:
    """Every filesystem right the kernel's Landlock ABI knows: all of them are handled (so
    denied outside the rule) and all granted beneath the sandbox's root."""
    rights = (1 << 13) - 1           # ABI 1: execute … make_sym
    if abi >= 2:
        rights |= 1 << 13            # refer (rename and link across directories)
    if abi >= 3:
        rights |= 1 << 14            # truncate
    if abi >= 5:
        rights |= 1 << 15            # ioctl on devices
    return rights


def scopes(abi: int) -> int:
    return SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0


class _Libc:
    def __init__(self) -> None:
        import ctypes

        self.c = ctypes
        self.lib = ctypes.CDLL(None, use_errno=True)

    def check(self, result: int, what: str) -> int:
        if result < 0:
            err = self.c.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")
        return result


def abi(libc: _Libc | None = None) -> int:
    """The kernel's Landlock ABI version; 0 where it has none (not built in, or disabled)."""
    libc = libc or _Libc()
    version = libc.lib.syscall(SYS_CREATE_RULESET, None, libc.c.c_size_t(0),
                               libc.c.c_uint32(CREATE_RULESET_VERSION))
    return max(version, 0)


def restrict(root: str = "/") -> int:
    """Confine the calling thread (and all it starts) to ``root``, then drop CAP_SYS_ADMIN.

    Returns the Landlock ABI in force, 0 when the kernel has none (the capability is dropped
    all the same). Raises OSError when the kernel has Landlock and the restriction failed:
    the caller decides whether to go on without it. Call it while the process has one thread
    (Landlock binds the calling thread; threads started later inherit the domain)."""
    libc = _Libc()
    try:
        version = abi(libc)
        if version > 0:
            _restrict(libc, version, root)
    finally:
        drop_sys_admin(libc)
    return version


def _restrict(libc: _Libc, version: int, root: str) -> None:
    c = libc.c

    class RulesetAttr(c.Structure):
        _fields_ = [("handled_access_fs", c.c_uint64), ("handled_access_net", c.c_uint64),
                    ("scoped", c.c_uint64)]

    class PathBeneathAttr(c.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", c.c_uint64), ("parent_fd", c.c_int32)]

    rights = fs_rights(version)
    # Older kernels accept the larger struct as long as the fields they do not know are zero.
    attr = RulesetAttr(rights, 0, scopes(version))
    ruleset = libc.check(libc.lib.syscall(SYS_CREATE_RULESET, c.byref(attr),
                                          c.c_size_t(c.sizeof(attr)), c.c_uint32(0)),
                         "landlock_create_ruleset")
    try:
        parent = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            rule = PathBeneathAttr(rights, parent)
            libc.check(libc.lib.syscall(SYS_ADD_RULE, c.c_int(ruleset),
                                        c.c_int(RULE_PATH_BENEATH), c.byref(rule),
                                        c.c_uint32(0)), "landlock_add_rule")
        finally:
            os.close(parent)
        libc.check(libc.lib.syscall(SYS_RESTRICT_SELF, c.c_int(ruleset), c.c_uint32(0)),
                   "landlock_restrict_self")
    finally:
        os.close(ruleset)


def drop_sys_admin(libc: _Libc | None = None) -> None:
    """Remove CAP_SYS_ADMIN from every capability set of the calling thread, bounding set
    first (so no later exec can bring it back). A process without it is left as it is."""
    libc = libc or _Libc()
    c = libc.c

    class Header(c.Structure):
        _fields_ = [("version", c.c_uint32), ("pid", c.c_int)]

    class Data(c.Structure):
        _fields_ = [("effective", c.c_uint32), ("permitted", c.c_uint32),
                    ("inheritable", c.c_uint32)]

    if libc.lib.prctl(c.c_int(PR_CAPBSET_READ), c.c_ulong(CAP_SYS_ADMIN), 0, 0, 0) == 1:
        libc.check(libc.lib.prctl(c.c_int(PR_CAPBSET_DROP), c.c_ulong(CAP_SYS_ADMIN), 0, 0, 0),
                   "dropping CAP_SYS_ADMIN from the bounding set")
    header = Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (Data * 2)()
    libc.check(libc.lib.capget(c.byref(header), data), "capget")
    bit = ~(1 << CAP_SYS_ADMIN) & 0xFFFFFFFF
    data[0].effective &= bit
    data[0].permitted &= bit
    data[0].inheritable &= bit
    libc.check(libc.lib.capset(c.byref(header), data), "capset")
