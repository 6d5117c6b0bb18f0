"""Network isolation of sandboxes in mode "internet", checked against fake hosts that live in
network namespaces this test makes: a "public" one on 198.51.100.0/24 must be reachable, a
private one (10.0.0.0/8) and the cloud-metadata address must not, nor the host, nor another
sandbox. DNS goes through the runtime's forwarder to a fake upstream on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import pytest

from .conftest import FAKE_ADDRESS, box_spec, make_box
from .helpers import (http_banner_server, listening_socket, make_fake_host,
                      remove_fake_host, syscall_probe)

pytestmark = pytest.mark.timeout(300)

PUBLIC = FAKE_ADDRESS               # 198.51.100.10
PRIVATE = "10.99.0.10"
METADATA = "169.254.169.254"
PORT = 8080


@pytest.fixture(scope="module")
async def fake_hosts():
    pub = make_fake_host("hutchrx-pub", "hrxpub", [PUBLIC])
    priv = make_fake_host("hutchrx-priv", "hrxpriv", [PRIVATE, METADATA])
    servers = [
        await http_banner_server(listening_socket(pub, PUBLIC, PORT), b"hello-public"),
        await http_banner_server(listening_socket(priv, PRIVATE, PORT), b"hello-private"),
        await http_banner_server(listening_socket(priv, METADATA, 80), b"hello-metadata"),
    ]
    yield
    for s in servers:
        s.close()
    remove_fake_host("hutchrx-pub", "hrxpub")
    remove_fake_host("hutchrx-priv", "hrxpriv")


@pytest.fixture(scope="module")
async def boxes(runtime, rootfs, fake_hosts):
    a = await make_box(runtime, box_spec("net1", rootfs, network="internet"))
    b = await make_box(runtime, box_spec("net2", rootfs, network="internet"))
    yield a, b
    await runtime.destroy(a.id)
    await runtime.destroy(b.id)


def wait_listening(port: int) -> str:
    """Shell: wait until a TCP socket listens on `port`, then print LISTENING."""
    check = f"cat /proc/net/tcp /proc/net/tcp6 | grep -q ':{port:04X} 0*:0000 0A'"
    return (f"i=0; until {check}; do i=$((i+1)); [ $i -gt 400 ] && break; sleep 0.05; done;"
            f" {check} && echo LISTENING")


def http_get(host: str, port: int) -> str:
    """A shell command: one HTTP/1.0 GET with busybox nc (its wget needs glibc's NSS)."""
    return f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {host} {port}"


def _host_can_reach(address: str, port: int) -> bool:
    with socket.create_connection((address, port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return b"hello" in s.recv(200)


async def test_addresses_and_routes(boxes, runtime):
    a, b = boxes
    assert a.handle.address != b.handle.address
    rc, out = await a.run("ip -4 addr show eth0; ip route; "
                          "cat /proc/sys/net/ipv6/conf/all/disable_ipv6")
    assert f"inet {a.handle.address}/24" in out
    assert f"default via {runtime.gateway}" in out
    assert out.strip().endswith("1")


async def test_public_host_is_reachable(boxes):
    a, _ = boxes
    rc, out = await a.run(http_get(PUBLIC, PORT))
    assert rc == 0 and out.strip().endswith("hello-public"), out


async def test_root_inside_can_serve_low_ports_and_ping(boxes):
    a, _ = boxes
    rc, out = await a.run(f"(nc -l -p 80 -e echo low-port-ok &); {wait_listening(80)}; "
                          "nc -w 2 127.0.0.1 80 </dev/null")
    assert "low-port-ok" in out, out
    if os.uname().machine == "x86_64":  # an ICMP datagram ("ping") socket can be opened
        probe = a.run_dir / "pingsock"
        probe.write_bytes(syscall_probe(41, 2, 2, 1))  # socket(AF_INET, SOCK_DGRAM, ICMP)
        os.chmod(probe, 0o755)
        rc, out = await a.run("/run/hutch/pingsock; echo rc=$?")
        assert "rc=0" in out, out


@pytest.mark.parametrize("host,port", [(PRIVATE, PORT), (METADATA, 80)])
async def test_private_and_metadata_are_not(boxes, host, port):
    a, _ = boxes
    assert await asyncio.to_thread(_host_can_reach, host, port)  # the server is up
    rc, out = await a.run(http_get(host, port) + " 2>&1; echo rc=$?")
    assert "hello" not in out and "rc=0" not in out, out


async def test_host_is_not_reachable_except_dns(boxes, runtime):
    a, _ = boxes
    srv = await asyncio.start_server(lambda r, w: w.close(), runtime.gateway, 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        rc, out = await a.run(f"nc -w 3 {runtime.gateway} {port} </dev/null 2>&1; echo rc=$?")
        assert "rc=0" not in out, out
    finally:
        srv.close()


async def test_sandboxes_cannot_reach_each_other(boxes):
    a, b = boxes
    rc, out = await b.run(f"(nc -l -p 9000 -e echo hi-from-b &); {wait_listening(9000)}; "
                          "nc -w 2 127.0.0.1 9000 </dev/null")
    assert "hi-from-b" in out  # the listener works locally
    rc, out = await b.run(f"(nc -l -p 9000 -e echo hi-from-b &); {wait_listening(9000)}")
    assert "LISTENING" in out
    rc, out = await a.run(f"nc -w 3 {b.handle.address} 9000 </dev/null 2>&1; echo rc=$?")
    assert "hi-from-b" not in out, out
    rc, out = await a.run(f"ping -c 1 -W 2 {b.handle.address} 2>&1; echo rc=$?")
    assert "rc=0" not in out


async def test_dns_through_the_forwarder(boxes, runtime):
    a, _ = boxes
    rc, out = await a.run("cat /etc/resolv.conf; nslookup fake.test 2>&1")
    assert f"nameserver {runtime.gateway}" in out
    assert PUBLIC in out
    rc, out = await a.run("nslookup nope.test 2>&1")
    assert PUBLIC not in out and "NXDOMAIN" in out, out
    rc, out = await a.run("ip=$(nslookup fake.test | grep -A1 '^Name:' | tail -1 | "
                          "sed 's/^Address[: 0-9]*: *//'); echo $ip; " + http_get("$ip", PORT))
    assert out.strip().endswith("hello-public"), out


async def test_dns_over_tcp(runtime, fake_upstream):
    """The forwarder's TCP side, asked from the host (sandboxes' busybox speaks UDP only)."""
    query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + \
        b"\x04fake\x04test\x00" + struct.pack("!HH", 1, 1)
    reader, writer = await asyncio.open_connection(runtime.gateway, 53)
    writer.write(struct.pack("!H", len(query)) + query)
    (n,) = struct.unpack("!H", await reader.readexactly(2))
    answer = await reader.readexactly(n)
    writer.close()
    assert answer[:2] == b"\x12\x34" and socket.inet_aton(PUBLIC) in answer


async def test_a_later_ip_netns_add_does_not_hide_sandbox_namespaces(tmp_path):
    """iproute2 bind-mounts /run/netns onto itself the first time it finds no mount there;
    hutch sets the directory up that way first, so its namespaces stay reachable (and
    removable) whatever the host's own tools do afterwards."""
    import subprocess

    from hutch.runtime.network import NETNS_DIR, create_netns, delete_netns, prepare_netns_dir

    prepare_netns_dir()
    mounts = [line.split() for line in open("/proc/self/mountinfo")]
    here = [m for m in mounts if m[4] == str(NETNS_DIR)]
    assert here and any(f.startswith("shared:") for f in here[-1][6:here[-1].index("-")])
    ours = NETNS_DIR / f"hutchr-hide-{os.getpid()}"
    theirs = f"hutchr-iproute-{os.getpid()}"
    await create_netns(ours)
    try:
        subprocess.run(["ip", "netns", "add", theirs], check=True)
        subprocess.run(["ip", "netns", "del", theirs], check=True)
    finally:
        assert await delete_netns(ours)
    assert not ours.exists()
    assert str(ours) not in open("/proc/self/mountinfo").read()
