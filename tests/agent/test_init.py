"""POST /init: sandbox env, access token on every route but /health, signed /files URLs,
default user; and GET /envs."""

from __future__ import annotations

import time

import httpx
import pytest

from hutch.agent.files import signature_for

from .conftest import AgentProcess, Client, run_cmd


@pytest.fixture(scope="module")
def private_agent():
    # The runtime starts the agent with the template's variables; processes inherit them.
    agent = AgentProcess(env={"TEMPLATE_VAR": "tmpl", "OVER": "template", "PATH": "/opt/x:/usr/bin:/bin"})
    yield agent
    agent.stop()


def test_init_contract(private_agent, workdir):
    url = private_agent.url
    r = httpx.post(url + "/init", json={"envVars": {"SBX": "1", "OVER": "sandbox"}, "accessToken": "tok-123",
                                        "defaultUser": "nobody"})
    assert r.status_code == 204
    # Everything but /health now needs the token.
    assert httpx.get(url + "/health").status_code == 204
    assert httpx.get(url + "/envs").status_code == 401
    assert httpx.post(url + "/init", json={}).status_code == 401
    r = httpx.post(url + "/process.Process/List", content=b"{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    assert httpx.get(url + "/files", params={"path": "/etc/hostname"}).status_code == 401
    h = {"X-Access-Token": "tok-123"}
    assert httpx.get(url + "/envs", headers=h).json() == {"SBX": "1", "OVER": "sandbox"}

    client = Client(url, token="tok-123")
    # Default user is nobody now; env = sandbox env overridden by per-call env.
    res = run_cmd(client, 'echo "$(id -un)|$SBX|$OVER|$TEMPLATE_VAR|${PYTHONPATH:-unset}"',
                  process={"envs": {"OVER": "call"}})
    assert res["stdout"] == b"nobody|1|call|tmpl|unset\n"
    res = client.stream("process.Process/Start", {"process": {"cmd": "/usr/bin/env"}})
    env_out = b"".join(__import__("base64").b64decode(e["event"]["data"]["stdout"])
                       for e in res[:-1] if "data" in e["event"]).decode().splitlines()
    assert "PATH=/opt/x:/usr/bin:/bin" in env_out and "OVER=sandbox" in env_out and "HOME=/nonexistent" in env_out and "USER=nobody" in env_out
    res = run_cmd(client, "id -un", user="root")
    assert res["stdout"] == b"root\n"

    # Signed URLs stand in for the token on /files only.
    target = workdir / "signed.txt"
    target.write_text("signed")
    path = str(target)
    sig = signature_for(path, "read", "root", "tok-123", None)
    r = httpx.get(url + "/files", params={"path": path, "username": "root", "signature": sig})
    assert r.status_code == 200 and r.text == "signed"
    bad = signature_for(path, "write", "root", "tok-123", None)
    assert httpx.get(url + "/files", params={"path": path, "username": "root", "signature": bad}).status_code == 401
    past = int(time.time()) - 10
    old = signature_for(path, "read", "root", "tok-123", past)
    r = httpx.get(url + "/files", params={"path": path, "username": "root", "signature": old,
                                          "signature_expiration": past})
    assert r.status_code == 401 and r.json()["message"] == "signature is already expired"
    future = int(time.time()) + 60
    ok = signature_for(path, "write", "", "tok-123", future)
    r = httpx.post(url + "/files", params={"path": path, "signature": ok, "signature_expiration": future},
                   content=b"new", headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 403  # default user nobody may not write root's file: permissions still apply
    client.close()

    # Re-init with the token clears it and resets the default user.
    r = httpx.post(url + "/init", json={"accessToken": None, "defaultUser": "root"}, headers=h)
    assert r.status_code == 204
    assert httpx.get(url + "/envs").json() == {"SBX": "1", "OVER": "sandbox"}


def test_init_rejects_unknown_user(private_agent):
    r = httpx.post(private_agent.url + "/init", json={"defaultUser": "no-such-user-xyz"})
    assert r.status_code == 400
