"""``/templates``: build, list, inspect and remove templates.

Every key (tenant) has its own templates, named as it likes except for the built-in names;
another tenant's are answered like templates that do not exist. The built-in templates are
listed to everyone and built by the server itself.

- ``POST /templates/contexts`` (body: a gzipped tar of the files COPY/ADD steps name) →
  201 ``{"context": <sha256>}``; kept per tenant by content, so an unchanged context is sent
  once.
- ``POST /templates`` ``{"name", "definition", "context"?}`` → 200 with an NDJSON stream of the
  build: ``step`` (index, total, the step, cached), ``log`` (a line of the step's output),
  then ``done`` (the template) or ``error`` (the message: the failing step, its output, its
  exit code). Bad requests are refused before the stream starts (400/404).
- ``GET /templates`` → the built-in templates and the caller's; ``GET /templates/{name}``,
  ``GET /templates/{name}/logs`` (the output of each step that made it, as text),
  ``DELETE /templates/{name}`` (the caller's; 204).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import shutil
import tarfile
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from hutch.errors import HutchError, InvalidArgumentError, NotFoundError, UnavailableError
from hutch.protocol.template import Definition
from hutch.server.tenants import caller

log = logging.getLogger(__name__)

MAX_CONTEXT = 1 << 30        # bytes of one uploaded context, compressed
SHA256_HEX = frozenset("0123456789abcdef")


class TemplateAPI:
    """Over the manager's templates: ``manager.templates`` (built-in) and ``manager.custom``
    (tenants', hutch.templates.custom), looked up per request."""

    def __init__(self, manager: Any, read_body) -> None:
        self.manager = manager
        self._read_body = read_body
        self._builds: set[asyncio.Task] = set()

    @property
    def custom(self) -> Any:
        if getattr(self.manager, "custom", None) is None:
            raise UnavailableError("this server's runtime cannot build templates")
        return self.manager.custom

    @property
    def builtin(self) -> Any:
        return self.manager.templates

    @property
    def contexts(self) -> Path:
        return Path(self.manager.config.data_dir) / "contexts"

    def routes(self) -> list[Route]:
        return [
            Route("/templates/contexts", self.upload, methods=["POST"]),
            Route("/templates", self.build, methods=["POST"]),
            Route("/templates", self.list, methods=["GET"]),
            Route("/templates/{name}", self.get, methods=["GET"]),
            Route("/templates/{name}/logs", self.logs, methods=["GET"]),
            Route("/templates/{name}", self.remove, methods=["DELETE"]),
        ]

    # -- contexts ----------------------------------------------------------------------------

    async def upload(self, request: Request) -> Response:
        owner = caller(request).id
        folder = self.contexts / owner
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".upload.{secrets.token_hex(6)}"
        digest, size = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > MAX_CONTEXT:
                        raise InvalidArgumentError(f"a build context may be at most "
                                                   f"{MAX_CONTEXT} bytes")
                    digest.update(chunk)
                    f.write(chunk)
            if size == 0:
                raise InvalidArgumentError("the body must be a gzipped tar of the context")
            name = digest.hexdigest()
            await asyncio.to_thread(_check_archive, tmp)
            os.replace(tmp, folder / f"{name}.tar.gz")
        finally:
            tmp.unlink(missing_ok=True)
        return JSONResponse({"context": name}, status_code=201)

    # -- builds ------------------------------------------------------------------------------

    async def build(self, request: Request) -> Response:
        owner = caller(request).id
        body = await self._read_body(request)
        unknown = sorted(set(body) - {"name", "definition", "context"})
        if unknown:
            raise InvalidArgumentError(f"unknown field {unknown[0]!r}")
        name = body.get("name")
        if not isinstance(name, str):
            raise InvalidArgumentError("name is required")
        definition = Definition.from_json(body.get("definition"))
        context_id = body.get("context")
        archive = None
        if context_id is not None:
            if not (isinstance(context_id, str) and len(context_id) == 64
                    and set(context_id) <= SHA256_HEX):
                raise InvalidArgumentError("context must be the id an upload answered")
            archive = self.contexts / owner / f"{context_id}.tar.gz"
            if not archive.exists():
                raise NotFoundError(f"context {context_id} not found (upload it first)")
        if any(s.kind in ("copy", "add") for s in definition.steps) and archive is None:
            raise InvalidArgumentError("this template copies files: upload its context first")
        self.custom.validate(owner, name, definition, archive is not None)
        return StreamingResponse(self._stream(owner, name, definition, archive),
                                 media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-store"})

    async def _stream(self, owner: str, name: str, definition: Definition, archive):
        """The build's events as NDJSON lines, as they happen."""
        queue: asyncio.Queue = asyncio.Queue()

        async def run() -> None:
            workdir = None
            try:
                if archive is not None:
                    workdir = self.custom.root / ".tmp" / f"upload.{secrets.token_hex(6)}"
                    await asyncio.to_thread(_extract, archive, workdir)
                await self.custom.build(owner, name, definition, workdir, queue.put_nowait)
            except HutchError as exc:
                queue.put_nowait({"type": "error", "message": exc.message})
            except Exception as exc:  # noqa: BLE001 - reported in the stream, logged here
                log.exception("template build %s/%s failed", owner, name)
                queue.put_nowait({"type": "error", "message": f"internal error: {exc}"})
            finally:
                if workdir is not None:
                    await asyncio.to_thread(shutil.rmtree, workdir, True)
                queue.put_nowait(None)

        # If the client goes away the build goes on (its layers stay cached for the retry);
        # only its events are no longer read.
        self._builds.add(task := asyncio.ensure_future(run()))
        task.add_done_callback(self._builds.discard)
        while True:
            event = await queue.get()
            if event is None:
                break
            yield json.dumps(event) + "\n"

    # -- reading and removing ----------------------------------------------------------------

    def _describe(self, rec: dict) -> dict:
        return {"templateID": rec["name"], "builtin": False, "base": rec["base"],
                "env": rec["env"], "user": rec["user"], "workdir": rec["workdir"],
                "startCmd": rec["start_cmd"], "readyCmd": rec["ready_cmd"],
                "layers": len(rec["layers"]), "builtAt": rec["built_at"],
                "definition": rec["definition"]}

    async def list(self, request: Request) -> Response:
        owner = caller(request).id
        builtins = [{"templateID": t.name, "builtin": True, "user": t.user,
                     "workdir": t.workdir} for t in self.builtin.list()]
        return JSONResponse(builtins + [self._describe(r) for r in self.custom.list(owner)])

    async def get(self, request: Request) -> Response:
        rec = self.custom.record(caller(request).id, request.path_params["name"])
        if rec is None:
            raise NotFoundError(f"template {request.path_params['name']} not found")
        return JSONResponse(self._describe(rec))

    async def logs(self, request: Request) -> Response:
        text = self.custom.build_log(caller(request).id, request.path_params["name"])
        if text is None:
            raise NotFoundError(f"template {request.path_params['name']} not found")
        return PlainTextResponse(text)

    async def remove(self, request: Request) -> Response:
        await self.custom.remove(caller(request).id, request.path_params["name"])
        return Response(status_code=204)


def _members(tar: tarfile.TarFile):
    """Regular files, directories and symlinks that stay inside the context; anything else
    (absolute paths, '..', devices, hard links, links pointing out) refused."""
    for m in tar.getmembers():
        path = Path(m.name)
        if path.is_absolute() or ".." in path.parts:
            raise InvalidArgumentError(f"context entry {m.name!r} points outside the context")
        if m.issym():
            target = os.path.normpath(path.parent / m.linkname)
            if os.path.isabs(m.linkname) or target == ".." or target.startswith("../"):
                raise InvalidArgumentError(f"context symlink {m.name!r} points outside it")
        elif not (m.isfile() or m.isdir()):
            raise InvalidArgumentError(f"context entry {m.name!r} is neither a file, a "
                                       "directory nor a symlink")
        yield m


def _check_archive(path: Path) -> None:
    try:
        with tarfile.open(path, "r:gz") as tar:
            for _ in _members(tar):
                pass
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidArgumentError(f"the context is not a gzipped tar ({exc})") from None


def _extract(archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    with tarfile.open(archive, "r:gz") as tar:
        for m in _members(tar):
            m.uid = m.gid = 0
            m.uname = m.gname = ""
            m.mode &= 0o777        # no setuid, setgid or sticky bits from a client
            tar.extract(m, dest, set_attrs=True)
