"""``AsyncSandbox``: create, connect to, inspect and kill sandboxes; the door to the rest.

The control-plane calls are the E2B REST API (``X-API-KEY``). Methods such as ``kill``
work both on the class with a sandbox id (``AsyncSandbox.kill(id)``) and on an instance
(``await sbx.kill()``), as in e2b.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Dict, List, Optional
from urllib.parse import urlencode

from hutch import errors
from hutch.sdk import _config
from hutch.sdk._async.commands import AsyncCommands
from hutch.sdk._async.files import AsyncFilesystem
from hutch.sdk._async.pty import AsyncPty
from hutch.sdk._async.transport import AsyncAgent, AsyncTransport
from hutch.sdk._hybrid import hybridmethod
from hutch.sdk._models import SandboxInfo, SandboxMetrics, SandboxQuery

DEFAULT_TEMPLATE = "base"
DEFAULT_TIMEOUT = 300


class AsyncSandbox:
    """One sandbox. Use ``await AsyncSandbox.create()`` or ``await AsyncSandbox.connect(id)``."""

    def __init__(self, sandbox_id: str, envd_version: str, transport: AsyncTransport,
                 access_token: Optional[str] = None) -> None:
        self._sandbox_id = sandbox_id
        self._envd_version = envd_version
        self._transport = transport
        self._agent = AsyncAgent(transport, sandbox_id, access_token)
        self._commands = AsyncCommands(self._agent)
        self._files = AsyncFilesystem(self._agent)
        self._pty = AsyncPty(self._agent, self._commands)

    @property
    def sandbox_id(self) -> str:
        return self._sandbox_id

    @property
    def envd_version(self) -> str:
        return self._envd_version

    @property
    def commands(self) -> AsyncCommands:
        return self._commands

    @property
    def files(self) -> AsyncFilesystem:
        return self._files

    @property
    def pty(self) -> AsyncPty:
        return self._pty

    @property
    def connection_config(self) -> _config.ConnectionConfig:
        return self._transport.config

    def __repr__(self) -> str:
        return f"<Sandbox {self._sandbox_id} at {self._transport.config.url}>"

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self.kill()
        finally:
            await self.close()

    async def close(self) -> None:
        """Release this object's connections (the sandbox keeps running)."""
        await self._transport.aclose()

    # -- lifecycle ----------------------------------------------------------------------------

    @classmethod
    async def create(cls, template: Optional[str] = None, timeout: Optional[int] = None,
                     metadata: Optional[Dict[str, str]] = None,
                     envs: Optional[Dict[str, str]] = None, secure: Optional[bool] = None,
                     allow_internet_access: Optional[bool] = True,
                     api_key: Optional[str] = None, url: Optional[str] = None,
                     request_timeout: Optional[float] = None) -> "AsyncSandbox":
        """Create a sandbox from ``template`` (default ``base``), alive for ``timeout`` s (300)."""
        body: Dict[str, Any] = {
            "templateID": template or DEFAULT_TEMPLATE,
            "timeout": DEFAULT_TIMEOUT if timeout is None else int(timeout),
            "allow_internet_access": True if allow_internet_access is None else allow_internet_access,
        }
        if metadata:
            body["metadata"] = dict(metadata)
        if envs:
            body["envVars"] = dict(envs)
        if secure is not None:
            body["secure"] = secure
        transport = AsyncTransport(_config.resolve(url, api_key, request_timeout))
        try:
            response = await transport.api("POST", "/v2/sandboxes", json_body=body,
                                           not_found=errors.TemplateError)
        except BaseException:
            await transport.aclose()
            raise
        return cls._from_wire(response.json(), transport)

    @classmethod
    def _from_wire(cls, data: Dict[str, Any], transport: AsyncTransport) -> "AsyncSandbox":
        return cls(data["sandboxID"], data.get("envdVersion", ""), transport,
                   data.get("envdAccessToken"))

    @hybridmethod
    async def connect(self_or_cls: Any, sandbox_id: Optional[str] = None,
                      timeout: Optional[int] = None, api_key: Optional[str] = None,
                      url: Optional[str] = None,
                      request_timeout: Optional[float] = None) -> "AsyncSandbox":
        """Attach to a running sandbox; ``timeout`` (s), if given, extends its life from now."""
        body = {} if timeout is None else {"timeout": int(timeout)}
        if isinstance(self_or_cls, type):
            if not sandbox_id:
                raise errors.InvalidArgumentError("connect() on the class needs a sandbox_id")
            transport = AsyncTransport(_config.resolve(url, api_key, request_timeout))
            try:
                response = await transport.api("POST", f"/v2/sandboxes/{sandbox_id}/connect",
                                               json_body=body)
            except BaseException:
                await transport.aclose()
                raise
            return self_or_cls._from_wire(response.json(), transport)
        await self_or_cls._transport.api(
            "POST", f"/v2/sandboxes/{self_or_cls.sandbox_id}/connect", json_body=body,
            request_timeout=request_timeout,
        )
        return self_or_cls

    @hybridmethod
    async def kill(self_or_cls: Any, sandbox_id: Optional[str] = None,
                   api_key: Optional[str] = None, url: Optional[str] = None,
                   request_timeout: Optional[float] = None) -> bool:
        """Kill the sandbox; False if it did not exist (any more)."""
        try:
            await _api(self_or_cls, sandbox_id, "DELETE", "/sandboxes/{id}", api_key=api_key,
                       url=url, request_timeout=request_timeout)
        except errors.SandboxNotFoundError:
            return False
        return True

    @hybridmethod
    async def set_timeout(self_or_cls: Any, timeout: int, sandbox_id: Optional[str] = None,
                          api_key: Optional[str] = None, url: Optional[str] = None,
                          request_timeout: Optional[float] = None) -> None:
        """The sandbox now lives ``timeout`` seconds from now (shorter or longer)."""
        if isinstance(self_or_cls, type) and sandbox_id is None:
            raise errors.InvalidArgumentError("set_timeout() on the class needs a sandbox_id")
        await _api(self_or_cls, sandbox_id, "POST", "/sandboxes/{id}/timeout",
                   json_body={"timeout": int(timeout)}, api_key=api_key, url=url,
                   request_timeout=request_timeout)

    @hybridmethod
    async def get_info(self_or_cls: Any, sandbox_id: Optional[str] = None,
                       api_key: Optional[str] = None, url: Optional[str] = None,
                       request_timeout: Optional[float] = None) -> SandboxInfo:
        response = await _api(self_or_cls, sandbox_id, "GET", "/sandboxes/{id}",
                              api_key=api_key, url=url, request_timeout=request_timeout)
        return SandboxInfo.from_wire(response.json())

    @hybridmethod
    async def get_metrics(self_or_cls: Any, sandbox_id: Optional[str] = None,
                          start: Optional[datetime] = None, end: Optional[datetime] = None,
                          api_key: Optional[str] = None, url: Optional[str] = None,
                          request_timeout: Optional[float] = None) -> List[SandboxMetrics]:
        params = {}
        if start is not None:
            params["start"] = int(start.timestamp())
        if end is not None:
            params["end"] = int(end.timestamp())
        response = await _api(self_or_cls, sandbox_id, "GET", "/sandboxes/{id}/metrics",
                              params=params, api_key=api_key, url=url,
                              request_timeout=request_timeout)
        return [SandboxMetrics.from_wire(m) for m in response.json() or []]

    async def is_running(self, request_timeout: Optional[float] = None) -> bool:
        """Whether the sandbox's agent answers (False once killed or expired)."""
        healthy = await self._agent.health(request_timeout)
        if healthy is None:
            raise errors.UnavailableError(f"cannot tell whether {self._sandbox_id} runs")
        return healthy

    @staticmethod
    def list(query: Optional[SandboxQuery] = None, limit: Optional[int] = None,
             next_token: Optional[str] = None, api_key: Optional[str] = None,
             url: Optional[str] = None,
             request_timeout: Optional[float] = None) -> "AsyncSandboxPaginator":
        """A paginator over your sandboxes: ``while p.has_next: await p.next_items()``."""
        config = _config.resolve(url=url, api_key=api_key, request_timeout=request_timeout)
        return AsyncSandboxPaginator(config, query, limit, next_token)


async def _api(self_or_cls: Any, sandbox_id: Optional[str], method: str, path: str, *,
               api_key: Optional[str], url: Optional[str], request_timeout: Optional[float],
               **kwargs: Any) -> Any:
    """A control-plane call about one sandbox, through the instance's client or a short one."""
    if not isinstance(self_or_cls, type):
        return await self_or_cls._transport.api(
            method, path.format(id=self_or_cls.sandbox_id), request_timeout=request_timeout,
            **kwargs)
    if not sandbox_id:
        raise errors.InvalidArgumentError("a sandbox_id is needed when called on the class")
    async with AsyncTransport(_config.resolve(url, api_key, request_timeout)) as transport:
        return await transport.api(method, path.format(id=sandbox_id), **kwargs)


class AsyncSandboxPaginator:
    """Pages of ``SandboxInfo``, driven by the server's ``X-Next-Token``."""

    def __init__(self, config: _config.ConnectionConfig, query: Optional[SandboxQuery],
                 limit: Optional[int], next_token: Optional[str]) -> None:
        self._config = config
        self._query = query or SandboxQuery()
        self._limit = limit
        self._next_token = next_token
        self._has_next = True

    @property
    def has_next(self) -> bool:
        return self._has_next

    @property
    def next_token(self) -> Optional[str]:
        return self._next_token

    def _params(self) -> Dict[str, Any]:
        params: Dict[str, Any] = {}
        if self._query.metadata:
            params["metadata"] = urlencode(self._query.metadata)
        if self._query.state:
            params["state"] = ",".join(getattr(s, "value", s) for s in self._query.state)
        if self._limit:
            params["limit"] = self._limit
        if self._next_token:
            params["nextToken"] = self._next_token
        return params

    async def next_items(self) -> List[SandboxInfo]:
        if not self._has_next:
            raise errors.InvalidArgumentError("no more pages: check has_next first")
        async with AsyncTransport(self._config) as transport:
            response = await transport.api("GET", "/v2/sandboxes", params=self._params())
        self._next_token = response.headers.get("X-Next-Token") or None
        self._has_next = self._next_token is not None
        return [SandboxInfo.from_wire(s) for s in response.json() or []]

    async def all(self) -> List[SandboxInfo]:
        """Every remaining page, concatenated."""
        items: List[SandboxInfo] = []
        while self._has_next:
            items.extend(await self.next_items())
        return items


