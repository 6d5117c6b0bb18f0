"""hutch's Python SDK: ``Sandbox`` (blocking) and ``AsyncSandbox`` (asyncio).

    from hutch import Sandbox

    with Sandbox.create(template="base", timeout=300) as sbx:
        print(sbx.commands.run("uname -a").stdout)
        sbx.files.write("/home/user/data.csv", b"a,b\n1,2\n")

Where requests go: ``url=`` or ``HUTCH_URL`` (default ``http://127.0.0.1:7711``); the key:
``api_key=`` or ``HUTCH_API_KEY``. As root on the server's own machine no key is needed: for
a loopback URL the SDK reads the server's admin key from
``<HUTCH_DATA_DIR or /var/lib/hutch>/admin.key`` (details in ``hutch.sdk._config``).

The async classes in ``_async`` are the source; the sync ones in ``_sync`` are generated
from them by ``scripts/unasync.py``. Names and call shapes follow the e2b SDK, so code
written for E2B runs against hutch by changing the import.
"""

from hutch.sdk._async.commands import AsyncCommandHandle, AsyncCommands
from hutch.sdk._async.files import AsyncFilesystem, AsyncWatchHandle
from hutch.sdk._async.process import AsyncProcess, AsyncStreamReader, AsyncStreamWriter
from hutch.sdk._async.pty import AsyncPty
from hutch.sdk._async.sandbox import AsyncSandbox, AsyncSandboxPaginator
from hutch.sdk._async.code import AsyncCodeInterpreter
from hutch.sdk._config import ConnectionConfig
from hutch.sdk._execution import (
    Chart,
    Context,
    Execution,
    ExecutionError,
    Logs,
    OutputMessage,
    Result,
)
from hutch.sdk._models import (
    CommandResult,
    EntryInfo,
    FileType,
    FilesystemEvent,
    FilesystemEventType,
    ProcessInfo,
    PtySize,
    SandboxInfo,
    SandboxMetrics,
    SandboxQuery,
    SandboxState,
    SnapshotInfo,
    WriteInfo,
)
from hutch.sdk._output import OUTPUT_CAP
from hutch.sdk._sync.code import CodeInterpreter
from hutch.sdk._sync.commands import CommandHandle, Commands
from hutch.sdk._sync.files import Filesystem, WatchHandle
from hutch.sdk._sync.process import Process, StreamReader, StreamWriter
from hutch.sdk._sync.pty import Pty
from hutch.sdk._sync.sandbox import Sandbox, SandboxPaginator
from hutch.sdk._template import Template

__all__ = [
    "AsyncCodeInterpreter",
    "AsyncCommandHandle",
    "AsyncCommands",
    "AsyncFilesystem",
    "AsyncProcess",
    "AsyncPty",
    "AsyncSandbox",
    "AsyncSandboxPaginator",
    "AsyncStreamReader",
    "AsyncStreamWriter",
    "AsyncWatchHandle",
    "Chart",
    "CodeInterpreter",
    "CommandHandle",
    "CommandResult",
    "Commands",
    "ConnectionConfig",
    "Context",
    "EntryInfo",
    "Execution",
    "ExecutionError",
    "FileType",
    "Filesystem",
    "FilesystemEvent",
    "FilesystemEventType",
    "Logs",
    "OUTPUT_CAP",
    "OutputMessage",
    "Process",
    "ProcessInfo",
    "Pty",
    "PtySize",
    "Result",
    "Sandbox",
    "SandboxInfo",
    "SandboxMetrics",
    "SandboxPaginator",
    "SandboxQuery",
    "SandboxState",
    "SnapshotInfo",
    "StreamReader",
    "StreamWriter",
    "Template",
    "WatchHandle",
    "WriteInfo",
]
