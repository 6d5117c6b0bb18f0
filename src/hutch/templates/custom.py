"""Templates users describe (``hutch.protocol.template``), built step by step in build
sandboxes, each file-changing step one cached read-only layer.

A step runs in a real sandbox of the runtime, under the same isolation as any other (user
namespace, seccomp, cgroups, its own network namespace behind the host firewall, with
internet to fetch packages): a template's RUN lines are as untrusted as the code its
sandboxes will run. The sandbox's writable layer, once its process has ended, is copied out
as the step's layer; the next step runs on top of it.

Layout under ``<template store root>/custom``::

    layers/<key>/rootfs, meta.json, build.log    one per step, named by its plan key
    templates/<owner>/<name>.json                 the template: base, layers, how it starts
    .tmp/                                         layers being made
    .locks/                                       one build of a layer or template at a time

A layer appears under ``layers/`` complete or not at all (made in ``.tmp``, renamed), so an
unchanged step is a cache hit whoever built it first, and a crash leaves nothing half-made.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

from hutch.errors import InvalidArgumentError, NotFoundError, TemplateError
from hutch.protocol.template import Definition
from hutch.runtime.spec import Mount, SandboxSpec

from . import images
from .lock import FileLock
from .plan import LayerStep, State, plan
from .store import Template, TemplateStore

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
STEP_TIMEOUT = 3600.0
CONTEXT = "/run/hutch/context"
# Files the runtime writes into every sandbox's own layer: not the template's to keep.
GENERATED = ("etc/hostname", "etc/hosts", "etc/resolv.conf")

Event = Callable[[dict], Any]


#: Seconds an unlisted layer is kept before collection (a build in progress records its
#: template only after its last layer, and a failed build's finished steps stay cached for a
#: retry meanwhile).
COLLECT_AGE = 3600.0


class CustomTemplates:
    """``store`` holds the built-in templates (the bases), ``runtime`` runs build sandboxes.
    Build sandboxes get ``cpu`` cores, ``memory_mb`` and a writable layer of ``disk_mb``."""

    def __init__(self, store: TemplateStore, runtime: Any, *, root: Optional[Path] = None,
                 cpu: float = 2.0, memory_mb: int = 2048, disk_mb: int = 10240,
                 images: Optional["images.Images"] = None) -> None:
        self.store, self.runtime = store, runtime
        # OCI images as bases (None: only hutch's templates)
        self.images = images
        self.cpu, self.memory_mb, self.disk_mb = cpu, memory_mb, disk_mb
        self.root = Path(root) if root is not None else store.root / "custom"
        # Unlisted layers younger than this are kept: they may be an unfinished build's.
        self.collect_age = COLLECT_AGE

    # -- reading ---------------------------------------------------------------------------

    def _record_path(self, owner: str, name: str) -> Path:
        return self.root / "templates" / owner / f"{name}.json"

    def record(self, owner: str, name: str) -> Optional[dict]:
        # Names and owners become path components: anything else ('..', '/', NUL, a name
        # too long for the filesystem) names no template, rather than some other file.
        if not (NAME_RE.match(name) and NAME_RE.match(owner)):
            return None
        try:
            return json.loads(self._record_path(owner, name).read_text())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None

    def get(self, owner: str, name: str) -> Optional[Template]:
        """``owner``'s template ``name``, as sandboxes start from it, or None."""
        rec = self.record(owner, name)
        if rec is None:
            return None
        base = self._base(owner, rec["base"], seen={name})
        layers = tuple(self.root / "layers" / key / "rootfs" for key in rec["layers"])
        if not all(layer.is_dir() for layer in layers):
            return None             # a layer was collected under it: rebuild
        return Template(name=name, digest=rec["key"], layers=layers + base.layers,
                        env=dict(rec["env"]), user=rec["user"], workdir=rec["workdir"],
                        services=base.services, start_cmd=rec.get("start_cmd"),
                        ready_cmd=rec.get("ready_cmd"),
                        default_cwd=rec["workdir"] if rec.get("workdir_set") else None)

    def list(self, owner: str) -> list[dict]:
        folder = self.root / "templates" / owner
        out = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
            rec = self.record(owner, path.stem)
            if rec is not None:
                out.append(rec)
        return out

    def _base(self, owner: str, base: str, seen: set[str]) -> Template:
        """A built-in template (built if needed elsewhere) or another of ``owner``'s."""
        try:
            canonical = self.store.resolve(base)
        except NotFoundError:
            canonical = None
        if canonical is not None:
            tmpl = self.store.get(canonical)
            if tmpl is None:
                raise TemplateError(f"template {canonical} is not built yet")
            return tmpl
        if base in seen:
            raise InvalidArgumentError(f"template {base} is built on itself")
        own = self.get(owner, base) if NAME_RE.match(base) else None
        if own is not None:
            return own
        image = self.images.get(base) if self.images is not None else None
        if image is not None:
            return image
        raise InvalidArgumentError(
            f"base {base!r} is neither a hutch template, one of yours, nor an image pulled "
            "before")

    # -- building --------------------------------------------------------------------------

    def validate(self, owner: str, name: str, definition: Definition, has_context: bool) -> None:
        """Refuse a build that cannot succeed, before anything starts (InvalidArgumentError
        naming why)."""
        if not NAME_RE.match(name) or not NAME_RE.match(owner):
            raise InvalidArgumentError(f"bad template name {name!r} (a-z, 0-9, '.', '_', '-')")
        if self._builtin(name):
            raise InvalidArgumentError(f"{name} is a built-in template's name")
        definition.check()
        if any(s.kind in ("copy", "add") for s in definition.steps) and not has_context:
            raise InvalidArgumentError("this template copies files: the build needs a context")
        if definition.base == name:
            raise InvalidArgumentError(f"template {name} is built on itself")
        if not self._builtin(definition.base) and not self._is_image(owner, definition.base):
            self._base(owner, definition.base, seen={name})

    async def build(self, owner: str, name: str, definition: Definition,
                    context: Optional[Path] = None, on_event: Event = lambda e: None
                    ) -> Template:
        """Build (or find cached) every layer of ``definition`` and record the template.
        ``context`` holds the files its COPY/ADD steps name, under their relative paths."""
        self.validate(owner, name, definition, context is not None)
        if self._builtin(definition.base):     # built on first use, like any create
            base = await self.store.ensure(self.store.resolve(definition.base))
        elif self._is_image(owner, definition.base):
            base = await self.images.ensure(definition.base)     # pulled (again) now
        else:
            base = self._base(owner, definition.base, seen={name})
        inputs = {i: _digests(context, s.args[:-1]) for i, s in enumerate(definition.steps)
                  if s.kind in ("copy", "add")}
        the_plan = plan(definition, f"{base.name}:{base.digest}", inputs,
                        start=State(tuple(base.env.items()), "root", base.workdir))
        for d in ("layers", ".tmp", ".locks"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        staged = await self._stage(context) if inputs else None
        try:
            return await self._build(owner, name, definition, base, the_plan, staged, on_event)
        finally:
            if staged is not None:
                await asyncio.to_thread(shutil.rmtree, staged, True)

    async def _stage(self, context: Path) -> Path:
        """A copy of the context the build sandboxes can read: the client's directory may
        sit where the sandbox's root cannot walk, and a step must not see it change."""
        staged = self.root / ".tmp" / f"context.{secrets.token_hex(6)}"

        def copy() -> None:
            shutil.copytree(context, staged, symlinks=True)
            for dirpath, dirnames, filenames in os.walk(staged):
                for entry in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                    os.lchown(entry, self.store.uid_base, self.store.uid_base)

        await asyncio.to_thread(copy)
        return staged

    async def _build(self, owner: str, name: str, definition: Definition, base: Template,
                     the_plan, context: Optional[Path], on_event: Event) -> Template:
        layers: list[Path] = []           # built so far, bottom first
        total = len(the_plan.layers)
        for index, step in enumerate(the_plan.layers):
            done = self.root / "layers" / step.key
            async with FileLock(self.root / ".locks" / f"{step.key}.lock"):
                cached = (done / "meta.json").exists()
                on_event({"type": "step", "index": index + 1, "total": total,
                          "step": step.step.to_json(), "cached": cached})
                if not cached:
                    lower = tuple(reversed(layers)) + base.layers
                    await self._make_layer(step, lower, context, done, on_event)
            layers.append(done / "rootfs")
        users = [s.args[0] for s in definition.steps if s.kind == "user"]
        record = {
            "name": name, "owner": owner, "base": definition.base,
            "key": the_plan.layers[-1].key if the_plan.layers else f"{base.name}:{base.digest}",
            "layers": [step.key for step in reversed(the_plan.layers)],
            "env": dict(the_plan.final.env), "user": users[-1] if users else base.user,
            "workdir": the_plan.final.workdir, "start_cmd": definition.start_cmd,
            "workdir_set": any(s.kind == "workdir" for s in definition.steps)
            or bool(getattr(base, "default_cwd", None)),
            "ready_cmd": definition.ready_cmd, "labels": dict(definition.labels),
            "cpu": definition.cpu, "memory_mb": definition.memory_mb,
            "definition": definition.to_json(), "built_at": time.time(),
        }
        self._write(owner, name, record)
        tmpl = self.get(owner, name)
        assert tmpl is not None
        on_event({"type": "done", "template": name, "layers": total})
        # A rebuild that changed a step leaves the layers of the template's previous build
        # unlisted: collected now rather than only when some template is removed.
        await self.collect()
        return tmpl

    @staticmethod
    def runnable(tmpl: Template) -> bool:
        """Whether sandboxes can start from ``tmpl``: hutch's agent runs on its python3."""
        return any(os.path.lexists(layer / path) for layer in tmpl.layers
                   for path in ("usr/bin/python3", "usr/local/bin/python3", "bin/python3"))

    def _is_image(self, owner: str, base: str) -> bool:
        """An image reference rather than a template name: not one of the owner's templates,
        and shaped like a reference to a registry's image (it has a tag, a digest or a
        registry: ``python:3.12-slim``, ``ghcr.io/o/i``)."""
        if self.images is None or self.record(owner, base) is not None:
            return False
        return images.looks_like_image(base) and any(c in base for c in ":/@")

    def _builtin(self, name: str) -> bool:
        try:
            self.store.resolve(name)
            return True
        except NotFoundError:
            return False

    async def _make_layer(self, step: LayerStep, lower: tuple[Path, ...],
                          context: Optional[Path], done: Path, on_event: Event) -> None:
        """Run ``step`` in a build sandbox over ``lower`` and keep what it changed."""
        sandbox_id = "b" + secrets.token_hex(10)
        wrapper = (f"( {step.script} ) >/run/hutch/build.log 2>&1; "
                   "echo $? >/run/hutch/exit.tmp; mv /run/hutch/exit.tmp /run/hutch/exit")
        env = dict(step.state.env)
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        env.update(HOME="/root", DEBIAN_FRONTEND="noninteractive")
        mounts = (Mount(context, CONTEXT),) if step.step.kind in ("copy", "add") else ()
        spec = SandboxSpec(id=sandbox_id, layers=lower, args=("/bin/sh", "-c", wrapper),
                           env=tuple(env.items()), cwd="/", cpu=self.cpu,
                           memory_mb=self.memory_mb, pids=4096, disk_mb=self.disk_mb,
                           network="internet", mounts=mounts)
        staging = self.root / ".tmp" / f"{step.key}.{secrets.token_hex(4)}"
        try:
            handle = await self.runtime.create(spec)
            log = await self._follow(sandbox_id, handle.run_dir, on_event)
            code = int((handle.run_dir / "exit").read_text().strip())
            if code != 0:
                tail = "\n".join(log.splitlines()[-30:])
                raise TemplateError(f"step {json.dumps(step.step.to_json())} failed with exit "
                                    f"code {code}:\n{tail}")
            staging.mkdir()
            await self.runtime.copy_writable_layer(sandbox_id, staging / "rootfs")
            for generated in GENERATED:
                (staging / "rootfs" / generated).unlink(missing_ok=True)
            (staging / "build.log").write_text(log)
            (staging / "meta.json").write_text(json.dumps(
                {"key": step.key, "step": step.step.to_json(), "built_at": time.time()}))
            os.rename(staging, done)
        finally:
            try:
                await self.runtime.destroy(sandbox_id)
            except Exception:  # noqa: BLE001 - the build's outcome matters more; the
                pass           # runtime's reconcile removes what is left
            if staging.exists():
                await asyncio.to_thread(shutil.rmtree, staging, True)

    async def _follow(self, sandbox_id: str, run_dir: Path, on_event: Event) -> str:
        """Pass the step's output on as it comes, until it ends; all of it, returned."""
        log_path, seen, pending = run_dir / "build.log", 0, b""
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            finished = (run_dir / "exit").exists()
            try:
                with open(log_path, "rb") as f:
                    f.seek(seen)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            seen += len(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                on_event({"type": "log", "text": line.decode(errors="replace")})
            if finished:
                if pending:
                    on_event({"type": "log", "text": pending.decode(errors="replace")})
                return log_path.read_bytes().decode(errors="replace") if seen else ""
            if not await self.runtime.is_running(sandbox_id) and not (run_dir / "exit").exists():
                raise TemplateError("the build sandbox ended before its step did")
            if time.monotonic() > deadline:
                raise TemplateError(f"a build step ran past {STEP_TIMEOUT:.0f} s")
            await asyncio.sleep(0.1)

    def build_log(self, owner: str, name: str) -> Optional[str]:
        """The output of every step that made ``owner``'s template ``name``, bottom first
        (a step another build made first shows that build's output), or None."""
        rec = self.record(owner, name)
        if rec is None:
            return None
        parts = []
        for key in reversed(rec["layers"]):
            layer = self.root / "layers" / key
            try:
                step = json.loads((layer / "meta.json").read_text()).get("step")
                text = (layer / "build.log").read_text(errors="replace")
            except (OSError, ValueError):
                step, text = None, ""
            what = " ".join([step["kind"].upper(), *step["args"]]) if step else "snapshot"
            parts.append(f"## {what}\n{text}")
        return "".join(p if p.endswith("\n") else p + "\n" for p in parts)

    # -- snapshots --------------------------------------------------------------------------

    def _chain(self, owner: str, template: str) -> tuple[str, list[str], Template]:
        """(the built-in at the bottom, every custom layer key top first, the template) of a
        sandbox's template, so a snapshot lists its whole stack and outlives the template."""
        if self._builtin(template):
            tmpl = self.store.get(self.store.resolve(template))
            if tmpl is None:
                raise TemplateError(f"template {template} is not built")
            return tmpl.name, [], tmpl
        rec = self.record(owner, template)
        tmpl = self.get(owner, template)
        if rec is None or tmpl is None:
            raise TemplateError(f"the sandbox's template {template} is gone")
        mine = self.root / "layers"
        keys = [p.parent.name for p in tmpl.layers if p.parent.parent == mine]
        bottom = rec["base"]
        while not self._builtin(bottom):
            parent = self.record(owner, bottom)
            if parent is None:
                raise TemplateError(f"template {bottom} under {template} is gone")
            bottom = parent["base"]
        return bottom, keys, tmpl

    async def snapshot(self, owner: str, name: str, sandbox_id: str, template: str) -> dict:
        """Save the files of ``owner``'s running sandbox ``sandbox_id`` (started from
        ``template``) as ``owner``'s template ``name``, in one consistent moment (its
        processes frozen while its writable layer is copied), leaving it running."""
        if not NAME_RE.match(name) or self._builtin(name):
            raise InvalidArgumentError(f"bad snapshot name {name!r} (a-z, 0-9, '.', '_', '-'; "
                                       "not a built-in's)")
        base, below, tmpl = self._chain(owner, template)
        for d in ("layers", ".tmp", ".locks"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        key = "snap" + secrets.token_hex(10)
        staging = self.root / ".tmp" / key
        staging.mkdir()
        try:
            await self.runtime.copy_writable_layer(sandbox_id, staging / "rootfs", freeze=True)
            for generated in GENERATED:
                (staging / "rootfs" / generated).unlink(missing_ok=True)
            (staging / "meta.json").write_text(json.dumps(
                {"key": key, "snapshot_of": sandbox_id, "built_at": time.time()}))
            os.rename(staging, self.root / "layers" / key)
        finally:
            if staging.exists():
                await asyncio.to_thread(shutil.rmtree, staging, True)
        record = {
            "name": name, "owner": owner, "base": base, "key": key, "layers": [key] + below,
            "env": dict(tmpl.env), "user": tmpl.user, "workdir": tmpl.workdir,
            "workdir_set": tmpl.default_cwd is not None,
            "start_cmd": None, "ready_cmd": None, "labels": {}, "cpu": None,
            "memory_mb": None, "definition": {"base": base, "steps": []},
            "built_at": time.time(), "snapshot_of": sandbox_id,
        }
        self._write(owner, name, record)
        return record

    def _write(self, owner: str, name: str, record: dict) -> None:
        path = self._record_path(owner, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path)

    # -- removing ---------------------------------------------------------------------------

    async def remove(self, owner: str, name: str) -> None:
        """Forget ``owner``'s template ``name`` and collect the layers nothing uses now."""
        if self.record(owner, name) is None:
            raise NotFoundError(f"template {name} not found")
        self._record_path(owner, name).unlink()
        await self.collect()

    async def collect(self, min_age: Optional[float] = None) -> list[str]:
        """Remove layers no template lists and older than ``min_age`` seconds (default
        ``collect_age``: a build in progress records its template only after its last layer,
        so younger layers may be its). Returns the keys removed."""
        min_age = self.collect_age if min_age is None else min_age
        used = set()
        for path in (self.root / "templates").glob("*/*.json"):
            try:
                used.update(json.loads(path.read_text())["layers"])
            except (OSError, ValueError, KeyError):
                return []               # unreadable: collect nothing rather than too much
        removed = []
        now = time.time()
        mounted = _lower_dirs()
        for layer in (self.root / "layers").glob("*") if (self.root / "layers").is_dir() else ():
            if layer.name in used or str(layer / "rootfs") in mounted:
                continue                # listed, or under a sandbox still running from it
            try:
                if now - (layer / "meta.json").stat().st_mtime < min_age:
                    continue
            except FileNotFoundError:
                continue
            lock = FileLock(self.root / ".locks" / f"{layer.name}.lock")
            async with lock:
                trash = self.root / ".tmp" / f"trash.{layer.name}.{secrets.token_hex(4)}"
                os.rename(layer, trash)
            await asyncio.to_thread(shutil.rmtree, trash, True)
            removed.append(layer.name)
        return removed


def _lower_dirs() -> set[str]:
    """Every directory an overlay mounted on this host stacks read-only (sandboxes keep
    running from a template's layers after the template is removed)."""
    out: set[str] = set()
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                if " - overlay " not in line:
                    continue
                options = line.rsplit(" ", 1)[-1].strip()
                for option in options.split(","):
                    if option.startswith("lowerdir="):
                        out.update(p.replace("\\040", " ")
                                   for p in option[len("lowerdir="):].split(":"))
    except OSError:
        pass
    return out


def _digests(context: Optional[Path], sources: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(relative path, content digest) of every context file ``sources`` match: part of
    the step's key, so changing a copied file rebuilds its layer."""
    import hashlib

    if context is None:
        return ()
    out = []
    for pattern in sources:
        matches = sorted(context.glob(pattern.rstrip("/"))) or [context / pattern]
        for match in matches:
            files = sorted(p for p in match.rglob("*") if p.is_file()) if match.is_dir() \
                else [match] if match.is_file() else []
            for f in files:
                h = hashlib.sha256()
                with open(f, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        h.update(block)
                mode = format(f.stat().st_mode & 0o7777, "o")
                out.append((str(f.relative_to(context)), f"{h.hexdigest()}:{mode}"))
    return tuple(out)
