"""Interactive terminals in a sandbox: ``sbx.pty``.

A PTY is a process like any other (same stream, same handle); its output arrives as raw
bytes through ``on_data``, and its input goes to the terminal instead of a pipe.
"""

from __future__ import annotations

from typing import Dict, Optional, Union

from hutch.sdk import _wire
from hutch.sdk._async.commands import AsyncCommandHandle, AsyncCommands, OutputHandler
from hutch.sdk._async.transport import AsyncAgent
from hutch.sdk._models import PtySize

PTY_ENVS = {"TERM": "xterm-256color", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


class AsyncPty:
    def __init__(self, agent: AsyncAgent, commands: AsyncCommands) -> None:
        self._agent = agent
        self._commands = commands

    async def create(self, size: PtySize, on_data: Optional[OutputHandler] = None,
                     user: Optional[str] = None, cwd: Optional[str] = None,
                     envs: Optional[Dict[str, str]] = None, timeout: Optional[float] = 60,
                     request_timeout: Optional[float] = None) -> AsyncCommandHandle:
        """Start an interactive bash login shell on a new terminal of ``size``."""
        request = {
            "process": _wire.process_config("/bin/bash", ["-i", "-l"],
                                            {**PTY_ENVS, **(envs or {})}, cwd),
            "pty": {"size": {"cols": size.cols, "rows": size.rows}},
        }
        stream = await self._agent.stream("process.Process/Start", request, user=user,
                                          timeout=timeout, request_timeout=request_timeout)
        return await self._commands._handle(stream, input_field="pty", on_pty=on_data)

    async def connect(self, pid: int, on_data: Optional[OutputHandler] = None,
                      timeout: Optional[float] = 60,
                      request_timeout: Optional[float] = None) -> AsyncCommandHandle:
        stream = await self._agent.stream(
            "process.Process/Connect", {"process": _wire.selector(pid)},
            timeout=timeout, request_timeout=request_timeout,
        )
        return await self._commands._handle(stream, input_field="pty", on_pty=on_data)

    async def send_stdin(self, pid: int, data: Union[str, bytes],
                         request_timeout: Optional[float] = None) -> None:
        """Type into the terminal."""
        await self._commands._send_input(pid, "pty", data, request_timeout)

    async def resize(self, pid: int, size: PtySize,
                     request_timeout: Optional[float] = None) -> None:
        await self._agent.unary(
            "process.Process/Update",
            {"process": _wire.selector(pid), "pty": {"size": {"cols": size.cols, "rows": size.rows}}},
            request_timeout=request_timeout,
        )

    async def kill(self, pid: int, request_timeout: Optional[float] = None) -> bool:
        return await self._commands.kill(pid, request_timeout)
