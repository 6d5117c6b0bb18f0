"""Host checks behind ``hutch doctor``: each names what is wrong and the exact fix.

The checks look at what the runtime and template builder will need (root, an OCI runtime
that really starts a user-namespaced container with limits here, cgroups, user namespaces,
nftables, overlayfs, loop devices, a static init, mmdebstrap) and at the templates built so
far. They only read and probe; they change nothing on the host, except that the isolation
self-test (:mod:`hutch.server.selftest`) starts one probe sandbox and removes it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hutch.errors import HutchError
from hutch.server.config import Config


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""
    fix: str = ""          # the command or setting that repairs a failed check
    optional: bool = False  # informational: a failure here does not stop hutch


def _tool(name: str, binary: str, package: str, why: str) -> Check:
    path = shutil.which(binary)
    return Check(name, path is not None, path or f"{binary} not found ({why})",
                 fix=f"apt-get install -y {package}")


def _filesystems() -> str:
    try:
        return Path("/proc/filesystems").read_text()
    except OSError:
        return ""


def _runtime_checks(config: Config) -> list[Check]:
    try:
        from hutch.runtime.local import LocalRuntime
        results = LocalRuntime.probe()
    except (HutchError, ImportError) as exc:
        return [Check("OCI runtime", False, str(exc), fix="apt-get install -y runc tini")]
    out = []
    chosen = [r for r in results if config.oci_runtime in (r.name, r.path)]
    for r in results:
        detail = f"{r.version or ''} {r.reason}".strip()
        if r in chosen:
            out.append(Check(f"OCI runtime {r.name} (HUTCH_OCI_RUNTIME)", r.ok, detail,
                             fix=(f"apt-get install -y {r.name}" if not r.path else
                                  "set HUTCH_OCI_RUNTIME to a runtime marked ok below")))
        else:
            out.append(Check(f"OCI runtime {r.name}", r.ok, detail, optional=True))
    if not chosen:
        out.append(Check(f"OCI runtime {config.oci_runtime} (HUTCH_OCI_RUNTIME)", False,
                         "not among the runtimes hutch knows: " + ", ".join(r.name for r in results),
                         fix="HUTCH_OCI_RUNTIME=runc"))
    return out


_SELFTEST_FIXES = {
    "probe_sandbox": "see the detail; `hutch serve` with HUTCH_LOG_LEVEL=debug shows the runtime's log",
    "firewall_table": "start `hutch serve` (it creates the table), or restart it if it runs",
}


def isolation_checks(config: Config) -> list[Check]:
    """The self-test `hutch serve` runs at start: one probe sandbox, looked at inside and out."""
    import asyncio

    from hutch.server import selftest

    async def run():
        from hutch.server.app import build_runtime, build_templates
        from hutch.server.manager import SandboxManager
        runtime = build_runtime(config)
        templates = build_templates(config)
        if templates.get("base") is None:
            return None
        runtime.sandboxes_dir.mkdir(parents=True, exist_ok=True)
        runtime._raise_nofile()   # noqa: SLF001 - as the runtime's start does
        manager = SandboxManager(config, None, runtime, templates)
        try:
            return await selftest.self_test(config, manager, runtime, templates)
        finally:
            await runtime.close()

    if os.geteuid() != 0:
        return [Check("isolation self-test", False, "needs root", optional=True)]
    try:
        result = asyncio.run(run())
    except Exception as exc:  # a doctor reports, it does not crash
        return [Check("isolation self-test", False, str(exc), fix=_SELFTEST_FIXES["probe_sandbox"])]
    if result is None:
        return [Check("isolation self-test", False,
                      "skipped: the base template is not built yet", optional=True)]
    checks, timing = result
    from hutch.runtime import network
    # Without a server of this instance ever started here there is no table to look at yet;
    # with its bridge present, a missing table is a real failure.
    set_up = network.link_exists(network.bridge_name(config.instance))
    return [Check(f"isolation: {c.name}", c.ok, c.detail + (
                      "" if c.ok or c.name != "firewall_table" or set_up
                      else " (no server of this instance has started yet)"),
                  fix=_SELFTEST_FIXES.get(c.name, "a containment layer is not in force on "
                                          "this host: see the detail"),
                  optional=c.name == "firewall_table" and not set_up)
            for c in checks]


def describe_pool(stats: dict) -> str:
    """One line per warm pool: level, hit rate and refill lag."""
    asked = stats["hits"] + stats["misses"]
    rate = f"{100 * stats['hits'] / asked:.0f}% of {asked}" if asked else "no creates yet"
    lag = "no refill yet"
    if stats["refills"]:
        lag = (f"last {stats['last_refill_seconds']:.2f} s, mean "
               f"{stats['refill_seconds_sum'] / stats['refills']:.2f} s")
    return (f"{stats['template']}: {stats['ready']}/{stats['size']} ready "
            f"({stats['starting']} starting), hits {rate}, refill lag {lag}")


def pool_checks(config: Config) -> list[Check]:
    """The warm pools of the server running with this configuration, if one answers."""
    import httpx

    host = "127.0.0.1" if config.host in ("0.0.0.0", "", "::") else config.host
    url = f"http://{host}:{config.port}/health"
    try:
        body = httpx.get(url, timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return [Check("warm pools", False, f"no server answers at {url}", optional=True)]
    pools = body.get("pools") or []
    if not pools:
        return [Check("warm pools", True, "none configured (HUTCH_POOL)")]
    return [Check(f"warm pool {p['template']}", p["ready"] > 0 or p["starting"] > 0,
                  describe_pool(p), optional=True) for p in pools]


def _agent_fork_check(config: Config) -> Check:
    """Can sandboxes' agents be forked in (a cold create about 90 ms of CPU cheaper)?"""
    name = "agent start (forked from the host)"
    if not config.agent_fork:
        return Check(name, True, "off (HUTCH_AGENT_FORK=false): agents start inside")
    if os.path.basename(config.oci_runtime) not in ("runc", "crun"):
        return Check(name, True, f"{config.oci_runtime} sandboxes start their agent inside")
    from hutch.errors import RuntimeError_
    from hutch.runtime import seccomp_filter
    try:
        program = seccomp_filter.sandbox_program()
    except (RuntimeError_, ValueError) as exc:
        return Check(name, False, f"{exc}: agents start inside, each cold create pays "
                     "Python's start", fix="apt-get install -y libseccomp2", optional=True)
    return Check(name, True, f"seccomp filter compiled ({len(program) // 8} instructions)")


def run_checks(config: Config) -> list[Check]:
    checks = [Check("running as root", os.geteuid() == 0,
                    "" if os.geteuid() == 0 else "namespaces, cgroups and firewall rules need root",
                    fix="run hutch as root (sudo -i)")]
    checks += _runtime_checks(config)
    cg = Path("/sys/fs/cgroup")
    v2 = (cg / "cgroup.controllers").exists()
    v1 = (cg / "memory").is_dir() and (cg / "pids").is_dir()
    checks.append(Check("cgroups (memory, pids, cpu)", v1 or v2,
                        "cgroup v2" if v2 else ("cgroup v1" if v1 else "no cgroup hierarchy found"),
                        fix="mount the cgroup hierarchy (boot with systemd, or mount -t cgroup2 none /sys/fs/cgroup)"))
    try:
        userns = int(Path("/proc/sys/user/max_user_namespaces").read_text())
    except (OSError, ValueError):
        userns = 0
    checks.append(Check("user namespaces", userns > 0, f"max_user_namespaces={userns}",
                        fix="sysctl -w user.max_user_namespaces=15000"))
    checks.append(Check("overlayfs", "overlay" in _filesystems(), "",
                        fix="modprobe overlay"))
    checks.append(Check("loop devices", Path("/dev/loop-control").exists(),
                        "/dev/loop-control (per-sandbox disk quotas)", fix="modprobe loop"))
    checks.append(_tool("nftables", "nft", "nftables", "the host-side firewall"))
    checks.append(_tool("ip", "ip", "iproute2", "network namespaces"))
    checks.append(_tool("mkfs.ext4", "mkfs.ext4", "e2fsprogs", "quota'd writable layers"))
    checks.append(_tool("mmdebstrap", "mmdebstrap", "mmdebstrap", "builds the templates"))
    checks.append(_agent_fork_check(config))
    static_init = any(os.access(p, os.X_OK) for p in ("/usr/bin/tini-static", "/usr/bin/tini"))
    checks.append(Check("init for PID 1 (tini)", static_init, "", fix="apt-get install -y tini"))
    try:
        from hutch.server.app import build_templates
        names = [t.name for t in build_templates(config).list()]
        checks.append(Check("templates", True, f"{config.templates_dir}: " + (
            ", ".join(names) or "none built yet (the first `hutch serve` builds base)")))
    except Exception as exc:  # a doctor reports, it does not crash
        checks.append(Check("templates", False, str(exc), fix=f"check {config.templates_dir}"))
    return checks
