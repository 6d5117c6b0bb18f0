"""The plain data the SDK hands back: results, entries, sandbox records.

Names and fields follow the e2b SDK so code written for it reads the same against hutch.
Each ``from_wire`` turns one decoded JSON message (proto3 JSON mapping: camelCase keys,
int64 as strings, enums as names, zero values omitted) into a value.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional


def parse_time(value: Optional[str]) -> datetime:
    """RFC 3339 → aware datetime (Python 3.11 parses 'Z' and up to 6 fraction digits)."""
    if not value:
        return datetime.fromtimestamp(0, timezone.utc)
    text = value.replace("Z", "+00:00")
    head, sep, tail = text.partition(".")
    if sep:  # nanosecond precision from the wire: keep microseconds
        count = len(tail) - len(tail.lstrip("0123456789"))
        tail = tail[:min(count, 6)] + tail[count:]
        text = head + "." + tail
    return datetime.fromisoformat(text)


# -- commands ---------------------------------------------------------------------------------


@dataclass
class CommandResult:
    """What a finished command produced (output is None when it was not retained)."""

    stderr: Optional[str]
    stdout: Optional[str]
    exit_code: int
    error: Optional[str] = None


@dataclass
class PtySize:
    rows: int
    cols: int


@dataclass
class ProcessInfo:
    """A process started through the agent, as ``commands.list()`` reports it."""

    pid: int
    tag: Optional[str]
    cmd: str
    args: List[str]
    envs: Dict[str, str]
    cwd: Optional[str]

    @classmethod
    def from_wire(cls, msg: dict) -> "ProcessInfo":
        config = msg.get("config") or {}
        return cls(
            pid=int(msg.get("pid", 0)),
            tag=msg.get("tag"),
            cmd=config.get("cmd", ""),
            args=list(config.get("args") or []),
            envs=dict(config.get("envs") or {}),
            cwd=config.get("cwd"),
        )


# -- files ------------------------------------------------------------------------------------


class FileType(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


_FILE_TYPES = {
    "FILE_TYPE_FILE": FileType.FILE, 1: FileType.FILE,
    "FILE_TYPE_DIRECTORY": FileType.DIR, 2: FileType.DIR,
    "FILE_TYPE_SYMLINK": FileType.SYMLINK, 3: FileType.SYMLINK,
}


@dataclass
class WriteInfo:
    """What a write reports about each file it wrote."""

    name: str
    type: Optional[FileType]
    path: str
    metadata: Optional[Dict[str, str]] = field(default=None, kw_only=True)

    @classmethod
    def from_wire(cls, msg: dict) -> "WriteInfo":
        kind = msg.get("type")
        return cls(
            name=msg.get("name", ""),
            type=FileType(kind) if kind in ("file", "dir") else None,
            path=msg.get("path", ""),
            metadata=msg.get("metadata") or None,
        )


@dataclass
class EntryInfo(WriteInfo):
    """A filesystem entry inside the sandbox."""

    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_time: datetime
    symlink_target: Optional[str] = None

    @classmethod
    def from_wire(cls, msg: dict) -> "EntryInfo":
        kind = FileType.SYMLINK if msg.get("isSymlink") else _FILE_TYPES.get(msg.get("type"))
        return cls(
            name=msg.get("name", ""),
            type=kind,
            path=msg.get("path", ""),
            size=int(msg.get("size", 0)),
            mode=int(msg.get("mode", 0)),
            permissions=msg.get("permissions", ""),
            owner=msg.get("owner", ""),
            group=msg.get("group", ""),
            modified_time=parse_time(msg.get("modifiedTime")),
            symlink_target=msg.get("symlinkTarget"),
            metadata=msg.get("metadata") or None,
        )


class FilesystemEventType(enum.Enum):
    CHMOD = "chmod"
    CREATE = "create"
    REMOVE = "remove"
    RENAME = "rename"
    WRITE = "write"


_EVENT_TYPES = {
    "EVENT_TYPE_CREATE": FilesystemEventType.CREATE, 1: FilesystemEventType.CREATE,
    "EVENT_TYPE_WRITE": FilesystemEventType.WRITE, 2: FilesystemEventType.WRITE,
    "EVENT_TYPE_REMOVE": FilesystemEventType.REMOVE, 3: FilesystemEventType.REMOVE,
    "EVENT_TYPE_RENAME": FilesystemEventType.RENAME, 4: FilesystemEventType.RENAME,
    "EVENT_TYPE_CHMOD": FilesystemEventType.CHMOD, 5: FilesystemEventType.CHMOD,
}


@dataclass
class FilesystemEvent:
    name: str
    type: FilesystemEventType
    entry: Optional[EntryInfo] = None

    @classmethod
    def from_wire(cls, msg: dict) -> Optional["FilesystemEvent"]:
        kind = _EVENT_TYPES.get(msg.get("type"))
        if kind is None:
            return None
        entry = msg.get("entry")
        return cls(
            name=msg.get("name", ""),
            type=kind,
            entry=EntryInfo.from_wire(entry) if entry else None,
        )


# -- sandboxes --------------------------------------------------------------------------------


class SandboxState(str, enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"


@dataclass
class SandboxInfo:
    """A sandbox as the server describes it (``get_info()``, ``Sandbox.list()``)."""

    sandbox_id: str
    template_id: str
    name: Optional[str]
    metadata: Dict[str, str]
    started_at: datetime
    end_at: datetime
    state: SandboxState
    cpu_count: int
    memory_mb: int
    envd_version: str
    disk_size_mb: Optional[int] = None
    allow_internet_access: Optional[bool] = None
    #: What it may reach: ``{"allow_out": [...], "deny_out": [...], "allow_public_traffic"}``
    network: Optional[Dict[str, Any]] = None

    @classmethod
    def from_wire(cls, msg: dict) -> "SandboxInfo":
        state = msg.get("state", "running")
        return cls(
            sandbox_id=msg["sandboxID"],
            template_id=msg.get("templateID", ""),
            name=msg.get("alias"),
            metadata=dict(msg.get("metadata") or {}),
            started_at=parse_time(msg.get("startedAt")),
            end_at=parse_time(msg.get("endAt")),
            state=SandboxState(state) if state in ("running", "paused") else state,
            cpu_count=int(msg.get("cpuCount", 0)),
            memory_mb=int(msg.get("memoryMB", 0)),
            envd_version=msg.get("envdVersion", ""),
            disk_size_mb=msg.get("diskSizeMB"),
            allow_internet_access=msg.get("allowInternetAccess"),
            network=_network(msg.get("network")),
        )


def _network(wire: Optional[dict]) -> Optional[Dict[str, Any]]:
    if not isinstance(wire, dict):
        return None
    return {"allow_out": list(wire.get("allowOut") or []),
            "deny_out": list(wire.get("denyOut") or []),
            "allow_public_traffic": wire.get("allowPublicTraffic", True)}


@dataclass
class SandboxQuery:
    """Filters for ``Sandbox.list()``."""

    metadata: Optional[Dict[str, str]] = None
    state: Optional[List[SandboxState]] = None


@dataclass
class SnapshotInfo:
    """A saved sandbox: ``Sandbox.create(template=snapshot_id)`` starts from it."""

    snapshot_id: str
    names: List[str]

    @classmethod
    def from_wire(cls, msg: dict) -> "SnapshotInfo":
        return cls(snapshot_id=str(msg["snapshotID"]), names=list(msg.get("names") or []))


@dataclass
class SandboxMetrics:
    cpu_count: int
    cpu_used_pct: float
    disk_total: int
    disk_used: int
    mem_total: int
    mem_used: int
    mem_cache: int
    timestamp: datetime
    #: Processes the OOM killer killed in the sandbox so far (it hit its memory limit).
    oom_kills: int = 0

    @classmethod
    def from_wire(cls, msg: dict) -> "SandboxMetrics":
        return cls(
            cpu_count=int(msg.get("cpuCount", 0)),
            cpu_used_pct=float(msg.get("cpuUsedPct", 0.0)),
            disk_total=int(msg.get("diskTotal", 0)),
            disk_used=int(msg.get("diskUsed", 0)),
            mem_total=int(msg.get("memTotal", 0)),
            mem_used=int(msg.get("memUsed", 0)),
            mem_cache=int(msg.get("memCache", 0)),
            timestamp=parse_time(msg.get("timestamp")),
            oom_kills=int(msg.get("oomKills", 0)),
        )
