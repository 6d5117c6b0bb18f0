"""WatchDir (stream) and CreateWatcher / GetWatcherEvents / RemoveWatcher (polling) on inotify."""

from __future__ import annotations

import os
import threading
import time

from .conftest import AgentProcess, Client


def _collect(client: Client, msg, events, started, stop, headers=None):
    with client.open_stream("filesystem.Filesystem/WatchDir", msg, headers=headers) as frames:
        for end, m in frames:
            events.append(m)
            started.set()
            if end or stop.is_set():
                break


def _wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_watch_dir_stream_recursive_with_entries(agent, workdir):
    client = Client(agent.url)
    events: list = []
    started, stop = threading.Event(), threading.Event()
    msg = {"path": str(workdir), "recursive": True, "includeEntry": True}
    t = threading.Thread(target=_collect, args=(client, msg, events, started, stop), daemon=True)
    t.start()
    assert started.wait(10)
    assert events[0] == {"start": {}}
    (workdir / "f.txt").write_text("x")
    (workdir / "sub").mkdir()
    _wait_for(lambda: any(e.get("filesystem", {}).get("name") == "sub" for e in events))
    time.sleep(0.2)  # the new directory's watch is placed asynchronously
    (workdir / "sub" / "inner").write_text("y")
    os.rename(workdir / "f.txt", workdir / "g.txt")
    os.chmod(workdir / "g.txt", 0o600)
    os.unlink(workdir / "g.txt")
    fs = lambda: [(e["filesystem"]["name"], e["filesystem"]["type"]) for e in events if "filesystem" in e]  # noqa
    _wait_for(lambda: ("g.txt", "EVENT_TYPE_REMOVE") in fs())
    got = fs()
    for expected in [("f.txt", "EVENT_TYPE_CREATE"), ("f.txt", "EVENT_TYPE_WRITE"), ("sub", "EVENT_TYPE_CREATE"),
                     ("sub/inner", "EVENT_TYPE_CREATE"), ("f.txt", "EVENT_TYPE_RENAME"),
                     ("g.txt", "EVENT_TYPE_CREATE"), ("g.txt", "EVENT_TYPE_CHMOD")]:
        assert expected in got, (expected, got)
    created = [e["filesystem"] for e in events if e.get("filesystem", {}).get("name") == "sub/inner"][0]
    assert created["entry"]["path"] == str(workdir / "sub" / "inner")
    stop.set()
    (workdir / "poke").write_text("")
    t.join(10)
    client.close()


def test_watch_errors(client: Client, workdir):
    events = client.stream("filesystem.Filesystem/WatchDir", {"path": str(workdir / "missing")})
    assert events[-1]["error"]["code"] == "not_found"
    (workdir / "file").write_text("")
    events = client.stream("filesystem.Filesystem/WatchDir", {"path": str(workdir / "file")})
    assert events[-1]["error"]["code"] == "invalid_argument"


def _inotify_fds(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                n += 1
        except OSError:
            pass
    return n


def test_disconnect_releases_inotify_fd(workdir):
    agent = AgentProcess()  # a private agent, so no other test's watcher is counted
    try:
        client = Client(agent.url)
        assert _inotify_fds(agent.proc.pid) == 0
        with client.open_stream("filesystem.Filesystem/WatchDir", {"path": str(workdir)}) as frames:
            assert next(frames)[1] == {"start": {}}
            assert _inotify_fds(agent.proc.pid) == 1
        client.close()  # drops the connection while the stream is idle
        _wait_for(lambda: _inotify_fds(agent.proc.pid) == 0)
    finally:
        agent.stop()


def test_watch_stream_keepalive_and_deadline(client: Client, workdir):
    t0 = time.monotonic()
    events = client.stream("filesystem.Filesystem/WatchDir", {"path": str(workdir)},
                           headers={"Keepalive-Ping-Interval": "1", "Connect-Timeout-Ms": "2500"})
    assert time.monotonic() - t0 < 10
    assert events[0] == {"start": {}} and {"keepalive": {}} in events and events[-1] == {}


def test_polled_watcher(client: Client, workdir):
    wid = client.ok("filesystem.Filesystem/CreateWatcher", {"path": str(workdir), "recursive": False})["watcherId"]
    assert client.ok("filesystem.Filesystem/GetWatcherEvents", {"watcherId": wid}) == {}
    (workdir / "a").write_text("1")
    got: list = []
    _wait_for(lambda: got.extend(client.ok("filesystem.Filesystem/GetWatcherEvents",
                                            {"watcher_id": wid}).get("events", [])) or
              any(e["name"] == "a" and e["type"] == "EVENT_TYPE_WRITE" for e in got))
    assert got[0] == {"name": "a", "type": "EVENT_TYPE_CREATE"}
    assert client.ok("filesystem.Filesystem/RemoveWatcher", {"watcherId": wid}) == {}
    r = client.unary("filesystem.Filesystem/GetWatcherEvents", {"watcherId": wid})
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_watch_needs_user_permission(client: Client, workdir):
    private = workdir / "private"
    private.mkdir(mode=0o700)
    r = client.unary("filesystem.Filesystem/CreateWatcher", {"path": str(private)}, user="nobody")
    assert r.status_code == 403


def test_filesystem_type_reads_statfs_magic():
    from hutch.agent.watcher import filesystem_type

    assert filesystem_type("/proc") == 0x9FA0  # PROC_SUPER_MAGIC


def test_upload_then_poll_sees_create_chmod_write_at_once(client: Client, workdir):
    """Events of a finished upload are there on the very next poll, in envd's order."""
    for attempt in range(5):
        wid = client.ok("filesystem.Filesystem/CreateWatcher", {"path": str(workdir)})["watcherId"]
        target = workdir / f"w{attempt}.txt"
        r = client.http.post("/files", files=[("file", (str(target), b"watched", "application/octet-stream"))])
        assert r.status_code == 200
        events = client.ok("filesystem.Filesystem/GetWatcherEvents", {"watcherId": wid})["events"]
        assert [(e["name"], e["type"]) for e in events] == [
            (target.name, "EVENT_TYPE_CREATE"), (target.name, "EVENT_TYPE_CHMOD"), (target.name, "EVENT_TYPE_WRITE")]
        # Uploads are atomic (a hidden temporary file renamed over the target), so overwriting
        # reports the same three events and nothing of the temporary file.
        client.http.post("/files", params={"path": str(target)}, content=b"again",
                         headers={"Content-Type": "application/octet-stream"})
        events = client.ok("filesystem.Filesystem/GetWatcherEvents", {"watcherId": wid})["events"]
        assert [(e["name"], e["type"]) for e in events] == [
            (target.name, "EVENT_TYPE_CREATE"), (target.name, "EVENT_TYPE_CHMOD"), (target.name, "EVENT_TYPE_WRITE")]
        assert target.read_bytes() == b"again"
        assert [p.name for p in workdir.iterdir() if "hutch-upload" in p.name] == []
        client.ok("filesystem.Filesystem/RemoveWatcher", {"watcherId": wid})


def test_recursive_watch_reports_files_made_inside_a_new_directory(client: Client, workdir):
    wid = client.ok("filesystem.Filesystem/CreateWatcher", {"path": str(workdir), "recursive": True})["watcherId"]
    # One upload creates the directory and the file before the agent can watch the directory.
    r = client.http.post("/files", params={"path": str(workdir / "new" / "deeper" / "f.txt")}, content=b"x",
                         headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200
    seen: list = []
    _wait_for(lambda: seen.extend(client.ok("filesystem.Filesystem/GetWatcherEvents",
                                             {"watcherId": wid}).get("events", []))
              or ("new/deeper/f.txt", "EVENT_TYPE_CREATE") in [(e["name"], e["type"]) for e in seen])
    names = [e["name"] for e in seen]
    assert names[0] == "new" and "new/deeper" in names
    client.ok("filesystem.Filesystem/RemoveWatcher", {"watcherId": wid})
