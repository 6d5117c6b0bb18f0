"""proto3 JSON helpers and the envd message builders (golden JSON)."""

from __future__ import annotations

import json

from hutch.protocol import envd, protojson as pj
from hutch.protocol.envelope import dumps, encode_envelope


def test_names():
    assert pj.camel("exit_code") == "exitCode" and pj.camel("symlink_target") == "symlinkTarget"
    assert pj.snake("includeEntry") == "include_entry"
    msg = {"watcherId": "a", "include_entry": True, "x": None}
    assert pj.field(msg, "watcher_id") == "a" and pj.field(msg, "include_entry") is True
    assert pj.field(msg, "x", 5) == 5 and pj.field(None, "y", 1) == 1


def test_bytes_ints_enums():
    assert pj.b64encode(b"hi\n") == "aGkK"
    assert pj.b64decode("aGkK") == b"hi\n" and pj.b64decode("aGk") == b"hi"
    assert pj.b64decode("-_8") == b"\xfb\xff" and pj.b64decode(None) == b""
    assert pj.int64(12) == "12" and pj.parse_int("12") == 12 and pj.parse_int(None, 3) == 3
    assert pj.parse_enum(envd.SIGNALS, "SIGNAL_SIGKILL") == 9
    assert pj.parse_enum(envd.SIGNALS, 15) == 15 and pj.parse_enum(envd.SIGNALS, "15") == 15
    assert pj.parse_enum(envd.SIGNALS, "NOPE") == 0
    assert pj.enum_name(envd.FILE_TYPES, 2) == "FILE_TYPE_DIRECTORY"


def test_timestamps():
    assert pj.timestamp_ns(0) == "1970-01-01T00:00:00Z"
    assert pj.timestamp_ns(1_700_000_000_250_000_000) == "2023-11-14T22:13:20.250Z"
    assert pj.timestamp_ns(1_000_001_000) == "1970-01-01T00:00:01.000001Z"
    assert pj.timestamp_ns(1_000_000_001) == "1970-01-01T00:00:01.000000001Z"
    assert pj.timestamp(1.5) == "1970-01-01T00:00:01.500Z"
    assert pj.parse_timestamp("2023-11-14T22:13:20.250Z") == 1_700_000_000.25
    assert pj.parse_timestamp("2023-11-14T23:13:20+01:00") == 1_700_000_000


def test_process_events_golden():
    assert dumps(envd.start_event(42)) == b'{"event":{"start":{"pid":42}}}'
    assert dumps(envd.data_event(stdout=b"hi\n")) == b'{"event":{"data":{"stdout":"aGkK"}}}'
    assert dumps(envd.data_event(stderr=b"e")) == b'{"event":{"data":{"stderr":"ZQ=="}}}'
    assert dumps(envd.data_event(pty=b"p")) == b'{"event":{"data":{"pty":"cA=="}}}'
    for kind in ("stdout", "stderr", "pty"):
        data = bytes(range(256)) * 3
        assert envd.encode_data_envelope(kind, data) == encode_envelope(envd.data_event(**{kind: data}))
    assert envd.end_event(0, exited=True, status="exit status 0") == {
        "event": {"end": {"exited": True, "status": "exit status 0"}}}
    assert envd.end_event(1, exited=True, status="exit status 1", error="x") == {
        "event": {"end": {"exitCode": 1, "exited": True, "status": "exit status 1", "error": "x"}}}
    assert envd.keepalive_event() == {"event": {"keepalive": {}}}
    assert envd.process_info(7, "/bin/bash", ["-c", "x"], {}, None, "t") == {
        "config": {"cmd": "/bin/bash", "args": ["-c", "x"]}, "pid": 7, "tag": "t"}


def test_entry_info_golden():
    entry = envd.entry_info(
        name="a", type=envd.FILE_TYPE_FILE, path="/a", size=0, mode=0o644, permissions="-rw-r--r--",
        owner="root", group="root", modified_time="1970-01-01T00:00:00Z",
    )
    assert entry == {"name": "a", "type": "FILE_TYPE_FILE", "path": "/a", "mode": 420,
                     "permissions": "-rw-r--r--", "owner": "root", "group": "root",
                     "modifiedTime": "1970-01-01T00:00:00Z"}
    link = envd.entry_info(
        name="l", type=envd.FILE_TYPE_DIRECTORY, path="/l", size=4096, mode=0o755, permissions="drwxr-xr-x",
        owner="u", group="g", modified_time="1970-01-01T00:00:00Z", symlink_target="/t",
        metadata={"k": "v"}, is_symlink=True,
    )
    assert link["size"] == "4096" and link["isSymlink"] is True and link["symlinkTarget"] == "/t"
    assert link["metadata"] == {"k": "v"}
    event = envd.filesystem_event("d/f", envd.EVENT_CREATE)
    assert json.loads(dumps(envd.watch_filesystem_event(event))) == {
        "filesystem": {"name": "d/f", "type": "EVENT_TYPE_CREATE"}}


def test_sdk_codec_reads_our_messages():
    """The e2b SDK's generated message classes parse what the agent builds."""
    import pytest

    pb = pytest.importorskip("e2b.envd.process.process_pb")
    fpb = pytest.importorskip("e2b.envd.filesystem.filesystem_pb")
    from e2b.envd.client_shared import _ProtoJSONCodec  # type: ignore[attr-defined]

    codec = _ProtoJSONCodec()
    msg = codec.decode(dumps(envd.end_event(3, exited=True, status="exit status 3")), pb.StartResponse)
    end = msg.event.event
    assert end.field == "end" and end.value.exit_code == 3 and end.value.exited
    entry = envd.entry_info(name="a", type=envd.FILE_TYPE_FILE, path="/a", size=12, mode=0o644,
                            permissions="-rw-r--r--", owner="o", group="g",
                            modified_time="2023-11-14T22:13:20.250Z", is_symlink=True, symlink_target="/b")
    stat = codec.decode(dumps({"entry": entry}), fpb.StatResponse)
    assert stat.entry.size == 12 and stat.entry.is_symlink and stat.entry.symlink_target == "/b"


def test_version():
    assert envd.ENVD_VERSION == "0.6.4"
    assert envd.path(envd.PROCESS_SERVICE, "Start") == "/process.Process/Start"
