"""The one rtnetlink request the hot path needs: a veth pair whose peer is born in another
network namespace, with the host end enslaved to a bridge and up.

`ip -batch` does the same in ~5 ms, mostly spent starting the process; the request itself
takes tens of microseconds.

Also the event-loop side of the netfilter listeners (conntrack, NFLOG): :class:`Listener`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from typing import Optional

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
RTM_NEWLINK = 16
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLMSG_ERROR = 2
IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 3, 10, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFF_UP = 0x1


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _ifinfo(flags: int = 0, change: int = 0) -> bytes:
    return struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, flags, change)


def veth_request(host: str, peer: str, peer_netns_fd: int, master_index: int,
                 seq: int = 1) -> bytes:
    """RTM_NEWLINK for `host` (up, in the bridge) ↔ `peer` (inside the given netns)."""
    peer_info = _ifinfo() + _attr(IFLA_IFNAME, peer.encode() + b"\0") + \
        _attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd))
    linkinfo = _attr(IFLA_INFO_KIND, b"veth") + \
        _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_info))
    body = _ifinfo(IFF_UP, IFF_UP) + _attr(IFLA_IFNAME, host.encode() + b"\0") + \
        _attr(IFLA_MASTER, struct.pack("=I", master_index)) + _attr(IFLA_LINKINFO, linkinfo)
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    return struct.pack("=IHHII", 16 + len(body), RTM_NEWLINK, flags, seq, 0) + body


def create_veth(host: str, peer: str, peer_netns: str, bridge: str) -> None:
    """Make the pair in the calling thread's netns (the host's); raise OSError on failure."""
    master = socket.if_nametoindex(bridge)
    nsfd = os.open(peer_netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                           NETLINK_ROUTE) as s:
            s.bind((0, 0))
            s.send(veth_request(host, peer, nsfd, master))
            reply = s.recv(65536)
    finally:
        os.close(nsfd)
    _, kind = struct.unpack_from("=IH", reply)
    if kind == NLMSG_ERROR:
        (err,) = struct.unpack_from("=i", reply, 16)
        if err:
            raise OSError(-err, f"creating veth {host}: {os.strerror(-err)}")


class Listener:
    """A non-blocking netlink socket read on the event loop, each datagram handed to
    :meth:`_receive`. ENOBUFS (the kernel dropped messages while the loop was busy) is logged
    and reading goes on: a listener never stops on its own."""

    def __init__(self) -> None:
        self._sock: Optional[socket.socket] = None

    def _attach(self, sock: socket.socket) -> None:
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        while self._sock is not None:
            try:
                datagram = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("%s: %s", type(self).__name__, exc)
                return
            self._receive(datagram)

    def _receive(self, datagram: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
