"""The isolation self-test: one probe sandbox, looked at from inside and from the host.

A host can quietly lose a layer of containment (an OCI runtime that ignores the seccomp
profile, a kernel without user namespaces for this runtime, cgroup controllers not delegated,
a firewall table flushed by another tool). Configuration alone cannot tell; only a sandbox
that really runs can. So ``hutch serve`` (and ``hutch doctor``) start one sandbox of the
``base`` template with network mode 'none', the same spec real sandboxes get, run a short
Python script in it through the agent (as the SDK's ``commands.run`` does), read the host's
view of its init (/proc, its cgroup), check the instance's nftables table, and judge every
property as one named :class:`Check`.

The judging functions are pure (text in, :class:`Check` out) so they are tested without
root; :func:`probe` is the only part that touches the host, and it always removes its
sandbox. The probe sandbox has no record in the store: if the server dies mid-probe, the next
start's reconciliation destroys it as an orphan.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import platform
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

#: The checks, in the order they are reported; the names are what HUTCH_SELFTEST_FAIL,
#: the ``Hutch-Degraded`` header and /health's ``degraded`` list use.
NAMES: tuple[str, ...] = (
    "probe_sandbox", "uid_map", "host_uid", "user_namespace", "capabilities", "seccomp_mode",
    "seccomp_denies", "no_new_privs", "landlock", "masked_proc", "readonly_proc_sys", "memory_limit",
    "pids_limit", "disk_quota", "firewall_table",
)

# Linux capability numbers (include/uapi/linux/capability.h).
CAP_NUMBERS: dict[str, int] = {name: i for i, name in enumerate((
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
))}

# keyctl is denied by the profile whatever capabilities say; its number per architecture.
KEYCTL_NR = {"x86_64": 250, "aarch64": 219}
CLONE_NEWUSER = 0x10000000
MASKED_PROBES = ("/proc/kcore", "/proc/keys", "/proc/timer_list")
PROBE_TIMEOUT = 30.0       # seconds for the whole probe; a hung runtime fails the check


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


# -- the script run inside ------------------------------------------------------------------

# Standard library only (the agent's python3 runs it with -S). It reports facts; the host
# judges them, so a tampered sandbox can at worst fail the test, never pass a host check.
INSIDE_SCRIPT = r"""
import ctypes, json, os, sys
out = {}
def read(path, size=65536):
    try:
        with open(path, "rb") as f:
            return f.read(size).decode("latin-1")
    except OSError as e:
        return {"errno": e.errno}
out["uid_map"] = read("/proc/self/uid_map")
out["status"] = read("/proc/self/status")
out["mounts"] = read("/proc/self/mounts")
masked = {}
for p in json.loads(sys.argv[2]):
    r = read(p, 4096)
    masked[p] = r if isinstance(r, dict) else len(r)
out["masked"] = masked
try:
    out["proc_sys_rdonly"] = bool(os.statvfs("/proc/sys").f_flag & os.ST_RDONLY)
except OSError as e:
    out["proc_sys_rdonly"] = {"errno": e.errno}
try:
    os.close(os.open("/proc/sys/kernel/hostname", os.O_WRONLY))
    out["proc_sys_write"] = 0
except OSError as e:
    out["proc_sys_write"] = e.errno
st = os.statvfs("/")
out["root_bytes"] = st.f_blocks * st.f_frsize
libc = ctypes.CDLL(None, use_errno=True)
def errno_of(result):
    return ctypes.get_errno() if result == -1 else 0
keyctl = int(sys.argv[1])
out["keyctl"] = errno_of(libc.syscall(ctypes.c_long(keyctl), ctypes.c_long(0),
                                      ctypes.c_long(-1), ctypes.c_long(0))) if keyctl else None
out["unshare"] = errno_of(libc.unshare(0x10000000))
if len(sys.argv) > 3:
    # The host hands in an fd of its own root directory, as a leaking runtime would: opening
    # anything through it must fail.
    import socket
    server = socket.socket(socket.AF_UNIX)
    server.bind(sys.argv[3])
    server.listen(1)
    server.settimeout(10)
    try:
        conn = server.accept()[0]
        fds = socket.recv_fds(conn, 16, 1)[1]
        try:
            d = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[0])
            out["leaked_fd"] = {"entries": len(os.listdir(d))}
        except OSError as e:
            out["leaked_fd"] = {"errno": e.errno}
    except OSError as e:
        out["leaked_fd"] = {"error": str(e)}
print(json.dumps(out))
"""
#: Where the script above waits for the host's file descriptor (inside the sandbox).
LEAK_SOCKET = "/tmp/.hutch-selftest.sock"


# -- parsing (pure) ---------------------------------------------------------------------------

def parse_status(text: str) -> dict[str, str]:
    """/proc/<pid>/status as ``{field: value}`` (values stripped)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def parse_id_map(text: str) -> list[tuple[int, int, int]]:
    """/proc/<pid>/uid_map lines: (inside id, outside id, count)."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            rows.append((int(parts[0]), int(parts[1]), int(parts[2])))
    return rows


def cap_mask(names: Iterable[str]) -> int:
    mask = 0
    for n in names:
        mask |= 1 << CAP_NUMBERS[n]
    return mask


def cap_names(mask: int) -> list[str]:
    """The capability names set in ``mask`` (unknown bits as ``cap_<n>``)."""
    by_number = {v: k for k, v in CAP_NUMBERS.items()}
    return [by_number.get(i, f"cap_{i}") for i in range(64) if mask >> i & 1]


def parse_cgroup(text: str, controller: str | None = None) -> str | None:
    """A process's cgroup path from /proc/<pid>/cgroup: the v2 one (``0::/path``), or with
    ``controller`` the v1 hierarchy's that carries it (``4:memory:/path``)."""
    for line in text.splitlines():
        _, sep, rest = line.partition(":")
        names, sep2, path = rest.partition(":")
        if not (sep and sep2):
            continue
        if controller is None and names == "":
            return path
        if controller is not None and controller in names.split(","):
            return path
    return None


def root_fstype(mounts: str) -> str | None:
    """The type of the last filesystem mounted on / in a /proc/mounts text."""
    found = None
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "/":
            found = parts[2]
    return found


# -- judging (pure) ----------------------------------------------------------------------------

def judge_uid_map(inside: str, host: str) -> Check:
    """Root inside must map to a non-root host uid, and no row may map host uid 0."""
    for where, text in (("inside", inside), ("host view", host)):
        try:
            rows = parse_id_map(text)
        except ValueError:
            return Check("uid_map", False, f"unreadable uid_map ({where}): {text!r}")
        if not rows:
            return Check("uid_map", False, f"empty or unreadable uid_map ({where}): the "
                                           "sandbox may share the host's user namespace")
        root = [r for r in rows if r[0] == 0]
        if not root or root[0][1] == 0:
            return Check("uid_map", False, f"root inside is host root ({where}: {text.strip()!r})")
        if any(r[1] == 0 for r in rows):
            return Check("uid_map", False, f"a uid inside maps to host root ({where})")
    _, outside, count = next(r for r in parse_id_map(host) if r[0] == 0)
    return Check("uid_map", True, f"0 -> {outside} (range of {count})")


def judge_host_uid(status: dict[str, str]) -> Check:
    """The init's real, effective, saved and fs uids as the host sees them."""
    uids = [int(u) for u in status.get("Uid", "").split()]
    if not uids:
        return Check("host_uid", False, "no Uid line in the init's /proc status")
    if 0 in uids:
        return Check("host_uid", False, f"the sandbox's init runs as host uid 0 (Uid: {uids})")
    return Check("host_uid", True, f"init runs as host uid {uids[1]}")


def judge_user_namespace(sandbox_ns: str, host_ns: str) -> Check:
    """Capabilities inside count only in the sandbox's own user namespace."""
    if not sandbox_ns or sandbox_ns == host_ns:
        return Check("user_namespace", False, f"the sandbox's init is in the host's user "
                                              f"namespace ({sandbox_ns or 'unknown'}): its "
                                              "capabilities would be host capabilities")
    return Check("user_namespace", True, f"{sandbox_ns} (host {host_ns}): no capability "
                                         "reaches outside it")


def judge_capabilities(inside: dict[str, str], init: dict[str, str],
                       expected: Iterable[str], init_extra: Iterable[str] = ()) -> Check:
    """Root inside holds at most the configured set (effective and bounding). The init may
    hold ``init_extra`` in its bounding set besides: the capability the agent confines itself
    with, which every process it starts has lost (a process inside is what is judged)."""
    allowed = cap_mask(expected)
    try:
        eff = int(inside["CapEff"], 16)
        bnd_in = int(inside["CapBnd"], 16)
        bnd = int(init["CapBnd"], 16)
    except (KeyError, ValueError):
        return Check("capabilities", False, "no CapEff/CapBnd in /proc status")
    extra = ((eff | bnd_in) & ~allowed) | (bnd & ~(allowed | cap_mask(init_extra)))
    if extra:
        return Check("capabilities", False, "capabilities beyond the configured set: "
                     + ", ".join(cap_names(extra)))
    return Check("capabilities", True, f"CapEff {eff:016x} = {len(cap_names(eff))} of the "
                                       f"{len(cap_names(allowed))} configured")


def judge_seccomp_mode(inside: dict[str, str], init: dict[str, str]) -> Check:
    modes = {"inside": inside.get("Seccomp"), "init (host view)": init.get("Seccomp")}
    bad = {k: v for k, v in modes.items() if v != "2"}
    if bad:
        return Check("seccomp_mode", False, "seccomp filter not in force (want Seccomp: 2): "
                     + ", ".join(f"{k} Seccomp: {v}" for k, v in bad.items()))
    return Check("seccomp_mode", True, "filter mode (2) inside and on the init")


def judge_seccomp_denies(results: dict[str, Any]) -> Check:
    """Denied calls must fail with EPERM (the profile's answer) or ENOSYS."""
    refused = (errno.EPERM, errno.ENOSYS)
    bad = []
    for call in ("unshare", "keyctl"):
        code = results.get(call)
        if call == "keyctl" and code is None:
            continue   # no syscall number known for this architecture
        if code not in refused:
            bad.append(f"{call} " + ("succeeded" if code == 0 else
                                     f"failed with {errno.errorcode.get(code, code)}"))
    if bad:
        return Check("seccomp_denies", False, "denied syscalls not refused by the filter: "
                     + "; ".join(bad))
    return Check("seccomp_denies", True, "unshare(CLONE_NEWUSER) and keyctl refused")


def judge_no_new_privs(inside: dict[str, str], expected: bool) -> Check:
    want = "1" if expected else "0"
    got = inside.get("NoNewPrivs")
    if got != want:
        return Check("no_new_privs", False, f"NoNewPrivs: {got}, the bundle asks for {want}")
    return Check("no_new_privs", True, f"NoNewPrivs: {got}, as the bundle asks"
                 + ("" if expected else " (off so that sudo works; seccomp and the user "
                                        "namespace bound what setuid programs gain)"))


def judge_landlock(result: Any, host_abi: int) -> Check:
    """A host directory's fd passed in (``result``: what opening through it gave inside) must
    lead nowhere where the kernel has Landlock (``host_abi`` > 0)."""
    if not host_abi:
        return Check("landlock", True, "this kernel has no Landlock: the layer is off "
                                       "(a leaked host fd would rely on the other layers)")
    if not isinstance(result, dict) or "errno" not in result and "entries" not in result:
        return Check("landlock", False, f"the leaked-fd probe did not run: {result!r}")
    if "entries" in result:
        return Check("landlock", False, "a host directory's fd passed into the sandbox could "
                     f"be opened ({result['entries']} entries listed): Landlock is not in force")
    if result["errno"] != errno.EACCES:
        return Check("landlock", False, "opening through a leaked host fd failed, but not by "
                     f"Landlock: {errno.errorcode.get(result['errno'], result['errno'])}")
    return Check("landlock", True, f"ABI {host_abi}: a leaked host fd leads nowhere (EACCES)")


def judge_masked(results: dict[str, Any]) -> Check:
    """Masked files read as empty (/dev/null over them) or not at all."""
    leaked = [p for p, r in results.items() if isinstance(r, int) and r > 0]
    if leaked or not results:
        return Check("masked_proc", False, "readable although masked: " + ", ".join(leaked)
                     if leaked else "nothing was probed")
    return Check("masked_proc", True, ", ".join(sorted(results)) + " read nothing")


def judge_readonly_proc_sys(rdonly: Any, write_errno: Any) -> Check:
    if rdonly is not True or write_errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
        how = "succeeded" if write_errno == 0 else errno.errorcode.get(write_errno, write_errno)
        return Check("readonly_proc_sys", False, f"/proc/sys is not read-only (read-only "
                                                 f"flag: {rdonly}, open for writing: {how})")
    return Check("readonly_proc_sys", True, "/proc/sys mounted read-only")


def judge_limit(name: str, found: str | None, expected: int, unit: str = "") -> Check:
    """A cgroup limit file (``max`` means none) against the spec's value."""
    if found is None:
        return Check(name, False, "limit file not found in the sandbox's cgroup")
    found = found.strip()
    if found == "max":
        return Check(name, False, f"no limit in force (max), want {expected}{unit}")
    try:
        value = int(found)
    except ValueError:
        return Check(name, False, f"unreadable limit {found!r}")
    if value != expected:
        return Check(name, False, f"limit is {value}{unit}, want {expected}{unit}")
    return Check(name, True, f"{value}{unit}")


def judge_disk(fstype: str | None, root_bytes: int, disk_mb: int) -> Check:
    """The root is an overlay whose writable layer is the quota'd filesystem: its size (as
    the sandbox sees it) is the quota, minus the filesystem's own overhead."""
    quota = disk_mb << 20
    if fstype != "overlay":
        return Check("disk_quota", False, f"the root is {fstype}, not an overlay")
    if not 0 < root_bytes <= quota or root_bytes < quota // 2:
        return Check("disk_quota", False, f"the writable layer holds {root_bytes >> 20} MiB, "
                                          f"quota {disk_mb} MiB")
    return Check("disk_quota", True, f"{root_bytes >> 20} MiB usable of a {disk_mb} MiB quota")


def judge_firewall(returncode: int, text: str, instance: str) -> Check:
    """``nft list set inet <instance> denied``: the table and its always-deny set."""
    if returncode != 0:
        return Check("firewall_table", False, f"nft table inet {instance} or its 'denied' set "
                                              f"is missing: {(text.strip().splitlines() or [''])[0][:200]}")
    body = text.partition("elements =")[2]
    if not body.strip():
        return Check("firewall_table", False, f"the always-deny set of inet {instance} "
                                              "is empty")
    if "169.254.0.0/16" not in body:
        # link-local holds the cloud metadata services: the one range that must be there
        return Check("firewall_table", False, f"the always-deny set of inet {instance} "
                                              "lacks 169.254.0.0/16 (link-local, metadata)")
    count = body.count(",") + 1
    return Check("firewall_table", True, f"inet {instance} with {count} always-denied ranges")


def inject(checks: list[Check], failing: Iterable[str]) -> list[Check]:
    """Mark the named checks failed (for testing the refusal and degraded paths)."""
    names = {n.strip() for n in failing if n.strip()}
    out = []
    for c in checks:
        if c.name in names:
            c = Check(c.name, False, "failed on purpose (HUTCH_SELFTEST_FAIL)")
        out.append(c)
    out += [Check(n, False, "failed on purpose (HUTCH_SELFTEST_FAIL)")
            for n in sorted(names - {c.name for c in checks})]
    return out


def failed(checks: Iterable[Check]) -> list[str]:
    return [c.name for c in checks if not c.ok]


def judge(inside: dict[str, Any], host: dict[str, Any], *, expected_caps: Iterable[str],
          no_new_privs: bool, memory_bytes: int, pids: int, disk_mb: int,
          init_extra_caps: Iterable[str] = ()) -> list[Check]:
    """Every sandbox check from the facts gathered inside (the script's JSON) and on the
    host (``status``, ``uid_map``, ``user_ns``, ``host_ns``, ``memory.max``, ``pids.max``,
    ``landlock_abi``)."""
    def text(key: str) -> str:
        # a file the script could not read comes back as {"errno": n}: judged as empty
        value = inside.get(key)
        return value if isinstance(value, str) else ""

    in_status = parse_status(text("status"))
    init_status = parse_status(host.get("status", ""))
    return [
        judge_uid_map(text("uid_map"), host.get("uid_map", "")),
        judge_host_uid(init_status),
        judge_user_namespace(host.get("user_ns", ""), host.get("host_ns", "")),
        judge_capabilities(in_status, init_status, expected_caps, init_extra_caps),
        judge_seccomp_mode(in_status, init_status),
        judge_seccomp_denies(inside),
        judge_no_new_privs(in_status, no_new_privs),
        judge_landlock(inside.get("leaked_fd"), int(host.get("landlock_abi") or 0)),
        judge_masked(inside.get("masked") or {}),
        judge_readonly_proc_sys(inside.get("proc_sys_rdonly"), inside.get("proc_sys_write")),
        judge_limit("memory_limit", host.get("memory.max"), memory_bytes, " bytes"),
        judge_limit("pids_limit", host.get("pids.max"), pids),
        judge_disk(root_fstype(text("mounts")), int(inside.get("root_bytes") or 0), disk_mb),
    ]


# -- the probe (touches the host) -------------------------------------------------------------

def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def host_view(pid: int, cgroup_root: Path = Path("/sys/fs/cgroup")) -> dict[str, Any]:
    """What the host sees of the sandbox's init."""
    out: dict[str, Any] = {"status": _read(f"/proc/{pid}/status"),
                           "uid_map": _read(f"/proc/{pid}/uid_map")}
    try:
        out["user_ns"] = os.readlink(f"/proc/{pid}/ns/user")
        out["host_ns"] = os.readlink("/proc/self/ns/user")
    except OSError:
        pass
    groups = _read(f"/proc/{pid}/cgroup")
    v2 = (cgroup_root / "cgroup.controllers").exists()
    for key, controller, v1_file in (("memory.max", "memory", "memory.limit_in_bytes"),
                                     ("pids.max", "pids", "pids.max")):
        path = parse_cgroup(groups, None if v2 else controller)
        if path is None:
            continue
        d = cgroup_root if v2 else cgroup_root / controller
        out[key] = _read(d / path.lstrip("/") / (key if v2 else v1_file)) or None
    return out


async def firewall_check(instance: str) -> Check:
    try:
        proc = await asyncio.create_subprocess_exec(
            "nft", "list", "set", "inet", instance, "denied", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
    except OSError as exc:
        return Check("firewall_table", False, f"cannot run nft: {exc}")
    return judge_firewall(proc.returncode or 0, out.decode(errors="replace"), instance)


def offer_host_fd(socket_path: Path, timeout: float = 10.0, directory: str = "/") -> None:
    """Pass an fd of a host ``directory`` (O_PATH) to whoever listens on ``socket_path`` (a
    sandbox's socket, seen through its root filesystem on the host), as a runtime that leaks
    one would. Waits up to ``timeout`` for the socket to appear.

    The socket is reached through an fd of its directory (``/proc/self/fd/N/name``): a data
    dir's path can be longer than a unix socket address holds. The directory is opened without
    following a link and the socket must be a socket, not a link: the host follows no path the
    sandbox could have pointed elsewhere."""
    import socket
    import stat

    deadline = time.monotonic() + timeout
    while True:
        try:
            parent = os.open(socket_path.parent, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
                             | os.O_CLOEXEC)
        except FileNotFoundError:
            parent = None
        if parent is not None:
            try:
                if stat.S_ISSOCK(os.stat(socket_path.name, dir_fd=parent,
                                         follow_symlinks=False).st_mode):
                    break
            except FileNotFoundError:
                pass
            os.close(parent)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{socket_path} did not appear")
        time.sleep(0.01)
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # The socket's file appears at its bind, a moment before its listen: refused until
        # then, so asked again (a slow sandbox under load took long enough to be refused).
        while True:
            with socket.socket(socket.AF_UNIX) as conn:
                conn.settimeout(timeout)
                try:
                    conn.connect(f"/proc/self/fd/{parent}/{socket_path.name}")
                except ConnectionRefusedError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
                    continue
                socket.send_fds(conn, [b"fd"], [fd])
                return
    finally:
        os.close(fd)
        os.close(parent)


async def run_inside(link, script: str, args: list[str], timeout: float = 15.0) -> str:
    """Run ``python3 -c script args...`` as root through the agent's process service and
    return its stdout."""
    from hutch.server.startup import run

    code, stdout, stderr = await asyncio.wait_for(
        run(link, "python3", ["-S", "-c", script, *args], user="root"), timeout)
    if code != 0:
        raise RuntimeError(f"the probe script failed (exit code {code}): "
                           f"{stderr.decode(errors='replace')[-500:]}")
    return stdout.decode()


async def probe(runtime, spec, *, no_new_privs: bool, expected_caps: Iterable[str],
                agent_timeout: float) -> tuple[list[Check], dict[str, float]]:
    """Start the probe sandbox ``spec`` through ``runtime``, judge it, destroy it.

    Returns the checks and a timing breakdown (seconds)."""
    from hutch.runtime import bundle
    from hutch.server.upstream import DEFAULT_USER, AgentLink

    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    link = None
    try:
        handle = await runtime.create(spec)
        timing["create"] = time.perf_counter() - t0
        t = time.perf_counter()
        link = AgentLink(handle.agent_socket)
        await link.start({}, None, DEFAULT_USER, time.monotonic() + agent_timeout)
        timing["agent"] = time.perf_counter() - t
        t = time.perf_counter()
        pid = int((runtime.sandboxes_dir / spec.id / "init.pid").read_text())
        keyctl = KEYCTL_NR.get(platform.machine(), 0)
        leak = runtime.sandboxes_dir / spec.id / "rootfs" / LEAK_SOCKET.lstrip("/")
        host, text, offered = await asyncio.gather(
            asyncio.to_thread(host_view, pid),
            run_inside(link, INSIDE_SCRIPT, [str(keyctl), json.dumps(MASKED_PROBES),
                                             LEAK_SOCKET]),
            asyncio.to_thread(offer_host_fd, leak), return_exceptions=True)
        for result in (host, text):
            if isinstance(result, BaseException):
                raise result
        inside = json.loads(text)
        if isinstance(offered, BaseException):
            inside["leaked_fd"] = {"error": f"the host could not pass its fd: {offered}"}
        host["landlock_abi"] = runtime.landlock_abi
        timing["checks"] = time.perf_counter() - t
        checks = [Check("probe_sandbox", True, f"{spec.id} started and answered")]
        checks += judge(inside, host, expected_caps=expected_caps, no_new_privs=no_new_privs,
                        memory_bytes=spec.memory_mb << 20, pids=spec.pids,
                        disk_mb=spec.disk_mb,
                        init_extra_caps=[bundle.LANDLOCK_CAPABILITY] if spec.landlock else [])
        return checks, timing
    except Exception as exc:   # noqa: BLE001 - any failure is the probe's verdict
        return [Check("probe_sandbox", False, f"the probe sandbox did not run: {exc}")], timing
    finally:
        t = time.perf_counter()
        if link is not None:
            await link.aclose()
        try:
            await asyncio.shield(runtime.destroy(spec.id))
        except Exception:   # noqa: BLE001 - the next start's reconciliation removes it
            pass
        timing["destroy"] = time.perf_counter() - t


def probe_id() -> str:
    """A fresh id for the probe sandbox (it has no record, so any unused id will do)."""
    return "selftest" + secrets.token_hex(6)


def probe_spec(manager, sandbox_id: str, template):
    """The spec a default create of ``template`` gets (network 'none'), from the manager's
    own spec builder, so the probe tests what real sandboxes run."""
    from hutch.server.store import SandboxRecord

    cfg = manager.config
    now = time.time()
    rec = SandboxRecord(id=sandbox_id, template="base", state="creating", created_at=now,
                        end_at=now + PROBE_TIMEOUT, cpu=cfg.default_cpu,
                        memory_mb=cfg.default_memory_mb, disk_mb=cfg.default_disk_mb,
                        pids=cfg.default_pids, network="none")
    return manager._spec(rec, template)   # noqa: SLF001 - the one spec builder there is


async def self_test(config, manager, runtime, templates) -> tuple[list[Check], dict[str, float]]:
    """The whole self-test: the probe sandbox and the firewall table, checked concurrently;
    then the failures HUTCH_SELFTEST_FAIL asks for."""
    from hutch.runtime import bundle

    t0 = time.perf_counter()
    tmpl = templates.get("base")
    if tmpl is None:
        checks = [Check("probe_sandbox", False, "the base template is not built yet")]
        timing: dict[str, float] = {}
        checks.append(await firewall_check(config.instance))
    else:
        spec = probe_spec(manager, probe_id(), tmpl)
        no_new_privs = bool(bundle.process(spec, 1024)["noNewPrivileges"])

        async def bounded() -> tuple[list[Check], dict[str, float]]:
            try:
                return await asyncio.wait_for(
                    probe(runtime, spec, no_new_privs=no_new_privs,
                          expected_caps=bundle.CAPABILITIES,
                          agent_timeout=config.agent_timeout), PROBE_TIMEOUT)
            except asyncio.TimeoutError:
                return [Check("probe_sandbox", False,
                              f"the probe sandbox took over {PROBE_TIMEOUT:.0f} s")], {}

        (checks, timing), fw = await asyncio.gather(bounded(), firewall_check(config.instance))
        checks.append(fw)
    timing["total"] = time.perf_counter() - t0
    return inject(checks, config.selftest_fail.split(",")), timing
