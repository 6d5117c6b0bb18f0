"""The agent's zygote: one host process that has imported the agent, and forks a copy of
itself into each new sandbox instead of the sandbox starting Python and importing it again.

Why: Python's start and the agent's imports (asyncio above all) cost about 90 ms of CPU on a
small host, on the path of every sandbox creation; a fork of a process that did them once
costs about a millisecond. The OCI runtime still makes the sandbox (namespaces, mounts,
cgroups, its init); this process only replaces the agent's own start. It is the same move as
the runtime's `exec` verb, made from a process that is already warm.

The copy takes exactly the confinement the runtime gives the sandbox's processes, in this
order (each step needs what the one before it still holds):

1. Host side, as host root: pin the sandbox's init with a pidfd (and check it is that
   sandbox's, by its cgroup), move into the sandbox's cgroups, take its OOM score, resource
   limits and console (stdout and stderr), open all of the init's namespaces (the init may
   not have exec'd yet, and until then only host root may look into it), and join its
   network namespace (owned by the host's user namespace, so joined before leaving it).
2. Join its user namespace, set the per-namespace inotify limits, then its IPC, UTS, cgroup,
   pid and mount namespaces (the root directory becomes the sandbox's), and become root
   inside (uid and gid 0, no supplementary groups: an unprivileged range on the host).
3. Fork again, so the agent is a process of the sandbox's pid namespace. The first child
   exits; this zygote is a subreaper that ignores SIGCHLD, so the kernel reaps both.
4. In the agent: a session of its own, default signal dispositions, no inherited file
   descriptor but stdio, the sandbox's environment and working directory, imports from
   read-only mounts of the agent library and of this Python's standard library; then the
   sandbox's seccomp filter (compiled once by the server from the same profile the runtime
   uses), Landlock to the sandbox's root (agent/landlock.py, which drops CAP_SYS_ADMIN), and
   the runtime's capability sets. It is non-dumpable (its ids changed), so its /proc entries
   (exe, maps, fds) belong to host root and are closed to root inside.

Standard library only, as all of the agent. Protocol, on stdin and stdout: the agent
library's path (read by the command line that starts this module), a JSON line with the
seccomp program (hex), answered by one with this Python's standard library directories; then
one JSON line in per agent to fork, one JSON line out (its pid, or an error).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys

# The agent never speaks TLS (see __main__.py).
sys.modules.setdefault("ssl", None)

import asyncio  # noqa: E402
import ctypes  # noqa: E402

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS = 0x00020000, 0x02000000, 0x04000000
CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = (
    0x08000000, 0x10000000, 0x20000000, 0x40000000)
PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER = 4, 22, 24, 36
SECCOMP_MODE_FILTER = 2
_CAP_VERSION_3 = 0x20080522
# In the order they are joined: the network namespace belongs to the host's user namespace, so
# it is joined while still host root; the others belong to the sandbox's user namespace, and
# the mount namespace comes last, as joining it changes what paths mean.
_NAMESPACES = (("net", CLONE_NEWNET), ("user", CLONE_NEWUSER), ("ipc", CLONE_NEWIPC),
               ("uts", CLONE_NEWUTS), ("cgroup", CLONE_NEWCGROUP), ("pid", CLONE_NEWPID),
               ("mnt", CLONE_NEWNS))

# What the agent imports only when first needed, imported here once so no sandbox pays for
# it (what is imported later still comes from this Python's library: see _relocate).
PRELOAD = (
    "hashlib", "hmac", "shutil", "select", "traceback", "fcntl", "struct", "termios", "pty",
    "grp", "pwd", "concurrent.futures", "concurrent.futures.thread", "base64", "zlib",
    "subprocess", "socket", "resource",
    "hutch.agent.app", "hutch.agent.files", "hutch.agent.filesystem",
    "hutch.agent.filesystem_service", "hutch.agent.http", "hutch.agent.interpreter_service",
    "hutch.agent.landlock", "hutch.agent.multipart", "hutch.agent.process_service",
    "hutch.agent.processes", "hutch.agent.rpc", "hutch.agent.server", "hutch.agent.state",
    "hutch.agent.users", "hutch.agent.watcher", "hutch.protocol.protojson",
)
# The code interpreter's modules are left to be imported inside, when a sandbox first uses
# them (as the agent started inside does): they compute paths from where they are loaded.

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _setns(fd: int, flags: int, what: str) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(flags)), f"setns({what})")


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _enter(req: dict, pidfd: int) -> None:
    """Steps 1 and 2 (see the module doc), in the first child."""
    _retitle(AGENT_TITLE)
    with open(f"/proc/{req['init']}/cgroup") as f:
        if req["marker"] not in f.read():
            raise OSError(f"process {req['init']} is not the sandbox's init")
    pid = str(os.getpid())
    for procs in req["cgroups"]:
        _write(procs, pid)
    _write("/proc/self/oom_score_adj", str(req["oom"]))
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (req["nofile"], req["nofile"]))
    out = os.open(req["console"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)
    # Every namespace is opened now, as host root: once in the sandbox's user namespace this
    # process may no longer look into the init, which until it execs is the runtime's own
    # non-dumpable process. The pidfd pins the pid: if the init is alive after the opens,
    # they were of the init.
    fds = {name: os.open(f"/proc/{req['init']}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
           for name, _ in _NAMESPACES}
    signal.pidfd_send_signal(pidfd, 0)
    try:
        for name, flag in _NAMESPACES:
            _setns(fds[name], flag, name)
            if flag == CLONE_NEWUSER:
                for key, value in req["sysctls"].items():
                    _write("/proc/sys/" + key.replace(".", "/"), value)
    finally:
        for fd in fds.values():
            os.close(fd)
    os.setresgid(0, 0, 0)
    os.setgroups([])
    os.setresuid(0, 0, 0)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _limit_capabilities(keep: list[int]) -> None:
    """Bounding set first (no later exec can bring a cap back), then the thread's sets."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        if cap not in keep:
            _check(_libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0),
                   f"dropping capability {cap}")
    mask = sum(1 << c for c in keep)
    data = (_CapData * 2)(_CapData(mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, 0),
                          _CapData(mask >> 32, mask >> 32, 0))
    _check(_libc.capset(ctypes.byref(_CapHeader(_CAP_VERSION_3, 0)), data), "capset")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _Filter:
    """A seccomp program, made ready for the kernel once, here: every object an agent makes
    after the fork costs it the pages it writes to (about a millisecond for these)."""

    def __init__(self, program: bytes) -> None:
        self.buf = ctypes.create_string_buffer(program, len(program))
        self.prog = _SockFprog(len(program) // 8, ctypes.cast(self.buf, ctypes.c_void_p))

    def install(self) -> None:
        _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(self.prog), 0, 0),
               "installing the seccomp filter")


def _become_agent(req: dict, program: _Filter, status: int) -> None:
    """Step 4, in the agent; returns once it is confined (then it serves)."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    os.closerange(3, status)
    os.closerange(status + 1, 1 << 16)
    os.umask(0o022)
    os.environ.clear()
    os.environ.update(dict(req["env"]))
    os.chdir(req["cwd"])
    _relocate(req["lib_inside"], req["stdlib_inside"])
    program.install()
    if req["landlock"]:
        from hutch.agent.landlock import restrict

        restrict()
    _limit_capabilities(req["caps"])
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def _relocate(inside: str, stdlib: list) -> None:
    """Imports made from now on come from the sandbox's copy of the agent library (the same
    files, mounted at ``inside``) and from this Python's own standard library (mounted at
    ``stdlib``), never from the template's Python, which may be another version or none;
    ``sys.executable``, which the code interpreter starts kernels with, is the template's."""
    host = sys.path[0]
    sys.path[:] = [inside, *stdlib]
    for name in _PACKAGES:
        module = sys.modules[name]
        module.__path__[:] = [p.replace(host, inside, 1) for p in module.__path__]
    import shutil

    sys.executable = shutil.which("python3") or ""


def _agent(req: dict) -> None:
    from hutch.agent.server import run

    try:
        asyncio.run(run(req["socket"], None, None, req.get("interpreter")))
    except KeyboardInterrupt:
        pass


def spawn(req: dict, program: _Filter) -> dict:
    """Fork an agent into the sandbox ``req`` names; the reply holds its host pid or the
    error that stopped it (the sandbox then has no agent, and the caller destroys it)."""
    pidfd = os.pidfd_open(req["init"])
    try:
        r, w = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(r)
            _first_child(req, program, pidfd, w)
        os.close(w)
    finally:
        os.close(pidfd)
    # One line, read as soon as it is written: the first child's exit (the teardown of its
    # copy of this process's memory) is not waited for.
    with os.fdopen(r, "rb") as f:
        answer = f.readline()
    try:
        return json.loads(answer)
    except ValueError:
        return {"error": "the agent's start ended without a word"}


def _first_child(req: dict, program: _Filter, pidfd: int, w: int) -> None:
    code = 1
    try:
        _enter(req, pidfd)
        r2, w2 = os.pipe()
        agent = os.fork()
        if agent == 0:
            os.close(w)
            os.close(r2)
            try:
                _become_agent(req, program, w2)
            except BaseException as exc:  # noqa: BLE001 - reported, then this copy ends
                os.write(w2, json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
                os._exit(1)
            os.write(w2, json.dumps({"pid": 0}).encode())
            os.close(w2)
            _agent(req)
            os._exit(0)
        os.close(w2)
        with os.fdopen(r2, "rb") as f:
            answer = json.loads(f.read() or b'{"error": "the agent ended while starting"}')
        if "pid" in answer:
            answer["pid"] = agent
        os.write(w, json.dumps(answer).encode() + b"\n")
        code = 0
    except BaseException as exc:  # noqa: BLE001 - reported to the zygote
        os.write(w, json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode() + b"\n")
    finally:
        os._exit(code)


#: The command lines of the zygote and of every agent forked from it (which shows inside its
#: sandbox, in `ps`): what each is, and not the host's paths that started the zygote.
TITLE, AGENT_TITLE = b"hutch.agent\0--zygote\0", b"hutch.agent\0--forked\0"


def _retitle(title: bytes) -> None:
    """Write ``title`` over this process's argument area, the rest of it NULs (the memory
    /proc/PID/cmdline reads; Python keeps its own copy of argv)."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])      # arg_start, arg_end (fields 48, 49)
    if len(title) > end - start:
        return
    ctypes.memmove(start, title.ljust(end - start, b"\0"), end - start)


#: The agent's packages imported here (set by preload): the ones whose search path moves.
#: Named once rather than found in sys.modules by each agent, whose every look at a module
#: would copy the page it is on (about a millisecond for all of them).
_PACKAGES: list = []


def preload() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    _PACKAGES[:] = [name for name, module in sys.modules.items()
                    if (name == "hutch" or name.startswith("hutch."))
                    and hasattr(module, "__path__")]


def main() -> None:
    # What is imported once is frozen out of the garbage collector's reach: a collection in
    # an agent would otherwise walk every object inherited from here, writing to each, and
    # so copy nearly every page it shares with this process (time on each create, memory in
    # each sandbox). Collecting stays on for what is made later.
    gc.disable()
    _retitle(TITLE)
    preload()
    gc.freeze()
    gc.enable()
    _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "PR_SET_CHILD_SUBREAPER")
    # Agents outlive their first parent and end with their sandbox: the kernel reaps them.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    hello = json.loads(stdin.readline())
    program = _Filter(bytes.fromhex(hello["seccomp"]))
    # Where this Python's standard library is: the runtime mounts it into each sandbox, so
    # what the agent imports late comes from this Python, whatever the template's is.
    stdlib = [p for p in sys.path[1:] if os.path.isdir(p)]
    stdout.write(json.dumps({"ready": True, "stdlib": stdlib}).encode() + b"\n")
    stdout.flush()
    for line in stdin:
        try:
            reply = spawn(json.loads(line), program)
        except Exception as exc:  # noqa: BLE001 - the server gets every failure as a reply
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        stdout.write(json.dumps(reply).encode() + b"\n")
        stdout.flush()


if __name__ == "__main__":
    main()
