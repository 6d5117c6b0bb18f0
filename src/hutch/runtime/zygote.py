"""The host side of the agent's zygote (hutch/agent/zygote.py): starts it, asks it for agents.

A sandbox's agent is Python, and Python's start with the agent's imports is the largest part
of a cold create on a small host. So when the OCI runtime is one that puts the sandbox in
namespaces of this kernel (runc, crun), the container's init runs a process that only waits,
and the agent comes from a fork of one long-lived process that imported it once, and enters
the sandbox with its confinement (see the zygote's module doc for the steps). Runtimes that
put a sandbox behind another kernel (runsc, kata) still start the agent inside: joining
their namespaces from the host would not be inside them.

The zygote is started on first use, with the agent library the sandboxes mount (so the
agent runs the same code either way) and no environment, and restarted if it ever ends.
Requests go one at a time: each is a fork and a few system calls.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

from hutch.errors import RuntimeError_
from hutch.runtime.command import stop_helper

log = logging.getLogger("hutch.runtime")

# The library's host path comes in on stdin, not on the command line: every agent forked from
# this process shows that command line to the sandbox (ps), and host paths stay out of it.
_MAIN = ("import sys; sys.path.insert(0, sys.stdin.buffer.raw.readline().decode().strip()); "
         "from hutch.agent.zygote import main; main()")


class Zygote:
    def __init__(self, program: bytes) -> None:
        self._program = program          # the sandbox's seccomp filter (seccomp_filter.py)
        self._proc: asyncio.subprocess.Process | None = None
        self._lib: Path | None = None
        self._lock = asyncio.Lock()
        self._stdlib: list[str] = []         # the zygote's standard library dirs (sys.path)

    async def _process(self, lib: Path) -> asyncio.subprocess.Process:
        if self._proc is not None and (self._proc.returncode is not None or lib != self._lib):
            await self.close()
        if self._proc is None:
            # -I -S: nothing from the server's environment or site-packages; the agent
            # library is the only path added.
            proc = await asyncio.create_subprocess_exec(
                "python3", "-I", "-S", "-c", _MAIN, executable=sys.executable, env={},
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd="/")
            proc.stdin.write(str(lib).encode() + b"\n")
            proc.stdin.write(json.dumps({"seccomp": self._program.hex()}).encode() + b"\n")
            await proc.stdin.drain()
            ready = await proc.stdout.readline()
            if not ready:
                await proc.wait()
                raise RuntimeError_(f"the agent's zygote did not start (exit {proc.returncode})")
            self._stdlib = json.loads(ready)["stdlib"]
            self._proc, self._lib = proc, lib
        return self._proc

    async def stdlib(self, lib: Path) -> list[str]:
        """The directories of the zygote's standard library, to be mounted in sandboxes."""
        async with self._lock:
            await self._process(lib)
            return list(self._stdlib)

    async def spawn(self, lib: Path, request: dict) -> int:
        """Fork an agent into a sandbox; its host pid. RuntimeError_ if it could not start.

        A zygote found dead when the request is written (its pipe is closed: the request
        never reached it) is replaced and asked again; one that dies after taking the
        request is not, as it may have forked the agent already."""
        async with self._lock:
            for attempt in (1, 2):
                proc = await self._process(lib)
                try:
                    proc.stdin.write(json.dumps(request).encode() + b"\n")
                    await proc.stdin.drain()
                except (BrokenPipeError, ConnectionResetError):
                    await self.close()
                    if attempt == 1:
                        continue
                    raise RuntimeError_("the agent's zygote ended") from None
                line = await proc.stdout.readline()
                if not line:
                    await self.close()
                    raise RuntimeError_("the agent's zygote ended")
                break
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError_(f"starting the sandbox's agent failed: {reply['error']}")
        return reply["pid"]

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            await stop_helper(proc)
