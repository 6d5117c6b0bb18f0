"""The code interpreter, served by the agent itself: its socket, its kernels, its restarts.

In sandboxes whose template provides a code interpreter the agent is started with
``--interpreter PATH``. It makes that listening socket at once (requests that come early wait
in its backlog). On the first ``POST /init`` (which carries the sandbox's env vars) it starts
the default Python kernel, as root with the sandbox environment, and begins serving the
interpreter's routes (:mod:`.interpreter.server`) on the socket, in its own event loop: the
interpreter needs nothing but the standard library and the agent's HTTP server, so a second
Python process would only add its start-up (a tenth of a second of CPU, taken from the
kernel's start: the sandbox's processes share its CPU quota) and its memory (10 MiB). A
later ``/init`` that changes the env vars (a warm-pool claim does: the pooled sandbox started
without the create's) gives running kernels the new ones before their next execution, set in
place so that their warm state (the data stack imported) is kept; a change to a variable only
read at start-up restarts the kernel instead (:func:`.interpreter.execution.sync_env`).
"""

from __future__ import annotations

import asyncio
import os
from typing import Dict, Optional

from .http import READ_LIMIT, serve_connection
from .server import bind_unix
from .state import PRIVATE_ENV
from .users import lookup


class InterpreterService:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._sock = bind_unix(socket_path)
        self._env: Optional[Dict[str, str]] = None
        self._work: Optional[str] = None
        self._kernel_dirs = None
        self._contexts = None
        self._app = None
        self._server: Optional[asyncio.Task] = None

    def configure(self, env: Dict[str, str]) -> None:
        """Start the interpreter with ``env``, or give its kernels ``env`` if it changed."""
        if env == self._env and self._contexts is not None:
            return
        self._env = dict(env)
        if self._contexts is not None:
            self._contexts.update_env(_kernel_env(env))
            return
        # The default kernel first: the first run_code waits for its start-up, and the
        # interpreter's own imports and set-up happen during it.
        from .interpreter import kernelspecs
        from .interpreter.kernel import KernelProcess

        if self._work is None:
            self._work = _workdir()
            self._kernel_dirs = kernelspecs.search_path(kernelspecs.write(self._work))
        kernel_env = _kernel_env(env)
        default_id = os.urandom(16).hex()
        spec = kernelspecs.specs()[kernelspecs.DEFAULT_PYTHON]
        try:
            first = KernelProcess.from_spec(spec, kernel_env, kernelspecs.DEFAULT_CWD,
                                            self._work, default_id)
        except OSError:
            first = None                # started again, with its error reported, on first use

        from .interpreter.context import Contexts
        from .interpreter.server import InterpreterApp

        self._contexts = Contexts(self._work, self._kernel_dirs, kernel_env, prelaunched=first)
        self._app = InterpreterApp(self._contexts)
        self._contexts.default("python", default_id)    # adopts the kernel started above
        if self._server is None:
            self._server = asyncio.ensure_future(asyncio.start_unix_server(
                lambda r, w: serve_connection(r, w, self._serve), sock=self._sock,
                limit=READ_LIMIT))

    async def _serve(self, request):
        return await self._app(request)

    def close(self) -> None:
        """Stop serving and kill every kernel (the agent is stopping)."""
        if self._contexts is not None:
            self._contexts.kill()
        if self._server is not None:
            if not self._server.done():
                self._server.cancel()
            elif not self._server.cancelled() and self._server.exception() is None:
                self._server.result().close()
        self._sock.close()
        try:
            os.unlink(self.socket_path)
        except OSError:
            pass


def _kernel_env(env: Dict[str, str]) -> Dict[str, str]:
    """The kernels' environment: the sandbox's, root's login variables, none of the agent's
    own settings."""
    kernel_env = dict(env)
    kernel_env.update(lookup("root").environ())
    return {k: v for k, v in kernel_env.items() if k not in PRIVATE_ENV}


def _workdir() -> str:
    """A private directory for the kernels' connection files and sockets (0700: only root in
    the sandbox can reach a kernel)."""
    parent = "/run" if os.access("/run", os.W_OK) else (os.environ.get("TMPDIR") or "/tmp")
    while True:
        path = os.path.join(parent, "hutch-interpreter-" + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
