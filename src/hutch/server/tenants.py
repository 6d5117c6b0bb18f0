"""Tenants: every API key is one, and sees only the sandboxes it created.

The control plane resolves the caller's key on every request (one indexed SQLite lookup of the
key's SHA-256, never cached, so a revocation holds from the very next request) and hands the
:class:`~hutch.server.store.KeyRecord` to the endpoints through the ASGI scope. A sandbox of
another tenant is answered exactly like an id that never existed: same status, same body, so
ids cannot be probed across tenants.

Keys are managed over hutch's own endpoints (E2B has no such API for self-hosting), with the
admin key only:

- ``POST /keys`` ``{"name": ..., "quotas": {...}}`` → 201 ``{id, name, key, createdAt, admin,
  quotas}``; the plaintext ``key`` is in this answer only, the server keeps its hash.
- ``GET /keys`` → ``[{id, name, createdAt, revokedAt, admin, quotas}]``.
- ``PATCH /keys/{id}`` ``{"quotas": {...}}`` → 200 with the key: changes its tenant quotas
  (:mod:`hutch.server.quotas`), in force from the next create since keys are read on every
  request.
- ``DELETE /keys/{id}`` → 204: the key stops working at once and its running sandboxes are
  killed (a revoked tenant could no longer see or stop them, yet their access tokens would
  keep their data plane open until they expire).

The data plane is not gated by API keys: the E2B SDKs send a sandbox's requests with its
access token only. Tenancy holds there because ids and tokens are only ever given to the
sandbox's owner; a sandbox created with ``secure: false`` has no token, and like on E2B its id
alone reaches it.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hutch.errors import (
    AuthenticationError,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    SandboxNotFoundError,
)
from hutch.server import quotas as tenant_quotas
from hutch.server.keys import new_key, new_key_id
from hutch.server.store import KeyRecord, SandboxRecord, Store

log = logging.getLogger("hutch.server")

_SCOPE_KEY = "hutch.key"
MAX_NAME = 100


def api_key_of(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key a request presents: ``X-API-KEY``, else ``Authorization: Bearer``."""
    key = None
    for name, value in headers:
        if name == b"x-api-key":
            return value.decode("latin-1")
        if name == b"authorization" and key is None:
            scheme, _, rest = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                key = rest.strip()
    return key


def authenticate(scope: dict, store: Store) -> KeyRecord:
    """Resolve the request's key and remember it in ``scope``; AuthenticationError if the
    key is missing, unknown or revoked."""
    key = api_key_of(scope["headers"])
    if not key:
        raise AuthenticationError("missing X-API-KEY header")
    record = store.key_for(key)
    if record is None:
        raise AuthenticationError("invalid API key")
    scope[_SCOPE_KEY] = record
    return record


def caller(request: Request) -> KeyRecord:
    """The key (tenant) that made this control-plane request."""
    return request.scope[_SCOPE_KEY]


def caller_in(scope: dict) -> KeyRecord | None:
    """The key an ASGI scope was authenticated with, if it was."""
    return scope.get(_SCOPE_KEY)


def not_found(sandbox_id: str) -> SandboxNotFoundError:
    """The one answer for an unknown, ended or foreign sandbox id (the manager's wording)."""
    return SandboxNotFoundError(f"sandbox {sandbox_id!r} not found")


def check_owner(store: Store, sandbox_id: str, key: KeyRecord) -> SandboxRecord:
    """The record of a sandbox the caller owns; otherwise the same error as for an id that
    never existed. Owners never change, so checking before acting leaves no gap."""
    rec = store.get(sandbox_id)
    if rec is None or rec.owner != key.id:
        raise not_found(sandbox_id)
    return rec


def scoped_idempotency_key(key: KeyRecord, value: str | None) -> str | None:
    """Idempotency keys are per tenant: another tenant's equal key must neither find nor
    block the sandbox it made."""
    return None if value is None else f"{key.id}/{value}"


def quotas_of(key: KeyRecord, config: Any) -> tenant_quotas.Quotas | None:
    """The tenant quotas in force for a key; None for the admin key, which is exempt."""
    return None if key.admin else tenant_quotas.effective(key.quotas, config)


def key_json(rec: KeyRecord, rfc3339, config: Any) -> dict[str, Any]:
    quotas = quotas_of(rec, config)
    return {"id": rec.id, "name": rec.name, "createdAt": rfc3339(rec.created_at),
            "revokedAt": rfc3339(rec.revoked_at), "admin": rec.admin,
            "quotas": None if quotas is None else quotas.json()}


class KeyAdmin:
    """``/keys``: create, list, change and revoke API keys (the admin key only)."""

    def __init__(self, store: Store, manager: Any, rfc3339, read_body) -> None:
        self.store = store
        self.manager = manager
        self._rfc3339 = rfc3339
        self._read_body = read_body

    @staticmethod
    def _admin(request: Request) -> KeyRecord:
        key = caller(request)
        if not key.admin:
            raise PermissionDeniedError("managing API keys needs the admin key")
        return key

    async def create(self, request: Request) -> Response:
        self._admin(request)
        body = await self._read_body(request, allow_empty=True)
        name = body.get("name", "")
        if not isinstance(name, str) or len(name) > MAX_NAME or not name.isprintable():
            raise InvalidArgumentError(f"name must be printable text of at most {MAX_NAME} "
                                       f"characters")
        quotas = body.get("quotas")
        quotas = {} if quotas is None else tenant_quotas.parse_overrides(quotas)
        plaintext = new_key()
        rec = self.store.add_key(new_key_id(), name, plaintext, quotas=quotas)
        log.info("API key %s (%r) created", rec.id, rec.name)
        return JSONResponse({**self._json(rec), "key": plaintext}, status_code=201)

    async def list(self, request: Request) -> Response:
        self._admin(request)
        return JSONResponse([self._json(k) for k in self.store.keys()])

    async def change(self, request: Request) -> Response:
        """Change a key's quotas; the fields not named keep their value."""
        self._admin(request)
        key_id = request.path_params["id"]
        body = await self._read_body(request)
        unknown = sorted(set(body) - {"quotas"})
        if unknown:
            raise InvalidArgumentError(f"unknown field {unknown[0]!r}; only quotas can change")
        quotas = tenant_quotas.parse_overrides(body.get("quotas", {}))
        rec = self.store.get_key(key_id)
        if rec is None:
            raise NotFoundError(f"API key {key_id!r} not found")
        if rec.admin:
            raise ConflictError("the admin key is exempt from tenant quotas")
        if rec.revoked_at is not None:
            raise ConflictError(f"API key {key_id!r} is revoked")
        rec = self.store.set_key_quotas(key_id, quotas)
        log.info("API key %s quotas changed: %s", key_id, quotas)
        return JSONResponse(self._json(rec))

    def _json(self, rec: KeyRecord) -> dict[str, Any]:
        return key_json(rec, self._rfc3339, self.manager.config)

    async def revoke(self, request: Request) -> Response:
        self._admin(request)
        key_id = request.path_params["id"]
        rec = self.store.get_key(key_id)
        if rec is None:
            raise NotFoundError(f"API key {key_id!r} not found")
        if rec.admin:
            raise ConflictError("the admin key cannot be revoked")
        if self.store.revoke_key(key_id):
            log.info("API key %s revoked", key_id)
        await self.kill_sandboxes_of(key_id)
        return Response(status_code=204)

    async def kill_sandboxes_of(self, key_id: str) -> None:
        """Kill what a revoked tenant still runs (also on a repeated revoke, which so
        finishes a sweep an earlier call could not)."""
        for rec in self.store.in_states(("running",)):
            if rec.owner != key_id:
                continue
            try:
                await self.manager.kill(rec.id, reason="its API key was revoked")
            except SandboxNotFoundError:
                pass   # ended meanwhile

    def routes(self) -> list[Route]:
        return [
            Route("/keys", self.create, methods=["POST"]),
            Route("/keys", self.list, methods=["GET"]),
            Route("/keys/{id}", self.change, methods=["PATCH"]),
            Route("/keys/{id}", self.revoke, methods=["DELETE"]),
        ]
