"""LocalRuntime: sandboxes as OCI containers run by runc (or crun) on this host.

One instance name owns a set of host objects, each named so a restarted server finds them:
the bridge `<instance>0`, the nftables tables `<instance>`, the cgroup parent `/<instance>`,
network namespaces `<instance>-<id>`, and `<state_dir>/sandboxes/<id>` (bundle, disk image,
mounts, run dir). create() builds a sandbox from a SandboxSpec; anything half-made is removed
by destroy(), which is idempotent and works from what is on the host, not from memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import glob
import hashlib
import ipaddress
import logging
import os
import re
import resource
import shutil
import stat
import time
from pathlib import Path
from typing import Callable

from hutch.errors import AlreadyExistsError, InvalidArgumentError, RuntimeError_
from hutch.errors import SandboxNotFoundError
from hutch.runtime import (
    _libc, bundle, cgroup, command, conntrack, disk, egress, firewall, kernel_limits, network,
    nflog, oci, seccomp_filter,
)
from hutch.runtime.dns import DnsForwarder, host_resolvers
from hutch.runtime.egress_proxy import EgressProxy
from hutch.runtime.spec import Mount, SandboxHandle, SandboxSpec
from hutch.runtime.zygote import Zygote

log = logging.getLogger(__name__)

ID_RE = re.compile(r"^[a-z0-9]{1,48}$")
HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})$")
NOFILE = 1048576
EGRESS_FILE = "egress.json"     # the sandbox's egress policy, kept for a restarted runtime
INIT_CANDIDATES = ("/usr/bin/tini-static", "/usr/sbin/tini-static", "/usr/bin/tini")
# What the init runs when the agent is forked in from the zygote: a process that only waits
# (the init needs a child, and the sandbox ends with it). It is the template's `sleep`, as
# any Linux userland has one, run under a name of its own: a `pkill sleep` inside must not end
# the whole sandbox (see _wait_command). It sleeps 2^31-1 seconds, which every sleep reads
# (busybox's has no "infinity").
PAUSE_NAME = "hutch-pause"
PAUSE_SECONDS = "2147483647"
# Where the forked agent's own standard library (the host Python's) appears inside: each of
# its directories under this prefix, at its host path.
STDLIB_INSIDE = "/opt/hutch/python"
# OCI runtimes whose sandboxes are namespaces of this kernel, which the zygote can join.
FORKING_RUNTIMES = ("runc", "crun")


def _find_init() -> Path:
    for c in INIT_CANDIDATES:
        if os.access(c, os.X_OK):
            return Path(c)
    raise RuntimeError_("no init found: install tini (Debian: tini, for /usr/bin/tini-static)")


def _listening(listener, source: str, what: str):
    """``listener`` started, or None (with a warning) when the kernel will not let us."""
    try:
        listener.start()
        return listener
    except OSError as exc:
        log.warning("egress log: cannot read %s (%s); %s will not be logged", source, exc, what)
        return None


class LocalRuntime:
    def __init__(self, state_dir: Path, *, instance: str = "hutch", subnet: str = "10.11.0.0/16",
                 oci_runtime: str | None = None, uid_base: int = 100000,
                 uid_count: int = 65536,
                 dns_upstreams: list[tuple[str, int]] | None = None,
                 dns_port: int = 53, max_connections: int = 0, rate_bytes: int = 0,
                 proxy_port: int = 15001, fork_agents: bool = True) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,9}", instance):
            raise InvalidArgumentError("instance must be [a-z][a-z0-9]{0,9}")
        self.state_dir = Path(state_dir)
        self.instance = instance
        # per-sandbox caps in the firewall (0: none): open connections, bytes/s each way
        self.max_connections, self.rate_bytes = max_connections, rate_bytes
        # The egress log: every decision (resolver answers, connections opened or refused)
        # goes to this callable as a dict, when one is set before start().
        self.on_egress: Callable[[dict], None] | None = None
        self._nflog: nflog.NflogListener | None = None
        self._conntrack: conntrack.ConntrackListener | None = None
        self._names: dict[tuple[str, str], str] = {}    # (sandbox, address) -> name answered
        # address -> (sandbox id, policy) of sandboxes with an egress policy (the resolver's
        # view), and the always-denied networks (what no learned address may be)
        self._policies: dict[str, tuple[str, egress.EgressPolicy]] = {}
        self._denied: list = []
        # sandbox id -> {address: until (monotonic)}: what its resolver answered for allowed
        # names (the proxy's view of the learned nft set)
        self._learned: dict[str, dict[str, float]] = {}
        self.proxy_port = proxy_port
        self._proxy: EgressProxy | None = None
        self.subnet = str(ipaddress.ip_network(subnet))
        self.gateway = network.gateway(self.subnet)
        self.prefix = ipaddress.ip_network(self.subnet).prefixlen
        self.uid_base = uid_base
        self.uid_count = uid_count
        self.bridge = network.bridge_name(instance)
        self._oci_name = oci_runtime
        self._dns_upstreams = dns_upstreams
        self._dns_port = dns_port
        self._dns: DnsForwarder | None = None
        self._init: Path | None = None
        self._oci: oci.OciRuntime | None = None
        self._nofile = NOFILE
        self._limits = kernel_limits.LimitWriter()
        self._fork_agents = fork_agents
        self._zygote: Zygote | None | bool = None     # False: this host cannot fork agents
        # layers -> how their sandboxes' init runs its waiting child (see _wait_command)
        self._sleep: dict[tuple[Path, ...], tuple[str | None, tuple[str, ...]] | None] = {}
        self.addresses = network.AddressPool(self.state_dir / "addresses", self.subnet)
        self._masked = tuple(sorted(
            p for p in glob.glob("/sys/devices/system/cpu/cpu*/thermal_throttle")))
        self.last_destroy_timings: dict[str, float] = {}

    # -- paths --------------------------------------------------------------------------

    @property
    def sandboxes_dir(self) -> Path:
        return self.state_dir / "sandboxes"

    def _dir(self, sandbox_id: str) -> Path:
        return self.sandboxes_dir / sandbox_id

    @property
    def driver(self) -> oci.OciRuntime:
        if self._oci is None:
            self._oci = oci.OciRuntime(self._pick_runtime(), self.state_dir / "oci")
        return self._oci

    def _pick_runtime(self) -> str:
        if self._oci_name is not None:
            return self._oci_name
        for r in self.probe(init=self.init, uid_base=self.uid_base, uid_count=self.uid_count):
            if r.ok:
                return r.path or r.name
        raise RuntimeError_("no working OCI runtime (run `hutch doctor`)")

    @property
    def init(self) -> Path:
        if self._init is None:
            self._init = _find_init()
        return self._init

    @staticmethod
    def probe(candidates: tuple[str, ...] = oci.CANDIDATES, *, init: Path | None = None,
              uid_base: int = 100000, uid_count: int = 65536) -> list[oci.ProbeResult]:
        """Which OCI runtime runs hutch's kind of container here, and why the others don't."""
        return oci.probe(candidates, init=init or _find_init(), uid_base=uid_base,
                         uid_count=uid_count)

    # -- host setup ---------------------------------------------------------------------

    async def start(self) -> None:
        """Idempotent host setup; removes leftovers of sandboxes whose directory is gone."""
        for d in (self.sandboxes_dir, self.state_dir / "cache"):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o711)  # the mapped root must traverse to its rootfs
        os.chmod(self.sandboxes_dir, 0o711)
        _ = self.driver
        self._raise_nofile()
        await network.ip_batch(network.bridge_commands(
            self.instance, self.subnet, exists=network.link_exists(self.bridge)))
        network.set_sysctl(f"net/ipv6/conf/{self.bridge}/disable_ipv6", "1")
        network.set_sysctl("net/ipv4/ip_forward", "1")
        kernel_limits.raise_host_limits()
        addrs, subnets = await firewall.host_facts(exclude_ifname=self.bridge)
        facts = firewall.FirewallFacts(self.instance, self.subnet,
                                       network.default_route_interface(), addrs, subnets,
                                       max_connections=self.max_connections,
                                       rate_bytes=self.rate_bytes,
                                       log_group=self.log_group if self.on_egress else 0,
                                       proxy_port=self.proxy_port)
        stored = self._stored_policies()
        await firewall.nft(firewall.ruleset(facts, stored))
        self._policies = {address: (sid, policy) for sid, address, policy in stored}
        self._denied = [ipaddress.ip_network(n) for n in firewall.denied_set(facts)]
        if self._dns is None:
            upstreams = self._dns_upstreams if self._dns_upstreams is not None \
                else host_resolvers()
            self._dns = DnsForwarder((self.gateway, self._dns_port), upstreams,
                                     policy=lambda address: self._policies.get(address),
                                     learn=self._learn, record=self._dns_decision)
            await self._dns.start()
        if self._proxy is None:
            self._proxy = EgressProxy((self.gateway, self.proxy_port),
                                      lookup=lambda address: self._policies.get(address),
                                      learned=self._was_learned, resolve=self._resolve,
                                      denied=self._always_denied, record=self._emit,
                                      rate=self.rate_bytes)
            await self._proxy.start()
        self._proxy.rate = self.rate_bytes
        if self.on_egress is not None:
            # The sandboxes are no less safe without these; only part of their log is lost.
            if self._nflog is None:
                self._nflog = _listening(
                    nflog.NflogListener(self.log_group, self._packet_decision),
                    f"NFLOG group {self.log_group}", "connections")
            if self._conntrack is None:
                self._conntrack = _listening(
                    conntrack.ConntrackListener(self.subnet, self._flow_closed),
                    "conntrack events", "connections' sizes")
        await self._reconcile()

    def _raise_nofile(self) -> None:
        """The OCI runtime sets rlimits from inside the user namespace, where it cannot raise
        a hard limit: raise ours (inherited by it) once, keeping the soft limit."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < NOFILE:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, NOFILE))
                hard = NOFILE
            except (ValueError, OSError):
                pass
        self._nofile = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)

    def _stored_policies(self) -> list[tuple[str, str, egress.EgressPolicy]]:
        """The egress policies of the sandboxes that exist, as kept in their directories."""
        out = []
        for address, owner in self.addresses.owners().items():
            try:
                text = (self._dir(owner) / EGRESS_FILE).read_text()
            except (FileNotFoundError, NotADirectoryError):
                continue
            out.append((owner, address, egress.EgressPolicy.from_json(text)))
        return out

    async def set_egress(self, sandbox_id: str, policy: egress.EgressPolicy) -> None:
        """Put ``policy`` in force for a running sandbox, at once and atomically (packets of
        connections it no longer allows are rejected from then on)."""
        address = self._address_of(sandbox_id)
        if address is None:
            raise InvalidArgumentError(f"sandbox {sandbox_id} has no network (mode 'none')")
        await self._apply_egress(sandbox_id, address, policy)

    async def _learn(self, sandbox_id: str, addresses: list[str], seconds: int) -> bool:
        """Let the sandbox reach what its resolver answered for an allowed name; False (and
        nothing learned) when an address is one no sandbox may reach."""
        if any(self._always_denied(a) for a in addresses):
            return False
        await firewall.nft(egress.learn_script(self.instance, sandbox_id, addresses, seconds))
        until = time.monotonic() + seconds
        learned = self._learned.setdefault(sandbox_id, {})
        if len(learned) > 10_000:           # bounded, like the nft set's answers' lifetime
            now = time.monotonic()
            for address in [a for a, t in learned.items() if t < now]:
                del learned[address]
        learned.update((a, until) for a in addresses)
        return True

    def _was_learned(self, sandbox_id: str, address: str) -> bool:
        return self._learned.get(sandbox_id, {}).get(address, 0.0) > time.monotonic()

    def _always_denied(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return ip.version != 4 or any(ip in net for net in self._denied)

    async def _resolve(self, name: str) -> list[str] | None:
        """The proxy's lookups: hutch's resolver's recent answers, else its upstreams."""
        return await self._dns.lookup(name) if self._dns is not None else None

    def _address_of(self, sandbox_id: str) -> str | None:
        return next((a for a, owner in self.addresses.owners().items()
                     if owner == sandbox_id), None)

    async def _apply_egress(self, sandbox_id: str, address: str,
                            policy: egress.EgressPolicy) -> None:
        path = self._dir(sandbox_id) / EGRESS_FILE
        self._learned.pop(sandbox_id, None)
        if policy.is_open:
            await firewall.nft(egress.apply_script(self.instance, sandbox_id, address, policy,
                                                   self.proxy_port))
            self._policies.pop(address, None)
            path.unlink(missing_ok=True)
            return
        # Kept first, so a runtime restarted at any moment rebuilds at least this policy.
        tmp = path.with_suffix(".tmp")
        tmp.write_text(policy.to_json())
        os.replace(tmp, path)
        await firewall.nft(egress.apply_script(self.instance, sandbox_id, address, policy,
                                               self.proxy_port))
        self._policies[address] = (sandbox_id, policy)

    async def _reconcile(self) -> None:
        present = set(os.listdir(self.sandboxes_dir))
        for sid in await self.list():
            if sid not in present:
                await self.destroy(sid)
        for addr, owner in self.addresses.owners().items():
            if owner not in present:
                (self.addresses.dir / addr).unlink(missing_ok=True)

    @property
    def log_group(self) -> int:
        """The NFLOG group of this instance's decisions (one per instance on a host)."""
        return 1000 + int(hashlib.sha256(self.instance.encode()).hexdigest()[:6], 16) % 60000

    _REASONS = {"a:open": (True, "default policy"), "a:policy": (True, "egress policy"),
                "d:policy": (False, "egress policy"),
                "d:private": (False, "always denied (private, link-local, loopback or host)"),
                "d:connections": (False, "too many open connections")}
    _PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp"}


    def _emit(self, event: dict) -> None:
        if self.on_egress is not None:
            self.on_egress(event)

    def _dns_decision(self, client: str, name: str, allowed: bool, reason: str,
                      addresses: list[str]) -> None:
        sandbox_id = self.addresses.owner_of(client)
        if sandbox_id is None:
            return
        for address in addresses:
            if len(self._names) > 100_000:
                self._names.clear()
            self._names[(sandbox_id, address)] = name
        self._emit({"time": time.time(), "sandbox_id": sandbox_id, "kind": "dns",
                    "name": name, "addresses": addresses, "allowed": allowed,
                    "reason": reason})

    def _packet_decision(self, event: nflog.Event) -> None:
        prefix, src, dst, proto, port = event
        sandbox_id = self.addresses.owner_of(src)
        allowed_reason = self._REASONS.get(prefix)
        if sandbox_id is None or allowed_reason is None:
            return
        allowed, reason = allowed_reason
        self._emit({"time": time.time(), "sandbox_id": sandbox_id, "kind": "connection",
                    "name": self._names.get((sandbox_id, dst)), "address": dst,
                    "port": port, "protocol": self._PROTOCOLS.get(proto, str(proto)),
                    "allowed": allowed, "reason": reason})

    def _flow_closed(self, flow: conntrack.Flow) -> None:
        """A direct connection ended: its size (the proxy reports the ones it carried)."""
        sandbox_id = self.addresses.owner_of(flow.src)
        if sandbox_id is None or flow.redirected:
            return
        self._emit({"time": time.time(), "sandbox_id": sandbox_id, "kind": "closed",
                    "name": self._names.get((sandbox_id, flow.dst)), "address": flow.dst,
                    "port": flow.dport, "protocol": self._PROTOCOLS.get(flow.protocol,
                                                                        str(flow.protocol)),
                    "allowed": True, "reason": "closed", "bytes_out": flow.bytes_out,
                    "bytes_in": flow.bytes_in})

    async def close(self) -> None:
        if self._nflog is not None:
            self._nflog.close()
            self._nflog = None
        if self._conntrack is not None:
            self._conntrack.close()
            self._conntrack = None
        if self._dns is not None:
            await self._dns.close()
            self._dns = None
        if self._proxy is not None:
            await self._proxy.close()
            self._proxy = None
        await self._limits.close()
        if isinstance(self._zygote, Zygote):
            await self._zygote.close()
            self._zygote = None

    # -- sandboxes ----------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> SandboxHandle:
        if not ID_RE.match(spec.id):
            raise InvalidArgumentError(f"invalid sandbox id {spec.id!r}")
        if spec.network not in ("internet", "none"):
            raise InvalidArgumentError(f"unknown network mode {spec.network!r}")
        if not spec.layers:
            raise InvalidArgumentError("a sandbox needs at least one layer")
        if any(c in str(p) for p in spec.layers for c in ",:\\"):
            raise InvalidArgumentError("layer paths may not contain ',', ':' or '\\'")
        if not HOSTNAME_RE.match(spec.hostname):
            raise InvalidArgumentError(f"invalid hostname {spec.hostname!r}")
        sdir = self._dir(spec.id)
        try:
            sdir.mkdir(mode=0o711)
        except FileExistsError:
            raise AlreadyExistsError(f"sandbox {spec.id} exists") from None
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        zygote, sleep = self._zygote_for(spec.layers) if spec.agent_fork else (None, None)
        landlock = spec.landlock
        if zygote is not None:
            # The waiting process needs no capability to confine itself: the agent, which
            # does, gets its own from joining the user namespace.
            spec = dataclasses.replace(spec, args=sleep[1], landlock=False)
        stdlib: list[str] = []
        try:
            if zygote is not None:
                stdlib = await zygote.stdlib(spec.agent_fork.lib)
                spec = dataclasses.replace(spec, mounts=spec.mounts + tuple(
                    Mount(Path(p), STDLIB_INSIDE + p) for p in _outermost(stdlib)))
            address = self.addresses.allocate(spec.id) if spec.network == "internet" else None
            files = bundle.etc_files(spec, address, self.gateway if address else None)
            fs_job = asyncio.get_running_loop().run_in_executor(
                None, self._make_rootfs, spec, sdir, files, timings)
            net_job = self._make_network(spec.id, address, timings)
            jobs = [fs_job, net_job]
            if address is not None and spec.egress is not None and not spec.egress.is_open:
                # In force before the sandbox's first process exists; made meanwhile, as it
                # needs only the address.
                jobs.append(self._apply_egress(spec.id, address, spec.egress))
            results = await asyncio.gather(*jobs, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r
            t = time.perf_counter()
            run_dir = sdir / "run"
            if zygote is not None and sleep[0] is not None:
                os.symlink(sleep[0], run_dir / PAUSE_NAME)
            where = bundle.Placement(
                rootfs=sdir / "rootfs", run_dir=run_dir, init=self.init, sysfs=sdir / "sys",
                netns=network.netns_path(self.instance, spec.id),
                cgroups_path=cgroup.cgroups_path(self.instance, spec.id),
                uid_base=self.uid_base, uid_count=self.uid_count, nofile=self._nofile,
                extra_masked=self._masked)
            # 0600: the environment in it may carry secrets
            fd = os.open(sdir / "config.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(bundle.render(bundle.config(spec, where)))
            timings["bundle"] = time.perf_counter() - t
            t = time.perf_counter()
            await self.driver.run(spec.id, sdir, stdio=sdir / "disk" / "console.log",
                                  log=sdir / "oci.log", pid_file=sdir / "init.pid",
                                  background=spec.background)
            timings["oci_run"] = time.perf_counter() - t
            t = time.perf_counter()
            init_pid = int((sdir / "init.pid").read_text())
            if zygote is not None:
                await self._fork_agent(zygote, spec, init_pid, sdir, landlock,
                                       [STDLIB_INSIDE + p for p in stdlib])
                timings["agent_fork"] = time.perf_counter() - t
            else:
                # Before anything but the init and the agent runs inside (user code comes
                # later, through the agent), so no sandbox ever holds more than its share.
                await self._limits.limit_sandbox(init_pid)
                timings["limits"] = time.perf_counter() - t
        except BaseException as e:
            try:
                await asyncio.shield(self.destroy(spec.id))
            except Exception:  # noqa: BLE001 - the first error is the one to report
                log.exception("cleanup of half-made sandbox %s failed", spec.id)
            if isinstance(e, (RuntimeError_, InvalidArgumentError)) or \
                    not isinstance(e, Exception):
                raise
            raise RuntimeError_(f"creating sandbox {spec.id} failed: {e}") from e
        timings["total"] = time.perf_counter() - t0
        return SandboxHandle(id=spec.id, run_dir=run_dir, address=address, timings=timings)

    def forks_agent(self, layers: tuple[Path, ...]) -> bool:
        """Whether a sandbox of these layers gets its agent forked in from the zygote (then
        the template needs no python3 of its own, only a `sleep`)."""
        return self._zygote_for(layers)[0] is not None

    def _zygote_for(self, layers: tuple[Path, ...]) -> tuple[Zygote | None, tuple | None]:
        """The zygote to fork the agent of a sandbox of ``layers`` from and how its init runs
        the waiting process (_wait_command), or (None, None) to start the agent inside."""
        if not self._fork_agents or self._zygote is False:
            return None, None
        if os.path.basename(self.driver.binary) not in FORKING_RUNTIMES:
            return None, None
        if self._zygote is None:
            try:
                program = seccomp_filter.sandbox_program()
            except (RuntimeError_, ValueError) as exc:
                log.warning("agents start inside each sandbox: %s", exc)
                self._zygote = False
                return None, None
            self._zygote = Zygote(program)
        if layers not in self._sleep:
            self._sleep[layers] = _wait_command(layers)
        sleep = self._sleep[layers]
        return (self._zygote, sleep) if sleep else (None, None)

    async def _fork_agent(self, zygote: Zygote, spec: SandboxSpec, init_pid: int,
                          sdir: Path, landlock: bool, stdlib: list[str]) -> None:
        fork = spec.agent_fork
        caps = [bundle.CAPABILITY_NUMBERS[name] for name in bundle.CAPABILITIES]
        await zygote.spawn(fork.lib, {
            "init": init_pid, "marker": cgroup.cgroups_path(self.instance, spec.id),
            "cgroups": [str(p) for p in cgroup.procs_files_of(init_pid)],
            "oom": bundle.OOM_SCORE_ADJ, "nofile": self._nofile,
            "console": str(sdir / "disk" / "console.log"),
            "sysctls": {k: str(v) for k, v in kernel_limits.SANDBOX_LIMITS.items()},
            "env": list(spec.env), "cwd": spec.cwd, "caps": caps, "landlock": landlock,
            "lib_inside": fork.lib_inside, "stdlib_inside": stdlib, "socket": fork.socket,
            "interpreter": fork.interpreter,
        })

    def _make_rootfs(self, spec: SandboxSpec, sdir: Path, files: dict[str, str],
                     timings: dict[str, float]) -> None:
        """Disk image → loop mount → /etc files in the upper layer → overlay (a thread)."""
        t = time.perf_counter()
        blank = disk.blank_image(self.state_dir / "cache", spec.disk_mb, self.uid_base)
        image = sdir / "disk.img"
        disk.sparse_copy(blank, image)
        timings["disk_copy"] = time.perf_counter() - t
        t = time.perf_counter()
        (sdir / "disk").mkdir()
        disk.mount_image(image, sdir / "disk")
        timings["disk_mount"] = time.perf_counter() - t
        t = time.perf_counter()
        upper = sdir / "disk" / "upper"
        self._write_etc(spec.layers, upper, files)
        (sdir / "rootfs").mkdir()
        disk.mount_overlay(spec.layers, upper, sdir / "disk" / "work", sdir / "rootfs")
        # The run dir lives on the sandbox's own quota'd filesystem (whatever the sandbox
        # writes there counts against its disk), shown at the documented host path.
        (sdir / "run").mkdir()
        disk.bind(sdir / "disk" / "run", sdir / "run")
        timings["overlay"] = time.perf_counter() - t

    def _write_etc(self, layers: tuple[Path, ...], upper: Path, files: dict[str, str]) -> None:
        """Files hutch generates go into the sandbox's own upper layer; the upper /etc copies
        owner and mode of the template's /etc so the merged directory looks unchanged."""
        etc = upper / "etc"
        st = next((s for s in (_lstat(p / "etc") for p in layers)
                   if s is not None and stat.S_ISDIR(s.st_mode)), None)
        etc.mkdir(mode=0o755)
        if st is not None:
            os.chown(etc, st.st_uid, st.st_gid)
            os.chmod(etc, st.st_mode & 0o7777)
        else:
            os.chown(etc, self.uid_base, self.uid_base)
        for name, text in files.items():
            fd = os.open(etc / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chown(etc / name, self.uid_base, self.uid_base)

    async def _make_network(self, sandbox_id: str, address: str | None,
                            timings: dict[str, float]) -> None:
        t = time.perf_counter()
        sysfs = self._dir(sandbox_id) / "sys"
        sysfs.mkdir()
        link = None if address is None else network.Link(
            network.host_ifname(self.instance, sandbox_id), self.bridge, address,
            self.prefix, self.gateway)
        await network.create_netns(network.netns_path(self.instance, sandbox_id), sysfs, link)
        timings["network"] = time.perf_counter() - t

    async def destroy(self, sandbox_id: str) -> None:
        """Remove every kernel object and file of the sandbox; fine if some never existed.

        The init is killed first (the kernel then kills the rest of its pid namespace);
        after that the OCI runtime's bookkeeping (its state, the cgroups) and the host side
        (mounts, netns, address, files) are independent and are removed concurrently."""
        if not ID_RE.match(sandbox_id):
            raise InvalidArgumentError(f"invalid sandbox id {sandbox_id!r}")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        killed = False
        try:
            pid = int((self._dir(sandbox_id) / "init.pid").read_text())
            killed = await oci.kill_init(pid, cgroup.cgroups_path(self.instance, sandbox_id))
        except (OSError, ValueError, asyncio.TimeoutError):
            pass
        timings["kill"] = time.perf_counter() - t0
        errors: list[str] = []
        await asyncio.gather(self._drop_container(sandbox_id, killed, errors, timings),
                             self._drop_host_side(sandbox_id, errors, timings))
        timings["total"] = time.perf_counter() - t0
        self.last_destroy_timings = timings
        if errors:
            raise RuntimeError_(f"destroying sandbox {sandbox_id}: " + "; ".join(errors))

    async def _drop_container(self, sandbox_id: str, killed: bool, errors: list[str],
                              timings: dict[str, float]) -> None:
        t = time.perf_counter()
        try:
            # After our own kill a plain delete only drops the runtime's state and cgroups
            # (a forced delete polls for the processes to die: ~100 ms).
            await self.driver.delete(sandbox_id, force=not killed)
        except RuntimeError_ as e:
            errors.append(str(e))
            cgroup.kill_all(self.instance, sandbox_id)
        # A process that joined the cgroups from the host side is not in the init's pid
        # namespace and outlives it: a forked agent's first step, when a server that died
        # mid-create left its zygote finishing the fork while the next server cleans up.
        for _ in range(50):
            if cgroup.remove(self.instance, sandbox_id):
                break
            cgroup.kill_all(self.instance, sandbox_id)
            await asyncio.sleep(0.01)
        timings["oci_delete"] = time.perf_counter() - t

    async def _drop_host_side(self, sandbox_id: str, errors: list[str],
                              timings: dict[str, float]) -> None:
        t = time.perf_counter()
        try:
            await network.delete_netns(network.netns_path(self.instance, sandbox_id))
        except OSError as e:
            errors.append(f"netns: {e}")
        address = self._address_of(sandbox_id)
        self._learned.pop(sandbox_id, None)
        if self._proxy is not None:
            self._proxy.forget(sandbox_id)
        if address is not None and (self._dir(sandbox_id) / EGRESS_FILE).exists():
            self._policies.pop(address, None)
            try:
                await firewall.nft(egress.remove_script(self.instance, sandbox_id, address))
            except RuntimeError_ as e:
                errors.append(f"egress: {e}")
        self.addresses.release(sandbox_id)
        timings["netns"] = time.perf_counter() - t
        t = time.perf_counter()
        sdir = self._dir(sandbox_id)

        def unmount_and_remove() -> None:
            for mnt in (sdir / "run", sdir / "rootfs", sdir / "disk", sdir / "sys"):
                try:
                    disk.unmount(mnt)
                except OSError as e:
                    errors.append(f"unmount {mnt}: {e}")
            if sdir.exists():
                disk.remove_tree(sdir)

        await asyncio.get_running_loop().run_in_executor(None, unmount_and_remove)
        timings["unmount_and_files"] = time.perf_counter() - t

    async def list(self) -> list[str]:
        ids: set[str] = set()
        try:
            ids.update(os.listdir(self.sandboxes_dir))
        except FileNotFoundError:
            pass
        ids.update(network.list_netns(self.instance))
        ids.update(cgroup.list_ids(self.instance))
        ids.update(_listdir(self.state_dir / "oci"))  # the OCI runtime's state, per container
        return sorted(i for i in ids if ID_RE.match(i))

    async def copy_writable_layer(self, sandbox_id: str, dest: Path, *,
                                  freeze: bool = False) -> None:
        """Copy the sandbox's writable (upper) layer to ``dest`` (a new directory) exactly:
        owners, modes, times, xattrs (overlayfs' opaque marks) and whiteouts kept. Template
        builds copy a build sandbox's layer once its step has ended; a snapshot of a running
        sandbox asks to ``freeze`` its processes meanwhile, so the copy is one consistent
        moment (they carry on afterwards as if nothing happened)."""
        if freeze:
            await self.driver.pause(sandbox_id)
        try:
            done = await command.run(["cp", "-a", "--preserve=all",
                                      str(self._dir(sandbox_id) / "disk" / "upper"), str(dest)])
            if done.returncode != 0:
                raise RuntimeError_(f"copying {sandbox_id}'s files failed: "
                                    f"{done.stderr.decode(errors='replace').strip()}")
        finally:
            if freeze:
                await self.driver.pause(sandbox_id, paused=False)

    async def is_running(self, sandbox_id: str) -> bool:
        """Is the sandbox's init alive? (list() also reports what is only left over, e.g.
        the directories of sandboxes that did not survive a host reboot.)"""
        try:
            pid = int((self._dir(sandbox_id) / "init.pid").read_text())
            with open(f"/proc/{pid}/cgroup") as f:
                if cgroup.cgroups_path(self.instance, sandbox_id) not in f.read():
                    return False
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (OSError, ValueError, IndexError):
            return False

    @property
    def landlock_abi(self) -> int:
        """The host kernel's Landlock ABI (0: none): whether the agents' confinement of
        sandboxes to their own root (SandboxSpec.landlock) is in force here."""
        return _libc.landlock_abi()

    async def resize(self, sandbox_id: str, cpu: float, memory_mb: int) -> None:
        """Give a running sandbox its CPU and memory limits, the normal CPU weight and the
        default niceness (a warm-pool sandbox, started in the background, handed out with the
        size its create asked for)."""
        try:
            cgroup.set_limits(self.instance, sandbox_id, memory_mb * 1024 * 1024,
                              bundle.cpu_quota(cpu), bundle.CPU_PERIOD_US)
            cgroup.renice(self.instance, sandbox_id)
        except FileNotFoundError:
            raise SandboxNotFoundError(f"sandbox {sandbox_id} is not running") from None
        except OSError as exc:
            raise RuntimeError_(f"resizing sandbox {sandbox_id} to {cpu} CPU and "
                                f"{memory_mb} MiB failed: {exc}") from exc

    async def stats(self, sandbox_id: str) -> dict:
        found = cgroup.stats(self.instance, sandbox_id)
        if found is None:
            raise SandboxNotFoundError(f"sandbox {sandbox_id} is not running")
        try:
            st = os.statvfs(self._dir(sandbox_id) / "disk")
            found["disk_total"] = st.f_blocks * st.f_frsize
            found["disk_used"] = (st.f_blocks - st.f_bfree) * st.f_frsize
        except OSError:
            found["disk_total"] = found["disk_used"] = None
        return found

    async def teardown(self) -> None:
        """Destroy every sandbox of this instance and remove its bridge and nft tables."""
        await self.close()
        errors = []
        for sid in await self.list():
            try:
                await self.destroy(sid)
            except RuntimeError_ as e:
                errors.append(str(e))
        await firewall.nft(firewall.delete_script(self.instance))
        if network.link_exists(self.bridge):
            await network.ip_batch([f"link del {self.bridge}"])
        cgroup.remove_parent(self.instance)
        for d in (self.addresses.dir, self.state_dir / "cache", self.state_dir / "oci"):
            shutil.rmtree(d, ignore_errors=True)
        if errors:
            raise RuntimeError_("teardown: " + "; ".join(errors))


def _wait_command(layers: tuple[Path, ...]) -> tuple[str | None, tuple[str, ...]] | None:
    """How the init runs its waiting child from the template's `sleep`: what the run dir's
    `hutch-pause` links to (None: no link) and the arguments; None without a sleep.

    A sleep of its own is run through the link, so the process is named `hutch-pause`. A
    multi-call binary (busybox, toybox) picks its tool by the name it was run as, so it is
    run by its own path with `sleep` as its first argument, and goes by its own name."""
    path = _find_in_layers(layers, ("usr/bin/sleep", "bin/sleep"))
    real = _resolve_in_layers(layers, path) if path else None
    if real is None:
        return None
    if os.path.basename(real) == "sleep":
        return real, (f"{bundle.RUN_PATH}/{PAUSE_NAME}", PAUSE_SECONDS)
    return None, (real, "sleep", PAUSE_SECONDS)


def _resolve_in_layers(layers: tuple[Path, ...], path: str) -> str | None:
    """``path`` (absolute, inside) with its symbolic links followed through the merged view
    of ``layers``; None if it leads nowhere."""
    for _ in range(40):
        rel = path.lstrip("/")
        st = None
        for layer in layers:
            st = _lstat(layer / rel)
            if st is not None:
                break
        if st is None:
            return None
        if not stat.S_ISLNK(st.st_mode):
            return path
        target = os.readlink(layer / rel)
        path = os.path.normpath(os.path.join(os.path.dirname(path), target))
    return None


def _outermost(paths: list[str]) -> list[str]:
    """``paths`` without those inside another of them (one mount serves both)."""
    return [p for p in paths
            if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in paths)]


def _find_in_layers(layers: tuple[Path, ...], candidates: tuple[str, ...]) -> str | None:
    """The first of ``candidates`` present in the merged view of ``layers`` (topmost first),
    as an absolute path inside: the topmost layer that has the name decides, and a whiteout
    there (a 0:0 character device) means it was deleted."""
    for rel in candidates:
        for layer in layers:
            st = _lstat(layer / rel)
            if st is None:
                continue
            if not (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0):
                return "/" + rel
            break
    return None


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []
