"""The DNS forwarder on loopback: UDP and TCP relayed to a fake upstream, and what happens
when the upstream is silent."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from hutch.runtime.dns import DnsForwarder, parse_resolv_conf

from .conftest import FAKE_ADDRESS


def _query(qid: int, name: str) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", 1, 1)


def test_parse_resolv_conf():
    text = "# c\nnameserver 10.255.255.53\nnameserver fe80::1%eth0\nnameserver bogus\nsearch x\n"
    assert parse_resolv_conf(text) == [("10.255.255.53", 53), ("fe80::1%eth0", 53)]


@pytest.fixture
async def forwarder(fake_upstream):
    # Port 0 is not usable for UDP and TCP at once: pick a free pair on loopback.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fwd = DnsForwarder(("127.0.0.1", port), [fake_upstream])
    await fwd.start()
    yield fwd
    await fwd.close()


async def test_udp_relay(forwarder):
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, forwarder.listen)
        await loop.sock_sendall(sock, _query(0x4242, "fake.test"))
        answer = await asyncio.wait_for(loop.sock_recv(sock, 512), 10)
    finally:
        sock.close()
    assert answer[:2] == b"\x42\x42" and socket.inet_aton(FAKE_ADDRESS) in answer
    assert answer[3] & 0x0F == 0  # NOERROR


async def test_tcp_relay_several_queries_on_one_connection(forwarder):
    reader, writer = await asyncio.open_connection(*forwarder.listen)
    try:
        for qid, name, rcode in ((1, "fake.test", 0), (2, "other.test", 3)):
            q = _query(qid, name)
            writer.write(struct.pack("!H", len(q)) + q)
            (n,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))
            answer = await reader.readexactly(n)
            assert struct.unpack("!H", answer[:2])[0] == qid and answer[3] & 0x0F == rcode
    finally:
        writer.close()


async def test_silent_upstream_gives_no_answer(monkeypatch):
    import hutch.runtime.dns as dns
    monkeypatch.setattr(dns, "UPSTREAM_TIMEOUT", 0.3)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))  # receives, never answers
    try:
        fwd = DnsForwarder(("127.0.0.1", 0), [silent.getsockname()])
        assert await fwd.resolve(_query(7, "fake.test"), tcp=False) is None
    finally:
        silent.close()
