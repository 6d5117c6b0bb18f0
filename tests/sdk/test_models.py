"""Decoding of wire messages (proto3 JSON) into the SDK's values."""

from __future__ import annotations

from datetime import datetime, timezone

from hutch.sdk import _wire
from hutch.sdk._models import (
    EntryInfo, FilesystemEvent, FilesystemEventType, FileType, ProcessInfo, SandboxInfo,
    SandboxState, parse_time,
)


def test_parse_time_with_nanoseconds_and_zulu():
    got = parse_time("2026-12-02T16:22:11.123456789Z")
    assert got == datetime(2026, 12, 2, 16, 22, 11, 123456, tzinfo=timezone.utc)
    assert parse_time("2026-12-02T16:22:11+00:00").tzinfo is not None


def test_entry_info():
    entry = EntryInfo.from_wire({
        "name": "a.txt", "type": "FILE_TYPE_FILE", "path": "/home/user/a.txt", "size": "12",
        "mode": 420, "permissions": "-rw-r--r--", "owner": "user", "group": "user",
        "modifiedTime": "2026-12-02T16:22:11Z",
    })
    assert entry.type is FileType.FILE and entry.size == 12 and entry.symlink_target is None
    link = EntryInfo.from_wire({"name": "l", "type": "FILE_TYPE_FILE", "isSymlink": True,
                                "symlinkTarget": "/x"})
    assert link.type is FileType.SYMLINK and link.symlink_target == "/x"
    assert EntryInfo.from_wire({"name": "d", "type": 2}).type is FileType.DIR


def test_filesystem_event():
    event = FilesystemEvent.from_wire({"name": "f", "type": "EVENT_TYPE_CREATE"})
    assert event.type is FilesystemEventType.CREATE and event.entry is None
    assert FilesystemEvent.from_wire({"name": "f", "type": "EVENT_TYPE_UNSPECIFIED"}) is None


def test_sandbox_info():
    info = SandboxInfo.from_wire({
        "sandboxID": "abc123", "templateID": "base", "clientID": "x", "state": "running",
        "startedAt": "2026-12-02T16:00:00Z", "endAt": "2026-12-02T16:05:00Z",
        "cpuCount": 2, "memoryMB": 512, "diskSizeMB": 1024, "envdVersion": "0.6.4",
        "metadata": {"k": "v"},
    })
    assert info.state is SandboxState.RUNNING and info.metadata == {"k": "v"}
    assert (info.end_at - info.started_at).total_seconds() == 300


def test_process_info():
    info = ProcessInfo.from_wire({"pid": 7, "tag": "t", "config": {
        "cmd": "/bin/bash", "args": ["-l", "-c", "sleep 1"], "envs": {"A": "1"}, "cwd": "/"}})
    assert (info.pid, info.cmd, info.args[-1], info.envs, info.cwd) == (
        7, "/bin/bash", "sleep 1", {"A": "1"}, "/")


def test_request_shapes():
    assert _wire.user_header("root") == {"Authorization": "Basic cm9vdDo="}
    assert _wire.user_header(None) == {}
    assert _wire.timeout_header(1.5) == {"Connect-Timeout-Ms": "1500"}
    assert _wire.timeout_header(0) == {}
    assert _wire.process_config("/bin/bash", ["-l", "-c", "x"], None, None) == {
        "cmd": "/bin/bash", "args": ["-l", "-c", "x"]}
    assert _wire.unb64(_wire.b64("héllo")) == "héllo".encode()
