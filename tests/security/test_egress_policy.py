"""Egress policies through the API (E2B's ``network`` object and ``update_network``), checked
from inside real sandboxes against the fake "internet" of this directory's conftest."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from hutch import Sandbox, errors


def status(sbx, url: str) -> str:
    r = sbx.commands.run(f"curl -sS -m 4 -o /dev/null -w '%{{http_code}}' {url} || true")
    return r.stdout.strip()


def test_deny_list_allow_list_and_live_update(server_env, fake_network):
    public, metadata = fake_network["public"], fake_network["metadata"]
    with Sandbox.create(network={"deny_out": [f"{public}/32"]}) as sbx:
        try:
            assert status(sbx, f"http://{public}/") != "200"
            info = sbx.get_info()
            assert info.network["deny_out"] == [f"{public}/32"]
            assert info.allow_internet_access is True
            # Allow-list: everything else refused, the named address allowed; metadata stays
            # unreachable although the list names it.
            sbx.update_network({"allow_out": [public, metadata], "allow_internet_access": False})
            assert status(sbx, f"http://{public}/") == "200"
            assert status(sbx, f"http://{metadata}/") != "200"
            assert sbx.get_info().allow_internet_access is False
            sbx.update_network({})                    # cleared: open again
            assert status(sbx, f"http://{public}/") == "200"
            assert sbx.get_info().network == {"allow_out": [], "deny_out": [],
                                              "allow_public_traffic": False}
        finally:
            sbx.kill()


def test_the_e2b_sdk_shape(server_env, fake_network):
    from e2b import Sandbox as E2BSandbox

    public = fake_network["public"]
    sbx = E2BSandbox.create(network={"deny_out": ["0.0.0.0/0"], "allow_out": [public]})
    try:
        assert sbx.commands.run(f"curl -sS -m 4 -o /dev/null -w '%{{http_code}}' "
                                f"http://{public}/").stdout == "200"
        sbx.update_network({"deny_out": ["0.0.0.0/0"]})
        r = sbx.commands.run(f"curl -sS -m 4 http://{public}/ || echo refused")
        assert "refused" in r.stdout
    finally:
        sbx.kill()


def test_bad_policies_are_clear_errors(server_env):
    for network, match in [({"allow_out": ["2001:db8::1"]}, "IPv6"),
                           ({"deny_out": ["not an address"]}, "neither an IPv4"),
                           ({"allow_out": ["evil\x00.com"]}, "neither an IPv4"),
                           ({"allow_out": "1.1.1.1"}, "list of strings")]:
        with pytest.raises(errors.InvalidArgumentError, match=match):
            Sandbox.create(network=network)
    with pytest.raises(errors.InvalidArgumentError, match="unknown network option"):
        Sandbox.create(network={"rules": {}})
    url, key = server_env["HUTCH_URL"], server_env["HUTCH_API_KEY"]
    r = httpx.post(f"{url}/v2/sandboxes", headers={"X-API-KEY": key},
                   json={"templateID": "base", "network": {"rules": {"a.com": []}}})
    assert r.status_code == 400 and "network.rules is not supported" in r.json()["message"]
    with Sandbox.create(network="none") as sbx:
        try:
            with pytest.raises(errors.InvalidArgumentError, match="without a network"):
                sbx.update_network({"allow_out": ["1.1.1.1"]})
        finally:
            sbx.kill()


def test_private_ports_need_the_traffic_token(server_env):
    with Sandbox.create(network={"allow_public_traffic": False}) as sbx:
        try:
            sbx.exec("python3", "-m", "http.server", "8000")
            url = sbx.connection_config.url
            headers = sbx.get_headers(8000)                 # with the traffic token
            bare = {k: v for k, v in headers.items() if k != "E2B-Traffic-Access-Token"}
            r = httpx.get(url + "/", headers=bare)          # refused before any forwarding
            assert r.status_code == 401 and "traffic" in r.json()["message"]
            token = sbx._code.headers["E2B-Traffic-Access-Token"]
            deadline = time.monotonic() + 60
            while True:                                     # until the server listens
                ok = httpx.get(url + "/", headers={**bare, "E2B-Traffic-Access-Token": token})
                if ok.status_code != 502 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert ok.status_code == 200
        finally:
            sbx.kill()


def test_no_internet_but_an_allow_list(server_env, fake_network):
    public, private = fake_network["public"], fake_network["private"]
    with Sandbox.create(allow_internet_access=False,
                        network={"allow_out": [public, private]}) as sbx:
        try:
            assert sbx.get_info().allow_internet_access is False
            assert status(sbx, f"http://{public}/") == "200"
            assert status(sbx, f"http://{private}/") != "200"     # always denied
        finally:
            sbx.kill()


def test_the_egress_log_through_the_api_and_the_cli(server_env, fake_network):
    import subprocess
    import sys

    public, metadata = fake_network["public"], fake_network["metadata"]
    with Sandbox.create(network={"deny_out": [public]}) as sbx:
        try:
            assert status(sbx, f"http://{public}/") != "200"
            assert status(sbx, f"http://{metadata}/") != "200"
            sbx.update_network({})
            assert status(sbx, f"http://{public}/") == "200"
            deadline = time.monotonic() + 10
            while True:
                events = sbx.get_egress_log(limit=1000)
                conns = [e for e in events if e["kind"] == "connection"]
                if len(conns) >= 3 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert any(e["address"] == public and not e["allowed"]
                       and e["reason"] == "egress policy" for e in conns), conns
            assert any(e["address"] == metadata and not e["allowed"]
                       and e["reason"].startswith("always denied") for e in conns), conns
            assert any(e["address"] == public and e["allowed"] and e["port"] == 80
                       for e in conns), conns
            out = subprocess.run([sys.executable, "-m", "hutch", "logs", sbx.sandbox_id],
                                 capture_output=True, text=True, env={**os.environ},
                                 timeout=60).stdout
            assert f"denied   tcp {public}:80  [egress policy]" in out, out
            assert f"allowed  tcp {public}:80  [default policy]" in out, out
        finally:
            sbx.kill()
    # A killed sandbox's log stays readable.
    assert Sandbox.get_egress_log(sbx.sandbox_id)


def test_web_traffic_of_a_policy_with_names_is_judged_by_name(server_env, fake_network):
    public = fake_network["public"]
    with Sandbox.create(network={"deny_out": ["0.0.0.0/0"],
                                 "allow_out": ["packages.example"]}) as sbx:
        try:
            # A name the policy does not allow: refused by the proxy, saying why.
            r = sbx.commands.run(f"curl -sS -m 5 -H 'Host: other.example' http://{public}/")
            assert "not allowed" in r.stdout and "other.example" in r.stdout, r.stdout
            # An address allowed outright: straight through, whatever the name.
            sbx.update_network({"deny_out": ["0.0.0.0/0"],
                                "allow_out": ["packages.example", public]})
            r = sbx.commands.run(f"curl -sS -m 5 -o /dev/null -w '%{{http_code}}' "
                                 f"-H 'Host: other.example' http://{public}/ || true")
            assert r.stdout.strip() == "200", r.stdout
            sbx.update_network({"deny_out": ["other.example"]})     # internet on, one name out
            r = sbx.commands.run(f"curl -sS -m 5 -o /dev/null -w '%{{http_code}}' "
                                 f"-H 'Host: other.example' http://{public}/ || true")
            assert r.stdout.strip() == "403", r.stdout
            assert status(sbx, f"http://{public}/") == "200"      # no name: as dialled
            deadline = time.monotonic() + 10
            while True:
                events = sbx.get_egress_log(limit=1000)
                proxied = [e for e in events if e.get("via") == "proxy"]
                if any(e["kind"] == "closed" for e in proxied) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert any(not e["allowed"] and e["name"] == "other.example" for e in proxied)
            assert any(e["kind"] == "closed" and e["bytes_in"] > 0 for e in proxied), proxied
        finally:
            sbx.kill()
