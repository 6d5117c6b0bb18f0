"""Connection byte counts from conntrack events: the message format on hand-built messages,
the once-per-connection reporting rules on a fake socket, and the real kernel in a network
namespace of the test's own (the host's network state is not touched)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from hutch.runtime import conntrack
from hutch.runtime.conntrack import Flow
from hutch.runtime.network import in_netns


def attr(kind: int, data: bytes, nested: bool = False) -> bytes:
    raw = struct.pack("=HH", 4 + len(data), kind | (0x8000 if nested else 0)) + data
    return raw + b"\0" * (-len(raw) % 4)


def tuple_attr(kind: int, src: str, dst: str, proto: int,
               ports: tuple[int, int] | None) -> bytes:
    ip = attr(1, socket.inet_aton(src)) + attr(2, socket.inet_aton(dst))
    l4 = attr(1, bytes([proto]))
    if ports is not None:
        l4 += attr(2, struct.pack("!H", ports[0])) + attr(3, struct.pack("!H", ports[1]))
    return attr(kind, attr(1, ip, True) + attr(2, l4, True), True)


def message(kind: int, ctid: int, src: str = "10.9.0.2", dst: str = "93.184.216.34",
            proto: int = 6, dport: int | None = 443, status: int = 0,
            counters: tuple[int, int] | None = None, tcp_state: int | None = None,
            seq: int = 0) -> bytes:
    ports = None if dport is None else (40000, dport)
    attrs = tuple_attr(1, src, dst, proto, ports) + \
        tuple_attr(2, dst, src, proto, ports and ports[::-1]) + \
        attr(3, struct.pack("!I", status)) + attr(12, struct.pack("!I", ctid))
    if counters is not None:
        for kind_, n in zip((9, 10), counters):
            attrs += attr(kind_, attr(1, struct.pack("!Q", 3)) + attr(2, struct.pack("!Q", n)),
                          True)
    if tcp_state is not None:
        attrs += attr(4, attr(1, attr(1, bytes([tcp_state])) + attr(2, b"\x07"), True), True)
    body = struct.pack("=BBH", socket.AF_INET, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), (1 << 8) | kind, 0, seq, 0) + body


def test_parse_update_and_destroy():
    datagram = message(0, 7, tcp_state=7) + \
        message(2, 8, proto=17, dport=53, status=1 << 5, counters=(120, 3400))
    assert conntrack.parse(datagram) == [
        (0, 7, Flow(6, "10.9.0.2", "93.184.216.34", 443, 0, 0, False), 7),
        (2, 8, Flow(17, "10.9.0.2", "93.184.216.34", 53, 120, 3400, True), None),
    ]


def test_decode_asks_before_decoding_the_rest(monkeypatch):
    # The listener's question comes before the counters and the flow are decoded: most of the
    # host's events (loopback clients, the proxy's own connections, every TCP state change)
    # are dropped for the cost of reading an address and a state.
    asked = []

    def keep(kind, src, state):
        asked.append((kind, socket.inet_ntoa(src), state))
        return src == socket.inet_aton("10.9.0.2")

    decoded = []
    real_counted = conntrack._counted
    monkeypatch.setattr(conntrack, "_counted",
                        lambda top, kind: decoded.append(kind) or real_counted(top, kind))
    datagram = message(0, 1, src="127.0.0.1", tcp_state=3) + message(0, 2, tcp_state=7) + \
        message(2, 3, src="172.16.5.9", proto=17, dport=53, counters=(1, 1))
    got = [(kind, ctid, state) for _, kind, ctid, _, state, _ in conntrack._decode(datagram, keep)]
    assert asked == [(0, "127.0.0.1", 3), (0, "10.9.0.2", 7), (2, "172.16.5.9", -1)]
    assert got == [(0, 2, 7)] and len(decoded) == 2     # both counters of the one kept


def test_parse_icmp_has_no_port():
    [(_, _, flow, _)] = conntrack.parse(message(2, 9, proto=1, dport=None, counters=(84, 84)))
    assert (flow.protocol, flow.dport, flow.bytes_out) == (1, None, 84)


@pytest.mark.parametrize("bad", [
    b"",
    b"\xff" * 15,
    message(2, 1)[:-9],                                          # cut inside an attribute
    struct.pack("=IHHII", 0, 0x102, 0, 0, 0) + b"\0" * 40,       # zero length
    message(2, 1)[:20] + b"\x00\x00\x01\x80" * 8,                # zero-length attributes
    struct.pack("=IHHII", 24, 0x102, 0, 0, 0) + b"\x02\0\0\0" + attr(1, b"\x01\x02"),
])
def test_parse_garbage_yields_nothing(bad):
    assert conntrack.parse(bad) == []


def test_parse_skips_a_bad_message_and_reads_the_next():
    datagram = message(2, 3, src="10.9.0.2")
    broken = datagram[:20] + attr(12, b"\x00\x01")                   # no tuple, short id
    broken = struct.pack("=I", len(broken)) + broken[4:]
    assert [ctid for _, ctid, _, _ in conntrack.parse(broken + datagram)] == [3]


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)


def listener() -> tuple[conntrack.ConntrackListener, list[Flow], FakeSocket]:
    got: list[Flow] = []
    lst = conntrack.ConntrackListener("10.9.0.0/24", got.append)
    lst._sock = FakeSocket()
    return lst, got, lst._sock


def test_tcp_is_reported_once_when_it_reaches_time_wait():
    lst, got, sock = listener()
    lst._receive(message(0, 7, tcp_state=3))                        # established: nothing
    lst._receive(message(0, 7, tcp_state=7))                        # time wait: ask
    assert got == [] and len(sock.sent) == 1
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", sock.sent[0])
    assert (length, kind, flags & 1) == (len(sock.sent[0]), 0x101, 1)
    lst._receive(message(0, 7, tcp_state=8))                        # no second question
    lst._receive(message(0, 7, tcp_state=7, counters=(1400, 52000), seq=seq))
    lst._receive(message(2, 7, counters=(1400, 52000)))            # destroy: already told
    assert got == [Flow(6, "10.9.0.2", "93.184.216.34", 443, 1400, 52000, False)]
    assert lst._seen == {}


def test_others_are_reported_on_destroy_and_outsiders_ignored():
    lst, got, sock = listener()
    lst._receive(message(2, 1, proto=17, dport=53, counters=(60, 200)))
    lst._receive(message(2, 2, tcp_state=3))                        # never closed, no acct
    lst._receive(message(2, 3, src="10.9.1.2", counters=(1, 1)))    # another subnet
    lst._receive(message(0, 4, src="10.9.1.2", tcp_state=7))
    assert got == [Flow(17, "10.9.0.2", "93.184.216.34", 53, 60, 200, False),
                   Flow(6, "10.9.0.2", "93.184.216.34", 443, 0, 0, False)]
    assert sock.sent == []


def test_remembered_ids_are_bounded(monkeypatch):
    monkeypatch.setattr(conntrack, "REMEMBERED", 10)
    lst, _, _ = listener()
    for ctid in range(100):
        lst._receive(message(0, ctid, tcp_state=7))
    assert len(lst._seen) == 10 and 99 in lst._seen


# --- the kernel -----------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
RULESET = "table inet t {\n chain o {\n  type filter hook output priority 0\n" \
          "  ct state new accept\n }\n}\n"
OVERHEAD = 4000          # headers of a few dozen packets; loose on purpose


@pytest.fixture
def netns():
    name = f"hutch-ct-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", name, "nft", "-f", "-"], input=RULESET.encode(),
                       check=True)
        yield Path("/run/netns") / name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def tcp_exchange(out: int, back: int) -> int:
    """A clean TCP connection on loopback; the server's port."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]

        def serve() -> None:
            conn, _ = srv.accept()
            with conn:
                got = 0
                while got < out:
                    got += len(conn.recv(65536))
                conn.sendall(b"y" * back)
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)

        t = threading.Thread(target=serve)
        t.start()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            c.sendall(b"x" * out)
            got = 0
            while chunk := c.recv(65536):
                got += len(chunk)
        t.join(30)
        assert got == back
    return port


def udp_exchange(out: int, back: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        srv.bind(("127.0.0.1", 0))
        c.settimeout(30)
        c.sendto(b"q" * out, srv.getsockname())
        _, peer = srv.recvfrom(65536)
        srv.sendto(b"a" * back, peer)
        assert len(c.recv(65536)) == back
        return srv.getsockname()[1]


def flush_table() -> None:
    """IPCTNL_MSG_CT_DELETE without a tuple empties the namespace's table: destroy events."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, conntrack.NETLINK_NETFILTER) as s:
        body = struct.pack("=BBH", socket.AF_INET, 0, 0)
        s.send(struct.pack("=IHHII", 20, 0x102, 1 | 4, 1, 0) + body)     # request, ack
        answer = s.recv(4096)
        assert struct.unpack_from("=H", answer, 4)[0] == 2                # NLMSG_ERROR
        assert struct.unpack_from("=i", answer, 16)[0] == 0


async def wait_for(got: list[Flow], n: int) -> None:
    for _ in range(600):
        if len(got) >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {n} flows, got {got}")


@needs_root
async def test_kernel_reports_byte_counts(netns):
    got: list[Flow] = []
    lst = conntrack.ConntrackListener("127.0.0.0/8", got.append,
                                      make_socket=lambda: in_netns(netns, conntrack.open_socket))
    lst.start()
    try:
        port = await asyncio.to_thread(in_netns, netns, lambda: tcp_exchange(1000, 50000))
        await wait_for(got, 1)
        [tcp] = got
        assert tcp[:4] == (6, "127.0.0.1", "127.0.0.1", port)
        assert 1000 <= tcp.bytes_out < 1000 + OVERHEAD
        assert 50000 <= tcp.bytes_in < 50000 + OVERHEAD
        assert not tcp.redirected

        port = await asyncio.to_thread(in_netns, netns, lambda: udp_exchange(300, 700))
        await asyncio.to_thread(in_netns, netns, flush_table)
        await wait_for(got, 2)
        assert got[1] == Flow(17, "127.0.0.1", "127.0.0.1", port, 300 + 28, 700 + 28, False)
        await asyncio.sleep(0.5)
        assert len(got) == 2               # the flush's destroy of the TCP entry: not again
    finally:
        lst.close()
