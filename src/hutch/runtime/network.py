"""Network namespaces, veth pairs and addresses of sandboxes.

Each sandbox gets a network namespace made here, owned by the host's user namespace: root
inside the sandbox has no CAP_NET_ADMIN over it, so it can neither change its address nor
touch netfilter from inside. The namespace is created in-process (unshare in a short-lived
thread, bind-mounted at /run/netns/<instance>-<id> like `ip netns add` does), the veth pair
with one rtnetlink request, and the inside with the classic interface ioctls from the same
thread after it entered the namespace: no process is started. Deleting the namespace is the
whole teardown: the kernel destroys the veth with it, asynchronously (a synchronous veth
delete costs ~30 ms).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import ipaddress
import logging
import os
import socket
import struct
import threading
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, TypeVar

from hutch.errors import RuntimeError_
from hutch.runtime import _libc, command, netlink

log = logging.getLogger("hutch.runtime")
NETNS_DIR = Path("/run/netns")
SANDBOX_IFNAME = "eth0"

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFADDR = 0x8916
SIOCSIFNETMASK = 0x891C
SIOCADDRT = 0x890B
IFF_UP = 0x1
RTF_UP = 0x1
RTF_GATEWAY = 0x2

T = TypeVar("T")

# Per-namespace settings. The sandbox's user namespace does not own its netns, so root inside
# lacks CAP_NET_BIND_SERVICE and CAP_NET_RAW there: low ports are opened to every process of
# the namespace instead (only the sandbox lives in it), and ICMP echo goes through ping
# sockets (SOCK_DGRAM) for every group. IPv6 is off: the firewall speaks IPv4.
NETNS_SYSCTLS: tuple[tuple[str, str], ...] = (
    ("ipv6/conf/all/disable_ipv6", "1"),
    ("ipv6/conf/default/disable_ipv6", "1"),
    ("ipv4/ip_unprivileged_port_start", "0"),
    ("ipv4/ping_group_range", "0 2147483647"),
)


def netns_name(instance: str, sandbox_id: str) -> str:
    return f"{instance}-{sandbox_id}"


def netns_path(instance: str, sandbox_id: str) -> Path:
    return NETNS_DIR / netns_name(instance, sandbox_id)


def host_ifname(instance: str, sandbox_id: str) -> str:
    """The host end of the veth: ≤ 15 chars, derived from instance and id (never reused by
    another sandbox, so a name the kernel is still reaping cannot collide)."""
    digest = hashlib.blake2b(f"{instance}/{sandbox_id}".encode(), digest_size=8).hexdigest()
    return veth_prefix(instance) + digest[:10]


def veth_prefix(instance: str) -> str:
    """The 5-char prefix shared by the host ends of one instance's veths (for nft matches)."""
    return "v" + hashlib.blake2b(instance.encode(), digest_size=2).hexdigest()


def bridge_name(instance: str) -> str:
    return f"{instance}0"


def gateway(subnet: str) -> str:
    return str(next(ipaddress.ip_network(subnet).hosts()))


def _in_thread(fn: Callable[[], T]) -> "asyncio.Future[T]":
    """Run fn in a fresh thread: namespace switches must never leak into a pooled thread."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            result = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(_set, fut, None, e)
        else:
            loop.call_soon_threadsafe(_set, fut, result, None)

    threading.Thread(target=run, daemon=True).start()
    return fut


def _set(fut: asyncio.Future, result, exc) -> None:
    if fut.cancelled():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def _ifreq_flags(sock: socket.socket, name: str, up: bool) -> None:
    req = struct.pack("16sh", name.encode(), 0)
    flags = struct.unpack("16sh", fcntl.ioctl(sock, SIOCGIFFLAGS, req + b"\0" * 22)[:18])[1]
    flags = flags | IFF_UP if up else flags & ~IFF_UP
    fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sh", name.encode(), flags) + b"\0" * 22)


def _sockaddr_in(addr: str) -> bytes:
    return struct.pack("=HH4s8x", socket.AF_INET, 0, socket.inet_aton(addr))


def _configure_inside(address: str | None, netmask: str | None, gw: str | None) -> None:
    """In the current thread's netns: IPv6 off, lo up, and eth0 addressed with a default
    route when address is given."""
    for key, value in NETNS_SYSCTLS:
        try:
            with open(f"/proc/sys/net/{key}", "w") as f:
                f.write(value)
        except FileNotFoundError:  # e.g. a kernel without IPv6
            pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        _ifreq_flags(s, "lo", True)
        if address is None:
            return
        name = SANDBOX_IFNAME.encode()
        fcntl.ioctl(s, SIOCSIFADDR, struct.pack("16s", name) + _sockaddr_in(address) + b"\0" * 8)
        fcntl.ioctl(s, SIOCSIFNETMASK, struct.pack("16s", name) + _sockaddr_in(netmask)
                    + b"\0" * 8)
        _ifreq_flags(s, SANDBOX_IFNAME, True)
        # struct rtentry (x86_64/aarch64 LP64): pad1, dst, gateway, genmask, flags, pad2,
        # pad3, pad4, metric, dev, mtu, window, irtt.
        rt = struct.pack("=Q16s16s16sHh4xQQh6xQQQH6x", 0, _sockaddr_in("0.0.0.0"),
                         _sockaddr_in(gw), _sockaddr_in("0.0.0.0"), RTF_UP | RTF_GATEWAY, 0,
                         0, 0, 0, 0, 0, 0, 0)
        fcntl.ioctl(s, SIOCADDRT, rt)


@dataclass(frozen=True)
class Link:
    """The sandbox's side of the network in mode "internet"."""

    host_ifname: str
    bridge: str
    address: str
    prefix: int
    gateway: str


_netns_dir_ready = False


def prepare_netns_dir() -> None:
    """Make /run/netns a shared mount point of its own, as `ip netns add` does, before any
    namespace is bound there.

    iproute2 bind-mounts the directory onto itself the first time it finds it is not a mount
    point. Namespaces bound there before that are hidden under the new mount: they can then be
    neither unmounted (EINVAL: not a mount point at that path) nor removed (EBUSY), and leak
    with their veths. Doing it first, the iproute2 way, means any later `ip netns` on the
    host finds the directory ready and leaves hutch's namespaces in view."""
    global _netns_dir_ready
    if _netns_dir_ready:
        return
    NETNS_DIR.mkdir(mode=0o755, exist_ok=True)
    try:
        _libc.mount("", str(NETNS_DIR), None, _libc.MS_SHARED | _libc.MS_REC)
    except OSError as e:
        if e.errno != errno.EINVAL:          # EINVAL: not a mount point yet
            raise
        _libc.mount(str(NETNS_DIR), str(NETNS_DIR), None, _libc.MS_BIND | _libc.MS_REC)
        _libc.mount("", str(NETNS_DIR), None, _libc.MS_SHARED | _libc.MS_REC)
    _netns_dir_ready = True


def _create_netns(path: Path, sysfs: Path | None, link: Link | None) -> None:
    """All of a sandbox's network setup, in the calling (throwaway) thread: the namespace
    with its sysctls and lo, a sysfs of it, and with `link` the veth pair and eth0's address
    and default route."""
    prepare_netns_dir()
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0)
    os.close(fd)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _libc.unshare(_libc.CLONE_NEWNET)
        try:
            _libc.mount("/proc/thread-self/ns/net", str(path), None, _libc.MS_BIND)
            _configure_inside(None, None, None)
            if sysfs is not None:
                # A sysfs instance shows the network devices of the namespace that mounts
                # it. The sandbox cannot mount one itself (its user namespace does not own
                # this netns), so it is mounted here, read-only, and bound in at /sys.
                _libc.mount("sysfs", str(sysfs), "sysfs", _libc.MS_RDONLY | _libc.MS_NOSUID
                            | _libc.MS_NODEV | _libc.MS_NOEXEC)
        finally:
            _libc.setns(home, _libc.CLONE_NEWNET)
        if link is not None:
            netlink.create_veth(link.host_ifname, SANDBOX_IFNAME, str(path), link.bridge)
            # Isolated bridge ports cannot talk to each other, only to the bridge itself.
            with open(f"/sys/class/net/{link.host_ifname}/brport/isolated", "w") as f:
                f.write("1")
            netmask = str(ipaddress.ip_network(f"0.0.0.0/{link.prefix}").netmask)
            _enter_and(path, lambda: _configure_inside(link.address, netmask, link.gateway))
    except BaseException:
        _delete_netns(path)
        raise
    finally:
        os.close(home)


def _enter_and(path: Path, fn: Callable[[], T]) -> T:
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _libc.setns(target, _libc.CLONE_NEWNET)
        try:
            return fn()
        finally:
            _libc.setns(home, _libc.CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(home)


def _delete_netns(path: Path) -> bool:
    found = False
    try:
        _libc.umount(str(path), _libc.MNT_DETACH)
        found = True
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise
    try:
        path.unlink()
        found = True
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno != errno.EBUSY:
            raise
        # Hidden under a later mount of /run/netns (see prepare_netns_dir): it cannot be
        # reached from here. Say so rather than fail the caller (a kill, a server start).
        log.warning("network namespace %s is hidden under another mount of %s and cannot be "
                    "removed until that is unmounted", path, NETNS_DIR)
        found = True
    return found


async def create_netns(path: Path, sysfs: Path | None = None, link: Link | None = None) -> None:
    """A new netns with lo up and IPv6 off, bound at path; with `sysfs`, a read-only sysfs
    of that namespace is mounted there; with `link`, connected to the bridge."""
    await _in_thread(lambda: _create_netns(path, sysfs, link))


async def delete_netns(path: Path) -> bool:
    return _delete_netns(path)


def in_netns(path: Path, fn: Callable[[], T]) -> T:
    """Call fn with the calling thread inside the netns at path (blocking; tests use it to
    make sockets that live in a namespace)."""
    box: list = []

    def run() -> None:
        try:
            box.append((True, _enter_and(path, fn)))
        except BaseException as e:  # noqa: BLE001
            box.append((False, e))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value


async def ip_batch(commands: list[str], *, netns: str | None = None) -> None:
    """Run `ip -batch -` once for many commands (one process instead of one per command)."""
    argv = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    done = await command.run(argv, input="\n".join(commands).encode() + b"\n")
    if done.returncode != 0:
        raise RuntimeError_(f"ip -batch failed: {done.stderr.decode(errors='replace').strip()}")


def bridge_commands(instance: str, subnet: str, *, exists: bool = False) -> list[str]:
    """Make (or re-assert) the instance's bridge with the gateway address; idempotent."""
    net = ipaddress.ip_network(subnet)
    br = bridge_name(instance)
    return ([] if exists else [f"link add {br} type bridge"]) + [
        f"addr replace {gateway(subnet)}/{net.prefixlen} dev {br}",
        f"link set {br} up",
    ]


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def set_sysctl(path: str, value: str) -> None:
    with open(Path("/proc/sys") / path, "w") as f:
        f.write(value)


def list_netns(instance: str) -> list[str]:
    """Sandbox ids whose netns of this instance exists."""
    prefix = f"{instance}-"
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return [n[len(prefix):] for n in names if n.startswith(prefix)]


def default_route_interface() -> str | None:
    """The interface of the IPv4 default route (read from /proc, no process spawned)."""
    try:
        with open("/proc/net/route") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1] == "00000000" and fields[7] == "00000000":
                    return fields[0]
    except (OSError, StopIteration):
        pass
    return None


class AddressPool:
    """Sandbox addresses of a subnet, allocated race-free across processes: an address is
    taken by creating `<dir>/<address>` with O_EXCL (the file holds the sandbox id)."""

    def __init__(self, directory: Path, subnet: str) -> None:
        self.dir = directory
        self.net = ipaddress.ip_network(subnet)
        self._gw = ipaddress.ip_address(gateway(subnet))
        self._cursor = 0
        # owner_of's copy of the table, and the directory's mtime when it was read (None:
        # read it again; this process's own changes say so at once, whatever the clock's
        # granularity).
        self._owners: dict[str, str] = {}
        self._stamp: int | None = None

    def allocate(self, sandbox_id: str) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        hosts = self.net.num_addresses - 2
        for i in range(hosts):
            n = (self._cursor + i) % hosts
            addr = self.net.network_address + 1 + n
            if addr == self._gw:
                continue
            try:
                fd = os.open(self.dir / str(addr), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as f:
                f.write(sandbox_id)
            self._cursor = n + 1
            self._stamp = None
            return str(addr)
        raise RuntimeError_(f"no free address left in {self.net}")

    def release(self, sandbox_id: str) -> None:
        """Free every address this sandbox holds (normally one)."""
        self._stamp = None
        for name, owner in self.owners().items():
            if owner == sandbox_id:
                (self.dir / name).unlink(missing_ok=True)

    def owner_of(self, address: str) -> str | None:
        """The sandbox holding ``address``. Asked once per logged connection, so the table is
        read again only when the directory changed (an address taken or given back)."""
        try:
            stamp = os.stat(self.dir).st_mtime_ns
        except FileNotFoundError:
            return None
        if stamp != self._stamp:
            self._owners, self._stamp = self.owners(), stamp
        return self._owners.get(address)

    def owners(self) -> dict[str, str]:
        out = {}
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return out
        for name in names:
            try:
                out[name] = (self.dir / name).read_text()
            except OSError:
                continue
        return out
