"""The code interpreter's HTTP routes, E2B's shape (../../docs/code-interpreter.md):

``POST /execute`` (NDJSON stream), ``POST /contexts``, ``GET /contexts``,
``POST /contexts/{id}/restart``, ``DELETE /contexts/{id}``, ``GET /health``; and hutch's own
``POST /warm`` (``{"imports": [...], "zygote": true}``), which the server sends a warm-pool
sandbox so the default Python kernel is started, the data stack imported and the kernels'
zygote started (zygote.py) before anyone asks.

It reuses the agent's HTTP/1.1 server, so streams are written as they are produced and a client
that hangs up is noticed at once (the execution is then interrupted).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Dict

from ...errors import HutchError, InvalidArgumentError, NotFoundError
from ...protocol.ndjson import encode_line
from ..http import Request, Response
from . import execution
from .context import Contexts

_ENV_NAME_FIRST = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_ENV_NAME_REST = _ENV_NAME_FIRST | set("0123456789")
MAX_CODE = 16 * 1024 * 1024


def _json(status: int, body: Any) -> Response:
    return Response(status, json.dumps(body).encode(), content_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json(status, {"code": status, "message": message})


def _env(value: Any) -> Dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgumentError("env_vars must be an object of strings")
    out = {}
    for k, v in value.items():
        if not k or k[0] not in _ENV_NAME_FIRST or any(c not in _ENV_NAME_REST for c in k):
            raise InvalidArgumentError(f"invalid environment variable name {k!r}")
        out[k] = "" if v is None else str(v)
    return out


class InterpreterApp:
    def __init__(self, contexts: Contexts) -> None:
        self.contexts = contexts

    async def __call__(self, request: Request) -> Response:
        path, method = request.path.rstrip("/") or "/", request.method
        try:
            if path == "/health":
                return _json(200, "OK")
            if path == "/execute" and method == "POST":
                return await self._execute(request)
            if path == "/warm" and method == "POST":
                return await self._warm(request)
            if path == "/contexts":
                if method == "GET":
                    return _json(200, [c.describe() for c in self.contexts.list()])
                if method == "POST":
                    body = await _body(request)
                    ctx = self.contexts.create(body.get("language"), body.get("cwd"))
                    return _json(200, ctx.describe())
            parts = path.split("/")
            if len(parts) >= 3 and parts[1] == "contexts":
                if len(parts) == 3 and method == "DELETE":
                    await self.contexts.remove(parts[2])
                    return _json(200, {})
                if len(parts) == 4 and parts[3] == "restart" and method == "POST":
                    await self.contexts.get(parts[2]).restart()
                    return _json(200, {})
            return _error(404, f"no route for {method} {request.path}")
        except NotFoundError as exc:
            return _error(404, exc.message)
        except (InvalidArgumentError, ValueError) as exc:
            return _error(400, getattr(exc, "message", str(exc)))
        except HutchError as exc:
            return _error(500, exc.message)

    async def _execute(self, request: Request) -> Response:
        body = await _body(request)
        code = body.get("code")
        if not isinstance(code, str):
            raise InvalidArgumentError("code must be a string")
        context_id, language = body.get("context_id"), body.get("language")
        if context_id and language:
            raise InvalidArgumentError("give context_id or language, not both")
        ctx = self.contexts.get(context_id) if context_id else self.contexts.default(language)
        env = _env(body.get("env_vars"))
        timeout = body.get("timeout")
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float)) or timeout < 0):
            raise InvalidArgumentError(f"timeout must be a non-negative number of seconds, "
                                       f"got {timeout!r}")
        return Response(200, _lines(execution.run(ctx, code, env, timeout or None)),
                        content_type="application/x-ndjson")


    async def _warm(self, request: Request) -> Response:
        body = await _body(request)
        imports = body.get("imports") or []
        if not isinstance(imports, list) or not all(
                isinstance(m, str) and m and all(p.isidentifier() for p in m.split("."))
                for m in imports):
            raise InvalidArgumentError("imports must be a list of module names")
        zygote = body.get("zygote", False)
        if not isinstance(zygote, bool):
            raise InvalidArgumentError("zygote must be true or false")
        await execution.warm(self.contexts.default("python"), imports)
        if zygote:
            await asyncio.get_running_loop().run_in_executor(None, self.contexts.prepare_zygote)
        return _json(200, {})


async def _lines(events: AsyncIterator[Dict[str, Any]]) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            yield encode_line(event)
    finally:
        await events.aclose()


async def _body(request: Request) -> Dict[str, Any]:
    raw = await request.body.read_all(MAX_CODE + 64 * 1024)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidArgumentError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidArgumentError("the body must be a JSON object")
    return body

