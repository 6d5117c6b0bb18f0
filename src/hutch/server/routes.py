"""The control plane: E2B's REST API for sandboxes (create, connect, get, list, timeout, kill).

Paths and shapes follow E2B's API so the official SDKs work unchanged; both the v1 and the v2
paths of create, connect and list are served because SDK releases differ in which they call.
Every answer that is not a success is JSON ``{"code": <status>, "message": ...}``: the SDKs'
generated clients decode error bodies as JSON.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import suppress
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hutch.errors import (
    AuthenticationError,
    HutchError,
    InvalidArgumentError,
    PermissionDeniedError,
    SandboxNotFoundError,
)
from hutch.server import egress as egress_rules
from hutch.server.audit import KINDS as AUDIT_KINDS
from hutch.server.audit import ApiRecorder
from hutch.server.keys import traffic_token
from hutch.server.manager import SandboxManager
from hutch.server.metrics import CONTENT_TYPE as METRICS_TYPE
from hutch.server.store import AUDIT_FLUSH_SECONDS, LIVE_STATES, SandboxRecord, Store
from hutch.server.snapshots import SnapshotAPI
from hutch.server.template_api import TemplateAPI
from hutch.server.tenants import (
    KeyAdmin,
    authenticate,
    caller,
    caller_in,
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
    ("/sandboxes/{id}/logs", ["GET"]),
    ("/v2/sandboxes/{id}/logs", ["GET"]),
    ("/sandboxes/metrics", ["GET"]),
]


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def _parse_since(text: str) -> float:
    """A point in time given as Unix seconds or RFC 3339."""
    try:
        value = float(text)
    except ValueError:
        try:
            return _parse_rfc3339(text)
        except (OverflowError, OSError):
            raise InvalidArgumentError(f"since {text!r} is out of range") from None
    if not 0 <= value < 1e11:
        raise InvalidArgumentError(f"since {text!r} is out of range")
    return value


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
        request.scope[ApiRecorder.SANDBOX] = sandbox_id   # the call is filed under it
        return sandbox_id

    async def health(self, request: Request) -> Response:
        body: dict[str, Any] = {"status": "ok"}
        if self.manager.pools:
            body["pools"] = [pool.stats() for pool in self.manager.pools.values()]
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
        request.scope[ApiRecorder.SANDBOX] = rec.id
        server_timing = ", ".join(f"{k};dur={v * 1e3:.2f}" for k, v in timing.items())
        return JSONResponse(self.sandbox(rec), status_code=201,
                            headers={"Server-Timing": server_timing})

    async def connect(self, request: Request) -> Response:
        body = await _json_object(request, allow_empty=True)
        rec = await self.manager.connect(self._mine(request), body.get("timeout"),
                                         by=caller(request).id)
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
        await self.manager.kill(self._mine(request), by=caller(request).id)
        return Response(status_code=204)

    async def timeout(self, request: Request) -> Response:
        body = await _json_object(request)
        if "timeout" not in body:
            raise InvalidArgumentError("timeout is required")
        await self.manager.set_timeout(self._mine(request), body["timeout"],
                                       by=caller(request).id)
        return Response(status_code=204)

    async def update_network(self, request: Request) -> Response:
        body = await _json_object(request, allow_empty=True)
        await self.manager.update_network(self._mine(request), body, by=caller(request).id)
        return Response(status_code=204)

    async def audit_log(self, request: Request) -> Response:
        """The audit trail of one of the caller's sandboxes (also after it ended)."""
        return await self._audit(request, sandbox_id=self._mine(request))

    async def key_audit_log(self, request: Request) -> Response:
        """The caller's own control-plane calls that were about no sandbox."""
        return await self._audit(request, key_id=caller(request).id)

    async def _audit(self, request: Request, **whose: str) -> Response:
        q = request.query_params
        kinds = [k for k in ",".join(q.getlist("kind")).split(",") if k]
        unknown = sorted(set(kinds) - set(AUDIT_KINDS))
        if unknown:
            raise InvalidArgumentError(f"unknown kind {unknown[0]!r}; kinds are "
                                       f"{', '.join(AUDIT_KINDS)}")
        limit = q.get("limit", "100")
        if not limit.isdigit() or not 1 <= int(limit) <= 10_000:
            raise InvalidArgumentError("limit must be 1..10000")
        after = q.get("after")
        if after is not None and not (after.isdigit() and len(after) < 19):
            raise InvalidArgumentError("after must be an event's seq (a non-negative integer)")
        since = _parse_since(q["since"]) if q.get("since") else None
        # Following is for a sandbox's trail, which ends with the sandbox; a key's has no end.
        follow = q.get("follow", "false").lower() if "sandbox_id" in whose else "false"
        if follow not in ("true", "false", "1", "0"):
            raise InvalidArgumentError("follow must be true or false")
        query = dict(kinds=kinds, since=since, after=int(after) if after else None,
                     limit=int(limit), **whose)
        if follow in ("false", "0"):
            return JSONResponse({"events": self.store.audit(**query)})
        return StreamingResponse(self._follow(query, whose.get("sandbox_id")),
                                 media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-store"})

    async def _follow(self, query: dict, sandbox_id: str | None):
        """NDJSON: the events a plain query would answer, then each new one as it is
        written; an empty line every 15 s of silence. Ends once the sandbox has ended and its
        last events are written, or when the server stops."""
        wake = asyncio.Event()
        self.store.audit_listeners.add(wake.set)
        try:
            events = self.store.audit(**query)
            forward = query["since"] is not None or query["after"] is not None
            last = events[-1]["seq"] if events and forward else self.store.audit_max_seq()
            if events:
                yield "".join(json.dumps(e) + "\n" for e in events)
            query = {**query, "since": None, "limit": 1000}
            ending = 0.0
            while not self.store.followers_stopped:
                wake.clear()
                events = self.store.audit(**{**query, "after": last})
                if events:
                    last = events[-1]["seq"]
                    yield "".join(json.dumps(e) + "\n" for e in events)
                    continue
                if sandbox_id is not None and not ending:
                    rec = self.store.get(sandbox_id)
                    if rec is None or rec.state not in LIVE_STATES:
                        # What the end cuts short (its streams) is recorded just after.
                        ending = time.monotonic() + 4 * AUDIT_FLUSH_SECONDS
                if ending and time.monotonic() >= ending:
                    return
                try:
                    await asyncio.wait_for(wake.wait(),
                                           AUDIT_FLUSH_SECONDS * 2 if ending else 15)
                except asyncio.TimeoutError:
                    if not ending:
                        yield "\n"
        finally:
            self.store.audit_listeners.discard(wake.set)

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

    async def prometheus(self, request: Request) -> Response:
        """Prometheus metrics (:mod:`hutch.server.metrics`). They name every tenant's
        sandboxes, so only the admin key reads them."""
        if not caller(request).admin:
            raise PermissionDeniedError("reading metrics needs the admin key")
        body = await self.manager.prometheus.render(self.manager)
        return Response(body, media_type=METRICS_TYPE, headers={"Cache-Control": "no-store"})

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
            Route("/sandboxes/{id}/audit", self.audit_log, methods=["GET"]),
            Route("/audit", self.key_audit_log, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
            *KeyAdmin(self.store, self.manager, rfc3339, _json_object).routes(),
            *TemplateAPI(self.manager, _json_object).routes(),
            *SnapshotAPI(self, _json_object).routes(),
        ]
        app = Starlette(routes=routes, exception_handlers={
            HutchError: _hutch_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        })
        # No redirects to the slash-less path: every path either is an endpoint or is a 404
        # (a redirect would also send the API key on to wherever it points).
        app.router.redirect_slashes = False
        return _Auth(app, self.store)


class _Auth:
    """Every control-plane call but ``/health`` and ``/openapi.json`` needs a valid
    ``X-API-KEY``; the key found is the caller's tenant (:mod:`hutch.server.tenants`).

    Scrapes of ``/metrics`` are left out of the audit trail: one every few seconds would
    push the admin key's own calls (key management) out of it within days."""

    def __init__(self, app, store: Store) -> None:
        self.app = app
        self.store = store
        self._recorded = ApiRecorder(app, store, caller_in)   # each call in the audit trail

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in ("/health", "/openapi.json"):
            try:
                authenticate(scope, self.store)
            except AuthenticationError as exc:
                return await error(401, exc.message)(scope, receive, send)
            if scope["path"] == "/metrics":
                return await self.app(scope, receive, send)
            return await self._recorded(scope, receive, send)
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
