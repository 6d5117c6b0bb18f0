"""A fake slice of "internet" and "internal network" for isolation tests.

A network namespace of the test's own holds a web server answering on three addresses routed
from the host into it: 198.51.100.10 (a public address: sandboxes with internet must reach
it), 169.254.169.254 (the cloud metadata address) and 10.203.0.10 (a private address).
The last two must stay unreachable from any sandbox whatever happens. The fixture refuses to
run when one of those addresses is already routed anywhere but the default route, so it never
hijacks a real network, and it removes everything it made.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest

PUBLIC = "198.51.100.10"
METADATA = "169.254.169.254"
PRIVATE = "10.203.0.10"
LINK_HOST, LINK_PEER = "198.18.77.1", "198.18.77.2"
NETNS = f"hfake{os.getpid()}"
HOST_IF = f"hfk{os.getpid() % 100000}"


@pytest.fixture
def sbx(server_env):
    """A sandbox of the session's server (base template), killed after the test."""
    from e2b import Sandbox

    sandbox = Sandbox.create(timeout=300)
    try:
        yield sandbox
    finally:
        sandbox.kill()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _routed_elsewhere(addr: str) -> bool:
    out = _ip("route", "get", addr, check=False).stdout
    via_default = _ip("route", "show", "default").stdout.split()
    gw = via_default[2] if len(via_default) > 2 and via_default[1] == "via" else None
    return bool(out) and gw is not None and f"via {gw}" not in out


# Module scope, not session: tests/runtime's fake hosts route some of the same addresses,
# and the two must never be up at once, whichever order the modules run in.
@pytest.fixture(scope="module")
def fake_network():
    for addr in (PUBLIC, METADATA, PRIVATE, LINK_HOST):
        if _routed_elsewhere(addr):
            pytest.fail(f"{addr} is already routed on this host; refusing to fake it")
    server = None
    try:
        _ip("netns", "add", NETNS)
        _ip("link", "add", HOST_IF, "type", "veth", "peer", "name", "fk1", "netns", NETNS)
        _ip("addr", "add", f"{LINK_HOST}/30", "dev", HOST_IF)
        _ip("link", "set", HOST_IF, "up")
        ns = ["-n", NETNS]
        _ip(*ns, "addr", "add", f"{LINK_PEER}/30", "dev", "fk1")
        _ip(*ns, "link", "set", "fk1", "up")
        _ip(*ns, "link", "set", "lo", "up")
        for addr in (PUBLIC, METADATA, PRIVATE):
            _ip(*ns, "addr", "add", f"{addr}/32", "dev", "lo")
            _ip("route", "add", f"{addr}/32", "via", LINK_PEER)
        _ip(*ns, "route", "add", "default", "via", LINK_HOST)
        server = subprocess.Popen(
            ["ip", "netns", "exec", NETNS, sys.executable, "-m", "http.server", "80",
             "--bind", "0.0.0.0", "--directory", "/var/empty" if os.path.isdir("/var/empty") else "/tmp"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        # The host itself must reach all three, or a "blocked" result would prove nothing.
        deadline = time.monotonic() + 20
        for addr in (PUBLIC, METADATA, PRIVATE):
            while True:
                try:
                    urllib.request.urlopen(f"http://{addr}/", timeout=2).read()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        yield {"public": PUBLIC, "metadata": METADATA, "private": PRIVATE}
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        for addr in (PUBLIC, METADATA, PRIVATE):
            _ip("route", "del", f"{addr}/32", check=False)
        _ip("link", "del", HOST_IF, check=False)
        _ip("netns", "del", NETNS, check=False)
