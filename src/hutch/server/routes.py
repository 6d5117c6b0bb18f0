"""The control plane: E2B's REST API for sandboxes (create, connect, get, list, timeout, kill).

Paths and shapes follow E2B's API so the official SDKs work unchanged; both the v1 and the v2
paths of create, connect and list are served because SDK releases differ in which they call.
Every answer that is not a success is JSON ``{"code": <status>, "message": ...}``: the SDKs'
generated clients decode error bodies as JSON.
"""

from __future__ import annotations

import json
import time
from contextlib import suppress
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hutch.errors import (
    AuthenticationError,
    HutchError,
    InvalidArgumentError,
    SandboxNotFoundError,
)
from hutch.server import egress as egress_rules
from hutch.server.keys import traffic_token
from hutch.server.manager import SandboxManager
from hutch.server.store import SandboxRecord, Store
from hutch.server.template_api import TemplateAPI
from hutch.server.tenants import (
    KeyAdmin,
    authenticate,
    caller,
    check_owner,
    quotas_of,
    scoped_idempotency_key,
)

try:  # the protocol package states which envd features the agent implements
    from hutch.protocol import ENVD_VERSION
except ImportError:  # pragma: no cover - until the protocol package defines it
    ENVD_VERSION = "0.6.4"

# E2B paths hutch does not serve (yet): answered with a JSON 501 instead of a bare 404 so that
# an SDK user learns the feature is missing rather than that the sandbox is.
_UNSUPPORTED = [
    ("/sandboxes/{id}/pause", ["POST"]),
    ("/sandboxes/{id}/resume", ["POST"]),
    ("/sandboxes/{id}/refreshes", ["POST"]),
    ("/sandboxes/{id}/fork", ["POST"]),
    ("/sandboxes/{id}/snapshots", ["POST"]),
    ("/sandboxes/{id}/logs", ["GET"]),
    ("/v2/sandboxes/{id}/logs", ["GET"]),
    ("/sandboxes/metrics", ["GET"]),
    ("/snapshots", ["GET"]),
]


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def _parse_rfc3339(text: str) -> float:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise InvalidArgumentError(f"invalid RFC 3339 time {text!r}") from None


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status,
                        headers=headers)


class ControlPlane:
    def __init__(self, manager: SandboxManager, store: Store, client_id: str,
                 degraded: tuple[str, ...] = ()) -> None:
        self.manager = manager
        self.store = store
        self.client_id = client_id
        self.degraded = degraded    # failed isolation self-test checks (serving anyway)

    # -- shapes ------------------------------------------------------------------------------

    def sandbox(self, rec: SandboxRecord) -> dict:
        return {
            "templateID": rec.template, "sandboxID": rec.id, "clientID": self.client_id,
            "envdVersion": ENVD_VERSION, "envdAccessToken": rec.access_token,
            "trafficAccessToken": traffic_token(rec.access_token),
            "alias": rec.alias or rec.template, "domain": self.manager.config.domain or None,
        }

    def listed(self, rec: SandboxRecord) -> dict:
        return {
            "templateID": rec.template, "sandboxID": rec.id, "clientID": self.client_id,
            "alias": rec.alias or rec.template,
            "startedAt": rfc3339(rec.started_at or rec.created_at), "endAt": rfc3339(rec.end_at),
            "envdVersion": ENVD_VERSION, "cpuCount": max(1, round(rec.cpu)),
            "memoryMB": rec.memory_mb, "diskSizeMB": rec.disk_mb,
            "state": "paused" if rec.state == "paused" else "running",
            "metadata": rec.metadata,
        }

    def detail(self, rec: SandboxRecord) -> dict:
        return {**self.listed(rec), "envdAccessToken": rec.access_token,
                "trafficAccessToken": traffic_token(rec.access_token),
                "domain": self.manager.config.domain or None,
                "allowInternetAccess": rec.network == "internet"
                and egress_rules.internet_of(rec.egress),
                "network": egress_rules.describe(rec.egress)}

    # -- endpoints ---------------------------------------------------------------------------

    def _mine(self, request: Request) -> str:
        """The path's sandbox id, if the caller owns it (else the not-found answer)."""
        sandbox_id = request.path_params["id"]
        check_owner(self.store, sandbox_id, caller(request))
        return sandbox_id

    async def health(self, request: Request) -> Response:
        body: dict[str, Any] = {"status": "ok"}
        pool = self.manager.pool
        if pool is not None:
            body["pool"] = {"template": pool.template, "size": pool.size, "ready": pool.ready}
        if self.degraded:
            body["degraded"] = list(self.degraded)
        return JSONResponse(body)

    async def create(self, request: Request) -> Response:
        body = await _json_object(request)
        template = body.get("templateID")
        if not isinstance(template, str) or not template:
            raise InvalidArgumentError("templateID is required")
        allow = body.get("allow_internet_access", body.get("allowInternetAccess"))
        if allow is not None and not isinstance(allow, bool):
            raise InvalidArgumentError("allow_internet_access must be a boolean")
        if allow is None and body.get("network") is None:
            # The server's default network, and its default for the ports.
            mode, egress = None, egress_rules.default(self.manager.config.public_ports)
        else:
            mode, egress = egress_rules.parse(body.get("network"), allow,
                                              self.manager.config.public_ports)
        # A token is issued unless the caller explicitly asks for none (old SDKs' `secure`;
        # E2B's v2 clients never send it and always get one).
        secure = body.get("secure", True) is not False
        if not secure and not egress_rules.public_of(egress):
            if self.manager.config.public_ports or egress_rules.explicitly_private(
                    body.get("network")):
                raise InvalidArgumentError("private ports (allowPublicTraffic: false) need a "
                                           "sandbox with tokens (secure: true)")
            egress = egress_rules.stored(egress_rules.policy_of(egress), True)
        key = request.headers.get("idempotency-key")
        if key is not None and not 1 <= len(key) <= 255:
            raise InvalidArgumentError("Idempotency-Key must be 1-255 characters")
        owner = caller(request)
        rec, timing = await self.manager.create(
            template,
            owner=owner.id, quotas=quotas_of(owner, self.manager.config),
            idempotency_key=scoped_idempotency_key(owner, key),
            timeout=body.get("timeout"),
            metadata=_str_map(body.get("metadata"), "metadata"),
            env_vars=_str_map(body.get("envVars"), "envVars"),
            network=mode, egress=egress,
            secure=secure,
            cpu=body.get("cpuCount"), memory_mb=body.get("memoryMB"),
            disk_mb=body.get("diskSizeMB"),
        )
        if self.store.get_key(owner.id).revoked_at is not None:
            # Revoked while this create ran: the revocation's sweep may have missed it.
            with suppress(SandboxNotFoundError):
                await self.manager.kill(rec.id, reason="its API key was revoked")
            raise AuthenticationError("invalid API key")
        server_timing = ", ".join(f"{k};dur={v * 1e3:.2f}" for k, v in timing.items())
        return JSONResponse(self.sandbox(rec), status_code=201,
                            headers={"Server-Timing": server_timing})

    async def connect(self, request: Request) -> Response:
        body = await _json_object(request, allow_empty=True)
        rec = await self.manager.connect(self._mine(request), body.get("timeout"))
        return JSONResponse(self.sandbox(rec), status_code=200)

    async def get(self, request: Request) -> Response:
        sandbox_id = self._mine(request)
        try:
            return JSONResponse(self.detail(self.manager.running(sandbox_id).record))
        except SandboxNotFoundError as exc:
            # An ended sandbox is still not found (as in E2B), but its owner learns why it
            # ended, also for ends decided while the server was down (see reconcile).
            rec = self.store.get(sandbox_id)
            if rec is None or rec.state not in ("killed", "error"):
                raise
            return JSONResponse({"code": 404, "message": exc.message,
                                 "endReason": rec.reason, "endedAt": rfc3339(rec.ended_at)},
                                status_code=404)

    async def kill(self, request: Request) -> Response:
        await self.manager.kill(self._mine(request))
        return Response(status_code=204)

    async def timeout(self, request: Request) -> Response:
        body = await _json_object(request)
        if "timeout" not in body:
            raise InvalidArgumentError("timeout is required")
        await self.manager.set_timeout(self._mine(request), body["timeout"])
        return Response(status_code=204)

    async def update_network(self, request: Request) -> Response:
        body = await _json_object(request, allow_empty=True)
        await self.manager.update_network(self._mine(request), body)
        return Response(status_code=204)

    async def egress_log(self, request: Request) -> Response:
        sandbox_id = self._mine(request)
        limit = request.query_params.get("limit", "100")
        if not limit.isdigit() or not 1 <= int(limit) <= 10_000:
            raise InvalidArgumentError("limit must be 1..10000")
        return JSONResponse({"events": self.store.egress_log(sandbox_id, int(limit))})

    async def metrics(self, request: Request) -> Response:
        rec = self.manager.running(self._mine(request)).record
        stats = await self.manager.metrics(rec.id)
        now = time.time()
        return JSONResponse([{
            "timestamp": rfc3339(now), "timestampUnix": int(now),
            "cpuCount": max(1, round(rec.cpu)),
            "cpuUsedPct": stats["cpu_used_pct"],
            "memUsed": stats["mem_used"], "memTotal": stats["mem_total"],
            "memCache": stats["mem_cache"],
            "diskUsed": stats["disk_used"], "diskTotal": stats["disk_total"],
            "oomKills": stats["oom_kills"],
        }])

    async def list(self, request: Request) -> Response:
        q = request.query_params
        states = ["running"]
        if request.url.path.startswith("/v2/"):
            raw = ",".join(q.getlist("state")) or "running,paused"
            states = [s for s in raw.split(",") if s]
            if not set(states) <= {"running", "paused"}:
                raise InvalidArgumentError("state must be running and/or paused")
        metadata = None
        if q.get("metadata"):
            metadata = dict(parse_qsl(q["metadata"], keep_blank_values=True))
        try:
            limit = int(q.get("limit", 100))
        except ValueError:
            raise InvalidArgumentError("limit must be an integer") from None
        if not 1 <= limit <= 1000:
            raise InvalidArgumentError("limit must be between 1 and 1000")
        order = q.get("order", "asc")
        if order not in ("asc", "desc"):
            raise InvalidArgumentError("order must be asc or desc")
        after = _parse_rfc3339(q["startedAfter"]) if q.get("startedAfter") else None
        records, token = self.manager.list(
            states=states, metadata=metadata, template=q.get("template") or None,
            started_after=after, limit=limit, next_token=q.get("nextToken") or None,
            descending=order == "desc", owner=caller(request).id,
        )
        headers = {"X-Next-Token": token} if token else None
        return JSONResponse([self.listed(r) for r in records], headers=headers)

    async def openapi(self, request: Request) -> Response:
        from hutch.server.openapi import document   # imported late: it reads this module
        return JSONResponse(document())

    async def unsupported(self, request: Request) -> Response:
        return error(501, f"{request.method} {request.url.path} is not supported by hutch yet")

    # -- assembly ----------------------------------------------------------------------------

    def app(self) -> Starlette:
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/sandboxes", self.create, methods=["POST"]),
            Route("/v2/sandboxes", self.create, methods=["POST"]),
            Route("/sandboxes", self.list, methods=["GET"]),
            Route("/v2/sandboxes", self.list, methods=["GET"]),
            # Before /sandboxes/{id}: /sandboxes/metrics is a path, not a sandbox named so.
            *(Route(p, self.unsupported, methods=m) for p, m in _UNSUPPORTED),
            Route("/sandboxes/{id}", self.get, methods=["GET"]),
            Route("/sandboxes/{id}", self.kill, methods=["DELETE"]),
            Route("/sandboxes/{id}/connect", self.connect, methods=["POST"]),
            Route("/v2/sandboxes/{id}/connect", self.connect, methods=["POST"]),
            Route("/sandboxes/{id}/timeout", self.timeout, methods=["POST"]),
            Route("/sandboxes/{id}/metrics", self.metrics, methods=["GET"]),
            Route("/sandboxes/{id}/network", self.update_network, methods=["PUT"]),
            Route("/sandboxes/{id}/egress", self.egress_log, methods=["GET"]),
            *KeyAdmin(self.store, self.manager, rfc3339, _json_object).routes(),
            *TemplateAPI(self.manager, _json_object).routes(),
        ]
        app = Starlette(routes=routes, exception_handlers={
            HutchError: _hutch_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        })
        return _Auth(app, self.store)


class _Auth:
    """Every control-plane call but ``/health`` and ``/openapi.json`` needs a valid
    ``X-API-KEY``; the key found is the caller's tenant (:mod:`hutch.server.tenants`)."""

    def __init__(self, app, store: Store) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in ("/health", "/openapi.json"):
            try:
                authenticate(scope, self.store)
            except AuthenticationError as exc:
                return await error(401, exc.message)(scope, receive, send)
        await self.app(scope, receive, send)


_MAX_BODY = 1 << 20   # control-plane bodies are small JSON objects


async def _json_object(request: Request, allow_empty: bool = False) -> dict[str, Any]:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _MAX_BODY:
            raise InvalidArgumentError(f"the request body exceeds {_MAX_BODY} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        if allow_empty:
            return {}
        raise InvalidArgumentError("a JSON object body is required")
    try:
        body = json.loads(raw)
    except ValueError:
        raise InvalidArgumentError("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidArgumentError("the body must be a JSON object")
    return body


def _str_map(value: Any, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidArgumentError(f"{name} must be an object of string values")
    return value


async def _hutch_error(request: Request, exc: HutchError) -> Response:
    status = exc.status if 400 <= exc.status < 600 else 500
    return error(status, exc.message or exc.__class__.__name__)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    message = exc.detail if exc.status_code != 404 else \
        f"no such endpoint: {request.method} {request.url.path}"
    return error(exc.status_code, message, headers=getattr(exc, "headers", None))


async def _internal_error(request: Request, exc: Exception) -> Response:
    return error(500, f"internal error: {exc.__class__.__name__}")
