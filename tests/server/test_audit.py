"""The audit trail, through the public API and the SDK with real sandboxes, plus the store's
batching, caps and retention and the data-plane tap's envelope following as units."""

from __future__ import annotations

import base64
import json
import secrets
import string
import threading
import time

import httpx
import pytest

from hutch.protocol.envd import encode_data_envelope, end_event, start_event
from hutch.protocol.envelope import encode_end_stream, encode_envelope
from hutch.sdk import PtySize, Sandbox
from hutch.server import audit
from hutch.server.store import Store

TIMEOUT = 120


def _random_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(20))


def _wait_for(fetch, check, timeout: float = 30.0):
    """Poll ``fetch()`` until ``check`` holds for it (events are written in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        got = fetch()
        if check(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


@pytest.fixture
def admin(hutch_server):
    with httpx.Client(base_url=hutch_server.url, timeout=TIMEOUT,
                      headers={"X-API-KEY": hutch_server.api_key}) as client:
        yield client


# -- with real sandboxes ----------------------------------------------------------------------


def test_every_kind_is_recorded_and_secrets_never_are(server_env, hutch_server, admin):
    create_secret = "create-" + secrets.token_hex(12)
    call_secret = "call-" + secrets.token_hex(12)
    sbx = Sandbox.create(envs={"API_TOKEN": create_secret}, timeout=TIMEOUT)
    try:
        # Both secrets are used, and printed: what is recorded of the output is cut.
        result = sbx.commands.run("echo token=$API_TOKEN; echo pw=$PW >&2; printf 'x%.0s' "
                                  "$(seq 10000)", envs={"PW": call_secret}, cwd="/tmp")
        assert create_secret in result.stdout and call_secret in result.stderr
        with pytest.raises(Exception):
            sbx.commands.run("kill -TERM $$")
        sbx.files.write("/tmp/audit.txt", "twelve bytes")
        assert sbx.files.read("/tmp/audit.txt") == "twelve bytes"
        terminal = sbx.pty.create(PtySize(cols=80, rows=24))
        sbx.pty.send_stdin(terminal.pid, b"exit 0\n")
        terminal.wait()
        sbx.set_timeout(TIMEOUT)
        sbx.update_network({"deny_out": ["198.51.100.0/24"]})
        sandbox_id = sbx.sandbox_id
    finally:
        sbx.kill()

    events = _wait_for(lambda: Sandbox.get_audit_log(sandbox_id, limit=1000),
                       lambda evs: any(e.get("event") == "killed" for e in evs))
    kinds = {e["kind"] for e in events}
    assert {"api", "lifecycle", "process", "pty", "file"} <= kinds, kinds
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)

    lifecycle = {e["event"]: e for e in events if e["kind"] == "lifecycle"}
    assert lifecycle["created"]["by"] == "admin" and lifecycle["created"]["env"] == ["API_TOKEN"]
    assert lifecycle["timeout_changed"]["timeout"] == TIMEOUT
    assert lifecycle["network_updated"]["egress"]["denyOut"] == ["198.51.100.0/24"]
    assert lifecycle["killed"]["by"] == "admin"

    calls = [e for e in events if e["kind"] == "api"]
    assert {(e["method"], e["path"], e["status"]) for e in calls} >= {
        ("POST", "/v2/sandboxes", 201), ("POST", "/sandboxes/{id}/timeout", 204),
        ("PUT", "/sandboxes/{id}/network", 204), ("DELETE", "/sandboxes/{id}", 204)}
    assert all(e["key_id"] == "admin" and e["duration_ms"] >= 0 for e in calls)

    procs = [e for e in events if e["kind"] == "process"]
    start, end = [e for e in procs if "echo token" in e["argv"][-1]]
    assert start["phase"] == "start" and end["phase"] == "end"
    assert start["pid"] == end["pid"] > 0
    assert start["argv"][:2] == ["/bin/bash", "-l"] and start["cwd"] == "/tmp"
    assert start["user"] == "user" and start["env"] == ["PW"]
    assert end["exit_code"] == 0 and end["duration_ms"] >= 0
    assert end["stdout_bytes"] == len(result.stdout.encode())
    assert end["stderr_bytes"] == len(result.stderr.encode())
    # The first 4 KiB, with the secret cut out.
    assert len(end["stdout_head"]) == audit.HEAD - len(create_secret) + len(audit.REDACTED)
    assert end["stdout_head"].startswith("token=[redacted]\n")
    assert end["stderr_head"] == "pw=[redacted]\n"
    killed = [e for e in procs if e["phase"] == "end" and "kill -TERM" in e["argv"][-1]]
    assert killed and killed[0]["signal"] == "terminated", killed

    files = [e for e in events if e["kind"] == "file"]
    assert [(e["op"], e["path"], e["size"], e["user"], e["status"]) for e in files] == [
        ("write", "/tmp/audit.txt", len("twelve bytes"), "user", 200),
        ("read", "/tmp/audit.txt", len("twelve bytes"), "user", 200)]

    ptys = [e for e in events if e["kind"] == "pty"]
    assert [e["phase"] for e in ptys] == ["start", "end"]
    assert ptys[1]["exit_code"] == 0 and ptys[1]["pty_bytes"] > 0

    # Neither secret anywhere: not in an API answer, the store (and its WAL), or the log.
    answer = admin.get(f"/sandboxes/{sandbox_id}/audit", params={"limit": 10000}).text
    files_to_grep = [hutch_server.data_dir / name for name in ("hutch.db", "hutch.db-wal")]
    blobs = [answer.encode(), hutch_server.log.read_bytes()]
    blobs += [p.read_bytes() for p in files_to_grep if p.exists()]
    for secret in (create_secret, call_secret):
        for blob in blobs:
            assert secret.encode() not in blob


def test_follow_streams_new_events_until_the_sandbox_ends(server_env):
    sbx = Sandbox.create(timeout=TIMEOUT)
    seen: list[dict] = []
    done = threading.Event()

    def follow() -> None:
        try:
            for event in Sandbox.follow_audit_log(sbx.sandbox_id, kind="process,lifecycle"):
                seen.append(event)
        finally:
            done.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        _wait_for(lambda: list(seen), lambda evs: any(e.get("event") == "created" for e in evs))
        sbx.commands.run("echo followed")
        got = _wait_for(lambda: list(seen), lambda evs: any(
            e["kind"] == "process" and e["phase"] == "end" for e in evs))
        assert any(e["kind"] == "process" and e["phase"] == "end"
                   and e["stdout_head"] == "followed\n" for e in got), got
        assert not done.is_set()
    finally:
        sbx.kill()
    assert done.wait(30), "the follow stream did not end with the sandbox"
    assert seen[-1]["event"] == "killed"
    assert {e["kind"] for e in seen} == {"process", "lifecycle"}
    assert [e["seq"] for e in seen] == sorted({e["seq"] for e in seen})


def test_follow_over_raw_http_is_ndjson(hutch_server, admin, server_env):
    sbx = Sandbox.create(timeout=TIMEOUT)
    try:
        with admin.stream("GET", f"/sandboxes/{sbx.sandbox_id}/audit",
                          params={"follow": "true", "kind": "lifecycle"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/x-ndjson")
            lines = response.iter_lines()
            first = json.loads(next(lines))
            assert first["event"] == "created"
            sbx.set_timeout(TIMEOUT)
            while not (line := next(lines)).strip():
                pass
            assert json.loads(line)["event"] == "timeout_changed"
    finally:
        sbx.kill()


def test_filters(server_env, admin):
    sbx = Sandbox.create(timeout=TIMEOUT)
    try:
        for n in range(3):
            sbx.commands.run(f"echo {n}")
        path = f"/sandboxes/{sbx.sandbox_id}/audit"
        every = _wait_for(lambda: sbx.get_audit_log(kind="process", limit=100),
                          lambda evs: len(evs) == 6)
        assert len(every) == 6 and {e["kind"] for e in every} == {"process"}
        assert sbx.get_audit_log(kind="process", limit=2) == every[-2:]  # the latest
        assert sbx.get_audit_log(kind="process", after=every[1]["seq"], limit=2) == every[2:4]
        assert sbx.get_audit_log(kind="process", since=every[3]["time"]) == every[3:]
        both = sbx.get_audit_log(kind=["process", "lifecycle"])
        assert {e["kind"] for e in both} == {"process", "lifecycle"}
        iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(every[0]["time"] - 1)) + "Z"
        assert admin.get(path, params={"kind": "process", "since": iso}).json()["events"] \
            == every
        for bad in ({"kind": "nope"}, {"limit": "0"}, {"since": "yesterday"},
                    {"after": "-1"}, {"follow": "maybe"}):
            answer = admin.get(path, params=bad)
            assert answer.status_code == 400, (bad, answer.text)
            assert answer.json()["code"] == 400
        # The egress log is a filtered view of the same trail, as it always answered.
        assert admin.get(f"/sandboxes/{sbx.sandbox_id}/egress").json() == {"events": []}
    finally:
        sbx.kill()


def test_a_key_sees_only_its_own_sandboxes_audit(hutch_server, admin, server_env):
    made = admin.post("/keys", json={"name": "audit-tenant"}).json()
    other = httpx.Client(base_url=hutch_server.url, timeout=TIMEOUT,
                         headers={"X-API-KEY": made["key"]})
    sbx = Sandbox.create(timeout=TIMEOUT)
    try:
        mine = other.get(f"/sandboxes/{sbx.sandbox_id}/audit")
        never = other.get(f"/sandboxes/{_random_id()}/audit")
        assert mine.status_code == never.status_code == 404
        assert mine.json()["message"] == never.json()["message"].replace(
            never.request.url.path.split("/")[2], sbx.sandbox_id)
        follow = other.get(f"/sandboxes/{sbx.sandbox_id}/audit", params={"follow": "true"})
        assert follow.status_code == 404
        # The probe is the prober's own call, about no sandbox of theirs: it is filed under
        # their key, never in the owner's trail.
        theirs = _wait_for(lambda: other.get("/audit").json()["events"],
                           lambda evs: len(evs) >= 3)
        assert {(e["path"], e["status"]) for e in theirs} >= {("/sandboxes/{id}/audit", 404)}
        assert all(e["key_id"] == made["id"] and "sandbox_id" not in e for e in theirs)
        owners = sbx.get_audit_log(kind="api", limit=1000)
        assert all(e["key_id"] == "admin" for e in owners), owners
    finally:
        sbx.kill()
        other.close()
        admin.delete(f"/keys/{made['id']}")


# -- units --------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_retention_prunes_old_events_and_the_cap_is_per_kind(tmp_path):
    clock = Clock(1_000_000.0)
    store = Store(tmp_path / "hutch.db", clock=clock)
    store.audit_keep = 3
    store.record({"kind": "process", "sandbox_id": "s1", "phase": "start"})
    for n in range(10):   # a flood of resolver answers must not push the process out
        store.record({"kind": "dns", "sandbox_id": "s1", "name": f"n{n}", "allowed": True})
    store.flush_audit()
    kinds = [e["kind"] for e in store.audit(sandbox_id="s1", limit=100)]
    assert kinds == ["process", "dns", "dns", "dns"]
    assert [e["name"] for e in store.egress_log("s1")] == ["n7", "n8", "n9"]

    clock.now += 10 * 86400
    store.record({"kind": "lifecycle", "sandbox_id": "s1", "event": "killed"})
    store.record({"kind": "api", "key_id": "k1", "method": "GET", "path": "/sandboxes"})
    clock.now += 25 * 86400
    assert store.prune_audit(30 * 86400) == 4      # the first batch is 35 days old
    assert [e["kind"] for e in store.audit(sandbox_id="s1")] == ["lifecycle"]
    assert [e["kind"] for e in store.audit(key_id="k1")] == ["api"]
    clock.now += 6 * 86400
    assert store.prune_audit(30 * 86400) == 2
    assert store.audit(sandbox_id="s1") == [] and store.audit(key_id="k1") == []
    store.close()


async def test_the_retention_task_prunes_periodically(tmp_path):
    import asyncio

    clock = Clock(1_000_000.0)
    store = Store(tmp_path / "hutch.db", clock=clock)
    store.record({"kind": "lifecycle", "sandbox_id": "s1", "event": "created"})
    store.flush_audit()
    task = asyncio.create_task(audit.retain(store, 3600.0, every=0.01))
    try:
        await asyncio.sleep(0.05)
        assert store.audit(sandbox_id="s1")
        clock.now += 3601
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not store.audit(sandbox_id="s1"):
                break
        assert store.audit(sandbox_id="s1") == []
    finally:
        task.cancel()
        store.close()


def test_env_values_are_sealed_in_the_store(tmp_path):
    from hutch.server.store import SandboxRecord

    path = tmp_path / "hutch.db"
    store = Store(path)
    rec = SandboxRecord(id="a" * 20, template="base", state="running", created_at=1.0,
                        end_at=2.0, cpu=1.0, memory_mb=1, disk_mb=1, pids=1,
                        network="none", env_vars={"TOKEN": "sealed-value-1234"})
    store.insert(rec)
    assert store.get(rec.id).env_vars == {"TOKEN": "sealed-value-1234"}
    store.update(rec, env_vars={"TOKEN": "second-value-5678"})
    store.close()
    for name in ("hutch.db", "hutch.db-wal"):
        if (tmp_path / name).exists():
            data = (tmp_path / name).read_bytes()
            assert b"sealed-value-1234" not in data and b"second-value-5678" not in data
    again = Store(path)
    assert again.get(rec.id).env_vars == {"TOKEN": "second-value-5678"}
    again.close()


def _start_request(cmd: str, args: list[str], envs: dict, pty: bool = False) -> bytes:
    msg = {"process": {"cmd": cmd, "args": args, "envs": envs, "cwd": "/w"}}
    if pty:
        msg["pty"] = {"size": {"cols": 80, "rows": 24}}
    return encode_envelope(msg)


def test_the_tap_follows_envelopes_however_the_bytes_are_cut():
    big = bytes(range(256)) * 600           # 150 KiB in one envelope: kept only in part
    stream = (encode_envelope(start_event(42)) + encode_data_envelope("stdout", b"hello ")
              + encode_data_envelope("stdout", big) + encode_data_envelope("stderr", b"e")
              + encode_envelope({"event": {"data": {"stdout": base64.b64encode(b"!").decode()}}})
              + encode_envelope(end_event(7, exited=True, status="exit status 7"))
              + encode_end_stream())
    for cut in (1, 2, 5, 7, 4096, 65536, len(stream)):
        recorded: list[dict] = []
        store = type("S", (), {"record": lambda self, e: recorded.append(e)})()
        tap = audit.ProcessTap(store, "s" * 20, None, ["long-secret"])
        request = _start_request("/bin/sh", ["-c", "echo long-secret"], {"K": "other-secret"})
        for i in range(0, len(request), 3):
            tap.request(request[i:i + 3])
        tap.status = 200
        for i in range(0, len(stream), cut):
            tap.response(stream[i:i + cut])
        tap.close()
        start, end = recorded
        assert start["phase"] == "start" and start["pid"] == 42
        assert start["argv"] == ["/bin/sh", "-c", "echo [redacted]"]
        assert start["env"] == ["K"] and start["user"] == "user" and start["cwd"] == "/w"
        assert end["exit_code"] == 7
        assert end["stdout_bytes"] == 6 + len(big) + 1 and end["stderr_bytes"] == 1
        assert end["stdout_head"].encode("utf-8", "replace")[:6] == b"hello "
        assert len(end["stdout_head"]) == audit.HEAD or "\ufffd" in end["stdout_head"]
        assert end["stderr_head"] == "e"
        assert "other-secret" not in json.dumps(recorded)


def test_the_tap_records_a_signal_a_pty_and_a_start_that_failed():
    recorded: list[dict] = []
    store = type("S", (), {"record": lambda self, e: recorded.append(e)})()
    tap = audit.ProcessTap(store, "s" * 20, "root", [])
    tap.request(_start_request("bash", [], {}, pty=True))
    tap.status = 200
    tap.response(encode_envelope(start_event(9)) + encode_data_envelope("pty", b"$ ")
                 + encode_envelope(end_event(-1, exited=False, status="signal: killed")))
    tap.close()
    assert [e["kind"] for e in recorded] == ["pty", "pty"]
    assert recorded[1]["signal"] == "killed" and recorded[1]["pty_bytes"] == 2
    assert recorded[1]["user"] == "root"

    recorded.clear()
    tap = audit.ProcessTap(store, "s" * 20, None, [])
    tap.request(_start_request("nope", [], {}))
    tap.status = 200
    tap.response(encode_end_stream({"code": "not_found", "message": "no such file: nope"}))
    tap.close()
    assert recorded[0]["phase"] == "end" and recorded[0]["started"] is False
    assert recorded[0]["error"] == "no such file: nope"

    recorded.clear()
    tap = audit.ProcessTap(store, "s" * 20, None, [])
    tap.request(_start_request("sleep", ["100"], {}))
    tap.status = 200
    tap.response(encode_envelope(start_event(5)))
    tap.close(detached=True)
    assert recorded[-1]["detached"] is True and "exit_code" not in recorded[-1]


def test_the_cli_shows_exports_and_follows_the_trail(server_env):
    import os
    import subprocess
    import sys

    sbx = Sandbox.create(timeout=TIMEOUT)
    try:
        sbx.commands.run("echo from-cli")
    finally:
        sbx.kill()
    _wait_for(lambda: Sandbox.get_audit_log(sbx.sandbox_id, kind="lifecycle"),
              lambda evs: any(e["event"] == "killed" for e in evs))

    def hutch(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "hutch", "logs", sbx.sandbox_id, *args],
                              capture_output=True, text=True, env={**os.environ}, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    text = hutch()
    assert "lifecycle created by key admin" in text
    assert "process  end    pid" in text and "exit 0" in text and "echo from-cli" in text
    assert "api      DELETE /sandboxes/{id} -> 204" in text
    exported = [json.loads(line) for line in hutch("--kind", "process", "--json").splitlines()]
    assert [e["phase"] for e in exported] == ["start", "end"]
    # Following an ended sandbox's trail prints it and ends.
    followed = hutch("--follow", "--kind", "lifecycle", "--json").splitlines()
    assert [json.loads(line)["event"] for line in followed] == ["created", "killed"]


def test_an_out_of_memory_kill_is_a_lifecycle_event(server_env):
    with Sandbox.create(timeout=TIMEOUT, memory_mb=128) as sbx:
        try:
            with pytest.raises(Exception):
                sbx.commands.run("python3 -c 'b = bytearray(1 << 30)'")
            events = _wait_for(lambda: sbx.get_audit_log(kind="lifecycle"),
                               lambda evs: any(e["event"] == "oom" for e in evs))
        finally:
            sbx.kill()
    oom = [e for e in events if e["event"] == "oom"]
    assert oom and oom[0]["oom_kills"] >= 1, events
    ended = [e for e in Sandbox.get_audit_log(sbx.sandbox_id, kind="process")
             if e["phase"] == "end"]
    assert ended[-1]["signal"] == "killed", ended
