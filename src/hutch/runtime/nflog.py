"""Reading the firewall's decisions: packets nftables logs to an NFLOG group, over netlink.

The instance's rules log each connection a sandbox opens (and each refused packet, rate
limited) to one NFLOG group with a prefix naming the decision (``a:open``, ``a:policy``,
``d:private``, ``d:policy``, ``d:connections``). This module binds that group and turns each
message into ``(prefix, source, destination, protocol, destination port)``. No third-party
library: the message format is a handful of netlink attributes (linux/netfilter/nfnetlink_log.h).
"""

from __future__ import annotations

import os
import logging
import socket
import struct
from typing import Callable, Optional

from hutch.runtime.netlink import Listener

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
COPY_RANGE = 64            # enough for the IPv4 header and the ports

Event = tuple[str, str, str, int, Optional[int]]   # prefix, src, dst, ip protocol, dst port


def _attr(kind: int, data: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def config_message(group: int, attrs: bytes, seq: int) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(group)) + attrs
    kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def parse(datagram: bytes) -> list[Event]:
    """The logged packets in one netlink datagram."""
    out = []
    pos = 0
    while pos + 16 <= len(datagram):
        length, kind, _, _, _ = struct.unpack_from("=IHHII", datagram, pos)
        if length < 16 or pos + length > len(datagram):
            break
        if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            event = _packet(datagram[pos + 20:pos + length])
            if event is not None:
                out.append(event)
        pos += (length + 3) & ~3
    return out


def _packet(attrs: bytes) -> Optional[Event]:
    prefix, payload = "", b""
    pos = 0
    while pos + 4 <= len(attrs):
        length, kind = struct.unpack_from("=HH", attrs, pos)
        if length < 4:
            break
        value = attrs[pos + 4:pos + length]
        kind &= 0x3FFF
        if kind == NFULA_PREFIX:
            prefix = value.rstrip(b"\0").decode("ascii", "replace")
        elif kind == NFULA_PAYLOAD:
            payload = value
        pos += (length + 3) & ~3
    if len(payload) < 20 or payload[0] >> 4 != 4:
        return None
    ihl = (payload[0] & 0x0F) * 4
    proto = payload[9]
    src, dst = socket.inet_ntoa(payload[12:16]), socket.inet_ntoa(payload[16:20])
    port = None
    if proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP) and len(payload) >= ihl + 4:
        (port,) = struct.unpack_from("!H", payload, ihl + 2)
    return prefix.strip(), src, dst, proto, port


class NflogListener(Listener):
    """Bind an NFLOG group and hand each logged packet to ``sink`` (on the event loop)."""

    def __init__(self, group: int, sink: Callable[[Event], None]) -> None:
        super().__init__()
        self.group, self.sink = group, sink

    def start(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 2**20)
            sock.bind((0, 0))
            for seq, attrs in enumerate((
                    _attr(NFULA_CFG_CMD, struct.pack("=B", NFULNL_CFG_CMD_BIND)),
                    _attr(NFULA_CFG_MODE, struct.pack("!IBB", COPY_RANGE,
                                                      NFULNL_COPY_PACKET, 0))), 1):
                sock.send(config_message(self.group, attrs, seq))
                answer = sock.recv(4096)
                _, kind, _, _, _ = struct.unpack_from("=IHHII", answer, 0)
                if kind == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", answer, 16)
                    if err:
                        raise OSError(-err, f"NFLOG group {self.group}: {os.strerror(-err)}")
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._attach(sock)

    def _receive(self, datagram: bytes) -> None:
        for event in parse(datagram):
            try:
                self.sink(event)
            except Exception:  # noqa: BLE001 - a sink bug must not stop the listener
                log.exception("egress log sink failed")
