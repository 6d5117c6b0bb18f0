"""filesystem.Filesystem unary methods, as root and as ``nobody`` (permissions enforced)."""

from __future__ import annotations

import os
import time

from hutch.protocol.protojson import parse_timestamp

from .conftest import Client


def test_stat_entry_has_every_field(client: Client, workdir):
    f = workdir / "a.txt"
    f.write_bytes(b"12345")
    os.chmod(f, 0o640)
    os.setxattr(f, "user.e2b.color", b"blue")
    entry = client.ok("filesystem.Filesystem/Stat", {"path": str(f)})["entry"]
    assert entry["name"] == "a.txt" and entry["path"] == str(f)
    assert entry["type"] == "FILE_TYPE_FILE" and entry["size"] == "5"
    assert entry["mode"] == 0o640 and entry["permissions"] == "-rw-r-----"
    assert entry["owner"] == "root" and entry["group"] == "root"
    assert abs(parse_timestamp(entry["modifiedTime"]) - f.stat().st_mtime) < 0.01
    assert entry["metadata"] == {"color": "blue"}
    assert "isSymlink" not in entry and "symlinkTarget" not in entry


def test_stat_symlink_and_missing(client: Client, workdir):
    (workdir / "target").mkdir()
    os.symlink("target", workdir / "link")
    entry = client.ok("filesystem.Filesystem/Stat", {"path": str(workdir / "link")})["entry"]
    assert entry["isSymlink"] is True and entry["type"] == "FILE_TYPE_DIRECTORY"
    assert entry["symlinkTarget"] == str(workdir / "target")
    r = client.unary("filesystem.Filesystem/Stat", {"path": str(workdir / "nope")})
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_relative_path_resolves_against_home(client: Client):
    entry = client.ok("filesystem.Filesystem/Stat", {"path": "."})["entry"]
    assert entry["path"] == os.path.expanduser("~root")


def test_list_dir_depth_and_order(client: Client, workdir):
    for p in ("b/inner/deep", "a"):
        (workdir / p).mkdir(parents=True)
    (workdir / "c.txt").write_text("x")
    (workdir / "b" / "f").write_text("y")
    names = lambda d: [e["path"][len(str(workdir)) + 1:] for e in client.ok(  # noqa: E731
        "filesystem.Filesystem/ListDir", {"path": str(workdir), "depth": d})["entries"]]
    assert names(1) == ["a", "b", "c.txt"]
    assert names(2) == ["a", "b", "b/f", "b/inner", "c.txt"]
    assert names(3) == ["a", "b", "b/f", "b/inner", "b/inner/deep", "c.txt"]
    r = client.unary("filesystem.Filesystem/ListDir", {"path": str(workdir / "c.txt")})
    assert r.status_code == 400
    r = client.unary("filesystem.Filesystem/ListDir", {"path": str(workdir / "zz")})
    assert r.json()["code"] == "not_found"


def test_make_dir_parents_and_already_exists(client: Client, workdir):
    target = workdir / "x" / "y" / "z"
    entry = client.ok("filesystem.Filesystem/MakeDir", {"path": str(target)})["entry"]
    assert entry["type"] == "FILE_TYPE_DIRECTORY" and target.is_dir()
    r = client.unary("filesystem.Filesystem/MakeDir", {"path": str(target)})
    assert r.status_code == 409 and r.json()["code"] == "already_exists"


def test_move_and_remove(client: Client, workdir):
    (workdir / "src").write_text("data")
    entry = client.ok("filesystem.Filesystem/Move",
                      {"source": str(workdir / "src"), "destination": str(workdir / "new" / "dst")})["entry"]
    assert entry["path"] == str(workdir / "new" / "dst") and (workdir / "new" / "dst").read_text() == "data"
    r = client.unary("filesystem.Filesystem/Move", {"source": str(workdir / "src"), "destination": str(workdir / "q")})
    assert r.json()["code"] == "not_found"
    assert client.ok("filesystem.Filesystem/Remove", {"path": str(workdir / "new")}) == {}
    assert not (workdir / "new").exists()
    assert client.unary("filesystem.Filesystem/Remove", {"path": str(workdir / "new")}).status_code == 404


def test_nobody_gets_permission_denied_and_owns_what_it_makes(client: Client, workdir):
    secret = workdir / "secret"
    secret.mkdir(mode=0o700)
    (secret / "f").write_text("s")
    r = client.unary("filesystem.Filesystem/ListDir", {"path": str(secret)}, user="nobody")
    assert r.status_code == 403 and r.json()["code"] == "permission_denied"
    r = client.unary("filesystem.Filesystem/Remove", {"path": str(secret / "f")}, user="nobody")
    assert r.status_code in (403, 404) and (secret / "f").exists()
    r = client.unary("filesystem.Filesystem/MakeDir", {"path": str(workdir / "nope")}, user="nobody")
    assert r.status_code == 403 and not (workdir / "nope").exists()
    # Root's worker threads are unaffected by nobody's (per-thread credentials).
    assert client.ok("filesystem.Filesystem/ListDir", {"path": str(secret)})["entries"]
    shared = workdir / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    entry = client.ok("filesystem.Filesystem/MakeDir", {"path": str(shared / "mine")}, user="nobody")["entry"]
    assert entry["owner"] == "nobody" and entry["group"] == "nogroup"
    assert (shared / "mine").stat().st_uid == 65534


def test_concurrent_users_do_not_mix_identities(client: Client, workdir):
    import concurrent.futures

    shared = workdir / "mix"
    shared.mkdir()
    shared.chmod(0o777)

    def make(i):
        user = "nobody" if i % 2 else "root"
        client.ok("filesystem.Filesystem/MakeDir", {"path": str(shared / f"d{i}")}, user=user)
        return i, user

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(make, range(40)))
    for i, user in results:
        assert (shared / f"d{i}").stat().st_uid == (65534 if user == "nobody" else 0)


def test_modified_time_is_rfc3339(client: Client, workdir):
    f = workdir / "t"
    f.write_text("")
    os.utime(f, ns=(1700000000_250000000, 1700000000_250000000))
    entry = client.ok("filesystem.Filesystem/Stat", {"path": str(f)})["entry"]
    assert entry["modifiedTime"] == "2023-11-14T22:13:20.250Z"
    assert time.time() > 0
