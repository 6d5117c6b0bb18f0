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

Once a connection is judged, its bytes never enter Python: each direction is spliced from one
socket into a pipe and from the pipe into the other socket (splice(2), zero copy), driven by
the event loop's readiness callbacks, counted for the egress log and held to the sandbox's
bandwidth cap. A destroyed sandbox's connections are closed with it. If the proxy is down the
redirected connections find nothing listening and are reset: the policy fails closed.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import os
import logging
import socket
import struct
import time
from typing import Awaitable, Callable, NamedTuple, Optional

from hutch.runtime import hostname
from hutch.runtime.egress import EgressPolicy

log = logging.getLogger(__name__)

SO_ORIGINAL_DST = 80         # linux/netfilter_ipv4.h: the destination before the redirect
FIRST_BYTES_WAIT = 1.0       # a client silent this long is judged by address
HEAD_WAIT = 10.0             # the whole request head or ClientHello must arrive by then
DIAL_TIMEOUT = 10.0
#: Per direction, what one splice moves at most. Measured here (a 512 MiB download, 15 to 30
#: of each interleaved with direct ones), through the proxy at this share of direct: 32 KiB
#: 0.65, 64 KiB 0.84 and 0.85, 128 KiB 0.66, 256 KiB 0.67, 1 MiB 0.73 to 0.76. Smaller
#: pieces keep both connections moving where bigger ones let one wait on the other; set
#: rather than left to the default, which is 16 pages and so larger on some kernels.
PIPE_SIZE = 1 << 16

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


NAMELESS = hostname.Requested("", hostname.NONE)


class Bucket:
    """A token bucket (bytes per second, a second's worth of burst) shared by one sandbox's
    proxied connections in one direction."""

    STEP = 16 * 1024       # the least worth waking up for

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.tokens = float(rate)
        self.at = time.monotonic()

    def available(self) -> int:
        now = time.monotonic()
        self.tokens = min(float(self.rate), self.tokens + (now - self.at) * self.rate)
        self.at = now
        return int(self.tokens)

    def spend(self, n: int) -> None:
        self.tokens -= n

    def wait(self) -> float:
        """Seconds until a step's worth is available."""
        return max(0.0, (min(self.STEP, self.rate) - self.tokens) / self.rate)


class _Pump:
    """One direction of a relayed connection: ``src`` to ``dst`` through a pipe with
    splice(2), driven by readiness callbacks (a callback per wakeup costs a few
    microseconds; a coroutine step per chunk would cost the proxy half its throughput).
    ``count[index]`` grows by what reached ``dst``. Ends by passing the end on (half-close);
    ``done`` gets None, or the error that broke it."""

    ROUNDS = 16        # chunks moved per wakeup at most, so one connection cannot hog the loop

    def __init__(self, src: socket.socket, dst: socket.socket, bucket: Optional[Bucket],
                 count: list[int], index: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.src, self.dst, self.bucket = src.fileno(), dst.fileno(), bucket
        self.dst_sock = dst
        self.count, self.index = count, index
        self.done: asyncio.Future = self.loop.create_future()
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass                            # the default size still works
        self.pending, self.ended = 0, False
        self.waiting: Optional[str] = None  # "read", "write" or "time"
        self.timer: Optional[asyncio.TimerHandle] = None

    def start(self) -> None:
        self._wait("read")
        self._move()

    def _wait(self, what: Optional[str]) -> None:
        if self.waiting == what:
            return
        if self.waiting == "read":
            self.loop.remove_reader(self.src)
        elif self.waiting == "write":
            self.loop.remove_writer(self.dst)
        self.waiting = what
        if what == "read":
            self.loop.add_reader(self.src, self._move)
        elif what == "write":
            self.loop.add_writer(self.dst, self._move)

    def _move(self) -> None:
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        try:
            for _ in range(self.ROUNDS):
                if self.pending:
                    try:
                        moved = os.splice(self.r, self.dst, self.pending, flags=flags)
                    except BlockingIOError:
                        self._wait("write")             # the other side reads slowly
                        return
                    self.pending -= moved
                    self.count[self.index] += moved
                    if self.pending:
                        continue
                if self.ended:
                    self._finish(None)
                    return
                if self.waiting == "time":
                    return
                size = PIPE_SIZE
                if self.bucket is not None:
                    # The cap holds by what is spliced: never more than the bucket has.
                    size = min(size, self.bucket.available())
                    if size < min(Bucket.STEP, self.bucket.rate):
                        self._wait("time")
                        self.timer = self.loop.call_later(self.bucket.wait(), self._resume)
                        return
                try:
                    n = os.splice(self.src, self.w, size, flags=flags)
                except BlockingIOError:
                    self._wait("read")
                    return
                if n == 0:
                    self.ended = True
                    continue
                self.pending += n
                if self.bucket is not None:
                    self.bucket.spend(n)
            self._wait("read" if not self.pending else "write")
        except OSError as exc:              # reset, broken pipe: the connection is over
            self._finish(exc)

    def _resume(self) -> None:
        self.timer = None
        if not self.done.done():
            self.waiting = None
            self._wait("read")
            self._move()

    def _finish(self, exc: Optional[OSError]) -> None:
        if self.done.done():
            return
        if exc is None:
            try:
                self.dst_sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self.close()
        self.done.set_result(exc)

    def close(self) -> None:
        """Stop watching, and let go of the pipe (whatever is still in it is dropped)."""
        self._wait(None)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for fd in (self.r, self.w):
            if fd >= 0:
                os.close(fd)
        self.r = self.w = -1


async def _relay(inside: socket.socket, outside: socket.socket,
                 buckets: tuple[Optional[Bucket], Optional[Bucket]], count: list[int]) -> None:
    """Both directions until both have ended; an error in one ends the other. Cancelled, or
    failing to start (no file descriptors left for a pipe), it leaves nothing open."""
    pumps: list[_Pump] = []
    try:
        pumps.append(_Pump(inside, outside, buckets[0], count, 0))
        pumps.append(_Pump(outside, inside, buckets[1], count, 1))
        for pump in pumps:
            pump.start()
        pending = {pump.done for pump in pumps}
        while pending:
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(f.result() is not None for f in finished):
                return
    finally:
        for pump in pumps:
            if not pump.done.done():
                pump.close()
                pump.done.cancel()


async def _read_head(conn: socket.socket) -> tuple[bytes, hostname.Requested]:
    """The connection's first bytes, until they say what they ask for (or the time is up:
    silence is no name, a head that never completes is malformed)."""
    loop = asyncio.get_running_loop()
    head = b""
    deadline = loop.time() + HEAD_WAIT
    while True:
        wait = FIRST_BYTES_WAIT if not head else deadline - loop.time()
        try:
            # Most clients send at once, so the bytes are usually there when the connection
            # is taken: read them without waiting (a timed wait costs the loop a task).
            chunk = conn.recv(hostname.MAX_HEAD)
        except (BlockingIOError, InterruptedError):
            try:
                async with asyncio.timeout(wait):
                    chunk = await loop.sock_recv(conn, hostname.MAX_HEAD)
            except (TimeoutError, OSError):
                chunk = None
        except OSError:
            chunk = None
        if chunk:
            head += chunk
            asked = hostname.requested(head)
            if asked.outcome != hostname.MORE:
                return head, asked
            continue
        asked = hostname.requested(head)
        return head, hostname.Requested(asked.protocol,
                                        hostname.NONE if not head else hostname.BAD)


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
        self._sock: Optional[socket.socket] = None
        self._tasks: set[asyncio.Task] = set()
        self._open: dict[str, set[asyncio.Task]] = {}     # sandbox id -> its connections
        self._buckets: dict[str, tuple[Bucket, Bucket]] = {}

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(self.listen)
            sock.listen(1024)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)

    async def close(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def forget(self, sandbox_id: str) -> None:
        """A sandbox is gone: its buckets, and its connections still open. Its side of them
        vanished with its network namespace without a word, so they would otherwise wait on
        the far end (an idle keep-alive connection for ever), holding its upstream
        connection, two sockets and two pipes."""
        self._buckets.pop(sandbox_id, None)
        for task in self._open.pop(sandbox_id, ()):
            task.cancel()

    def connections(self, sandbox_id: str) -> int:
        """How many connections of the sandbox the proxy holds."""
        return len(self._open.get(sandbox_id, ()))

    def _accept(self) -> None:
        while self._sock is not None:
            try:
                conn, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:          # EMFILE and the like: the client retries
                log.warning("egress proxy: accept failed: %s", exc)
                return
            conn.setblocking(False)
            task = asyncio.ensure_future(self._handle(conn, peer[0]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, conn: socket.socket, client: str) -> None:
        early: Optional[asyncio.Future] = None
        mine: Optional[set[asyncio.Task]] = None
        task = asyncio.current_task()
        try:
            try:
                raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            except OSError:
                return                      # not a redirected connection
            address, port = socket.inet_ntoa(raw[4:8]), struct.unpack_from("!H", raw, 2)[0]
            entry = self.lookup(client)
            if entry is None:               # its policy went while it connected
                return
            sandbox_id, policy = entry
            mine = self._open.setdefault(sandbox_id, set())
            mine.add(task)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if judge(policy, NAMELESS, address,
                     self.learned(sandbox_id, address)).action == "address":
                # Reaching this address is allowed whatever the connection turns out to ask
                # for (as a connection with no name, it is), so dialling it while the first
                # bytes arrive reveals nothing new, and takes the dial off the critical path.
                early = asyncio.ensure_future(_dial([address], port))
            head, asked = await _read_head(conn)
            await self._serve(conn, entry, address, port, head, asked, early)
        except OSError as exc:
            log.debug("egress proxy: %s", exc)
        finally:
            if early is not None:
                _discard(early)             # (closing what _serve closed already is nothing)
            conn.close()
            if mine is not None:
                mine.discard(task)
                if not mine and self._open.get(sandbox_id) is mine:
                    del self._open[sandbox_id]

    async def _serve(self, conn: socket.socket, entry: tuple[str, EgressPolicy], address: str,
                     port: int, head: bytes, asked: hostname.Requested,
                     early: Optional[asyncio.Future]) -> None:
        sandbox_id, policy = entry

        def event(allowed: bool, reason: str, **extra) -> None:
            self.record({"time": time.time(), "sandbox_id": sandbox_id, "kind": "connection",
                         "name": asked.name, "address": address, "port": port,
                         "protocol": "tcp", "allowed": allowed, "reason": reason,
                         "via": "proxy", **extra})

        verdict = judge(policy, asked, address, self.learned(sandbox_id, address))
        targets = [address]
        if verdict.action == "name":
            found = await self.resolve(asked.name)
            if not found:
                verdict = Verdict("refuse", "name did not resolve")
            elif any(self.denied(a) for a in found):
                verdict = Verdict("refuse", INWARD)
            else:
                targets = ([address] if address in found else []) + \
                    [a for a in found if a != address]
        if verdict.action == "refuse":
            event(False, verdict.reason)
            await _refuse(conn, asked, address, port, verdict.reason)
            return
        upstream = None
        if early is not None and targets[0] == address:
            upstream = await early
            targets = targets[1:]
        elif early is not None:
            _discard(early)
        if upstream is None:
            upstream = await _dial(targets[:4], port)
        if upstream is None:
            event(True, verdict.reason, dialled=None, error="no answer from the destination")
            await _refuse(conn, asked, address, port, "the destination did not answer", 502)
            return
        # Closed here whatever happens, a cancel too (the sandbox gone, the server stopping):
        # the far end must see the connection end, not wait for its own timeout.
        with upstream:
            dialled = upstream.getpeername()[0]
            event(True, verdict.reason, dialled=dialled)
            count = [0, 0]
            try:
                if head:
                    await asyncio.get_running_loop().sock_sendall(upstream, head)
                    count[0] += len(head)
                await _relay(conn, upstream, self._buckets_of(sandbox_id), count)
            finally:
                event(True, "closed", kind="closed", dialled=dialled, bytes_out=count[0],
                      bytes_in=count[1])

    def _buckets_of(self, sandbox_id: str) -> tuple[Optional[Bucket], Optional[Bucket]]:
        if not self.rate:
            return (None, None)
        if sandbox_id not in self._buckets:
            self._buckets[sandbox_id] = (Bucket(self.rate), Bucket(self.rate))
        return self._buckets[sandbox_id]


async def _dial(targets: list[str], port: int) -> Optional[socket.socket]:
    """A connected socket to the first of ``targets`` that answers, or None."""
    loop = asyncio.get_running_loop()
    for target in targets:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            async with asyncio.timeout(DIAL_TIMEOUT):
                await loop.sock_connect(sock, (target, port))
            return sock
        except (OSError, TimeoutError):
            sock.close()
        except BaseException:               # cancelled: nothing may leak
            sock.close()
            raise
    return None


def _discard(dial: asyncio.Future) -> None:
    """An early dial not used: cancelled, or its connection closed."""
    if not dial.done():
        dial.cancel()
    elif not dial.cancelled() and dial.exception() is None and dial.result() is not None:
        dial.result().close()


async def _refuse(conn: socket.socket, asked: hostname.Requested, address: str, port: int,
                  reason: str, status: int = 403) -> None:
    """Say why to an HTTP client; reset anything else (a TLS client cannot be told)."""
    if asked.protocol == "http":
        what = asked.name or f"{address}:{port}"
        if status == 403:
            body = (f"hutch: egress to {what} refused by this sandbox's egress policy "
                    f"({reason})\n").encode()
        else:
            body = f"hutch: {what}: {reason}\n".encode()
        title = "Forbidden" if status == 403 else "Bad Gateway"
        answer = (f"HTTP/1.1 {status} {title}\r\nContent-Type: text/plain\r\n"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_sendall(conn, answer), 5)
            conn.shutdown(socket.SHUT_WR)
        except (OSError, asyncio.TimeoutError):
            pass
        return
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
