"""The sandbox's seccomp profile, as an OCI `linux.seccomp` object built from tables.

Docker's default profile is the floor: an allowlist with EPERM for everything else. On top of
it hutch keeps closed, whatever capabilities say, the calls that enlarge the kernel surface a
sandbox can reach: io_uring, bpf, perf_event_open, the keyring calls, userfaultfd, kexec,
module loading, the mount API old and new, nested namespaces (unshare, setns, namespace flags
of clone, clone3), and the TIOCSTI/TIOCLINUX terminal-injection ioctls. Only the native
architecture is listed, so the 32-bit and x32 entry points (and the `socketcall` route around
the socket-family filter) hit the default action.

The profile is a pure value; :func:`profile_json` serializes it once per process.
"""

from __future__ import annotations

import errno
import functools
import json
import platform

# Allowed with any arguments. Names a kernel or libseccomp does not know are skipped by the
# OCI runtime, so the list can run ahead of the host.
ALLOWED: tuple[str, ...] = tuple(sorted("""
accept accept4 access adjtimex alarm arch_prctl bind brk cachestat capget capset chdir chmod
chown chroot clock_adjtime clock_getres clock_gettime clock_nanosleep close close_range connect
copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_pwait
epoll_pwait2 epoll_wait eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2
fadvise64 fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchownat fcntl
fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstatfs fsync ftruncate
futex futex_requeue futex_wait futex_waitv futex_wake futimesat getcpu getcwd getdents
getdents64 getegid geteuid getgid getgroups getitimer getpeername getpgid getpgrp getpid
getppid getpriority getrandom getresgid getresuid getrlimit get_robust_list getrusage getsid
getsockname getsockopt get_thread_area gettid gettimeofday getuid getxattr inotify_add_watch
inotify_init inotify_init1 inotify_rm_watch io_cancel io_destroy io_getevents io_pgetevents
ioprio_get ioprio_set io_setup io_submit kill landlock_add_rule landlock_create_ruleset
landlock_restrict_self lchown lgetxattr link linkat listen listxattr llistxattr lremovexattr
lseek lsetxattr lstat madvise map_shadow_stack membarrier memfd_create memfd_secret mincore
mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap modify_ldt mprotect mq_getsetattr
mq_notify mq_open mq_timedreceive mq_timedsend mq_unlink mremap mseal msgctl msgget msgrcv
msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep newfstatat open openat
openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll
ppoll prctl pread64 preadv preadv2 prlimit64 process_mrelease process_vm_readv
process_vm_writev pselect6 ptrace pwrite64 pwritev pwritev2 read readahead readlink readlinkat
readv recvfrom recvmmsg recvmsg remap_file_pages removexattr rename renameat renameat2
restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo
rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_tgsigqueueinfo sched_getaffinity sched_getattr
sched_getparam sched_get_priority_max sched_get_priority_min sched_getscheduler
sched_rr_get_interval sched_setaffinity sched_setattr sched_setparam sched_setscheduler
sched_yield seccomp select semctl semget semop semtimedop sendfile sendmmsg sendmsg sendto
setfsgid setfsuid setgid setgroups setitimer setpgid setpriority setregid setresgid setresuid
setreuid setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address setuid
setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 socketpair splice
stat statfs statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time
timer_create timer_delete timer_getoverrun timer_gettime timer_settime timerfd_create
timerfd_gettime timerfd_settime times tkill truncate umask uname unlink unlinkat utime
utimensat utimes vfork vmsplice wait4 waitid write writev
""".split()))

# Never allowed, whatever else changes: the surface hutch keeps closed on purpose. Tests
# assert that none of these leaks into ALLOWED.
DENIED: tuple[str, ...] = tuple(sorted("""
acct add_key bpf clock_settime delete_module fanotify_init finit_module fsconfig fsmount
fsopen fspick init_module io_uring_enter io_uring_register io_uring_setup ioperm iopl
kcmp kexec_file_load kexec_load keyctl lookup_dcookie mount mount_setattr move_mount
open_by_handle_at open_tree perf_event_open pidfd_getfd pivot_root process_madvise quotactl
quotactl_fd reboot request_key setdomainname sethostname setns settimeofday swapoff swapon
syslog umount2 unshare userfaultfd vhangup
""".split()))

# clone is allowed only without namespace flags (NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|
# NEWNET); clone3 passes flags in memory a filter cannot read, so it answers ENOSYS and libc
# falls back to clone.
CLONE_NS_FLAGS = 0x7E020000
# personality: only the values software really sets (Linux, PER_LINUX32, UNAME26, their
# union, and the query); ADDR_NO_RANDOMIZE and friends are refused.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
# socket families: local, IPv4, IPv6, netlink. Everything else (AF_ALG, AF_VSOCK, rare
# protocols whose modules the kernel would auto-load) gets EPERM.
SOCKET_FAMILIES = (1, 2, 10, 16)
# Terminal input injection (TIOCSTI) and the console multiplexer ioctl (TIOCLINUX); the
# command is compared on its low 32 bits, as the kernel reads it.
DENIED_IOCTLS = (0x5412, 0x541C)

_ARCH = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}


def native_arch(machine: str | None = None) -> str:
    machine = machine or platform.machine()
    try:
        return _ARCH[machine]
    except KeyError:
        raise ValueError(f"no seccomp architecture for {machine!r}") from None


def _arg(index: int, value: int, op: str, value_two: int = 0) -> dict:
    return {"index": index, "value": value, "valueTwo": value_two, "op": op}


def profile(arch: str = "SCMP_ARCH_X86_64") -> dict:
    """The OCI seccomp object: default EPERM, native architecture only, rules in order."""
    allowed = [n for n in ALLOWED if not (arch != "SCMP_ARCH_X86_64" and n in _X86_ONLY)]
    rules: list[dict] = [{"names": allowed, "action": "SCMP_ACT_ALLOW"}]
    rules.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                  "args": [_arg(0, CLONE_NS_FLAGS, "SCMP_CMP_MASKED_EQ", 0)]})
    rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS})
    for value in PERSONALITIES:
        rules.append({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                      "args": [_arg(0, value, "SCMP_CMP_EQ")]})
    for family in SOCKET_FAMILIES:
        rules.append({"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                      "args": [_arg(0, family, "SCMP_CMP_EQ")]})
    # ioctl: the kernel reads the command as 32 bits, so the filter must too (CVE-2019-10063
    # set high bits to slip TIOCSTI past a 64-bit comparison). OCI runtimes OR together the
    # comparisons of one rule that test the same argument, so "not A and not B" cannot be one
    # rule; instead the allowed commands are written as a union of masked-equality patterns
    # (one comparison per rule) that covers every 32-bit value except the denied ones, with
    # the high 32 bits clear, plus the sign-extended form of commands with bit 31 set (which
    # no denied command has). Anything else gets EPERM.
    high = 0xFFFFFFFF00000000
    for mask, value in complement_patterns(DENIED_IOCTLS):
        rules.append({"names": ["ioctl"], "action": "SCMP_ACT_ALLOW",
                      "args": [_arg(1, high | mask, "SCMP_CMP_MASKED_EQ", value)]})
    rules.append({"names": ["ioctl"], "action": "SCMP_ACT_ALLOW",
                  "args": [_arg(1, high | 0x80000000, "SCMP_CMP_MASKED_EQ",
                                high | 0x80000000)]})
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.EPERM,
        "architectures": [arch],
        "syscalls": rules,
    }


def complement_patterns(excluded: tuple[int, ...], bits: int = 32) -> list[tuple[int, int]]:
    """(mask, value) pairs, each matching the values whose masked bits equal value, whose
    union is exactly every `bits`-bit value not in `excluded` (a walk down the binary trie
    of the excluded values: each branch that holds none of them becomes one pattern)."""
    full = (1 << bits) - 1
    out: list[tuple[int, int]] = []

    def walk(prefix: int, depth: int, members: list[int]) -> None:
        if not members:
            out.append((full ^ ((1 << (bits - depth)) - 1), prefix))
            return
        if depth == bits:
            return  # this prefix is an excluded value itself
        bit = 1 << (bits - depth - 1)
        walk(prefix, depth + 1, [m for m in members if not m & bit])
        walk(prefix | bit, depth + 1, [m for m in members if m & bit])

    walk(0, 0, sorted(set(excluded)))
    return out


_X86_ONLY = frozenset({"arch_prctl", "modify_ldt", "get_thread_area", "set_thread_area",
                       "iopl", "ioperm"})


@functools.lru_cache(maxsize=4)
def profile_json(arch: str | None = None) -> str:
    """The profile serialized once per process and architecture."""
    return json.dumps(profile(arch or native_arch()), separators=(",", ":"))
