"""How many bytes each sandbox connection carried, from the kernel's connection tracking.

The egress log records a connection when it opens (NFLOG); its size is only known when it
ends. The host NATs sandbox traffic, so conntrack already counts every connection's bytes in
both directions (with ``net.netfilter.nf_conntrack_acct`` on, which ``start`` sets). This
module listens to ctnetlink's update and destroy events (linux/netfilter/nfnetlink_conntrack.h,
parsed by hand like nflog) and hands each finished connection from the subnet to a sink once.

A TCP connection's destroy event only comes when TIME_WAIT expires (two minutes after the
close), so TCP is reported as soon as an update shows TIME_WAIT or CLOSE. Update events carry
no counters, though (the kernel puts them in destroy events only), so at that point the
listener asks for the entry by its original tuple and reports the answer. Everything else
(UDP, ICMP, TCP that never closed cleanly, or whose answer was lost) is reported on destroy.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from typing import Callable, Iterator, NamedTuple, Optional

from hutch.runtime.netlink import Listener

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 0, 1, 2
NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY = 2, 3
CTA_TUPLE_ORIG, CTA_STATUS, CTA_PROTOINFO = 1, 3, 4
CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY, CTA_ID = 9, 10, 12
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_DST_PORT = 1, 3
CTA_COUNTERS_BYTES = 2
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
NLA_F_NESTED = 0x8000
NLM_F_REQUEST = 1
IPS_DST_NAT = 1 << 5
TCP_CONNTRACK_TIME_WAIT, TCP_CONNTRACK_CLOSE = 7, 8
ACCT_SYSCTL = "/proc/sys/net/netfilter/nf_conntrack_acct"
REMEMBERED = 1 << 16        # conntrack ids kept for dedupe; the oldest go first beyond this
_ASKED, _DONE = 1, 2


class Flow(NamedTuple):
    protocol: int          # IP protocol number (6 tcp, 17 udp, 1 icmp)
    src: str               # original direction source (the sandbox)
    dst: str               # original direction destination (as the sandbox asked)
    dport: Optional[int]   # original destination port (None for protocols without ports)
    bytes_out: int         # original-direction bytes (sandbox -> world)
    bytes_in: int          # reply-direction bytes
    redirected: bool       # destination NAT: redirected to a local proxy, which counts itself


def _attrs(data: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, pos)
        if length < 4 or pos + length > len(data):
            break
        out[kind & 0x3FFF] = data[pos + 4:pos + length]
        pos += (length + 3) & ~3
    return out


def _int(data: Optional[bytes], size: int, default: int = 0) -> int:
    return int.from_bytes(data, "big") if data is not None and len(data) == size else default


def _counted(top: dict[int, bytes], kind: int) -> int:
    """Bytes in one direction; 0 when accounting was off as the connection began."""
    return _int(_attrs(top.get(kind, b"")).get(CTA_COUNTERS_BYTES), 8)


def _decode(datagram: bytes, keep: Optional[Callable[[int, bytes, int], bool]] = None,
            ) -> Iterator[tuple[int, int, int, Flow, Optional[int], bytes]]:
    """(netlink seq, message type, id, flow, TCP state, raw original tuple) per message.

    ``keep(message type, source address as 4 bytes, TCP state or -1)``, when given, is asked
    before the rest of a message is decoded: the host's every connection (the server's own
    clients on loopback too) sends several events, and most are of no interest."""
    pos = 0
    while pos + 16 <= len(datagram):
        length, kind, _, seq, _ = struct.unpack_from("=IHHII", datagram, pos)
        if length < 16 or pos + length > len(datagram):
            break
        if kind in ((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW,
                    (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE):
            top = _attrs(datagram[pos + 20:pos + length])
            orig = _attrs(top.get(CTA_TUPLE_ORIG, b""))
            ip, l4 = _attrs(orig.get(CTA_TUPLE_IP, b"")), _attrs(orig.get(CTA_TUPLE_PROTO, b""))
            src, dst = ip.get(CTA_IP_V4_SRC), ip.get(CTA_IP_V4_DST)
            proto, ctid = _int(l4.get(CTA_PROTO_NUM), 1, -1), _int(top.get(CTA_ID), 4, -1)
            if src is not None and dst is not None and len(src) == len(dst) == 4 \
                    and proto >= 0 and ctid >= 0:
                tcp = _attrs(_attrs(top.get(CTA_PROTOINFO, b"")).get(CTA_PROTOINFO_TCP, b""))
                state = _int(tcp.get(CTA_PROTOINFO_TCP_STATE), 1, -1)
                if keep is not None and not keep(kind & 0xFF, src, state):
                    pos += (length + 3) & ~3
                    continue
                port = _int(l4.get(CTA_PROTO_DST_PORT), 2, -1)
                flow = Flow(proto, socket.inet_ntoa(src), socket.inet_ntoa(dst),
                            None if port < 0 else port,
                            _counted(top, CTA_COUNTERS_ORIG), _counted(top, CTA_COUNTERS_REPLY),
                            bool(_int(top.get(CTA_STATUS), 4) & IPS_DST_NAT))
                yield seq, kind & 0xFF, ctid, flow, None if state < 0 else state, \
                    top[CTA_TUPLE_ORIG]
        pos += (length + 3) & ~3


def parse(datagram: bytes) -> list[tuple[int, int, Flow, Optional[int]]]:
    """(message type, conntrack id, flow, TCP state or None) for each IPv4 conntrack message
    in one netlink datagram; anything malformed is skipped."""
    return [(kind, ctid, flow, state) for _, kind, ctid, flow, state, _ in _decode(datagram)]


def open_socket() -> socket.socket:
    """Turn accounting on and subscribe to updates and destroys, in the calling thread's
    netns (the socket hears that namespace's conntrack only)."""
    with open(ACCT_SYSCTL, "w") as f:
        f.write("1")
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 2**20)
        sock.bind((0, 0))
        for group in (NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY):
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class ConntrackListener(Listener):
    """Hand each finished connection from `subnet` to ``sink`` once (on the event loop)."""

    def __init__(self, subnet: str, sink: Callable[[Flow], None], *,
                 make_socket: Callable[[], socket.socket] = open_socket) -> None:
        super().__init__()
        net = ipaddress.IPv4Network(subnet)
        self._net, self._mask = int(net.network_address), int(net.netmask)
        self.sink, self._make_socket = sink, make_socket
        self._seen: dict[int, int] = {}     # conntrack id -> _ASKED or _DONE
        self._seq = 0

    def start(self) -> None:
        self._attach(self._make_socket())

    def _wanted(self, kind: int, src: bytes, state: int) -> bool:
        """From the subnet, and an end: a destroy, or a TCP update (or the answer to
        :meth:`_ask`) that says TIME_WAIT or CLOSE."""
        return (int.from_bytes(src, "big") & self._mask == self._net
                and (kind == IPCTNL_MSG_CT_DELETE
                     or state in (TCP_CONNTRACK_TIME_WAIT, TCP_CONNTRACK_CLOSE)))

    def _receive(self, datagram: bytes) -> None:
        for seq, kind, ctid, flow, state, tuple_ in _decode(datagram, self._wanted):
            if kind == IPCTNL_MSG_CT_DELETE:
                if self._seen.pop(ctid, None) != _DONE:
                    self._emit(flow)
            elif state in (TCP_CONNTRACK_TIME_WAIT, TCP_CONNTRACK_CLOSE):
                if seq and self._seen.get(ctid) == _ASKED:    # the answer to _ask
                    self._remember(ctid, _DONE)
                    self._emit(flow)
                elif not seq and ctid not in self._seen:
                    self._remember(ctid, _ASKED)
                    self._ask(tuple_)

    def _ask(self, tuple_: bytes) -> None:
        self._seq = self._seq % 0xFFFFFFFF + 1
        body = struct.pack("=BBH", socket.AF_INET, 0, 0) + \
            struct.pack("=HH", 4 + len(tuple_), CTA_TUPLE_ORIG | NLA_F_NESTED) + tuple_
        kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
        try:
            self._sock.send(struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST,
                                        self._seq, 0) + body)
        except OSError as exc:              # the destroy event reports it instead
            log.debug("conntrack get: %s", exc)

    def _remember(self, ctid: int, what: int) -> None:
        self._seen[ctid] = what
        if len(self._seen) > REMEMBERED:
            del self._seen[next(iter(self._seen))]

    def _emit(self, flow: Flow) -> None:
        try:
            self.sink(flow)
        except Exception:  # noqa: BLE001 - a sink bug must not stop the listener
            log.exception("connection byte count sink failed")
