"""GET/POST /files: octet-stream and multipart uploads, gzip both ways, metadata, errors."""

from __future__ import annotations

import gzip
import time
import os

import httpx
import pytest

from hutch.agent.files import signature_for

from .conftest import Client


def test_octet_stream_roundtrip_binary(client: Client, workdir):
    data = os.urandom(3 * 1024 * 1024 + 17)  # bigger than the small-file fast path
    path = workdir / "sub" / "bin.dat"
    r = client.http.post("/files", params={"path": str(path)}, content=data,
                         headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200
    assert r.json() == [{"name": "bin.dat", "type": "file", "path": str(path)}]
    assert path.read_bytes() == data
    r = client.http.get("/files", params={"path": str(path)})
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == "application/octet-stream"


def test_chunked_streaming_upload(client: Client, workdir):
    def body():
        for i in range(50):
            yield bytes([i]) * 10000

    path = workdir / "streamed"
    r = client.http.post("/files", params={"path": str(path)}, content=body(),
                         headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200
    assert path.read_bytes() == b"".join(bytes([i]) * 10000 for i in range(50))


def test_gzip_upload_and_download(client: Client, workdir):
    data = b"hello gzip " * 50000
    path = workdir / "g.txt"
    r = client.http.post("/files", params={"path": str(path)}, content=gzip.compress(data),
                         headers={"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"})
    assert r.status_code == 200 and path.read_bytes() == data
    with client.http.stream("GET", "/files", params={"path": str(path)},
                            headers={"Accept-Encoding": "gzip"}) as r:
        raw = b"".join(r.iter_raw())
    assert r.headers["content-encoding"] == "gzip" and gzip.decompress(raw) == data
    small = workdir / "small"
    small.write_bytes(b"abc")
    r = client.http.get("/files", params={"path": str(small)}, headers={"Accept-Encoding": "gzip"})
    assert r.content == b"abc"  # httpx decodes
    r = client.http.get("/files", params={"path": str(small)}, headers={"Accept-Encoding": "compress"})
    assert r.status_code == 406
    # A generic client default gets identity (always acceptable); only an explicit gzip compresses.
    r = client.http.get("/files", params={"path": str(small)}, headers={"Accept-Encoding": "gzip, deflate"})
    assert r.status_code == 200 and "content-encoding" not in r.headers and r.content == b"abc"


def test_multipart_several_files_with_metadata(client: Client, workdir):
    files = [
        ("file", (str(workdir / "m1.txt"), b"one", "application/octet-stream")),
        ("file", (str(workdir / "deep" / "m2.bin"), b"\x00\x01two" * 100000, "application/octet-stream")),
        ("file", ("rel-name.txt", b"three", "text/plain")),
    ]
    r = client.http.post("/files", files=files, headers={"X-Metadata-Owner": "Alice", "x-metadata-k2": "v2"})
    assert r.status_code == 200, r.text
    paths = [e["path"] for e in r.json()]
    assert paths == [str(workdir / "m1.txt"), str(workdir / "deep" / "m2.bin"), "/root/rel-name.txt"]
    assert (workdir / "m1.txt").read_bytes() == b"one"
    assert (workdir / "deep" / "m2.bin").read_bytes() == b"\x00\x01two" * 100000
    try:
        assert all(e["metadata"] == {"owner": "Alice", "k2": "v2"} for e in r.json())
        entry = client.ok("filesystem.Filesystem/Stat", {"path": str(workdir / "m1.txt")})["entry"]
        assert entry["metadata"] == {"owner": "Alice", "k2": "v2"}
    finally:
        os.unlink("/root/rel-name.txt")
    # Overwriting without metadata clears what the earlier upload stored.
    r = client.http.post("/files", params={"path": str(workdir / "m1.txt")}, content=b"new",
                         headers={"Content-Type": "application/octet-stream"})
    assert "metadata" not in r.json()[0]
    entry = client.ok("filesystem.Filesystem/Stat", {"path": str(workdir / "m1.txt")})["entry"]
    assert "metadata" not in entry


def test_multipart_single_file_uses_query_path(client: Client, workdir):
    r = client.http.post("/files", params={"path": str(workdir / "q.txt")},
                         files=[("file", ("ignored-name", b"q", "application/octet-stream"))])
    assert r.status_code == 200 and (workdir / "q.txt").read_bytes() == b"q"


def test_errors_404_400(client: Client, workdir):
    r = client.http.get("/files", params={"path": str(workdir / "missing")})
    assert r.status_code == 404 and "message" in r.json() and r.json()["code"] == 404
    r = client.http.get("/files", params={"path": str(workdir)})
    assert r.status_code == 400
    r = client.http.post("/files", params={"path": str(workdir)}, content=b"x",
                         headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 400


def test_files_as_nobody(client: Client, workdir):
    private = workdir / "private"
    private.write_text("top secret")
    private.chmod(0o600)
    r = client.http.get("/files", params={"path": str(private), "username": "nobody"})
    assert r.status_code == 403
    r = client.http.post("/files", params={"path": str(private), "username": "nobody"}, content=b"x",
                         headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 403 and private.read_text() == "top secret"
    open_dir = workdir / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    r = client.http.post("/files", params={"path": str(open_dir / "n" / "f"), "username": "nobody"},
                         content=b"mine", headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200
    assert (open_dir / "n" / "f").stat().st_uid == 65534 and (open_dir / "n").stat().st_uid == 65534
    r = client.http.get("/files", params={"path": "x", "username": "nobody-at-all"})
    assert r.status_code == 401


def test_signature_matches_the_sdk():
    from e2b.sandbox.signature import get_signature

    sig = get_signature("/a/b", "read", "user", "tok", None)["signature"]
    assert sig == signature_for("/a/b", "read", "user", "tok", None)


def test_enospc_is_507(client: Client):
    if not os.path.exists("/dev/full"):
        return
    r = client.http.post("/files", params={"path": "/dev/full"}, content=b"x" * 10,
                         headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 507


def test_unknown_route_is_json_404(client: Client):
    r = httpx.get(str(client.http.base_url) + "/nope")
    assert r.status_code == 404 and r.json()["code"] == 404


def test_uploads_are_atomic_and_a_failed_one_keeps_the_old_file(client: Client, workdir):
    target = workdir / "atomic.txt"
    target.write_bytes(b"old content")
    target.chmod(0o640)

    def body():
        yield b"partial new content"
        raise RuntimeError("client gives up mid-upload")

    with pytest.raises(Exception):
        client.http.post("/files", params={"path": str(target)}, content=body(),
                         headers={"Content-Type": "application/octet-stream"})
    assert target.read_bytes() == b"old content"
    r = client.http.post("/files", params={"path": str(target)}, content=b"new",
                         headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200
    assert target.read_bytes() == b"new"
    assert oct(target.stat().st_mode & 0o777) == oct(0o640)   # permissions carry over
    deadline = time.monotonic() + 10
    while any("hutch-upload" in p.name for p in workdir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)   # the aborted upload's temporary file goes when the agent sees the reset
    assert [p.name for p in workdir.iterdir() if "hutch-upload" in p.name] == []
