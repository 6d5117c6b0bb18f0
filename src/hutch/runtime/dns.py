"""The DNS forwarder sandboxes use: UDP and TCP on the gateway's port 53.

Sandboxes may reach nothing on the host and no private address, and the host's own resolver
is usually private (a LAN or cloud resolver), so sandboxes resolve through this forwarder,
which relays each query to the host's resolvers and the answer back.

It is also where domain rules are enforced (see egress.py): for a sandbox with a policy, a
name its rules refuse gets NXDOMAIN without any query leaving the host; the addresses in an
answer for an allowed name are learned (made reachable for that sandbox) before the answer is
sent, and an answer that points inward (a private, metadata or host address: DNS rebinding,
or an allowed name that resolves to the internal network) is refused with SERVFAIL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
import struct
import time
from pathlib import Path
from typing import Awaitable, Callable

from hutch.runtime import dnsmsg, egress
from hutch.runtime.egress import EgressPolicy

log = logging.getLogger(__name__)

UPSTREAM_TIMEOUT = 4.0
MAX_TCP_MESSAGE = 65535
# The forwarder runs in the server's process and every query in flight holds a socket there for
# up to UPSTREAM_TIMEOUT: without a bound, one sandbox flooding queries at a silent name would
# use up the server's file descriptors (and every tenant's API with them). Queries past the
# bound are dropped, as a busy resolver drops them; clients retry.
MAX_PENDING_PER_CLIENT = 64     # UDP queries in flight per source address (one per sandbox)
MAX_PENDING = 4096              # UDP queries in flight overall
MAX_TCP_PER_CLIENT = 16         # open TCP connections per source address
MAX_RECENT = 10_000             # answers kept for the egress proxy


def parse_resolv_conf(text: str) -> list[tuple[str, int]]:
    """The `nameserver` entries of a resolv.conf, as (address, 53)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                ipaddress.ip_address(parts[1].split("%")[0])
            except ValueError:
                continue
            out.append((parts[1], 53))
    return out


def host_resolvers(path: Path = Path("/etc/resolv.conf")) -> list[tuple[str, int]]:
    try:
        return parse_resolv_conf(path.read_text())
    except OSError:
        return []


async def _udp_query(upstream: tuple[str, int], payload: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in upstream[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, upstream)
        await loop.sock_sendall(sock, payload)
        while True:
            answer = await loop.sock_recv(sock, 65535)
            if answer[:2] == payload[:2]:  # same query id
                return answer
    finally:
        sock.close()


async def _tcp_query(upstream: tuple[str, int], payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*upstream)
    try:
        writer.write(struct.pack("!H", len(payload)) + payload)
        await writer.drain()
        (n,) = struct.unpack("!H", await reader.readexactly(2))
        return await reader.readexactly(n)
    finally:
        writer.close()


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, forwarder: "DnsForwarder") -> None:
        self.forwarder = forwarder
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        fwd = self.forwarder
        if len(data) < 12 or len(fwd._tasks) >= MAX_PENDING:
            return
        client = addr[0]
        if not fwd._take(fwd._udp_clients, client, MAX_PENDING_PER_CLIENT):
            return
        task = asyncio.ensure_future(self._answer(data, addr))
        fwd._tasks.add(task)
        task.add_done_callback(fwd._tasks.discard)
        task.add_done_callback(lambda _: fwd._give(fwd._udp_clients, client))

    async def _answer(self, data: bytes, addr) -> None:
        answer = await self.forwarder.answer(data, tcp=False, client=addr[0])
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)


class DnsForwarder:
    """Forward DNS from `listen` (address, port) to upstream resolvers, over UDP and TCP."""

    def __init__(self, listen: tuple[str, int], upstreams: list[tuple[str, int]], *,
                 policy: Callable[[str], tuple[str, EgressPolicy] | None] | None = None,
                 learn: Callable[[str, list[str], int], Awaitable[bool]] | None = None,
                 record: Callable[[str, str, bool, str, list[str]], None] | None = None,
                 ) -> None:
        self.listen = listen
        self.upstreams = upstreams
        # source address -> (sandbox id, its policy), for sandboxes that have one
        self.policy = policy
        # (sandbox id, addresses, seconds) -> False if an address may not be reached at all
        self.learn = learn
        # (source address, name, allowed, reason, addresses): every answer, for the log
        self.record = record
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        # name -> (until, IPv4 addresses): the answers given lately, for the egress proxy,
        # which dials the names sandboxes asked for (and so rarely needs a lookup of its own)
        self._recent: dict[str, tuple[float, list[str]]] = {}
        self._udp_clients: dict[str, int] = {}   # source address -> UDP queries in flight
        self._tcp_clients: dict[str, int] = {}   # source address -> open TCP connections

    @staticmethod
    def _take(counts: dict[str, int], client: str, limit: int) -> bool:
        n = counts.get(client, 0)
        if n >= limit:
            return False
        counts[client] = n + 1
        return True

    @staticmethod
    def _give(counts: dict[str, int], client: str) -> None:
        n = counts.pop(client, 1) - 1
        if n > 0:
            counts[client] = n

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _UdpServer(self), local_addr=self.listen, reuse_port=False)
        self._tcp = await asyncio.start_server(self._serve_tcp, *self.listen,
                                               reuse_address=True)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
            self._tcp = None
        for t in list(self._tasks):
            t.cancel()

    async def answer(self, payload: bytes, *, tcp: bool, client: str) -> bytes | None:
        """The answer for a sandbox at ``client``: its domain rules first, then upstream;
        every decision goes to ``record`` (the egress log)."""
        entry = self.policy(client) if self.policy is not None else None
        try:
            name, _, _ = dnsmsg.question(payload)
        except ValueError:
            if entry is not None:
                return None                 # not a query we can judge: dropped
            name = ""
        verdict = entry[1].name_verdict(name) if entry is not None else "forward"
        if verdict == "refuse":
            self._record(client, name, False, "name not allowed", [])
            return dnsmsg.error(payload, dnsmsg.NXDOMAIN)
        answer = await self.resolve(payload, tcp=tcp)
        if answer is None:
            return None
        try:
            found = dnsmsg.addresses(answer) if name else []
        except ValueError:
            if verdict == "learn":
                return dnsmsg.error(payload, dnsmsg.SERVFAIL)
            found = []
        addresses = sorted({a for a, _ in found})
        if addresses:
            self._remember(name, addresses, min(ttl for _, ttl in found))
        if verdict == "learn" and found and self.learn is not None:
            seconds = max([ttl for _, ttl in found] + [egress.LEARNED_FOR])
            if not await self.learn(entry[0], addresses, seconds):
                self._record(client, name, False, "resolves to an always-denied address",
                             addresses)
                return dnsmsg.error(payload, dnsmsg.SERVFAIL)
        self._record(client, name, True, "allowed name" if verdict == "learn" else "resolved",
                     addresses)
        return answer

    def _remember(self, name: str, addresses: list[str], ttl: int) -> None:
        if len(self._recent) >= MAX_RECENT:
            self._recent.clear()
        self._recent[name] = (time.monotonic() + max(ttl, 1), addresses)

    async def lookup(self, name: str) -> list[str] | None:
        """The IPv4 addresses of ``name`` (canonical): a recent answer, else the upstreams'
        (over TCP when the UDP answer was truncated); None when there is no answer."""
        recent = self._recent.get(name)
        if recent is not None and recent[0] > time.monotonic():
            return recent[1]
        query = dnsmsg.query(name, secrets.randbelow(65536))
        answer = await self.resolve(query, tcp=False)
        if answer is not None and len(answer) > 2 and answer[2] & 0x02:   # TC: truncated
            answer = await self.resolve(query, tcp=True)
        try:
            found = dnsmsg.addresses(answer) if answer is not None else []
        except ValueError:
            found = []
        if not found:
            return None
        addresses = sorted({a for a, _ in found})
        self._remember(name, addresses, min(ttl for _, ttl in found))
        return addresses

    def _record(self, client: str, name: str, allowed: bool, reason: str,
                addresses: list[str]) -> None:
        if self.record is not None and name:
            self.record(client, name, allowed, reason, addresses)

    async def resolve(self, payload: bytes, *, tcp: bool) -> bytes | None:
        """Ask each upstream in turn; None if none answered (the client retries)."""
        for upstream in self.upstreams:
            try:
                query = _tcp_query if tcp else _udp_query
                answer = await asyncio.wait_for(query(upstream, payload), UPSTREAM_TIMEOUT)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
                log.debug("dns upstream %s failed: %s", upstream, e)
                continue
            return answer  # a truncated UDP answer tells the client to retry over TCP
        return None

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        peer = writer.get_extra_info("peername")
        client = peer[0] if peer else ""
        if not self._take(self._tcp_clients, client, MAX_TCP_PER_CLIENT):
            writer.close()
            return
        try:
            while True:
                try:
                    (n,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 30))
                    payload = await reader.readexactly(n)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                answer = await self.answer(payload, tcp=True, client=client)
                if answer is None:
                    return
                writer.write(struct.pack("!H", len(answer)) + answer)
                await writer.drain()
        finally:
            self._give(self._tcp_clients, client)
            writer.close()
