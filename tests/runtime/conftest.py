"""Fixtures of the runtime tests: one LocalRuntime for the session (instance `hutchr`,
subnet 10.182.0.0/24, state in /var/lib/hutch-test-runtime), a busybox rootfs, a fake DNS
upstream on loopback, and sandboxes made per module."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import socket
import struct
from pathlib import Path

import pytest

from hutch.runtime.local import LocalRuntime
from hutch.runtime.spec import SandboxSpec

from .helpers import JOB_LOOP, Box, build_busybox_rootfs

INSTANCE = "hutchr"
SUBNET = "10.182.0.0/24"
STATE_DIR = Path("/var/lib/hutch-test-runtime")
UID_BASE = 100000
FAKE_NAME = "fake.test."
FAKE_ADDRESS = "198.51.100.10"
# Names the fake upstream answers (A records), and every name it was asked, in order.
FAKE_RECORDS = {FAKE_NAME: FAKE_ADDRESS, "inward.test.": "169.254.169.254"}
ASKED: list[str] = []

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the runtime needs root")


def fake_dns_answer(query: bytes) -> bytes | None:
    """Answer A queries for the names in FAKE_RECORDS, NXDOMAIN for anything else."""
    if len(query) < 12:
        return None
    qid, flags, qd = struct.unpack("!HHH", query[:6])
    pos, labels = 12, []
    while query[pos]:
        n = query[pos]
        labels.append(query[pos + 1:pos + 1 + n].decode())
        pos += n + 1
    qtype, _ = struct.unpack("!HH", query[pos + 1:pos + 5])
    question = query[12:pos + 5]
    name = ".".join(labels).lower() + "."
    ASKED.append(name)
    if name in FAKE_RECORDS and qtype == 1:
        answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + \
            socket.inet_aton(FAKE_RECORDS[name])
        return struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + answer
    return struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question


class _FakeDns(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        answer = fake_dns_answer(data)
        if answer:
            self.transport.sendto(answer, addr)


@pytest.fixture(scope="session")
async def fake_upstream():
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_FakeDns, local_addr=("127.0.0.1", 0))

    async def tcp(reader, writer):
        try:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
            answer = fake_dns_answer(await reader.readexactly(n))
            writer.write(struct.pack("!H", len(answer)) + answer)
            await writer.drain()
        finally:
            writer.close()

    # DNS over UDP and TCP share a port number: the UDP port is the kernel's pick, and that
    # number may be taken for TCP (say, by a client connection's local end): pick again.
    for _ in range(50):
        port = transport.get_extra_info("sockname")[1]
        try:
            server = await asyncio.start_server(tcp, "127.0.0.1", port)
            break
        except OSError:
            transport.close()
            transport, _ = await loop.create_datagram_endpoint(
                _FakeDns, local_addr=("127.0.0.1", 0))
    else:
        raise RuntimeError("no port free for both UDP and TCP")
    yield ("127.0.0.1", port)
    server.close()
    transport.close()


@pytest.fixture(scope="session")
def rootfs(runtime):  # after the runtime: its lock covers the shared rootfs path too
    path = build_busybox_rootfs(STATE_DIR.parent / "hutch-test-runtime-rootfs", UID_BASE)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
async def runtime(fake_upstream):
    if os.geteuid() != 0:
        pytest.skip("the runtime needs root")
    # Two runs of this suite on one host would share the instance's objects: the second
    # waits for the first instead of tearing its sandboxes down under it.
    lock = os.open(f"/run/hutch-test-{INSTANCE}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                   0o600)
    await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
    try:
        rt = LocalRuntime(STATE_DIR, instance=INSTANCE, subnet=SUBNET, uid_base=UID_BASE,
                          dns_upstreams=[fake_upstream])
        await rt.teardown()  # whatever a crashed earlier run left behind
        await rt.start()
        try:
            yield rt
        finally:
            await rt.teardown()
    finally:
        os.close(lock)  # releases the lock


def box_spec(sid: str, rootfs: Path, **kw) -> SandboxSpec:
    return SandboxSpec(id=sid, layers=(rootfs,), args=("/bin/sh", "-c", JOB_LOOP),
                       env=(("PATH", "/bin"), ("HOME", "/root")), cwd="/root", **kw)


async def make_box(runtime, spec: SandboxSpec) -> Box:
    handle = await runtime.create(spec)
    box = Box(handle, runtime)
    await box.wait_ready()
    return box


@pytest.fixture
async def capped(runtime):
    """The session's runtime with small per-sandbox caps for one test (the table is rebuilt
    with them, and without them afterwards): 4 connections, 1 Mbit/s."""
    runtime.max_connections, runtime.rate_bytes = 4, 125_000
    await runtime.start()
    yield runtime
    runtime.max_connections, runtime.rate_bytes = 0, 0
    await runtime.start()
