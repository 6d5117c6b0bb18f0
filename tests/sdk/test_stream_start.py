"""Opening a stream is bounded by the request timeout: an agent that accepts a command but
never confirms it with a start event does not hang the caller (sync and async alike).

A small real server on loopback plays the stuck agent; a healthy one never stalls like this.
"""

from __future__ import annotations

import socket
import threading

import pytest

from hutch import errors
from hutch.sdk import _config
from hutch.sdk._async.transport import AsyncAgent, AsyncTransport
from hutch.sdk._sync.transport import Agent, Transport


class StuckAgent:
    """Answers streaming POSTs with 200 headers and then silence; anything else with 204."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.release = threading.Event()
        self.threads: list = []

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._answer, args=(conn,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            if head.startswith(b"POST"):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/connect+json\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
                self.release.wait(60)
            else:
                conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")

    def __enter__(self) -> _config.ConnectionConfig:
        threading.Thread(target=self._serve, daemon=True).start()
        return _config.resolve(url=f"http://127.0.0.1:{self.sock.getsockname()[1]}",
                               api_key="k", request_timeout=0.5)

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.sock.close()
        for thread in self.threads:
            thread.join(10)


def test_sync_start_is_bounded():
    with StuckAgent() as config, Transport(config) as transport:
        stream = Agent(transport, "stuck").stream("process.Process/Start", {}, timeout=0)
        with pytest.raises(errors.TimeoutError_, match="starting the stream"):
            stream.first()


async def test_async_start_is_bounded():
    with StuckAgent() as config:
        async with AsyncTransport(config) as transport:
            agent = AsyncAgent(transport, "stuck")
            stream = await agent.stream("process.Process/Start", {}, timeout=0)
            with pytest.raises(errors.TimeoutError_, match="starting the stream"):
                await stream.first()
