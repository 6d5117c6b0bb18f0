"""Egress policies enforced on the host, checked from inside real sandboxes against fake
"public" hosts in network namespaces this test makes (198.51.100.0/24): allow/deny order,
allow-lists, live updates that cut open connections, the always-denied set winning, and a
restarted runtime writing the policies back."""

from __future__ import annotations

import pytest

from hutch.errors import InvalidArgumentError
from hutch.runtime import LocalRuntime
from hutch.runtime.egress import EgressPolicy

from .conftest import (ASKED, FAKE_ADDRESS, INSTANCE, STATE_DIR, SUBNET, UID_BASE, box_spec,
                       make_box)
from .helpers import http_banner_server, listening_socket, make_fake_host, remove_fake_host
from .test_network import PORT, http_get

pytestmark = pytest.mark.timeout(300)

ONE, TWO = "198.51.100.21", "198.51.100.22"
# Fresh ids each run: the kernel frees a destroyed sandbox's veth asynchronously, so a rerun
# that reused an id at once could find its interface name still taken.
RUN = __import__("secrets").token_hex(3)
METADATA = "169.254.169.254"


@pytest.fixture(scope="module")
async def public(runtime):
    ns = make_fake_host("hutchrx-eg", "hrxeg", [ONE, TWO, METADATA, FAKE_ADDRESS])
    servers = [await http_banner_server(listening_socket(ns, a, PORT), f"hello-{a}".encode())
               for a in (ONE, TWO, METADATA, FAKE_ADDRESS)]
    yield
    for s in servers:
        s.close()
    remove_fake_host("hutchrx-eg", "hrxeg")


async def reaches(box, address: str) -> bool:
    rc, out = await box.run(http_get(address, PORT))
    return f"hello-{address}" in out


async def test_policies_parse_and_reject_what_they_cannot_enforce():
    p = EgressPolicy.parse(False, ["198.51.100.21", "198.51.100.0/25", " 8.8.8.8 "], None)
    assert p.allow == ("8.8.8.8/32", "198.51.100.0/25") and not p.internet
    assert EgressPolicy.parse().is_open
    with pytest.raises(InvalidArgumentError, match="IPv6"):
        EgressPolicy.parse(True, ["2001:db8::/32"])
    names = EgressPolicy.parse(True, ["Example.COM.", "*.b\u00fccher.de"], ["x.test"])
    assert names.allow_names == ("*.xn--bcher-kva.de", "example.com")
    assert names.deny_names == ("x.test",) and not names.allow
    assert names.name_verdict("a.b.xn--bcher-kva.de") == "learn"
    assert names.name_verdict("xn--bcher-kva.de") == "forward"      # the apex is not *.
    assert names.name_verdict("x.test") == "refuse"
    for bad in ["exa mple.com", "a\x00.com", "*", "*.com.*", "-a.com", "com", "a..b"]:
        with pytest.raises(InvalidArgumentError, match="neither an IPv4"):
            EgressPolicy.parse(True, [bad])
    with pytest.raises(InvalidArgumentError, match="list of strings"):
        EgressPolicy.parse(True, "198.51.100.21")


async def test_allow_beats_deny_and_the_default_follows_internet(runtime, rootfs, public):
    policy = EgressPolicy.parse(True, [ONE], ["198.51.100.0/24"])
    box = await make_box(runtime, box_spec(f"eg1{RUN}", rootfs, network="internet",
                                           egress=policy))
    try:
        assert await reaches(box, ONE)
        assert not await reaches(box, TWO)
        await runtime.set_egress(f"eg1{RUN}", EgressPolicy.parse(False, [TWO]))   # allow-list
        assert await reaches(box, TWO) and not await reaches(box, ONE)
        await runtime.set_egress(f"eg1{RUN}", EgressPolicy())                    # open again
        assert await reaches(box, ONE) and await reaches(box, TWO)
    finally:
        await runtime.destroy(f"eg1{RUN}")


async def test_the_always_denied_set_wins_over_any_allow(runtime, rootfs, public):
    policy = EgressPolicy.parse(True, ["169.254.0.0/16", "0.0.0.0/0"])
    box = await make_box(runtime, box_spec(f"eg2{RUN}", rootfs, network="internet",
                                           egress=policy))
    try:
        assert await reaches(box, ONE)
        assert not await reaches(box, METADATA)
    finally:
        await runtime.destroy(f"eg2{RUN}")


async def test_a_stricter_policy_cuts_open_connections(runtime, rootfs, public):
    box = await make_box(runtime, box_spec(f"eg3{RUN}", rootfs, network="internet"))
    try:
        # A connection opened while allowed, then used after the policy changed.
        rc, out = await box.run(
            f"(sleep 3; printf 'GET / HTTP/1.0\\r\\n\\r\\n') | nc -w 8 {ONE} {PORT} "
            "> /tmp/late.out 2>&1 & echo started")
        assert "started" in out
        await runtime.set_egress(f"eg3{RUN}", EgressPolicy.parse(False))
        rc, out = await box.run("sleep 9; cat /tmp/late.out")
        assert f"hello-{ONE}" not in out
    finally:
        await runtime.destroy(f"eg3{RUN}")


async def test_policies_survive_a_runtime_restart_and_go_with_the_sandbox(runtime, rootfs,
                                                                         public, fake_upstream):
    policy = EgressPolicy.parse(True, None, [ONE])
    box = await make_box(runtime, box_spec(f"eg4{RUN}", rootfs, network="internet",
                                           egress=policy))
    try:
        # A restart: the runtime goes, a new one builds the instance's table again.
        await runtime.close()
        again = LocalRuntime(STATE_DIR, instance=INSTANCE, subnet=SUBNET, uid_base=UID_BASE,
                             dns_upstreams=[fake_upstream])
        await again.start()
        try:
            assert f"egress_eg4{RUN}" in (await _nft_list(INSTANCE))
            assert not await reaches(box, ONE) and await reaches(box, TWO)
        finally:
            await again.close()
            await runtime.start()      # the module's runtime serves the other tests again
    finally:
        await runtime.destroy(f"eg4{RUN}")
    assert f"egress_eg4{RUN}" not in (await _nft_list(INSTANCE))


async def _nft_list(instance: str) -> str:
    import asyncio

    proc = await asyncio.create_subprocess_exec("nft", "list", "table", "inet", instance,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return out.decode()


async def test_domain_rules_through_hutchs_resolver(runtime, rootfs, public):
    policy = EgressPolicy.parse(False, ["fake.test", "inward.test"])
    box = await make_box(runtime, box_spec(f"eg5{RUN}", rootfs, network="internet",
                                           egress=policy))
    try:
        # An address is reachable once the resolver answered it for an allowed name; never
        # by IP literal before that.
        assert not await reaches(box, FAKE_ADDRESS)
        rc, out = await box.run("nslookup fake.test 2>&1")
        assert FAKE_ADDRESS in out, out
        assert await reaches(box, FAKE_ADDRESS)
        assert not await reaches(box, ONE)
        # Other names are answered NXDOMAIN here: the query never leaves the host.
        ASKED.clear()
        rc, out = await box.run("nslookup secret-data.exfil.test 2>&1")
        assert "NXDOMAIN" in out and not any("exfil" in n for n in ASKED), (out, ASKED)
        # An allowed name that resolves inward is refused, and nothing is learned.
        rc, out = await box.run("nslookup inward.test 2>&1")
        assert "169.254.169.254" not in out.split("Name:")[-1], out
        assert not await reaches(box, METADATA)
        # Policy changes forget what was learned.
        await runtime.set_egress(f"eg5{RUN}", EgressPolicy.parse(False, ["other.test"]))
        assert not await reaches(box, FAKE_ADDRESS)
    finally:
        await runtime.destroy(f"eg5{RUN}")


BIG = "198.51.100.23"


async def test_connection_and_bandwidth_caps(capped, rootfs, public):
    import time

    ns = make_fake_host("hutchrx-big", "hrxbig", [BIG])
    server = await http_banner_server(listening_socket(ns, BIG, PORT), b"x" * 500_000)
    box = await make_box(capped, box_spec(f"eg6{RUN}", rootfs, network="internet"))
    try:
        # Six connections held open: the firewall lets four through.
        rc, out = await box.run(
            f"for i in 1 2 3 4 5 6; do (sleep 30 | nc {ONE} {PORT} >/dev/null 2>&1 &); done; "
            "sleep 3; ps | grep -c '[n]c 198'")
        assert out.strip().splitlines()[-1] == "4", out
        await box.run("killall nc; sleep 1")
        # 500 kB at 1 Mbit/s: the bucket starts with at most a second's worth plus the burst
        # (250 kB), so the rest cannot arrive in less than 2 s (uncapped: milliseconds).
        t0 = time.monotonic()
        rc, out = await box.run(f"{http_get(BIG, PORT)} | wc -c")
        took = time.monotonic() - t0
        assert int(out.strip().splitlines()[-1]) > 500_000, out
        assert took >= 1.9, took
    finally:
        await capped.destroy(f"eg6{RUN}")
        server.close()
        remove_fake_host("hutchrx-big", "hrxbig")


@pytest.fixture
async def logged(runtime):
    """The module's runtime with its egress log on, collecting the events in a list."""
    events: list[dict] = []
    runtime.on_egress = events.append
    await runtime.start()
    yield events
    runtime.on_egress = None
    for listener in ("_nflog", "_conntrack"):
        if getattr(runtime, listener) is not None:
            getattr(runtime, listener).close()
            setattr(runtime, listener, None)
    await runtime.start()


async def test_every_decision_is_logged(runtime, rootfs, public, logged):
    import asyncio

    policy = EgressPolicy.parse(False, ["fake.test"])
    sid = f"eg7{RUN}"
    box = await make_box(runtime, box_spec(sid, rootfs, network="internet", egress=policy))
    try:
        await box.run("nslookup fake.test >/dev/null 2>&1; nslookup other.test >/dev/null 2>&1")
        assert await reaches(box, FAKE_ADDRESS)
        assert not await reaches(box, ONE)
        assert not await reaches(box, METADATA)
        await asyncio.sleep(0.5)           # netlink delivers asynchronously
        mine = [e for e in logged if e["sandbox_id"] == sid]
        dns = {(e["name"], e["allowed"]) for e in mine if e["kind"] == "dns"}
        assert ("fake.test", True) in dns and ("other.test", False) in dns
        conns = [e for e in mine if e["kind"] == "connection"]
        assert any(e["address"] == FAKE_ADDRESS and e["allowed"] and e["name"] == "fake.test"
                   and e["port"] == PORT and e["protocol"] == "tcp" for e in conns), conns
        assert any(e["address"] == ONE and not e["allowed"] and e["reason"] == "egress policy"
                   for e in conns), conns
        assert any(e["address"] == METADATA and not e["allowed"]
                   and e["reason"].startswith("always denied") for e in conns), conns
        # When a connection ends, its size: the request out, the banner in.
        for _ in range(50):
            closed = [e for e in logged if e["sandbox_id"] == sid and e["kind"] == "closed"]
            if closed:
                break
            await asyncio.sleep(0.1)
        assert any(e["address"] == FAKE_ADDRESS and e["port"] == PORT
                   and e["name"] == "fake.test" and e["bytes_out"] >= 18
                   and e["bytes_in"] >= len(f"hello-{FAKE_ADDRESS}") for e in closed), closed
    finally:
        await runtime.destroy(sid)
