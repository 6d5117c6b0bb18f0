"""The egress proxy, from inside real sandboxes: web connections of a sandbox with name rules
are judged by the name they ask for (HTTP Host, TLS server name) and go where that name
resolves, whatever address the sandbox dialled.

The fake internet is two hosts in a network namespace of this test's own: REAL (what the
fake resolver answers for allowed.test) and SPOOF (an address a sandbox might put in its
/etc/hosts for allowed.test, or a shared address of some other site). Both serve HTTP on 80
and HTTPS on 443 and record what reached them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
import struct
import subprocess
import time

import pytest

from hutch.runtime import egress_proxy
from hutch.runtime.egress import EgressPolicy
from hutch.runtime.egress_proxy import Bucket, _relay

from .conftest import FAKE_RECORDS, box_spec, make_box
from .helpers import listening_socket, make_fake_host, remove_fake_host

pytestmark = pytest.mark.timeout(300)

REAL, SPOOF = "198.51.100.31", "198.51.100.32"
RUN = __import__("secrets").token_hex(3)
NAMES = {"allowed.test.": REAL, "other.test.": SPOOF, "rebind.test.": "169.254.169.254",
         "shared.test.": SPOOF}


class Site:
    """HTTP and HTTPS on one fake address; remembers the Host headers and server names.
    ``PUT /echo`` answers its body back; ``GET /hold`` answers, then keeps the connection
    until the client goes (``holding`` counts those open)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.hosts: list[str] = []
        self.server_names: list[str] = []
        self.holding = 0

    def answer(self, host: str, size: int) -> bytes:
        body = f"answered-by-{self.address} host={host}\n".encode() + b"x" * size
        return b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    async def handle(self, reader, writer) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except Exception:  # noqa: BLE001 - a client that goes away is fine
            writer.close()
            return
        lines = head.split(b"\r\n")
        host = next((line.split(b":", 1)[1].strip().decode() for line in lines
                     if line.lower().startswith(b"host:")), "")
        self.hosts.append(host)
        try:
            if head.startswith(b"PUT /echo"):
                size = next(int(line.split(b":", 1)[1]) for line in lines
                            if line.lower().startswith(b"content-length:"))
                body = await asyncio.wait_for(reader.readexactly(size), 60)
                writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % size + body)
            elif head.startswith(b"GET /hold"):
                writer.write(b"HTTP/1.1 200 OK\r\n\r\nheld\n")
                await writer.drain()
                self.holding += 1
                try:
                    while await reader.read(65536):
                        pass
                finally:
                    self.holding -= 1
            else:
                writer.write(self.answer(host, 300_000 if head.startswith(b"GET /big") else 0))
            await writer.drain()
        except Exception:  # noqa: BLE001 - a client that goes away is fine
            pass
        writer.close()


@pytest.fixture(scope="module")
async def sites(runtime, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=allowed.test", "-keyout", str(tmp / "key.pem"), "-out",
                    str(tmp / "cert.pem")], check=True, capture_output=True)
    FAKE_RECORDS.update(NAMES)
    ns = make_fake_host("hutchrx-px", "hrxpx", [REAL, SPOOF])
    servers, out = [], {}
    for address in (REAL, SPOOF):
        site = out[address] = Site(address)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
        # The client in the sandbox is busybox's: TLS 1.2 with a few older cipher suites.
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("ALL:@SECLEVEL=0")
        context.sni_callback = lambda sock, name, ctx, site=site: site.server_names.append(name)
        servers.append(await asyncio.start_server(site.handle,
                                                  sock=listening_socket(ns, address, 80)))
        servers.append(await asyncio.start_server(site.handle, ssl=context,
                                                  sock=listening_socket(ns, address, 443)))
    yield out
    for s in servers:
        s.close()
    for name in NAMES:
        FAKE_RECORDS.pop(name, None)
    remove_fake_host("hutchrx-px", "hrxpx")


@pytest.fixture(scope="module")
async def box(runtime, rootfs, sites):
    policy = EgressPolicy.parse(False, ["allowed.test", "rebind.test"])
    sid = f"px1{RUN}"
    made = await make_box(runtime, box_spec(sid, rootfs, network="internet", egress=policy))
    yield made
    await runtime.destroy(sid)


def raw_http(address: str, head: str, port: int = 80) -> str:
    """A shell command sending ``head`` (with \\r\\n line ends) to address:port."""
    return f"printf '{head}' | nc -w 5 {address} {port}"


def https_get(address: str, server_name: str, host: str) -> str:
    """A real TLS client in the sandbox (busybox's) asking ``address`` for ``server_name``."""
    return ("rm -f /tmp/up /tmp/down; mkfifo /tmp/up /tmp/down; "
            f"nc -w 5 {address} 443 < /tmp/up > /tmp/down & "
            f"printf 'GET / HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n' | "
            f"ssl_client -s 3 -r 4 -n {server_name} 3>/tmp/up 4</tmp/down 2>&1; wait")


async def test_a_name_goes_where_it_resolves_not_where_the_sandbox_dialled(box, sites):
    # The sandbox dials SPOOF (as an /etc/hosts entry would make it) asking for allowed.test:
    # the proxy dials allowed.test itself, so REAL answers and SPOOF sees nothing.
    spoofed = sites[SPOOF].hosts[:]
    rc, out = await box.run(raw_http(SPOOF, "GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\n"
                                            "Connection: close\\r\\n\\r\\n"))
    assert f"answered-by-{REAL} host=allowed.test" in out, out
    assert sites[SPOOF].hosts == spoofed
    # Case, a trailing dot and a port are the same name.
    rc, out = await box.run(raw_http(REAL, "GET / HTTP/1.1\\r\\nHost: ALLOWED.test.:80\\r\\n"
                                           "\\r\\n"))
    assert f"answered-by-{REAL}" in out, out


async def test_names_the_policy_does_not_allow_are_refused_with_a_reason(box, sites):
    before = len(sites[REAL].hosts) + len(sites[SPOOF].hosts)
    # A name not allowed, sent to an allowed name's address (a shared address, fronting).
    rc, out = await box.run(raw_http(REAL, "GET / HTTP/1.1\\r\\nHost: other.test\\r\\n\\r\\n"))
    assert "403 Forbidden" in out and "other.test" in out and "not allowed" in out, out
    # Odd encodings are refused, not guessed at: NUL bytes, two Hosts, an absolute URL
    # naming another host than the Host header, a non-ASCII name.
    for head in ("GET / HTTP/1.1\\r\\nHost: allowed.test\\000.other.test\\r\\n\\r\\n",
                 "GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\nHost: other.test\\r\\n\\r\\n",
                 "GET http://other.test/ HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n",
                 "GET / HTTP/1.1\\r\\nHost: allowed.t\\303\\251st\\r\\n\\r\\n"):
        rc, out = await box.run(raw_http(REAL, head))
        assert "403 Forbidden" in out, (head, out)
    # An allowed name that resolves inward (rebinding, or pointing at the metadata service).
    rc, out = await box.run(raw_http(REAL, "GET / HTTP/1.1\\r\\nHost: rebind.test\\r\\n\\r\\n"))
    assert "403 Forbidden" in out and "always-denied" in out, out
    assert len(sites[REAL].hosts) + len(sites[SPOOF].hosts) == before


async def test_tls_is_judged_by_its_server_name(box, sites):
    # A real handshake, through the proxy, to the name's address although SPOOF was dialled.
    rc, out = await box.run(https_get(SPOOF, "allowed.test", "allowed.test"))
    assert f"answered-by-{REAL} host=allowed.test" in out, out
    assert "allowed.test" in sites[REAL].server_names
    assert sites[SPOOF].server_names == []
    # A server name the policy does not allow: reset before any byte reaches a server.
    seen = len(sites[REAL].server_names)
    rc, out = await box.run(https_get(REAL, "other.test", "other.test"))
    assert "answered-by" not in out, out
    assert len(sites[REAL].server_names) == seen


async def test_nameless_connections_follow_the_addresses_the_resolver_gave(runtime, rootfs,
                                                                           sites):
    sid = f"px2{RUN}"
    box = await make_box(runtime, box_spec(sid, rootfs, network="internet",
                                           egress=EgressPolicy.parse(False, ["allowed.test"])))
    try:
        no_host = raw_http(REAL, "GET / HTTP/1.0\\r\\n\\r\\n")
        rc, out = await box.run(no_host)
        assert "403 Forbidden" in out, out             # not answered for an allowed name yet
        rc, out = await box.run("nslookup allowed.test 2>&1")
        assert REAL in out, out
        rc, out = await box.run(no_host)
        assert f"answered-by-{REAL} host=\n" in out, out
        # An IP literal as Host is no name either: judged by the address, now learned.
        rc, out = await box.run(raw_http(REAL, f"GET / HTTP/1.1\\r\\nHost: {REAL}\\r\\n\\r\\n"))
        assert f"answered-by-{REAL}" in out, out
    finally:
        await runtime.destroy(sid)


async def test_a_denied_name_is_denied_at_any_address_with_internet_on(runtime, rootfs, sites):
    sid = f"px3{RUN}"
    policy = EgressPolicy.parse(True, None, ["other.test"])
    box = await make_box(runtime, box_spec(sid, rootfs, network="internet", egress=policy))
    try:
        rc, out = await box.run(raw_http(SPOOF, "GET / HTTP/1.1\\r\\nHost: other.test\\r\\n"
                                                "\\r\\n"))
        assert "403 Forbidden" in out, out
        # Other names, and none, go where they were dialled (the internet is open).
        rc, out = await box.run(raw_http(SPOOF, "GET / HTTP/1.1\\r\\nHost: example.org\\r\\n"
                                                "\\r\\n"))
        assert f"answered-by-{SPOOF} host=example.org" in out, out
        rc, out = await box.run(raw_http(SPOOF, "GET / HTTP/1.0\\r\\n\\r\\n"))
        assert f"answered-by-{SPOOF}" in out, out
    finally:
        await runtime.destroy(sid)


@pytest.fixture
async def logged(runtime):
    events: list[dict] = []
    runtime.on_egress = events.append
    yield events
    runtime.on_egress = None


async def test_proxied_connections_are_logged_with_their_bytes(box, sites, logged):
    rc, out = await box.run(raw_http(SPOOF, "GET /big HTTP/1.1\\r\\nHost: allowed.test\\r\\n"
                                            "\\r\\n") + " | wc -c")
    answer = sites[REAL].answer("allowed.test", 300_000)
    assert int(out.split()[-1]) == len(answer), out
    await box.run(raw_http(REAL, "GET / HTTP/1.1\\r\\nHost: other.test\\r\\n\\r\\n"))
    for _ in range(50):
        closed = [e for e in logged if e["kind"] == "closed"]
        if closed:
            break
        await asyncio.sleep(0.1)
    mine = [e for e in logged if e["sandbox_id"] == box.id]
    assert any(e["kind"] == "connection" and e["allowed"] and e["name"] == "allowed.test"
               and e["address"] == SPOOF and e["dialled"] == REAL and e["port"] == 80
               and e["via"] == "proxy" for e in mine), mine
    assert any(e["kind"] == "connection" and not e["allowed"] and e["name"] == "other.test"
               and e["reason"] == "name not allowed" for e in mine), mine
    done = [e for e in mine if e["kind"] == "closed" and e["name"] == "allowed.test"]
    # Exactly what went each way: the request (its head is read before the relay starts)
    # and the whole answer.
    assert done and done[-1]["bytes_in"] == len(answer), mine
    assert done[-1]["bytes_out"] == len(b"GET /big HTTP/1.1\r\nHost: allowed.test\r\n\r\n")


async def test_large_transfers_through_the_proxy_arrive_byte_exact_both_ways(box, sites,
                                                                             logged):
    size = 8 << 20
    rc, out = await box.run(
        f"rm -f /tmp/sent /tmp/got; head -c {size} /dev/urandom > /tmp/sent; "
        f"(printf 'PUT /echo HTTP/1.1\\r\\nHost: allowed.test\\r\\n"
        f"Content-Length: {size}\\r\\n\\r\\n'; cat /tmp/sent) | nc -w 10 {SPOOF} 80 > /tmp/got; "
        f"sha256sum < /tmp/sent; tail -c {size} /tmp/got | sha256sum; wc -c < /tmp/got",
        timeout=120)
    sent, got, total = out.split()[0], out.split()[2], int(out.split()[-1])
    assert sent == got, out
    head = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % size
    assert total == size + len(head), out
    for _ in range(50):
        done = [e for e in logged if e["kind"] == "closed" and e["sandbox_id"] == box.id]
        if done:
            break
        await asyncio.sleep(0.1)
    assert done and done[-1]["bytes_in"] == total, done
    request = b"PUT /echo HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: %d\r\n\r\n" % size
    assert done[-1]["bytes_out"] == len(request) + size, done


async def test_a_sandboxs_open_connections_end_when_it_is_forgotten(runtime, rootfs, sites):
    sid = f"px5{RUN}"
    box = await make_box(runtime, box_spec(sid, rootfs, network="internet",
                                           egress=EgressPolicy.parse(False, ["allowed.test"])))
    destroyed = False
    try:
        hold = ("((printf 'GET /hold HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n'; "
                f"sleep 300) | nc {REAL} 80 >/dev/null 2>&1 &)")
        await box.run(hold)
        await _until(lambda: sites[REAL].holding == 1 and runtime._proxy.connections(sid) == 1)
        # What a destroy does once the sandbox's namespace is gone (its side of the
        # connection then vanishes without a FIN): the proxy lets go of the connection,
        # and the far end sees it close.
        runtime._proxy.forget(sid)
        await _until(lambda: sites[REAL].holding == 0 and runtime._proxy.connections(sid) == 0)
        await box.run(hold)
        await _until(lambda: sites[REAL].holding == 1)
        await runtime.destroy(sid)
        destroyed = True
        await _until(lambda: sites[REAL].holding == 0 and runtime._proxy.connections(sid) == 0)
    finally:
        if not destroyed:
            await runtime.destroy(sid)


async def _until(condition, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.05)


async def test_fails_closed_without_the_proxy(runtime, box, sites):
    await runtime._proxy.close()
    runtime._proxy = None
    try:
        seen = len(sites[REAL].hosts)
        rc, out = await box.run(raw_http(REAL, "GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\n"
                                               "\\r\\n"))
        assert "answered-by" not in out, out
        assert len(sites[REAL].hosts) == seen
    finally:
        await runtime.start()
    rc, out = await box.run(raw_http(REAL, "GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n"))
    assert f"answered-by-{REAL}" in out, out


async def test_proxied_connections_count_against_the_caps(capped, rootfs, sites):
    import time

    sid = f"px4{RUN}"
    box = await make_box(capped, box_spec(sid, rootfs, network="internet",
                                          egress=EgressPolicy.parse(True, None, ["other.test"])))
    try:
        rc, out = await box.run(
            f"for i in 1 2 3 4 5 6; do (sleep 30 | nc {SPOOF} 80 >/dev/null 2>&1 &); done; "
            "sleep 4; ps | grep -c '[n]c 198'")
        assert out.strip().splitlines()[-1] == "4", out
        await box.run("killall nc; sleep 1")
        # 300 kB at 1 Mbit/s through the proxy: a second's worth of burst, then the cap.
        t0 = time.monotonic()
        rc, out = await box.run(raw_http(REAL, "GET /big HTTP/1.1\\r\\nHost: allowed.test"
                                               "\\r\\n\\r\\n") + " | wc -c")
        took = time.monotonic() - t0
        assert int(out.split()[-1]) > 300_000, out
        assert took >= 1.2, took
    finally:
        await capped.destroy(sid)


# -- the relay on its own, between loopback sockets ------------------------------------------

@contextlib.contextmanager
def relay_ends(client_rcvbuf: int = 0):
    """(client, inside, outside, server): two loopback TCP connections; a relay joins
    ``inside`` (its client end) and ``outside`` (its server end). A small ``client_rcvbuf``
    makes a slow reader, so the relay has to wait for it."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        if client_rcvbuf:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, client_rcvbuf)
        client.connect(listener.getsockname())
        inside, _ = listener.accept()
        outside = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    for sock in (inside, outside):
        sock.setblocking(False)
    try:
        yield client, inside, outside, server
    finally:
        for sock in (client, inside, outside, server):
            sock.close()


def send_all(sock: socket.socket, data: bytes, then_close: bool = True) -> None:
    sock.sendall(data)
    if then_close:
        sock.shutdown(socket.SHUT_WR)


def receive_all(sock: socket.socket, step: int = 1 << 16) -> bytes:
    parts = []
    while chunk := sock.recv(step):
        parts.append(chunk)
    return b"".join(parts)


def pipes_open() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):      # one closed since the listing
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
    return n


async def test_the_relay_carries_large_transfers_byte_exact_both_ways():
    up, down = os.urandom(24 << 20), os.urandom(40 << 20)
    pipes = pipes_open()
    with relay_ends(client_rcvbuf=64 << 10) as (client, inside, outside, server):
        count = [0, 0]
        relay = asyncio.ensure_future(_relay(inside, outside, (None, None), count))
        _, at_server, _, at_client = await asyncio.wait_for(asyncio.gather(
            asyncio.to_thread(send_all, client, up),
            asyncio.to_thread(receive_all, server),
            asyncio.to_thread(send_all, server, down),
            asyncio.to_thread(receive_all, client, 4096)), 120)
        await asyncio.wait_for(relay, 30)
    assert hashlib.sha256(at_server).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(at_client).digest() == hashlib.sha256(down).digest()
    assert count == [len(up), len(down)]
    assert pipes_open() == pipes


async def test_the_relay_passes_a_half_close_on_and_carries_the_other_way_on():
    request, answer = os.urandom(1 << 20), os.urandom(3 << 20)

    def serve(sock: socket.socket) -> bytes:
        got = receive_all(sock)         # returns only once the client's end came through
        time.sleep(0.3)                 # the relay must not have ended with that end
        send_all(sock, answer)
        return got

    with relay_ends() as (client, inside, outside, server):
        count = [0, 0]
        relay = asyncio.ensure_future(_relay(inside, outside, (None, None), count))
        _, got, back = await asyncio.wait_for(asyncio.gather(
            asyncio.to_thread(send_all, client, request), asyncio.to_thread(serve, server),
            asyncio.to_thread(receive_all, client)), 60)
        await asyncio.wait_for(relay, 30)
    assert got == request and back == answer
    assert count == [len(request), len(answer)]


async def test_the_relay_holds_a_sandboxs_connections_to_its_buckets():
    # Two connections share one sandbox's buckets: 2.5 MB at 1 MB/s with a second's burst
    # cannot take less than 1.5 s (a lower bound only: the cap, not the speed, is tested).
    rate, each = 1_000_000, 1_250_000
    buckets = (Bucket(rate), Bucket(rate))
    with relay_ends() as (c1, i1, o1, s1), relay_ends() as (c2, i2, o2, s2):
        counts = [[0, 0], [0, 0]]
        t0 = time.monotonic()
        relays = [asyncio.ensure_future(_relay(i1, o1, buckets, counts[0])),
                  asyncio.ensure_future(_relay(i2, o2, buckets, counts[1]))]
        for client in (c1, c2):
            client.shutdown(socket.SHUT_WR)
        got = await asyncio.wait_for(asyncio.gather(
            asyncio.to_thread(send_all, s1, b"a" * each),
            asyncio.to_thread(send_all, s2, b"b" * each),
            asyncio.to_thread(receive_all, c1), asyncio.to_thread(receive_all, c2)), 60)
        took = time.monotonic() - t0
        await asyncio.wait_for(asyncio.gather(*relays), 30)
    assert got[2] == b"a" * each and got[3] == b"b" * each
    assert counts == [[0, each], [0, each]]
    assert took >= 1.2, took
    assert buckets[0].tokens == rate        # nothing went the other way: nothing charged


async def test_the_relay_leaves_nothing_open_when_broken_or_cancelled():
    pipes = pipes_open()
    # The far end resets in the middle of a transfer: the relay ends at once.
    with relay_ends() as (client, inside, outside, server):
        relay = asyncio.ensure_future(_relay(inside, outside, (None, None), [0, 0]))
        await asyncio.to_thread(send_all, client, b"x" * (256 << 10), False)
        await asyncio.sleep(0.1)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server.close()
        await asyncio.wait_for(relay, 30)
        assert pipes_open() == pipes
    # Cancelled (its sandbox destroyed, the server stopping) while both ways wait.
    with relay_ends() as (client, inside, outside, server):
        relay = asyncio.ensure_future(_relay(inside, outside, (None, None), [0, 0]))
        await asyncio.sleep(0.1)
        relay.cancel()
        with pytest.raises(asyncio.CancelledError):
            await relay
        assert pipes_open() == pipes
    # No descriptor left for the second direction's pipe: the first one's is closed too.
    real = os.pipe2
    made = []

    def pipe2(flags):
        if made:
            raise OSError(24, "Too many open files")
        made.append(real(flags))
        return made[-1]

    with relay_ends() as (client, inside, outside, server), \
            pytest.MonkeyPatch.context() as patch:
        patch.setattr(egress_proxy.os, "pipe2", pipe2)
        with pytest.raises(OSError):
            await _relay(inside, outside, (None, None), [0, 0])
    assert made and pipes_open() == pipes
