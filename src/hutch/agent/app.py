"""The agent's routes: Connect-RPC services, ``/files``, ``/health``, ``/envs`` and ``/init``."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Dict

from ..errors import AuthenticationError, HutchError, InvalidArgumentError
from ..protocol import codes, envd
from ..protocol.envelope import dumps
from .http import BadRequest, Request, Response, Tunnel, http_error
from .process_service import ProcessService
from .rpc import CLIENT_STREAM, SERVER_STREAM, Call, serve_client_stream, serve_server_stream, serve_unary, unary_error
from .state import AgentState
from .users import basic_auth_user


class AgentApp:
    """Routes one request; a single instance serves every connection of the agent.

    The filesystem service and the ``/files`` route are imported on their first request:
    every sandbox starts an agent, many never touch a file through it, and their modules
    (with zlib, base64, inotify and multipart parsing) are start-up time and memory that
    each idle sandbox would otherwise carry."""

    def __init__(self, state: AgentState | None = None) -> None:
        self.state = state or AgentState()
        self.services: Dict[str, Dict[str, Any]] = {
            envd.PROCESS_SERVICE: ProcessService(self.state).methods,
        }
        self._files: Any = None

    @property
    def files(self) -> Any:
        if self._files is None:
            from .files import FilesRoute

            self._files = FilesRoute(self.state)
        return self._files

    def _service(self, name: str) -> Dict[str, Any] | None:
        methods = self.services.get(name)
        if methods is None and name == envd.FILESYSTEM_SERVICE:
            from .filesystem_service import FilesystemService

            methods = self.services[name] = FilesystemService(self.state).methods
        return methods

    async def __call__(self, request: Request) -> Response:
        path = request.path
        if path == "/health":
            return Response(204)
        if path == "/files":
            return await self.files.handle(request)
        service, _, method = path[1:].partition("/")
        methods = self._service(service)
        if methods is not None:
            return await self._rpc(request, methods, method)
        if not self.state.token_ok(request.headers.get(envd.HEADER_ACCESS_TOKEN)):
            return http_error(401, "missing or invalid access token")
        if request.method == "CONNECT":
            return await self._connect(request)
        if path == "/envs" and request.method == "GET":
            return Response(200, dumps(self.state.env_vars), content_type="application/json")
        if path == "/init" and request.method == "POST":
            return await self._init(request)
        return http_error(404, f"no route for {request.method} {path}")

    async def _rpc(self, request: Request, methods: Dict[str, Any], name: str) -> Response:
        entry = methods.get(name)
        if request.method != "POST":
            return http_error(405, "RPCs are POST only")
        if entry is None:
            body = codes.error_body(codes.UNIMPLEMENTED, f"unknown method {request.path!r}")
            return Response(501, dumps(body), content_type=envd.CONTENT_TYPE_UNARY)
        try:
            if not self.state.token_ok(request.headers.get(envd.HEADER_ACCESS_TOKEN)):
                raise AuthenticationError("missing or invalid access token")
            call = Call(request, self.state.user(basic_auth_user(request.headers.get("authorization"))))
        except HutchError as exc:
            return unary_error(exc)
        kind, handler = entry
        if kind == SERVER_STREAM:
            return await serve_server_stream(call, handler)
        if kind == CLIENT_STREAM:
            return await serve_client_stream(call, handler)
        return await serve_unary(call, handler)

    async def _connect(self, request: Request) -> Response:
        """``CONNECT 127.0.0.1:<port>``: a TCP port of this sandbox, for the server to reach
        when the sandbox has no network of its own. Loopback only: this is a way into the
        sandbox, not out of it."""
        host, _, port = request.target.rpartition(":")
        if host.strip("[]") not in ("127.0.0.1", "localhost", "::1") or not port.isdigit() \
                or not 0 < int(port) < 65536:
            return http_error(400, "CONNECT takes 127.0.0.1:<port>")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", int(port))
        except OSError as exc:
            return http_error(502, f"port {port} is not open: {exc.strerror or exc}")
        return Tunnel(reader, writer)

    async def _init(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body.read_all(1024 * 1024) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            env_vars = body.get("envVars", body.get("env_vars"))
            if env_vars is not None and not isinstance(env_vars, dict):
                raise ValueError("envVars must be an object")
            self.state.init(env_vars, body.get("accessToken", body.get("access_token")),
                            body.get("defaultUser", body.get("default_user")),
                            body.get("defaultWorkdir"))
        except (ValueError, InvalidArgumentError) as exc:
            return http_error(400, str(exc))
        except AuthenticationError as exc:
            return http_error(400, exc.message)
        except BadRequest:
            raise
        return Response(204)
