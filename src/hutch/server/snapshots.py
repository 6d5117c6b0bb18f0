"""Snapshots and forks of running sandboxes, in E2B's shapes.

- ``POST /sandboxes/{id}/snapshots`` ``{name?, memory?}`` → 201 ``{snapshotID, names}``: the
  sandbox's files saved as a template of the caller's (``Sandbox.create(template=id)``
  starts from it; ``DELETE /templates/{id}`` removes it). The sandbox keeps running; its
  processes are frozen only while its writable layer is copied. Files only: running
  processes and memory are not saved (``memory: true`` is refused, saying so).
- ``GET /snapshots?sandboxID=&name=&limit=&nextToken=`` → the caller's snapshots.
- ``POST /sandboxes/{id}/fork`` ``{timeout?, count?}`` → 201 ``[{sandbox} | {error}]``:
  ``count`` new sandboxes (1-20) from one snapshot of it, each with its settings (size,
  network policy, environment, metadata), each succeeding or failing on its own.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hutch.errors import HutchError, InvalidArgumentError, UnavailableError
from hutch.server.tenants import caller, check_owner, quotas_of

MAX_FORKS = 20
FORK_TIMEOUT = 15          # E2B's default life of a fork, seconds


class SnapshotAPI:
    def __init__(self, control: Any, read_body) -> None:
        self.control = control             # the ControlPlane: manager, store, sandbox shape
        self._read_body = read_body

    def routes(self) -> list[Route]:
        return [Route("/sandboxes/{id}/snapshots", self.create, methods=["POST"]),
                Route("/snapshots", self.list, methods=["GET"]),
                Route("/sandboxes/{id}/fork", self.fork, methods=["POST"])]

    @property
    def custom(self) -> Any:
        custom = getattr(self.control.manager, "custom", None)
        if custom is None:
            raise UnavailableError("this server's runtime cannot take snapshots")
        return custom

    async def _snapshot(self, request: Request, name: Any, memory: Any) -> dict:
        owner = caller(request)
        rec = check_owner(self.control.store, request.path_params["id"], owner)
        self.control.manager.running(rec.id)          # 404 unless it runs
        if memory not in (None, False):
            raise InvalidArgumentError("hutch snapshots a sandbox's files only (memory: false): "
                                       "its running processes are not saved")
        if name is None:
            name = f"snapshot-{rec.id[:10]}-{secrets.token_hex(3)}"
        if not isinstance(name, str):
            raise InvalidArgumentError("name must be a string")
        return await self.custom.snapshot(owner.id, name, rec.id, rec.template)

    async def create(self, request: Request) -> Response:
        body = await self._read_body(request, allow_empty=True)
        unknown = sorted(set(body) - {"name", "memory"})
        if unknown:
            raise InvalidArgumentError(f"unknown field {unknown[0]!r}")
        made = await self._snapshot(request, body.get("name"), body.get("memory"))
        return JSONResponse({"snapshotID": made["name"], "names": [made["name"]]},
                            status_code=201)

    async def list(self, request: Request) -> Response:
        q = request.query_params
        limit = q.get("limit", "100")
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            raise InvalidArgumentError("limit must be 1..1000")
        start = q.get("nextToken", "")
        snaps = [r for r in self.custom.list(caller(request).id) if r.get("snapshot_of")
                 and (not q.get("sandboxID") or r["snapshot_of"] == q["sandboxID"])
                 and (not q.get("name") or r["name"] == q["name"])
                 and r["name"] > start]
        page = snaps[:int(limit)]
        headers = {"X-Next-Token": page[-1]["name"]} if len(snaps) > len(page) else {}
        return JSONResponse([{"snapshotID": r["name"], "names": [r["name"]]} for r in page],
                            headers=headers)

    async def fork(self, request: Request) -> Response:
        body = await self._read_body(request, allow_empty=True)
        unknown = sorted(set(body) - {"timeout", "count"})
        if unknown:
            raise InvalidArgumentError(f"unknown field {unknown[0]!r}")
        count = body.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_FORKS:
            raise InvalidArgumentError(f"count must be 1..{MAX_FORKS}")
        timeout = body.get("timeout", FORK_TIMEOUT)
        owner = caller(request)
        source = check_owner(self.control.store, request.path_params["id"], owner)
        made = await self._snapshot(request, None, None)
        manager = self.control.manager

        async def one() -> dict:
            try:
                rec, _ = await manager.create(
                    made["name"], owner=owner.id, quotas=quotas_of(owner, manager.config),
                    timeout=timeout, metadata=dict(source.metadata),
                    env_vars=dict(source.env_vars), network=source.network,
                    egress=source.egress, secure=source.access_token is not None,
                    cpu=source.cpu, memory_mb=source.memory_mb, disk_mb=source.disk_mb)
                return {"sandbox": self.control.sandbox(rec)}
            except HutchError as exc:
                return {"error": {"code": exc.status, "message": exc.message}}

        try:
            results = await asyncio.gather(*(one() for _ in range(count)))
        finally:
            # The forks stand on the snapshot's layers (kept while they run); the template
            # itself was only the way to start them.
            await self.custom.remove(owner.id, made["name"])
        return JSONResponse(results, status_code=201)
