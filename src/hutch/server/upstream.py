"""The server's line to one sandbox's agent: a keep-alive connection pool on its unix socket.

Every sandbox gets one :class:`AgentLink`. The data-plane proxy borrows connections from it (a
new connection per request would add a connect and an accept to every command), and the manager
uses it to wait for a new agent and to hand it the sandbox's settings with ``POST /init``.

This is the seam named in the architecture: today the agent is reached through a socket that a
bind mount carries out of the sandbox; a TCP variant with a token only needs another link.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpcore

from hutch.errors import SandboxError

AGENT_SOCKET = "/run/hutch/agent.sock"   # inside the sandbox
_URL_BASE = "http://agent"


def agent_url(target: str) -> httpcore.URL:
    return httpcore.URL(scheme=b"http", host=b"agent", port=None, target=target.encode("latin-1"))


class AgentLink:
    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.pool = httpcore.AsyncConnectionPool(
            uds=str(socket),
            max_connections=None,          # one per concurrent stream; the SDK allows 200
            max_keepalive_connections=16,
            keepalive_expiry=30.0,
        )

    async def aclose(self) -> None:
        await self.pool.aclose()

    async def _call(self, method: str, path: str, body: dict | None = None,
                    timeout: float = 10.0, token: str | None = None) -> tuple[int, bytes]:
        headers = [(b"Host", b"agent")]
        if token:
            headers.append((b"X-Access-Token", token.encode()))
        content = b""
        if body is not None:
            content = json.dumps(body).encode()
            headers += [(b"Content-Type", b"application/json"),
                        (b"Content-Length", str(len(content)).encode())]
        ext = {"timeout": {"connect": timeout, "read": timeout, "write": timeout,
                           "pool": timeout}}
        resp = await self.pool.request(method, agent_url(path), headers=headers,
                                       content=content, extensions=ext)
        return resp.status, resp.content

    async def health(self, timeout: float = 5.0) -> bool:
        try:
            status, _ = await self._call("GET", "/health", timeout=timeout)
        except (httpcore.TimeoutException, httpcore.NetworkError, OSError):
            return False
        return status in (200, 204)

    async def init(self, env_vars: dict[str, str], access_token: str | None,
                   default_user: str) -> None:
        # An agent that was initialised before (a server restart) wants the current token.
        status, body = await self._call("POST", "/init", {
            "envVars": env_vars, "accessToken": access_token, "defaultUser": default_user,
        }, token=access_token)
        if status >= 300:
            raise SandboxError(f"agent refused /init: {status} {body[:200]!r}")

    async def start(self, env_vars: dict[str, str], access_token: str | None,
                    default_user: str, deadline: float) -> None:
        """Wait for a new agent's socket, hand it its settings, check it is healthy.

        ``deadline`` is monotonic. Polls with a backoff that starts at 1 ms: the agent is
        usually up within milliseconds of the container starting, so a coarse poll would
        dominate create latency.
        """
        delay = 0.001
        while True:
            if self.socket.exists():
                try:
                    await self.init(env_vars, access_token, default_user)
                    break
                except (httpcore.ConnectError, FileNotFoundError, ConnectionRefusedError):
                    pass   # bound but not yet listening: retry
            if time.monotonic() + delay > deadline:
                raise SandboxError(f"the sandbox agent did not come up (socket {self.socket})")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.004)
        if not await self.health():
            raise SandboxError("the sandbox agent is not healthy after /init")
