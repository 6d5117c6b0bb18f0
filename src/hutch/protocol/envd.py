"""The envd-compatible agent API as data: service paths, enums and message builders.

The agent builds its messages with these functions and the SDK reads them back with the
parsers in :mod:`hutch.protocol.protojson`, so the JSON shape lives in one place. Field names
follow the proto3 JSON mapping (lowerCamelCase); defaults are omitted.
"""

from __future__ import annotations

import binascii
from typing import Any, Dict, Mapping, Optional

from .envelope import encode_envelope
from .protojson import b64encode, int64, prune

#: The envd feature level the agent implements and the server reports as ``envdVersion``:
#: 0.6.4 means watchers (recursive), the stdin flag, server-side default user, CloseStdin,
#: octet-stream uploads, file metadata and entries in watch events are all there.
ENVD_VERSION = "0.6.4"

#: The agent's port inside the sandbox, as the SDK addresses it.
ENVD_PORT = 49983

PROCESS_SERVICE = "process.Process"
FILESYSTEM_SERVICE = "filesystem.Filesystem"

#: Methods by kind. Unary methods carry plain JSON bodies, the rest use envelopes.
PROCESS_UNARY = ("List", "SendInput", "SendSignal", "CloseStdin", "Update")
PROCESS_SERVER_STREAM = ("Start", "Connect")
PROCESS_CLIENT_STREAM = ("StreamInput",)
FILESYSTEM_UNARY = (
    "Stat", "MakeDir", "Move", "ListDir", "Remove",
    "CreateWatcher", "GetWatcherEvents", "RemoveWatcher",
)
FILESYSTEM_SERVER_STREAM = ("WatchDir",)

CONTENT_TYPE_UNARY = "application/json"
CONTENT_TYPE_STREAM = "application/connect+json"

# Request headers with a meaning for the agent.
HEADER_TIMEOUT = "connect-timeout-ms"
HEADER_KEEPALIVE = "keepalive-ping-interval"
HEADER_ACCESS_TOKEN = "x-access-token"
METADATA_HEADER_PREFIX = "x-metadata-"
#: Prefix of the extended attributes that hold file metadata.
METADATA_XATTR_PREFIX = "user.e2b."


def path(service: str, method: str) -> str:
    """The HTTP path of an RPC, e.g. ``/process.Process/Start``."""
    return f"/{service}/{method}"


# -- enums -----------------------------------------------------------------------------------

FILE_TYPE_UNSPECIFIED, FILE_TYPE_FILE, FILE_TYPE_DIRECTORY, FILE_TYPE_SYMLINK = 0, 1, 2, 3
FILE_TYPES: Dict[int, str] = {
    0: "FILE_TYPE_UNSPECIFIED",
    1: "FILE_TYPE_FILE",
    2: "FILE_TYPE_DIRECTORY",
    3: "FILE_TYPE_SYMLINK",
}

EVENT_CREATE, EVENT_WRITE, EVENT_REMOVE, EVENT_RENAME, EVENT_CHMOD = 1, 2, 3, 4, 5
EVENT_TYPES: Dict[int, str] = {
    0: "EVENT_TYPE_UNSPECIFIED",
    1: "EVENT_TYPE_CREATE",
    2: "EVENT_TYPE_WRITE",
    3: "EVENT_TYPE_REMOVE",
    4: "EVENT_TYPE_RENAME",
    5: "EVENT_TYPE_CHMOD",
}

SIGNALS: Dict[int, str] = {0: "SIGNAL_UNSPECIFIED", 15: "SIGNAL_SIGTERM", 9: "SIGNAL_SIGKILL"}


# -- process.Process messages -----------------------------------------------------------------


def start_event(pid: int) -> Dict[str, Any]:
    """``{"event":{"start":{"pid":…}}}``: always the first message of Start."""
    return {"event": {"start": prune({"pid": pid})}}


def data_event(*, stdout: bytes = b"", stderr: bytes = b"", pty: bytes = b"") -> Dict[str, Any]:
    """One chunk of output; exactly one of the streams is set."""
    if stdout:
        out = {"stdout": b64encode(stdout)}
    elif stderr:
        out = {"stderr": b64encode(stderr)}
    else:
        out = {"pty": b64encode(pty)}
    return {"event": {"data": out}}


_DATA_PREFIX = {kind: b'{"event":{"data":{"%s":"' % kind.encode() for kind in ("stdout", "stderr", "pty")}


def encode_data_envelope(kind: str, data: bytes) -> bytes:
    """The enveloped bytes of ``data_event(**{kind: data})``, built without a JSON encoder.

    The hot path of process output: base64 is JSON-safe, so the message is concatenated.
    """
    payload = _DATA_PREFIX[kind] + binascii.b2a_base64(data, newline=False) + b'"}}}'
    return encode_envelope(payload)


def end_event(
    exit_code: int, *, exited: bool, status: str, error: Optional[str] = None
) -> Dict[str, Any]:
    """The last message of a process stream. ``exitCode`` is omitted when 0 (proto3)."""
    end: Dict[str, Any] = prune({"exitCode": exit_code, "exited": exited, "status": status})
    if error is not None:
        end["error"] = error
    return {"event": {"end": end}}


def keepalive_event() -> Dict[str, Any]:
    """Sent on an idle process stream every ``Keepalive-Ping-Interval`` seconds."""
    return {"event": {"keepalive": {}}}


def process_info(
    pid: int, cmd: str, args: list, envs: Mapping[str, str], cwd: Optional[str], tag: Optional[str]
) -> Dict[str, Any]:
    """One entry of ``ListResponse.processes``."""
    config: Dict[str, Any] = prune({"cmd": cmd, "args": list(args), "envs": dict(envs)})
    if cwd is not None:
        config["cwd"] = cwd
    out: Dict[str, Any] = {"config": config, "pid": pid}
    if tag is not None:
        out["tag"] = tag
    return out


# -- filesystem.Filesystem messages -----------------------------------------------------------


def entry_info(
    *,
    name: str,
    type: int,
    path: str,
    size: int,
    mode: int,
    permissions: str,
    owner: str,
    group: str,
    modified_time: str,
    symlink_target: Optional[str] = None,
    metadata: Optional[Mapping[str, str]] = None,
    is_symlink: bool = False,
) -> Dict[str, Any]:
    """An ``EntryInfo``; ``size`` is an int64 and so a string on the wire."""
    out = prune(
        {
            "name": name,
            "type": FILE_TYPES.get(type, FILE_TYPES[0]) if type else None,
            "path": path,
            "size": int64(size) if size else None,
            "mode": mode,
            "permissions": permissions,
            "owner": owner,
            "group": group,
            "modifiedTime": modified_time,
            "metadata": dict(metadata) if metadata else None,
            "isSymlink": is_symlink,
        }
    )
    if symlink_target is not None:
        out["symlinkTarget"] = symlink_target
    return out


def filesystem_event(name: str, type: int, entry: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A ``FilesystemEvent``: ``name`` is relative to the watched directory."""
    out: Dict[str, Any] = {"name": name, "type": EVENT_TYPES[type]}
    if entry is not None:
        out["entry"] = entry
    return out


def watch_start_event() -> Dict[str, Any]:
    """The first message of WatchDir."""
    return {"start": {}}


def watch_filesystem_event(event: Dict[str, Any]) -> Dict[str, Any]:
    return {"filesystem": event}


def watch_keepalive_event() -> Dict[str, Any]:
    return {"keepalive": {}}
