"""Test helpers: a busybox rootfs, a job runner inside sandboxes, syscall probes, fake hosts.

Commands run inside a sandbox as children of its own process (started by the sandbox's init),
so they carry exactly the sandbox's credentials, seccomp filter, namespaces and cgroup: the
host only drops a script into the run dir and names it on a FIFO the sandbox reads.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import subprocess
import time
import uuid
from pathlib import Path

from hutch.runtime import network

# The sandbox's PID 1 runs this: read job names from the FIFO, run each in the background.
JOB_LOOP = (
    "mkfifo /run/hutch/ctl; "
    "while :; do read -r job < /run/hutch/ctl || continue; [ -n \"$job\" ] || continue; "
    "( sh /run/hutch/$job.sh > /run/hutch/$job.out 2>&1; echo $? > /run/hutch/$job.tmp; "
    "mv /run/hutch/$job.tmp /run/hutch/$job.rc ) & done"
)


def build_busybox_rootfs(root: Path, uid: int) -> Path:
    """A tiny rootfs: static busybox with its applets, owned by the mapped root."""
    if root.exists():
        shutil.rmtree(root)
    for d in ("bin", "etc", "tmp", "root", "proc", "sys", "dev"):
        (root / d).mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for a in applets:
        if a != "busybox":
            os.symlink("busybox", root / "bin" / a)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), uid, uid)
    os.chown(root, uid, uid)
    os.chmod(root / "tmp", 0o1777)
    return root


class Box:
    """A running sandbox plus the means to run shell scripts inside it."""

    def __init__(self, handle, runtime) -> None:
        self.handle = handle
        self.runtime = runtime
        self.id = handle.id

    @property
    def run_dir(self) -> Path:
        return self.handle.run_dir

    @property
    def init_pid(self) -> int:
        return int((self.runtime.sandboxes_dir / self.id / "init.pid").read_text())

    async def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not (self.run_dir / "ctl").exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"sandbox {self.id} never made its FIFO")
            await asyncio.sleep(0.02)

    async def run(self, script: str, timeout: float = 60) -> tuple[int, str]:
        await self.wait_ready()
        job = "j" + uuid.uuid4().hex[:12]
        (self.run_dir / f"{job}.sh").write_text(script + "\n")

        def signal_job() -> None:
            with open(self.run_dir / "ctl", "w") as f:  # blocks until the loop reads
                f.write(job + "\n")

        await asyncio.wait_for(asyncio.to_thread(signal_job), timeout)
        rc_file = self.run_dir / f"{job}.rc"
        deadline = time.monotonic() + timeout
        while not rc_file.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"job did not finish in {timeout}s: {script!r}")
            await asyncio.sleep(0.02)
        out = (self.run_dir / f"{job}.out").read_text(errors="replace")
        return int(rc_file.read_text().strip()), out


# -- syscall probes: tiny static x86_64 ELF programs, made here so no compiler is needed ----

def _movabs(reg: bytes, value: int) -> bytes:
    return reg + struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF)


def syscall_probe(nr: int, *args: int, compat: bool = False) -> bytes:
    """An ELF that makes one syscall and exits 0 if it returned >= 0, else with its errno.

    With compat, the call goes through the 32-bit `int 0x80` entry (eax = i386 number)."""
    a = list(args) + [0] * (6 - len(args))
    code = b""
    if compat:
        code += b"\xb8" + struct.pack("<I", nr)                 # mov eax, nr
        code += b"\xbb" + struct.pack("<I", a[0] & 0xFFFFFFFF)   # mov ebx, a0
        code += b"\xb9" + struct.pack("<I", a[1] & 0xFFFFFFFF)   # mov ecx, a1
        code += b"\xba" + struct.pack("<I", a[2] & 0xFFFFFFFF)   # mov edx, a2
        code += b"\xcd\x80"                                     # int 0x80
        code += b"\x48\x63\xc0"                                 # movsxd rax, eax
    else:
        code += b"\x48\xc7\xc0" + struct.pack("<i", nr)         # mov rax, nr
        for reg, v in zip((b"\x48\xbf", b"\x48\xbe", b"\x48\xba", b"\x49\xba", b"\x49\xb8",
                           b"\x49\xb9"), a):
            code += _movabs(reg, v)
        code += b"\x0f\x05"                                     # syscall
    code += b"\x48\x85\xc0\x79\x08\x48\xf7\xd8\x48\x89\xc7\xeb\x02\x31\xff"
    code += b"\xb8\x3c\x00\x00\x00\x0f\x05"                     # exit(edi)
    base, off = 0x400000, 64 + 56
    ehdr = (b"\x7fELF\x02\x01\x01" + b"\0" * 9
            + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, base + off, 64, 0, 0, 64, 56, 1, 0, 0, 0))
    size = off + len(code)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return ehdr + phdr + code


# -- fake hosts in test-made network namespaces ---------------------------------------------

def make_fake_host(name: str, host_if: str, addresses: list[str]) -> Path:
    """A netns reachable from the host through a veth, answering on `addresses` (/32 each),
    routed from the host by host routes; the host end has no address of its own."""
    remove_fake_host(name, host_if)  # what a crashed earlier run may have left
    cmds = [
        f"netns add {name}",
        f"link add {host_if} type veth peer name eth0 netns {name}",
        f"link set {host_if} up",
    ] + [f"route add {a}/32 dev {host_if}" for a in addresses]
    inner = [f"addr add {a}/32 dev eth0" for a in addresses] + [
        "link set lo up", "link set eth0 up", "route add default dev eth0"]
    try:
        # A route that exists already (another fixture's fake host, or a real one) fails the
        # batch: nothing made up to there is left behind.
        subprocess.run(["ip", "-batch", "-"], input="\n".join(cmds) + "\n", text=True,
                       check=True, capture_output=True)
        subprocess.run(["ip", "-n", name, "-batch", "-"], input="\n".join(inner) + "\n",
                       text=True, check=True, capture_output=True)
        # Replies to sandboxes: the host answers ARP for them on this veth.
        with open(f"/proc/sys/net/ipv4/conf/{host_if}/proxy_arp", "w") as f:
            f.write("1")
    except (subprocess.CalledProcessError, OSError) as exc:
        remove_fake_host(name, host_if)
        detail = getattr(exc, "stderr", "") or exc
        raise RuntimeError(f"fake host {name} ({', '.join(addresses)}): {detail}") from None
    return Path("/run/netns") / name


def remove_fake_host(name: str, host_if: str) -> None:
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    subprocess.run(["ip", "link", "del", host_if], capture_output=True)


def listening_socket(netns: Path, address: str, port: int):
    import socket

    def make():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port))
        s.listen(16)
        s.setblocking(False)
        return s

    return network.in_netns(netns, make)


async def http_banner_server(sock, body: bytes):
    async def handle(reader, writer):
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except Exception:  # noqa: BLE001 - any client is answered or dropped
            writer.close()
            return
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, sock=sock)
