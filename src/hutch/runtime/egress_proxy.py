"""The host-side proxy that judges a sandbox's web connections by the name they ask for.

For a sandbox whose egress policy has domain rules, the firewall redirects its TCP connections
to the proxied ports (80 and 443) here, except those to addresses its policy allows outright
and those to always-denied addresses (refused by the firewall as before). The proxy reads the
HTTP Host or the TLS server name (hostname.py), and then:

- an allowed name: resolves the name itself through hutch's upstream resolvers (the answers
  hutch's own resolver just gave first), re-checks every address against the always-denied set,
  and dials the name, preferring the address the sandbox dialled if the name has it. What
  the sandbox dialled is never trusted: an ``/etc/hosts`` entry, a rebinding answer or an
  address of some other site sharing the connection cannot take it anywhere else;
- a name the policy refuses: refused (HTTP with a 403 saying why, anything else with a reset);
- no name (a literal address, HTTP/1.0 without Host, another protocol, a client that stays
  silent): judged by the address like any other connection: reachable if hutch's resolver
  answered it for an allowed name, else by the policy's address rules.

It is plain asyncio protocols: bytes are relayed as they arrive with flow control both ways,
counted for the egress log, and held to the sandbox's bandwidth cap. If the proxy is down the
redirected connections find nothing listening and are reset: the policy fails closed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import time
from typing import Awaitable, Callable, NamedTuple, Optional

from hutch.runtime import hostname
from hutch.runtime.egress import EgressPolicy

log = logging.getLogger(__name__)

PORTS = (80, 443)            # what the firewall redirects here
SO_ORIGINAL_DST = 80         # linux/netfilter_ipv4.h: the destination before the redirect
FIRST_BYTES_WAIT = 1.0       # a client silent this long is judged by address
HEAD_WAIT = 10.0             # the whole request head or ClientHello must arrive by then
DIAL_TIMEOUT = 10.0
HIGH_WATER = 256 * 1024      # buffered in one direction before the other side is paused

ALLOWED_NAME = "allowed name"
NAME_REFUSED = "name not allowed"
INWARD = "resolves to an always-denied address"
MALFORMED = "unreadable request (host name)"
LEARNED = "address answered for an allowed name"
POLICY = "egress policy"


class Verdict(NamedTuple):
    action: str              # "name": dial the name; "address": dial what was dialled; "refuse"
    reason: str


def judge(policy: EgressPolicy, asked: hostname.Requested, address: str,
          learned: bool) -> Verdict:
    """What to do with a connection to ``address`` that asks for ``asked`` (pure)."""
    if asked.outcome == hostname.BAD:
        return Verdict("refuse", MALFORMED)
    if asked.outcome == "name":
        verdict = policy.name_verdict(asked.name)
        if verdict == "learn":
            return Verdict("name", ALLOWED_NAME)
        if verdict == "refuse":
            return Verdict("refuse", NAME_REFUSED)
    # No name, or one the rules do not mention (internet on): the address decides.
    ip = ipaddress.ip_address(address)
    if any(ip in ipaddress.ip_network(n) for n in policy.allow):
        return Verdict("address", POLICY)
    if learned and asked.outcome != "name":
        return Verdict("address", LEARNED)
    if any(ip in ipaddress.ip_network(n) for n in policy.deny) or not policy.internet:
        return Verdict("refuse", POLICY)
    return Verdict("address", POLICY)


class Bucket:
    """A token bucket (bytes per second, a second's worth of burst) shared by one sandbox's
    proxied connections in one direction."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.tokens = float(rate)
        self.at = time.monotonic()

    def take(self, n: int) -> float:
        """Spend ``n`` bytes; the seconds to wait before reading more (0: none)."""
        now = time.monotonic()
        self.tokens = min(float(self.rate), self.tokens + (now - self.at) * self.rate) - n
        self.at = now
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class _Side(asyncio.Protocol):
    """One end of a relayed connection; ``peer`` is the other end's transport."""

    def __init__(self, relay: "_Relay", outbound: bool) -> None:
        self.relay, self.outbound = relay, outbound
        self.transport: Optional[asyncio.Transport] = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.relay.forward(self, data)

    def eof_received(self) -> bool:
        self.relay.half_close(self)
        return True                         # keep the other direction open

    def connection_lost(self, exc) -> None:
        self.relay.lost(self)

    def pause_writing(self) -> None:
        self.relay.pause(self)

    def resume_writing(self) -> None:
        self.relay.resume(self)


class _Relay:
    """Bytes both ways between the sandbox (``inside``) and the dialled server
    (``outside``), counted and held to the buckets."""

    def __init__(self, inside: _Side, buckets: tuple[Optional[Bucket], Optional[Bucket]],
                 done: Callable[[int, int], None]) -> None:
        self.inside = inside
        self.outside: Optional[_Side] = None
        self.buckets = buckets               # (sandbox -> world, world -> sandbox)
        self.done = done
        self.sent = [0, 0]                   # bytes out, bytes in
        self.closed = 0
        self.eofs = 0
        self.finished = False
        self._paused: set[int] = set()       # which sides' reading is paused, and why (bits)

    def _other(self, side: _Side) -> Optional[_Side]:
        return self.outside if side is self.inside else self.inside

    def forward(self, side: _Side, data: bytes) -> None:
        other = self._other(side)
        if other is None or other.transport is None or other.transport.is_closing():
            return
        other.transport.write(data)
        direction = 1 if side.outbound else 0
        self.sent[direction] += len(data)
        bucket = self.buckets[direction]
        if bucket is not None:
            wait = bucket.take(len(data))
            if wait > 0:
                side.transport.pause_reading()
                asyncio.get_running_loop().call_later(wait, self._unthrottle, side)

    def _unthrottle(self, side: _Side) -> None:
        if side.transport is not None and not side.transport.is_closing() \
                and id(side) not in self._paused:
            side.transport.resume_reading()

    def pause(self, writer: _Side) -> None:
        """``writer``'s buffer is full: stop reading what fills it."""
        reader = self._other(writer)
        if reader is not None and reader.transport is not None:
            self._paused.add(id(reader))
            reader.transport.pause_reading()

    def resume(self, writer: _Side) -> None:
        reader = self._other(writer)
        if reader is not None and reader.transport is not None:
            self._paused.discard(id(reader))
            if not reader.transport.is_closing():
                reader.transport.resume_reading()

    def half_close(self, side: _Side) -> None:
        other = self._other(side)
        self.eofs += 1
        if other is not None and other.transport is not None and not other.transport.is_closing():
            if other.transport.can_write_eof():
                other.transport.write_eof()
        if self.eofs >= 2:
            self.close()

    def lost(self, side: _Side) -> None:
        other = self._other(side)
        if other is not None and other.transport is not None:
            other.transport.close()
        self.close()

    def close(self) -> None:
        for side in (self.inside, self.outside):
            if side is not None and side.transport is not None:
                side.transport.close()
        if not self.finished:
            self.finished = True
            self.done(*self.sent)


class _Inside(_Side):
    """The sandbox's end: reads the first bytes, has the connection judged, then relays."""

    def __init__(self, proxy: "EgressProxy") -> None:
        super().__init__(None, outbound=False)  # type: ignore[arg-type]
        self.proxy = proxy
        self.head = bytearray()
        self.ready = asyncio.Event()
        self.ended = False                  # the sandbox shut its sending side already
        self.client = self.address = ""
        self.port = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        try:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            self.port = struct.unpack_from("!H", raw, 2)[0]
            self.address = socket.inet_ntoa(raw[4:8])
            self.client = peer[0]
        except (OSError, TypeError):
            transport.abort()               # not a redirected connection
            return
        self.proxy._spawn(self._handle())

    def data_received(self, data: bytes) -> None:
        if self.relay is not None:
            self.relay.forward(self, data)
            return
        self.head += data
        asked = hostname.requested(bytes(self.head))
        if asked.outcome != hostname.MORE:
            self.transport.pause_reading()
            self.ready.set()

    def eof_received(self) -> bool:
        if self.relay is not None:
            self.relay.half_close(self)
            return True
        self.ended = True
        self.ready.set()
        return True

    def connection_lost(self, exc) -> None:
        if self.relay is not None:
            self.relay.lost(self)
        self.ready.set()

    async def _handle(self) -> None:
        try:
            await asyncio.wait_for(self.ready.wait(), FIRST_BYTES_WAIT)
        except asyncio.TimeoutError:
            if self.head:                   # it began: the head must come whole
                try:
                    await asyncio.wait_for(self.ready.wait(), HEAD_WAIT - FIRST_BYTES_WAIT)
                except asyncio.TimeoutError:
                    pass
        if self.transport.is_closing():
            return
        self.transport.pause_reading()
        asked = hostname.requested(bytes(self.head))
        if asked.outcome == hostname.MORE:
            asked = hostname.Requested(asked.protocol,
                                       hostname.NONE if not self.head else hostname.BAD)
        await self.proxy._serve(self, asked)


class EgressProxy:
    """Listens on ``listen`` (the gateway address and the proxy port) for redirected
    connections.

    ``lookup(source address)`` gives ``(sandbox id, policy)`` or None; ``learned(sandbox id,
    address)`` whether hutch's resolver answered that address for an allowed name;
    ``resolve(name)`` the name's IPv4 addresses from hutch's upstream resolvers (None if no
    answer); ``denied(address)`` whether it is always denied; ``record(event)`` takes the
    egress log's events; ``rate`` is the per-sandbox cap each way in bytes/s (0: none).
    """

    def __init__(self, listen: tuple[str, int], *,
                 lookup: Callable[[str], Optional[tuple[str, EgressPolicy]]],
                 learned: Callable[[str, str], bool],
                 resolve: Callable[[str], Awaitable[Optional[list[str]]]],
                 denied: Callable[[str], bool],
                 record: Callable[[dict], None], rate: int = 0) -> None:
        self.listen = listen
        self.lookup, self.learned, self.resolve = lookup, learned, resolve
        self.denied, self.record, self.rate = denied, record, rate
        self._server: Optional[asyncio.base_events.Server] = None
        self._tasks: set[asyncio.Task] = set()
        self._buckets: dict[str, tuple[Bucket, Bucket]] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Inside(self), *self.listen,
                                                reuse_address=True, backlog=1024)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()

    def forget(self, sandbox_id: str) -> None:
        """A sandbox is gone (its buckets with it)."""
        self._buckets.pop(sandbox_id, None)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _event(self, inside: _Inside, sandbox_id: str, name: Optional[str], allowed: bool,
               reason: str, **extra) -> None:
        self.record({"time": time.time(), "sandbox_id": sandbox_id, "kind": "connection",
                     "name": name, "address": inside.address, "port": inside.port,
                     "protocol": "tcp", "allowed": allowed, "reason": reason,
                     "via": "proxy", **extra})

    async def _serve(self, inside: _Inside, asked: hostname.Requested) -> None:
        entry = self.lookup(inside.client)
        if entry is None:                   # its policy went while it connected
            inside.transport.abort()
            return
        sandbox_id, policy = entry
        verdict = judge(policy, asked, inside.address,
                        self.learned(sandbox_id, inside.address))
        targets = [inside.address]
        if verdict.action == "name":
            found = await self.resolve(asked.name)
            if not found:
                verdict = Verdict("refuse", "name did not resolve")
            elif any(self.denied(a) for a in found):
                verdict = Verdict("refuse", INWARD)
            else:
                targets = ([inside.address] if inside.address in found else []) + \
                    [a for a in found if a != inside.address]
        if verdict.action == "refuse":
            self._event(inside, sandbox_id, asked.name, False, verdict.reason)
            self._refuse(inside, asked, verdict.reason)
            return
        outside, dialled = None, None
        relay = _Relay(inside, self._buckets_of(sandbox_id), lambda out, back: self._event(
            inside, sandbox_id, asked.name, True, "closed", kind="closed",
            dialled=dialled, bytes_out=out, bytes_in=back))
        loop = asyncio.get_running_loop()
        for target in targets[:4]:
            try:
                _, outside = await asyncio.wait_for(loop.create_connection(
                    lambda: _Side(relay, outbound=True), target, inside.port), DIAL_TIMEOUT)
                dialled = target
                break
            except (OSError, asyncio.TimeoutError):
                continue
        if outside is None or inside.transport.is_closing():
            if outside is not None:
                outside.transport.close()
            self._event(inside, sandbox_id, asked.name, True, verdict.reason,
                        dialled=None, error="no answer from the destination")
            self._refuse(inside, asked, "the destination did not answer", status=502)
            return
        self._event(inside, sandbox_id, asked.name, True, verdict.reason, dialled=dialled)
        relay.outside = outside
        inside.relay = relay
        for side in (inside, outside):
            side.transport.set_write_buffer_limits(HIGH_WATER)
        if inside.head:
            outside.transport.write(bytes(inside.head))
            relay.sent[0] += len(inside.head)
            inside.head = bytearray()
        if inside.ended:
            relay.half_close(inside)
        elif not inside.transport.is_closing():
            inside.transport.resume_reading()

    def _buckets_of(self, sandbox_id: str) -> tuple[Optional[Bucket], Optional[Bucket]]:
        if not self.rate:
            return (None, None)
        if sandbox_id not in self._buckets:
            self._buckets[sandbox_id] = (Bucket(self.rate), Bucket(self.rate))
        return self._buckets[sandbox_id]

    @staticmethod
    def _refuse(inside: _Inside, asked: hostname.Requested, reason: str,
                status: int = 403) -> None:
        """Say why to an HTTP client; reset anything else (a TLS client cannot be told)."""
        transport = inside.transport
        if asked.protocol == "http":
            what = f"{asked.name}" if asked.name else f"{inside.address}:{inside.port}"
            body = (f"hutch: egress to {what} refused by this sandbox's egress policy "
                    f"({reason})\n").encode() if status == 403 else \
                f"hutch: {what}: {reason}\n".encode()
            title = "Forbidden" if status == 403 else "Bad Gateway"
            transport.write(f"HTTP/1.1 {status} {title}\r\nContent-Type: text/plain\r\n"
                            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                            .encode() + body)
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        transport.abort()
