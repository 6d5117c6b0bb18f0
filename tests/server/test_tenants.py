"""API keys as tenants, against a real server: each key sees only its own sandboxes.

A foreign sandbox must be indistinguishable from one that never existed, so every check
compares the answer for it with the answer for a fresh random id of the same shape.
"""

from __future__ import annotations

import secrets
import string
import uuid

import httpx
import pytest
from e2b import Sandbox, SandboxQuery
from e2b.exceptions import AuthenticationException, NotFoundException

from hutch.server.store import hash_key

TIMEOUT = 120


def _random_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(20))


@pytest.fixture
def admin(hutch_server):
    with httpx.Client(base_url=hutch_server.url, timeout=TIMEOUT,
                      headers={"X-API-KEY": hutch_server.api_key}) as client:
        yield client


@pytest.fixture
def tenants(hutch_server, admin):
    """Make tenants (new keys, each with a client); all are revoked at the end, which also
    kills whatever sandboxes they still run."""
    made: list[tuple[str, httpx.Client]] = []

    def make(name: str = "") -> tuple[dict, httpx.Client]:
        r = admin.post("/keys", json={"name": name or f"test-{uuid.uuid4().hex[:8]}"})
        assert r.status_code == 201, r.text
        key = r.json()
        client = httpx.Client(base_url=hutch_server.url, timeout=TIMEOUT,
                              headers={"X-API-KEY": key["key"]})
        made.append((key["id"], client))
        return key, client

    yield make
    for key_id, client in made:
        client.close()
        assert admin.delete(f"/keys/{key_id}").status_code == 204


def _create(client: httpx.Client, **body) -> dict:
    r = client.post("/v2/sandboxes", json={"templateID": "base", "timeout": 300, **body})
    assert r.status_code == 201, r.text
    return r.json()


def _calls(sandbox_id: str) -> list[tuple[str, str, dict | None]]:
    return [
        ("GET", f"/sandboxes/{sandbox_id}", None),
        ("DELETE", f"/sandboxes/{sandbox_id}", None),
        ("POST", f"/sandboxes/{sandbox_id}/timeout", {"timeout": 600}),
        ("POST", f"/sandboxes/{sandbox_id}/connect", {"timeout": 600}),
        ("POST", f"/v2/sandboxes/{sandbox_id}/connect", {"timeout": 600}),
        ("GET", f"/sandboxes/{sandbox_id}/metrics", None),
    ]


def _answer(client: httpx.Client, method: str, path: str, body: dict | None,
            sandbox_id: str) -> tuple[int, bytes, str | None]:
    r = client.request(method, path, json=body)
    # The id itself is in the message; everything else must match byte for byte.
    return r.status_code, r.content.replace(sandbox_id.encode(), b"<id>"), \
        r.headers.get("content-type")


def test_tenants_see_only_their_own_sandboxes(tenants, admin):
    key_a, a = tenants()
    key_b, b = tenants()
    tag = uuid.uuid4().hex
    sbx = _create(a, metadata={"tag": tag})
    sid = sbx["sandboxID"]
    mine = _create(b, metadata={"tag": tag})["sandboxID"]

    for method, path, body in _calls(sid):
        foreign = _answer(b, method, path, body, sid)
        never = _random_id()
        unknown = _answer(b, method, path.replace(sid, never), body, never)
        assert foreign == unknown, (method, path)
        assert foreign[0] == 404
        # The admin key is a tenant like any other here: it does not see A's sandbox either.
        assert _answer(admin, method, path, body, sid) == unknown, (method, path)

    # Nothing B or the admin tried changed A's sandbox: still there, same deadline.
    r = a.get(f"/sandboxes/{sid}")
    assert r.status_code == 200 and r.json()["sandboxID"] == sid
    assert r.json()["endAt"] == a.get(f"/sandboxes/{sid}").json()["endAt"]

    for path in ("/sandboxes", "/v2/sandboxes"):
        params = {"metadata": f"tag={tag}"}
        assert [s["sandboxID"] for s in a.get(path, params=params).json()] == [sid]
        assert [s["sandboxID"] for s in b.get(path, params=params).json()] == [mine]
        assert admin.get(path, params=params).json() == []

    # A's data plane needs A's token, whoever asks.
    headers = {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49983",
               "X-API-KEY": key_b["key"]}
    r = b.post("/process.Process/List", json={}, headers=headers)
    assert r.status_code == 401

    assert a.delete(f"/sandboxes/{sid}").status_code == 204
    assert b.delete(f"/sandboxes/{mine}").status_code == 204


def test_idempotency_keys_are_per_tenant(tenants):
    _, a = tenants()
    _, b = tenants()
    key = uuid.uuid4().hex
    first = a.post("/v2/sandboxes", json={"templateID": "base"},
                   headers={"Idempotency-Key": key})
    assert first.status_code == 201, first.text
    again = a.post("/v2/sandboxes", json={"templateID": "base"},
                   headers={"Idempotency-Key": key})
    assert again.json()["sandboxID"] == first.json()["sandboxID"]
    other = b.post("/v2/sandboxes", json={"templateID": "base"},
                   headers={"Idempotency-Key": key})
    assert other.status_code == 201, other.text
    assert other.json()["sandboxID"] != first.json()["sandboxID"]
    assert other.json()["envdAccessToken"] != first.json()["envdAccessToken"]


def test_key_management(tenants, admin):
    key, client = tenants("ci runner")
    assert set(key) == {"id", "name", "key", "createdAt", "revokedAt", "admin", "quotas"}
    assert key["name"] == "ci runner" and key["admin"] is False
    assert key["key"].startswith("e2b_") and len(key["key"]) == 44
    assert key["id"] not in key["key"]

    listed = admin.get("/keys")
    assert listed.status_code == 200
    entries = {k["id"]: k for k in listed.json()}
    assert entries[key["id"]] == {"id": key["id"], "name": "ci runner",
                                  "createdAt": key["createdAt"], "revokedAt": None,
                                  "admin": False, "quotas": key["quotas"]}
    assert entries["admin"]["admin"] is True
    assert key["key"] not in listed.text and hash_key(key["key"]) not in listed.text

    assert client.get("/sandboxes").status_code == 200
    # Only the admin key manages keys.
    for method, path, body in [("POST", "/keys", {"name": "x"}), ("GET", "/keys", None),
                               ("DELETE", f"/keys/{key['id']}", None),
                               ("DELETE", "/keys/admin", None)]:
        r = client.request(method, path, json=body)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json() == {"code": 403, "message": "managing API keys needs the admin key"}

    bad = admin.post("/keys", json={"name": 42})
    assert bad.status_code == 400 and bad.json()["code"] == 400
    missing = admin.delete("/keys/knosuchkey00")
    assert missing.status_code == 404 and missing.json()["code"] == 404
    admin_revoke = admin.delete("/keys/admin")
    assert admin_revoke.status_code == 409 and admin.get("/keys").status_code == 200


def test_revocation_is_immediate_and_ends_the_tenants_sandboxes(hutch_server, admin):
    made = admin.post("/keys", json={"name": "short-lived"}).json()
    with httpx.Client(base_url=hutch_server.url, timeout=TIMEOUT,
                      headers={"X-API-KEY": made["key"]}) as client:
        sbx = _create(client)
        agent = {"E2b-Sandbox-Id": sbx["sandboxID"], "E2b-Sandbox-Port": "49983",
                 "X-Access-Token": sbx["envdAccessToken"]}
        assert client.get("/health", headers=agent).status_code == 204
        assert client.get("/sandboxes").status_code == 200

        assert admin.delete(f"/keys/{made['id']}").status_code == 204
        r = client.get("/sandboxes")
        assert r.status_code == 401 and r.json() == {"code": 401, "message": "invalid API key"}
        assert client.post("/v2/sandboxes", json={"templateID": "base"}).status_code == 401
        # Its sandbox went with it: the data plane no longer knows the id.
        gone = client.get("/health", headers=agent)
        assert gone.status_code == 502 and "was not found" in gone.json()["message"]

    entry = {k["id"]: k for k in admin.get("/keys").json()}[made["id"]]
    assert entry["revokedAt"] is not None and entry["revokedAt"] >= entry["createdAt"]
    assert admin.delete(f"/keys/{made['id']}").status_code == 204   # repeated: no change


def test_key_plaintext_is_never_stored(hutch_server, tenants):
    key, client = tenants()
    assert client.get("/sandboxes").status_code == 200
    files = sorted(hutch_server.data_dir.glob("hutch.db*"))
    assert files
    raw = b"".join(p.read_bytes() for p in files)
    assert hash_key(key["key"]).encode() in raw
    assert key["key"].encode() not in raw and key["key"][4:].encode() not in raw
    assert hutch_server.api_key.encode() not in raw


def test_e2b_sdk_with_a_second_tenants_key(hutch_server, tenants, monkeypatch):
    key, _ = tenants("e2b user")
    monkeypatch.setenv("E2B_API_URL", hutch_server.url)
    monkeypatch.setenv("E2B_SANDBOX_URL", hutch_server.url)
    monkeypatch.setenv("E2B_API_KEY", key["key"])
    monkeypatch.delenv("E2B_DOMAIN", raising=False)
    tag = uuid.uuid4().hex
    admins = Sandbox.create(metadata={"tag": tag}, api_key=hutch_server.api_key, timeout=120)
    try:
        sbx = Sandbox.create(metadata={"tag": tag}, timeout=120)
        try:
            assert sbx.commands.run("echo tenant-$((6*7))").stdout == "tenant-42\n"
            sbx.files.write("/home/user/t.txt", "mine")
            assert sbx.files.read("/home/user/t.txt") == "mine"
            listed = Sandbox.list(query=SandboxQuery(metadata={"tag": tag})).next_items()
            assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]
            assert Sandbox.connect(sbx.sandbox_id).commands.run("true").exit_code == 0

            with pytest.raises(NotFoundException):
                Sandbox.connect(admins.sandbox_id)
            with pytest.raises(NotFoundException):
                Sandbox.get_info(admins.sandbox_id)
            assert Sandbox.kill(admins.sandbox_id) is False
            assert admins.is_running()
        finally:
            assert sbx.kill() is True
    finally:
        admins.kill()
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key="e2b_" + "0" * 40).next_items()
