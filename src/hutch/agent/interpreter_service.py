"""The agent's side of the code interpreter: starting it, restarting it, stopping it.

In sandboxes whose template provides a code interpreter the agent is started with
``--interpreter PATH``. On the first ``POST /init`` (which carries the sandbox's env vars) it
starts ``python3 -S -m hutch.agent.interpreter --fd N`` as root, in a session of its own,
with the sandbox environment; the interpreter's kernels inherit it. If the interpreter exits
it is started again (at most once a second), so a crash costs the kernels' state but not the
service. A later ``/init`` that changes the env vars restarts it, so kernels see the new ones.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import Dict, Optional

from .server import bind_unix
from .state import PRIVATE_ENV
from .users import lookup


class InterpreterService:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        # The agent makes the listening socket itself, now, and hands it down: it exists
        # before the interpreter has finished importing (requests wait in the backlog instead
        # of failing), and it survives the interpreter's restarts.
        self._sock = bind_unix(socket_path)
        self._env: Optional[Dict[str, str]] = None
        self._proc: Optional[subprocess.Popen] = None
        self._task: Optional[asyncio.Task] = None
        self._stopping = False

    def configure(self, env: Dict[str, str]) -> None:
        """Start the interpreter with ``env`` (or restart it if ``env`` changed)."""
        if env == self._env and self._task is not None:
            return
        self._env = dict(env)
        if self._task is None:
            self._task = asyncio.ensure_future(self._supervise())
        elif self._proc is not None and self._proc.poll() is None:
            self._kill()   # the supervisor starts it again with the new env

    def _spawn(self) -> subprocess.Popen:
        root = lookup("root")
        env = dict(self._env or {})
        env.update(root.environ())
        # The interpreter's environment is its kernels' (so none of the agent's own settings),
        # plus the PYTHONPATH that finds the hutch package, which it keeps to itself. It needs
        # nothing else outside the standard library, so -S: site's path set-up would be
        # start-up time and memory for nothing (the kernels it starts get site as usual).
        env = {k: v for k, v in env.items() if k not in PRIVATE_ENV}
        env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
        fd = self._sock.fileno()
        return subprocess.Popen(
            [sys.executable, "-S", "-m", "hutch.agent.interpreter", "--fd", str(fd)],
            env=env, cwd=root.home if os.path.isdir(root.home) else "/",
            stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True, pass_fds=(fd,))

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            started = loop.time()
            try:
                self._proc = self._spawn()
            except OSError as exc:
                sys.stderr.write(f"hutch agent: cannot start the code interpreter: {exc}\n")
                await asyncio.sleep(5)
                continue
            await _exited(self._proc)
            if self._stopping:
                return
            await asyncio.sleep(max(0.0, 1.0 - (loop.time() - started)))

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        self._stopping = True
        self._kill()
        if self._task is not None:
            self._task.cancel()
        self._sock.close()
        try:
            os.unlink(self.socket_path)
        except OSError:
            pass


async def _exited(proc: subprocess.Popen) -> None:
    """Wait for ``proc`` to end without polling: its pidfd becomes readable when it does."""
    loop = asyncio.get_running_loop()
    fd = os.pidfd_open(proc.pid)
    done = loop.create_future()
    loop.add_reader(fd, lambda: done.done() or done.set_result(None))
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
        proc.wait()
