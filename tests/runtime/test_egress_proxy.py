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
import ssl
import subprocess

import pytest

from hutch.runtime.egress import EgressPolicy

from .conftest import FAKE_RECORDS, box_spec, make_box
from .helpers import listening_socket, make_fake_host, remove_fake_host

pytestmark = pytest.mark.timeout(300)

REAL, SPOOF = "198.51.100.31", "198.51.100.32"
RUN = __import__("secrets").token_hex(3)
NAMES = {"allowed.test.": REAL, "other.test.": SPOOF, "rebind.test.": "169.254.169.254",
         "shared.test.": SPOOF}


class Site:
    """HTTP and HTTPS on one fake address; remembers the Host headers and server names."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.hosts: list[str] = []
        self.server_names: list[str] = []

    async def handle(self, reader, writer) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except Exception:  # noqa: BLE001 - a client that goes away is fine
            writer.close()
            return
        host = next((line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                     if line.lower().startswith(b"host:")), "")
        self.hosts.append(host)
        size = 300_000 if head.startswith(b"GET /big") else 0
        body = f"answered-by-{self.address} host={host}\n".encode() + b"x" * size
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
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
    assert int(out.split()[-1]) > 300_000, out
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
    assert done and done[-1]["bytes_in"] > 300_000 and done[-1]["bytes_out"] > 30, mine


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
