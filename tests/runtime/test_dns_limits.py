"""One sandbox flooding the DNS forwarder cannot use up the server's sockets or starve others.

The forwarder lives in the server's process: every query in flight holds a socket there until
its upstream answers or times out. A flood of queries the upstream never answers is the worst
case, so the fake upstream here stays silent for the flooding client and answers the other.
Loopback carries several source addresses (127.0.0.2 plays the flooding sandbox).
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from hutch.runtime import dns
from hutch.runtime.dns import DnsForwarder

GOOD_ID = 0x7777


def _query(qid: int) -> bytes:
    name = b"\x04fake\x04test\x00"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1, 1)


class _Selective(asyncio.DatagramProtocol):
    """Answers only the good client's query id; everything else is left hanging."""

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if data[:2] == struct.pack("!H", GOOD_ID):
            self.transport.sendto(data[:2] + b"\x81\x80" + data[4:], addr)


@pytest.fixture
async def forwarder():
    loop = asyncio.get_running_loop()
    upstream, _ = await loop.create_datagram_endpoint(_Selective, local_addr=("127.0.0.1", 0))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fwd = DnsForwarder(("127.0.0.1", port), [upstream.get_extra_info("sockname")])
    await fwd.start()
    yield fwd
    await fwd.close()
    upstream.close()


async def test_a_udp_flood_is_bounded_and_other_clients_still_resolve(forwarder):
    loop = asyncio.get_running_loop()
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.bind(("127.0.0.2", 0))
    flood.setblocking(False)
    good = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    good.setblocking(False)
    try:
        for batch in range(30):
            for i in range(100):
                try:
                    flood.sendto(_query(batch * 100 + i), forwarder.listen)
                except BlockingIOError:
                    break
            await asyncio.sleep(0.005)   # the forwarder takes them in
        assert len(forwarder._tasks) <= dns.MAX_PENDING_PER_CLIENT
        await loop.sock_connect(good, forwarder.listen)
        await loop.sock_sendall(good, _query(GOOD_ID))
        answer = await asyncio.wait_for(loop.sock_recv(good, 512), 10)
        assert answer[:2] == struct.pack("!H", GOOD_ID)
    finally:
        flood.close()
        good.close()


async def test_tcp_connections_per_client_are_bounded(forwarder):
    conns = []
    try:
        for _ in range(dns.MAX_TCP_PER_CLIENT + 8):
            conns.append(await asyncio.open_connection(
                *forwarder.listen, local_addr=("127.0.0.2", 0)))
        # The ones past the bound are closed by the forwarder at once; the others stay open.
        closed = 0
        for reader, _ in conns:
            try:
                closed += await asyncio.wait_for(reader.read(1), 0.5) == b""
            except asyncio.TimeoutError:
                pass
        assert closed == 8
        # Another client is unaffected.
        reader, writer = await asyncio.open_connection(*forwarder.listen)
        conns.append((reader, writer))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.3)
    finally:
        for _, writer in conns:
            writer.close()
