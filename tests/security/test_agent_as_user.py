"""The agent acts on files with the requesting user's permissions, in every code path.

The real agent runs on the host as root (as it does inside a sandbox) and the requester is the
host's ``nobody``: whatever ``nobody`` could not do with its own processes, it must not be able
to do through the agent's API either. Nothing here writes outside the test's own directories;
reads of real system files (``/etc/shadow``) are only ever expected to be refused.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.agent.conftest import AgentProcess, Client

NOBODY = 65534


@pytest.fixture(scope="module")
def agent():
    proc = AgentProcess()
    yield proc
    proc.stop()


@pytest.fixture
def client(agent):
    c = Client(agent.url)
    yield c
    c.close()


@pytest.fixture
def box(tmp_path: Path) -> Path:
    """A tree shaped like a sandbox's: a root-only dir, a root-owned "/etc", a home of
    nobody's own. Every directory above it can be traversed by nobody."""
    tmp_path.chmod(0o755)
    for parent in tmp_path.parents:
        if str(parent) in ("/", "/tmp"):
            break
        parent.chmod(parent.stat().st_mode | 0o011)
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    (etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (etc / "passwd").chmod(0o644)
    private = tmp_path / "root"
    private.mkdir(mode=0o700)
    secret = private / "secret"
    secret.mkdir(mode=0o755)        # readable itself, but only reachable through root's dir
    (secret / "key").write_bytes(b"s" * 4321)
    os.setxattr(secret / "key", "user.e2b.label", b"top-secret")
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chown(home, NOBODY, NOBODY)
    return tmp_path


def _files(client: Client, method: str, path, **kw):
    params = {"path": str(path), "username": "nobody"}
    return client.http.request(method, "/files", params=params, **kw)


def test_nobody_cannot_read_shadow_or_write_root_files_through_files(client, box):
    assert _files(client, "GET", "/etc/shadow").status_code == 403
    passwd = box / "etc" / "passwd"
    before = passwd.read_bytes()
    assert _files(client, "POST", passwd, content=b"evil::0:0::/:/bin/sh\n").status_code == 403
    assert _files(client, "POST", box / "etc" / "new", content=b"x").status_code == 403
    assert passwd.read_bytes() == before and not (box / "etc" / "new").exists()
    assert sorted(os.listdir(box / "etc")) == ["passwd"]          # no temporary file left
    # multipart, with the target in the part's filename
    r = client.http.post("/files", params={"username": "nobody"},
                         files={"file": (str(passwd), b"evil")})
    assert r.status_code == 403 and passwd.read_bytes() == before


def test_nobody_cannot_reach_root_files_through_its_own_symlinks(client, box):
    home = box / "home"
    passwd = box / "etc" / "passwd"
    before = passwd.read_bytes()
    os.symlink("/etc/shadow", home / "shadow")
    os.symlink(box / "etc", home / "etc")
    os.symlink(box / "root" / "secret", home / "secret")
    for link in (home / "shadow", home / "secret" / "key"):
        assert _files(client, "GET", link).status_code == 403
    # Writing through a symlinked directory lands in root's directory or nowhere.
    assert _files(client, "POST", home / "etc" / "passwd", content=b"evil").status_code == 403
    assert _files(client, "POST", home / "etc" / "new", content=b"evil").status_code == 403
    assert passwd.read_bytes() == before and sorted(os.listdir(box / "etc")) == ["passwd"]
    # Uploading onto a symlink to root's file replaces nobody's link, never root's file.
    os.symlink(passwd, home / "p")
    assert _files(client, "POST", home / "p", content=b"mine").status_code == 200
    assert passwd.read_bytes() == before
    assert (home / "p").read_bytes() == b"mine" and (home / "p").stat().st_uid == NOBODY


def test_nobody_cannot_change_root_files_through_filesystem_rpcs(client, box):
    passwd = box / "etc" / "passwd"
    calls = [
        ("ListDir", {"path": str(box / "root")}),
        ("ListDir", {"path": str(box / "root" / "secret")}),
        ("Stat", {"path": str(box / "root" / "secret" / "key")}),
        ("MakeDir", {"path": str(box / "etc" / "x")}),
        ("Move", {"source": str(passwd), "destination": str(box / "home" / "passwd")}),
        ("Move", {"source": str(box / "home"), "destination": str(box / "etc" / "home")}),
        ("Remove", {"path": str(passwd)}),
        ("Remove", {"path": str(box / "etc")}),
        ("CreateWatcher", {"path": str(box / "root")}),
    ]
    for method, msg in calls:
        r = client.unary(f"filesystem.Filesystem/{method}", msg, user="nobody")
        assert r.status_code == 403, (method, msg, r.text)
    assert sorted(os.listdir(box / "etc")) == ["passwd"] and passwd.stat().st_uid == 0


def _poll(client: Client, wid: str, until, timeout: float = 10.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout
    while not until(got):
        assert time.monotonic() < deadline, f"timed out; events so far: {got}"
        got += client.ok("filesystem.Filesystem/GetWatcherEvents",
                         {"watcherId": wid}, user="nobody").get("events", [])
        time.sleep(0.02)
    return got


def test_watcher_entries_and_new_directories_are_seen_as_the_user(client, box):
    """A watch is placed through a path nobody controls (a symlink in its home). Pointing it
    elsewhere afterwards must not make the agent describe, list or watch, as root, what
    nobody cannot reach itself."""
    home = box / "home"
    real = home / "real"
    real.mkdir()
    os.chown(real, NOBODY, NOBODY)
    link = home / "watched"
    os.symlink(real, link)
    wid = client.ok("filesystem.Filesystem/CreateWatcher",
                    {"path": str(link), "recursive": True, "includeEntry": True},
                    user="nobody")["watcherId"]
    try:
        # nobody re-points its link at a directory it has no way to reach...
        os.unlink(link)
        os.symlink(box / "root" / "secret", link)
        (box / "root" / "secret" / "sub").mkdir(mode=0o755)
        (box / "root" / "secret" / "sub" / "inner-secret-name").write_text("s")
        # ...then makes a file and a directory where the watch really is.
        (real / "key").write_text("k")
        (real / "sub").mkdir()
        events = _poll(client, wid, lambda got: any(e["name"] == "sub" for e in got))
        time.sleep(0.3)   # anything a scan of the new directory finds arrives with it
        events += client.ok("filesystem.Filesystem/GetWatcherEvents",
                            {"watcherId": wid}, user="nobody").get("events", [])
        for e in events:
            assert "inner-secret-name" not in e["name"], events
            entry = e.get("entry") or {}
            assert entry.get("size") != "4321" and "metadata" not in entry, events
    finally:
        client.ok("filesystem.Filesystem/RemoveWatcher", {"watcherId": wid}, user="nobody")


def test_a_users_recursive_watch_follows_its_new_directories(client, box):
    """The watches placed as the user (above) still cover what the user may see."""
    home = box / "home"
    wid = client.ok("filesystem.Filesystem/CreateWatcher",
                    {"path": str(home), "recursive": True, "includeEntry": True},
                    user="nobody")["watcherId"]
    try:
        client.ok("filesystem.Filesystem/MakeDir", {"path": str(home / "a" / "b")}, user="nobody")
        r = _files(client, "POST", home / "a" / "b" / "f", content=b"12345")
        assert r.status_code == 200
        events = _poll(client, wid, lambda got: any(
            e["name"] == "a/b/f" and e.get("entry", {}).get("size") == "5" for e in got))
        assert all(e["entry"]["owner"] == "nobody" for e in events if "entry" in e), events
    finally:
        client.ok("filesystem.Filesystem/RemoveWatcher", {"watcherId": wid}, user="nobody")
