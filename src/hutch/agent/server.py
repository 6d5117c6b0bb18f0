"""Listening sockets and process lifetime of the agent (the thin I/O edge around AgentApp)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from typing import List, Optional

from .app import AgentApp
from .http import READ_LIMIT, serve_connection


async def until_stopped() -> None:
    """Return once the process is asked to stop (SIGTERM or SIGINT)."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))
    await stop


def bind_unix(path: str) -> socket.socket:
    """A listening unix socket at ``path`` (0600). It is bound under a temporary name and
    renamed into place once it listens: whoever waits for the path to appear can connect at
    once (no window between bind and listen)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(tmp)
    finally:
        os.umask(old)
    sock.listen(128)
    os.replace(tmp, path)
    return sock


async def _serve(app: AgentApp, reader, writer) -> None:
    await serve_connection(reader, writer, app)


async def run(unix_path: Optional[str], listen: Optional[str], ready_fd: Optional[int] = None,
              interpreter: Optional[str] = None) -> None:
    """Serve until SIGTERM/SIGINT. The unix socket appears only once it accepts (0600, root)."""
    app = AgentApp()
    if interpreter:
        from .interpreter_service import InterpreterService

        app.state.interpreter = InterpreterService(interpreter)
    loop = asyncio.get_running_loop()
    servers: List[asyncio.AbstractServer] = []

    def handler(reader, writer):
        return _serve(app, reader, writer)

    if unix_path:
        servers.append(await asyncio.start_unix_server(handler, sock=bind_unix(unix_path),
                                                       limit=READ_LIMIT))
    if listen:
        host, _, port = listen.rpartition(":")
        servers.append(await asyncio.start_server(handler, host or "127.0.0.1", int(port), limit=READ_LIMIT, reuse_address=True))
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)

    try:
        await until_stopped()
    finally:
        for server in servers:
            server.close()
        app.state.close()
        if app.state.interpreter is not None:
            app.state.interpreter.close()
        if unix_path:
            try:
                os.unlink(unix_path)
            except OSError:
                pass
