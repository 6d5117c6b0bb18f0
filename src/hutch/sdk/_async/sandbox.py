"""``AsyncSandbox``: create, connect to, inspect and kill sandboxes; the door to the rest.

The control-plane calls are the E2B REST API (``X-API-KEY``). Methods such as ``kill``
work both on the class with a sandbox id (``AsyncSandbox.kill(id)``) and on an instance
(``await sbx.kill()``), as in e2b.

``AsyncSandbox.create(...)`` is the documented way to make one. Calling the class with the
same arguments also creates one (E2B's older constructor). In the blocking SDK the call
returns the created sandbox. An asyncio constructor cannot wait, so the async class creates
it when the object is awaited or entered with ``async with``; nothing exists on the server
before that.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Union
from urllib.parse import urlencode

from hutch import errors
from hutch.sdk import _config, _control, _errors
from hutch.sdk._async import _backend
from hutch.sdk._async.code import AsyncCodeInterpreter
from hutch.sdk._async.commands import AsyncCommands
from hutch.sdk._async.files import AsyncFilesystem
from hutch.sdk._async.process import AsyncProcess, check_argv
from hutch.sdk._async.pty import AsyncPty
from hutch.sdk._async.transport import AsyncAgent, AsyncTransport
from hutch.sdk._execution import Context, Event, Execution
from hutch.sdk._hybrid import hybridmethod
from hutch.sdk._models import SandboxInfo, SandboxMetrics, SandboxQuery, SnapshotInfo

DEFAULT_TEMPLATE = _control.DEFAULT_TEMPLATE
DEFAULT_TIMEOUT = _control.DEFAULT_TIMEOUT


class AsyncSandbox(_backend.Deferred):
    """One sandbox. Use ``await AsyncSandbox.create()`` or ``await AsyncSandbox.connect(id)``.

    The constructor takes ``create``'s arguments (see the module's docstring).
    """

    def __init__(self, template: Optional[str] = None, timeout: Optional[int] = None,
                 metadata: Optional[Dict[str, str]] = None,
                 envs: Optional[Dict[str, str]] = None, secure: Optional[bool] = None,
                 allow_internet_access: Optional[bool] = None, *,
                 cpu: Optional[float] = None, memory_mb: Optional[int] = None,
                 disk_mb: Optional[int] = None,
                 network: Optional[Union[str, Dict[str, Any]]] = None,
                 idempotency_key: Optional[str] = None,
                 api_key: Optional[str] = None, url: Optional[str] = None,
                 domain: Optional[str] = None,
                 request_timeout: Optional[float] = None) -> None:
        # Checked now, so a bad argument fails at the call rather than at the await.
        self._body: Optional[Dict[str, Any]] = _control.create_body(
            template, timeout, metadata, envs, secure, allow_internet_access,
            cpu=cpu, memory_mb=memory_mb, disk_mb=disk_mb, network=network)
        self._config = _config.resolve(url, api_key, request_timeout, domain=domain)
        self._idempotency_key = idempotency_key
        self._sandbox_id: Optional[str] = None
        self._transport: Optional[AsyncTransport] = None
        _backend.construct(self._ready)

    async def _ready(self) -> "AsyncSandbox":
        """Create the sandbox this object stands for, unless that happened already."""
        if self._body is not None:
            body, self._body = self._body, None
            transport = AsyncTransport(self._config)
            try:
                response = await transport.api(
                    "POST", "/v2/sandboxes", json_body=body, not_found=errors.TemplateError,
                    headers=_control.idempotency_header(self._idempotency_key),
                    request_timeout=_control.create_timeout(self._config.request_timeout))
            except BaseException:
                await transport.aclose()
                self._body = body  # awaiting again tries again
                raise
            self._attach(response.json(), transport)
        return self

    def _attach(self, data: Dict[str, Any], transport: AsyncTransport) -> None:
        self._sandbox_id = data["sandboxID"]
        self._envd_version = data.get("envdVersion", "")
        self._transport = transport
        self._config = transport.config
        # The server's own routing domain names the ports; the client's setting otherwise.
        self._domain = data.get("domain") or transport.config.domain
        self._agent = AsyncAgent(transport, self._sandbox_id, data.get("envdAccessToken"))
        self._traffic_token = data.get("trafficAccessToken")
        self._commands = AsyncCommands(self._agent)
        self._files = AsyncFilesystem(self._agent)
        self._pty = AsyncPty(self._agent, self._commands)
        self._code = AsyncCodeInterpreter(transport, self._sandbox_id,
                                          data.get("envdAccessToken"),
                                          data.get("trafficAccessToken"), self._agent.lost)

    def _created(self) -> str:
        if self._sandbox_id is None:
            raise errors.InvalidArgumentError(
                "this sandbox is not created yet: await AsyncSandbox(...) or use "
                "await AsyncSandbox.create(...)")
        return self._sandbox_id

    @property
    def sandbox_id(self) -> str:
        return self._created()

    @property
    def envd_version(self) -> str:
        self._created()
        return self._envd_version

    @property
    def commands(self) -> AsyncCommands:
        self._created()
        return self._commands

    @property
    def files(self) -> AsyncFilesystem:
        self._created()
        return self._files

    @property
    def pty(self) -> AsyncPty:
        self._created()
        return self._pty

    @property
    def sandbox_domain(self) -> Optional[str]:
        """The domain ``get_host`` names ports under (None: host routing is not set up)."""
        self._created()
        return self._domain

    @property
    def connection_config(self) -> _config.ConnectionConfig:
        return self._config

    def __repr__(self) -> str:
        return f"<Sandbox {self._sandbox_id or '(not created)'} at {self._config.url}>"

    async def __aenter__(self) -> "AsyncSandbox":
        return await self._ready()

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self.kill()
        finally:
            await self.close()

    async def close(self) -> None:
        """Release this object's connections (the sandbox keeps running)."""
        if self._transport is not None:
            await self._transport.aclose()

    # -- processes and ports ------------------------------------------------------------------

    async def exec(self, *argv: str, cwd: Optional[str] = None,
                   envs: Optional[Dict[str, str]] = None, user: Optional[str] = None,
                   timeout: Optional[float] = None,
                   request_timeout: Optional[float] = None,
                   workdir: Optional[str] = None,
                   env: Optional[Dict[str, str]] = None) -> AsyncProcess:
        """Start ``argv`` (no shell) and return the running process, as Modal's ``exec``.

        ``timeout`` (seconds; None: none) bounds the process: the agent kills it then.
        ``user`` defaults to the template's user; ``cwd`` to that user's home.
        ``workdir`` and ``env`` are Modal's names for ``cwd`` and ``envs``.
        """
        check_argv(argv)
        cwd = _either(cwd, workdir, "cwd", "workdir")
        envs = _either(envs, env, "envs", "env")
        handle = await self.commands._exec(list(argv), envs=envs, cwd=cwd, user=user,
                                           timeout=timeout, request_timeout=request_timeout)
        return AsyncProcess(handle)

    # -- code interpreter (templates that have one, e.g. code-interpreter) --------------------

    async def run_code(self, code: str, language: Optional[str] = None,
                       context: Optional[Union[Context, str]] = None, *,
                       on_stdout: Optional[Callable[[Any], Any]] = None,
                       on_stderr: Optional[Callable[[Any], Any]] = None,
                       on_result: Optional[Callable[[Any], Any]] = None,
                       on_error: Optional[Callable[[Any], Any]] = None,
                       envs: Optional[Dict[str, str]] = None, timeout: Optional[float] = None,
                       request_timeout: Optional[float] = None) -> Execution:
        """Run ``code`` in a stateful kernel and return what it produced.

        ``language`` (python, bash, javascript; default python) picks that language's default
        context; ``context`` one made with ``create_code_context`` (not both). The callbacks
        get each stdout/stderr chunk, result and error as it arrives. ``envs`` are set for
        this execution only. ``timeout`` (seconds): the kernel is interrupted then, the
        execution ends with a ``TimeoutError`` error and the context keeps its state.
        Exceptions in the code come back in ``Execution.error``; they are not raised.
        """
        return await self._created_code().run_code(
            code, language, context, on_stdout=on_stdout, on_stderr=on_stderr,
            on_result=on_result, on_error=on_error, envs=envs, timeout=timeout,
            request_timeout=request_timeout)

    def run_code_stream(self, code: str, language: Optional[str] = None,
                        context: Optional[Union[Context, str]] = None, *,
                        envs: Optional[Dict[str, str]] = None, timeout: Optional[float] = None,
                        request_timeout: Optional[float] = None) -> AsyncIterator[Event]:
        """``run_code`` as an iterator of events (``OutputMessage``, ``Result``,
        ``ExecutionError``) in the order they happen."""
        return self._created_code().run_code_stream(
            code, language, context, envs=envs, timeout=timeout,
            request_timeout=request_timeout)

    async def create_code_context(self, cwd: Optional[str] = None,
                                  language: Optional[str] = None,
                                  request_timeout: Optional[float] = None) -> Context:
        """A new context: its own kernel (``language``, default python) started in ``cwd``
        (default /home/user), with state of its own."""
        return await self._created_code().create_code_context(cwd, language, request_timeout)

    async def list_code_contexts(self, request_timeout: Optional[float] = None) -> List[Context]:
        return await self._created_code().list_code_contexts(request_timeout)

    async def restart_code_context(self, context: Union[Context, str],
                                   request_timeout: Optional[float] = None) -> None:
        """Restart the context's kernel: same id, language and cwd; its state is cleared."""
        await self._created_code().restart_code_context(context, request_timeout)

    async def remove_code_context(self, context: Union[Context, str],
                                  request_timeout: Optional[float] = None) -> None:
        await self._created_code().remove_code_context(context, request_timeout)

    def _created_code(self) -> AsyncCodeInterpreter:
        self._created()
        return self._code

    def get_host(self, port: int) -> str:
        """``<port>-<sandbox id>.<domain>``: the host name of a server listening on ``port``.

        Needs the routing domain (the server's ``HUTCH_DOMAIN``, or ``domain=``) and DNS
        that sends ``*.<domain>`` to the server; without those, use ``get_headers``.
        """
        return _control.host(port, self._created(), self._domain)

    def get_url(self, port: int, path: str = "/") -> str:
        """A URL for ``path`` on ``port`` through host routing (the server URL's scheme/port)."""
        return _control.url(self._config.url, port, self._created(), self._domain, path)

    def get_headers(self, port: int) -> Dict[str, str]:
        """Headers that route a request sent to the server's own URL to ``port`` inside
        (with the sandbox's traffic token, which its ports need unless they are public).

        Works without any DNS set-up: ``httpx.get(sbx.connection_config.url + "/",
        headers=sbx.get_headers(8000))``.
        """
        headers = _control.routing_headers(port, self._created())
        if self._traffic_token:
            # Ports are private unless the sandbox was made with public traffic allowed.
            headers[_control.TRAFFIC_TOKEN_HEADER] = self._traffic_token
        return headers

    # -- lifecycle ----------------------------------------------------------------------------

    @classmethod
    async def create(cls, template: Optional[str] = None, timeout: Optional[int] = None,
                     metadata: Optional[Dict[str, str]] = None,
                     envs: Optional[Dict[str, str]] = None, secure: Optional[bool] = None,
                     allow_internet_access: Optional[bool] = None, *,
                     cpu: Optional[float] = None, memory_mb: Optional[int] = None,
                     disk_mb: Optional[int] = None,
                     network: Optional[Union[str, Dict[str, Any]]] = None,
                     idempotency_key: Optional[str] = None,
                     api_key: Optional[str] = None, url: Optional[str] = None,
                     domain: Optional[str] = None,
                     request_timeout: Optional[float] = None) -> "AsyncSandbox":
        """Create a sandbox from ``template`` (default ``base``), alive for ``timeout`` s (300).

        ``cpu`` (cores), ``memory_mb`` and ``disk_mb`` ask for resources (the server's
        defaults otherwise); ``network`` is ``"internet"`` (default) or ``"none"``, the same
        switch as E2B's ``allow_internet_access``. Creates with the same
        ``idempotency_key`` give the one sandbox (a retry after a lost answer makes no second).
        """
        sandbox = cls(template, timeout, metadata, envs, secure, allow_internet_access,
                      cpu=cpu, memory_mb=memory_mb, disk_mb=disk_mb, network=network,
                      idempotency_key=idempotency_key, api_key=api_key, url=url,
                      domain=domain, request_timeout=request_timeout)
        return await sandbox._ready()

    @classmethod
    def _from_wire(cls, data: Dict[str, Any], transport: AsyncTransport) -> "AsyncSandbox":
        sandbox = cls.__new__(cls)
        sandbox._body = None
        sandbox._attach(data, transport)
        return sandbox

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
        await self_or_cls._live_transport().api(
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
    async def update_network(self_or_cls: Any, network: Dict[str, Any],
                             sandbox_id: Optional[str] = None, api_key: Optional[str] = None,
                             url: Optional[str] = None,
                             request_timeout: Optional[float] = None) -> None:
        """Replace what the sandbox may reach, at once (E2B's ``update_network``):
        ``{"allow_out": [...], "deny_out": [...], "allow_internet_access": bool}``; fields
        left out are cleared. ``allow_out`` wins over ``deny_out``; private ranges and cloud
        metadata stay unreachable whatever it says."""
        if isinstance(self_or_cls, type) and sandbox_id is None:
            raise errors.InvalidArgumentError("update_network() on the class needs a sandbox_id")
        await _api(self_or_cls, sandbox_id, "PUT", "/sandboxes/{id}/network",
                   json_body=_control.network_body(network), api_key=api_key, url=url,
                   request_timeout=request_timeout)

    @hybridmethod
    async def get_egress_log(self_or_cls: Any, sandbox_id: Optional[str] = None,
                             limit: int = 100, api_key: Optional[str] = None,
                             url: Optional[str] = None,
                             request_timeout: Optional[float] = None) -> List[Dict[str, Any]]:
        """What the sandbox tried to reach and what was decided, oldest first: every answer
        of its resolver (``kind: "dns"``) and every connection it opened or was refused
        (``kind: "connection"``), each with ``allowed`` and ``reason``."""
        if isinstance(self_or_cls, type) and sandbox_id is None:
            raise errors.InvalidArgumentError("get_egress_log() on the class needs a sandbox_id")
        response = await _api(self_or_cls, sandbox_id, "GET", "/sandboxes/{id}/egress",
                              params={"limit": int(limit)}, api_key=api_key, url=url,
                              request_timeout=request_timeout)
        return list(response.json()["events"])

    @hybridmethod
    async def get_audit_log(self_or_cls: Any, sandbox_id: Optional[str] = None,
                            kind: Union[str, List[str], None] = None,
                            since: Union[datetime, float, str, None] = None,
                            after: Optional[int] = None, limit: int = 100,
                            api_key: Optional[str] = None, url: Optional[str] = None,
                            request_timeout: Optional[float] = None) -> List[Dict[str, Any]]:
        """The sandbox's audit trail, oldest first (also after it ended): API calls about it
        (``kind: "api"``), its lifecycle, the processes and PTYs started, the files read and
        written, and its egress decisions (``dns``, ``connection``, ``closed``).

        ``kind`` keeps only those kinds; without ``since`` (a time) or ``after`` (an event's
        ``seq``) the latest ``limit`` events come, with either the first ``limit`` from
        there on."""
        if isinstance(self_or_cls, type) and sandbox_id is None:
            raise errors.InvalidArgumentError("get_audit_log() on the class needs a sandbox_id")
        response = await _api(self_or_cls, sandbox_id, "GET", "/sandboxes/{id}/audit",
                              params=_audit_params(kind, since, after, limit), api_key=api_key,
                              url=url, request_timeout=request_timeout)
        return list(response.json()["events"])

    @hybridmethod
    async def follow_audit_log(self_or_cls: Any, sandbox_id: Optional[str] = None,
                               kind: Union[str, List[str], None] = None,
                               since: Union[datetime, float, str, None] = None,
                               after: Optional[int] = None, limit: int = 100,
                               api_key: Optional[str] = None,
                               url: Optional[str] = None) -> AsyncIterator[Dict[str, Any]]:
        """What :meth:`get_audit_log` gives, then every new event as it is recorded; ends
        once the sandbox has ended (or the server stops: go on with ``after=<last seq>``)."""
        params = {**_audit_params(kind, since, after, limit), "follow": "true"}
        if isinstance(self_or_cls, type):
            if not sandbox_id:
                raise errors.InvalidArgumentError("follow_audit_log() on the class needs a "
                                                  "sandbox_id")
            transport = AsyncTransport(_config.resolve(url, api_key, None))
            owned = True
        else:
            transport, sandbox_id, owned = self_or_cls._live_transport(), \
                self_or_cls.sandbox_id, False
        try:
            async for line in transport.api_lines(f"/sandboxes/{sandbox_id}/audit",
                                                  params=params):
                if line.strip():    # empty lines keep an idle stream open
                    yield json.loads(line)
        finally:
            if owned:
                await transport.aclose()

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

    @hybridmethod
    async def create_snapshot(self_or_cls: Any, name: Optional[str] = None,
                              sandbox_id: Optional[str] = None, api_key: Optional[str] = None,
                              url: Optional[str] = None,
                              request_timeout: Optional[float] = None) -> SnapshotInfo:
        """Save the sandbox's files as a template of yours (it keeps running; its processes
        pause only while its changes are copied). Running processes are not saved."""
        body = {} if name is None else {"name": name}
        response = await _api(self_or_cls, sandbox_id, "POST", "/sandboxes/{id}/snapshots",
                              json_body=body, api_key=api_key, url=url,
                              request_timeout=request_timeout)
        return SnapshotInfo.from_wire(response.json())

    @staticmethod
    async def list_snapshots(sandbox_id: Optional[str] = None, name: Optional[str] = None,
                             api_key: Optional[str] = None, url: Optional[str] = None,
                             request_timeout: Optional[float] = None) -> List[SnapshotInfo]:
        """Your snapshots (of one sandbox, or by name, if given)."""
        params: Dict[str, Any] = {"limit": 1000}
        if sandbox_id:
            params["sandboxID"] = sandbox_id
        if name:
            params["name"] = name
        async with AsyncTransport(_config.resolve(url, api_key, request_timeout)) as transport:
            response = await transport.api("GET", "/snapshots", params=params)
        return [SnapshotInfo.from_wire(s) for s in response.json()]

    @staticmethod
    async def delete_snapshot(snapshot_id: str, api_key: Optional[str] = None,
                              url: Optional[str] = None,
                              request_timeout: Optional[float] = None) -> bool:
        """Remove a snapshot; False if there was none. Sandboxes started from it go on."""
        async with AsyncTransport(_config.resolve(url, api_key, request_timeout)) as transport:
            try:
                await transport.api("DELETE", f"/templates/{snapshot_id}",
                                    not_found=errors.NotFoundError)
            except errors.NotFoundError:
                return False
        return True

    async def fork(self, count: int = 1, timeout: Optional[int] = None,
                   request_timeout: Optional[float] = None
                   ) -> List[Union["AsyncSandbox", errors.HutchError]]:
        """``count`` new sandboxes from one snapshot of this one's files, with its settings
        (size, network policy, environment, metadata); ``timeout`` is their life (s). Each
        entry is a sandbox, or the error that kept that one from starting."""
        body: Dict[str, Any] = {"count": int(count)}
        if timeout is not None:
            body["timeout"] = int(timeout)
        response = await self._live_transport().api(
            "POST", f"/sandboxes/{self.sandbox_id}/fork", json_body=body,
            request_timeout=_control.create_timeout(request_timeout or
                                                    self.connection_config.request_timeout))
        out: List[Union[AsyncSandbox, errors.HutchError]] = []
        for entry in response.json():
            if entry.get("sandbox") is not None:
                out.append(type(self)._from_wire(entry["sandbox"],
                                                 AsyncTransport(self.connection_config)))
            else:
                error = entry.get("error") or {}
                out.append(_errors.from_api(int(error.get("code", 500)),
                                            json.dumps(error).encode()))
        return out

    def _live_transport(self) -> AsyncTransport:
        self._created()
        assert self._transport is not None
        return self._transport

    async def is_running(self, request_timeout: Optional[float] = None) -> bool:
        """Whether the sandbox's agent answers (False once killed or expired)."""
        self._created()
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


def _audit_params(kind: Union[str, List[str], None], since: Union[datetime, float, str, None],
                  after: Optional[int], limit: int) -> Dict[str, Any]:
    params: Dict[str, Any] = {"limit": int(limit)}
    if kind:
        params["kind"] = kind if isinstance(kind, str) else ",".join(kind)
    if isinstance(since, datetime):
        params["since"] = since.timestamp()
    elif since is not None:
        params["since"] = since
    if after is not None:
        params["after"] = int(after)
    return params


def _either(value: Any, alias: Any, name: str, alias_name: str) -> Any:
    if value is not None and alias is not None:
        raise errors.InvalidArgumentError(f"give {name} or {alias_name}, not both")
    return alias if value is None else value


async def _api(self_or_cls: Any, sandbox_id: Optional[str], method: str, path: str, *,
               api_key: Optional[str], url: Optional[str], request_timeout: Optional[float],
               **kwargs: Any) -> Any:
    """A control-plane call about one sandbox, through the instance's client or a short one."""
    if not isinstance(self_or_cls, type):
        return await self_or_cls._live_transport().api(
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


