"""Big files through the data plane (GET/POST /files via the server to the agent): byte-exact
both ways in every body form, an upload that pauses, a full disk, the owner of what is
written. No timing is asserted: these guard the fast paths (a plain upload read straight off
the socket, a download sent from the file) against losing or bending bytes."""

from __future__ import annotations

import hashlib
import os
import time

import httpx
import pytest

from .test_api import _create, _run

MIB = 1 << 20


@pytest.fixture
def sbx(api, sandboxes):
    return _create(api, sandboxes)


def _client(server, sbx: dict) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=120, headers={
        "E2b-Sandbox-Id": sbx["sandboxID"], "E2b-Sandbox-Port": "49983",
        "X-Access-Token": sbx["envdAccessToken"]})


def _download(c: httpx.Client, path: str) -> tuple[bytes, httpx.Headers]:
    with c.stream("GET", "/files", params={"path": path, "username": "user"}) as r:
        assert r.status_code == 200, r.read()
        return b"".join(r.iter_raw()), r.headers


def test_a_large_file_is_byte_exact_both_ways(server, sbx):
    data = os.urandom(48 * MIB + 12345)
    with _client(server, sbx) as c:
        view = memoryview(data)
        r = c.post("/files", params={"path": "/home/user/big.bin", "username": "user"},
                   content=(view[i:i + MIB] for i in range(0, len(view), MIB)),
                   headers={"Content-Type": "application/octet-stream",
                            "Content-Length": str(len(data))})
        assert r.status_code == 200, r.text
        assert r.json() == [{"name": "big.bin", "type": "file", "path": "/home/user/big.bin"}]
        got, headers = _download(c, "/home/user/big.bin")
        assert headers["content-length"] == str(len(data))
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    out, code = _run(server, sbx, "stat -c '%U %s' /home/user/big.bin; sha256sum /home/user/big.bin")
    assert code == 0
    assert out.splitlines() == [f"user {len(data)}",
                                f"{hashlib.sha256(data).hexdigest()}  /home/user/big.bin"]


def test_chunked_and_multipart_uploads_are_byte_exact(server, sbx):
    data = os.urandom(9 * MIB + 7)
    sizes = [1, 100, 65536, 300000, MIB + 3]

    def pieces():
        at, n = 0, 0
        while at < len(data):
            size = sizes[n % len(sizes)]
            yield data[at:at + size]
            at, n = at + size, n + 1

    with _client(server, sbx) as c:
        r = c.post("/files", params={"path": "/home/user/chunked.bin", "username": "user"},
                   content=pieces(), headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 200, r.text
        assert _download(c, "/home/user/chunked.bin")[0] == data
        # Multipart, with content that looks like the boundary httpx will pick around it.
        tricky = bytearray(data[:5 * MIB])
        for at in range(1000, len(tricky) - 100, 333_333):
            tricky[at:at + 8] = b"\r\n--\r\n--"
        r = c.post("/files", params={"username": "user"},
                   files=[("file", ("/home/user/multi.bin", bytes(tricky))),
                          ("file", ("/home/user/second.bin", b"second"))])
        assert r.status_code == 200, r.text
        assert [e["path"] for e in r.json()] == ["/home/user/multi.bin", "/home/user/second.bin"]
        assert _download(c, "/home/user/multi.bin")[0] == bytes(tricky)
        assert _download(c, "/home/user/second.bin")[0] == b"second"


def test_an_upload_that_pauses_mid_body_completes(server, sbx):
    """The agent reads a plain upload off the socket in a worker thread; when the client goes
    quiet the thread hands the wait back to the event loop, and picks up again after."""
    data = os.urandom(6 * MIB)

    def slow():
        yield data[:3 * MIB]
        time.sleep(1.0)
        yield data[3 * MIB:4 * MIB]
        time.sleep(0.5)
        yield data[4 * MIB:]

    with _client(server, sbx) as c:
        r = c.post("/files", params={"path": "/home/user/slow.bin", "username": "user"},
                   content=slow(), headers={"Content-Type": "application/octet-stream",
                                            "Content-Length": str(len(data))})
        assert r.status_code == 200, r.text
        assert _download(c, "/home/user/slow.bin")[0] == data


def test_a_full_disk_is_507_and_leaves_nothing_behind(server, sbx):
    out, code = _run(server, sbx, "fallocate -l $(( $(df --output=avail -B1 /home/user | tail -1)"
                                  " - 1048576 )) /home/user/filler && echo ok")
    assert code == 0 and out.strip() == "ok"
    data = os.urandom(8 * MIB)
    with _client(server, sbx) as c:
        r = c.post("/files", params={"path": "/home/user/too-big.bin", "username": "user"},
                   content=data, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 507, (r.status_code, r.text)
        assert r.json()["code"] == 507 and "space" in r.json()["message"].lower()
        out, _ = _run(server, sbx, "ls -a /home/user")
        assert "too-big.bin" not in out and "hutch-upload" not in out
        _run(server, sbx, "rm -f /home/user/filler")
        r = c.post("/files", params={"path": "/home/user/too-big.bin", "username": "user"},
                   content=data, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 200, r.text
        assert _download(c, "/home/user/too-big.bin")[0] == data
