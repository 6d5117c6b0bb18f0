"""Reaching a server inside the sandbox: routing headers (no DNS needed), host routing
(``get_host``/``get_url`` with the server's HUTCH_DOMAIN), the traffic token private ports
need, and a sandbox without network (its ports reached through its agent)."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest

from hutch import AsyncSandbox

PORT = 8000
TIMEOUT = 60


@pytest.fixture(scope="module")
async def web(module_opts):
    """A sandbox serving /srv/site over HTTP with python3's http.server on PORT."""
    sandbox = await AsyncSandbox.create(timeout=600, metadata={"suite": "sdk-ports"},
                                        **module_opts)
    try:
        await sandbox.files.write("/tmp/site/hello.txt", "hello from inside\n")
        server = await sandbox.exec("python3", "-u", "-m", "http.server", str(PORT),
                                    "--bind", "0.0.0.0", cwd="/tmp/site")
        async for line in server.stdout:  # it prints this once it listens
            if line.startswith("Serving HTTP"):
                break
        else:
            raise AssertionError(f"http.server ended: {await server.stderr.read()}")
        yield sandbox
    finally:
        await sandbox.kill()
        await sandbox.close()


async def test_routing_headers_reach_the_port(web):
    headers = web.get_headers(PORT)
    assert headers["E2b-Sandbox-Id"] == web.sandbox_id
    assert headers["E2b-Sandbox-Port"] == str(PORT)
    assert headers["E2B-Traffic-Access-Token"]        # ports are private by default
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        bare = {k: v for k, v in headers.items() if k != "E2B-Traffic-Access-Token"}
        refused = await client.get(web.connection_config.url + "/hello.txt", headers=bare)
        assert refused.status_code == 401
        response = await client.get(web.connection_config.url + "/hello.txt",
                                    headers=web.get_headers(PORT))
        assert (response.status_code, response.text) == (200, "hello from inside\n")
        closed = await client.get(web.connection_config.url + "/hello.txt",
                                  headers=web.get_headers(PORT + 1))
        assert closed.status_code == 502


async def test_host_routing(web):
    if not web.sandbox_domain:
        pytest.skip("the test server runs without HUTCH_DOMAIN (host routing is off)")
    server = urlsplit(web.connection_config.url)
    host = web.get_host(PORT)
    assert host == f"{PORT}-{web.sandbox_id}.{web.sandbox_domain}"
    url = web.get_url(PORT, "/hello.txt")
    assert url == f"http://{host}:{server.port}/hello.txt"
    # No wildcard DNS here: connect to the server's address, name the sandbox by Host.
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        token = web.get_headers(PORT)["E2B-Traffic-Access-Token"]
        response = await client.get(web.connection_config.url + "/hello.txt",
                                    headers={"Host": f"{host}:{server.port}",
                                             "E2B-Traffic-Access-Token": token})
    assert (response.status_code, response.text) == (200, "hello from inside\n")


async def test_network_none_ports_go_through_the_agent(module_opts):
    sandbox = await AsyncSandbox.create(timeout=120, network="none", **module_opts)
    try:
        info = await sandbox.get_info()
        assert info.allow_internet_access is False
        await sandbox.files.write("/tmp/site/hello.txt", "offline but served\n")
        server = await sandbox.exec("python3", "-u", "-m", "http.server", str(PORT),
                                    "--bind", "127.0.0.1", cwd="/tmp/site")
        async for line in server.stdout:
            if line.startswith("Serving HTTP"):
                break
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            response = await client.get(sandbox.connection_config.url + "/hello.txt",
                                        headers=sandbox.get_headers(PORT))
            assert (response.status_code, response.text) == (200, "offline but served\n")
            closed = await client.get(sandbox.connection_config.url + "/",
                                      headers=sandbox.get_headers(PORT + 1))
            assert closed.status_code == 502 and "not open" in closed.json()["message"]
    finally:
        await sandbox.kill()
        await sandbox.close()
