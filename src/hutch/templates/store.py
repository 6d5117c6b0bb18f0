"""Where built templates live, and the one place that decides to build them.

Layout under the store's root::

    <root>/<name>/<digest>/rootfs     the read-only layer (owners shifted by uid_base)
    <root>/<name>/<digest>/meta.json  written before the directory is renamed into place
    <root>/<name>/<digest>/build.log
    <root>/.tmp/<name>@...            builds in progress and trees being deleted
    <root>/.locks/<name>.lock         serializes builds of one template across processes
    <root>/.cache/apt/                downloaded .debs, reused by the next build

A build happens in ``.tmp`` and is renamed into place complete with its metadata, so a crash
at any moment leaves either nothing or a finished template; leftovers in ``.tmp`` are swept
the next time that template is built. ``get`` only stats files it already knows about, which
is why every sandbox create can call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from hutch.errors import TemplateError

from . import builder, layer
from .catalog import Catalog
from .lock import FileLock
from .progress import Progress
from .recipe import Recipe, digest

HOST_CA_DIR = Path("/usr/local/share/ca-certificates")


@dataclass(frozen=True)
class Template:
    name: str                       # canonical name, e.g. "base"
    digest: str                     # content hash of the recipe and build inputs
    layers: tuple[Path, ...]        # read-only rootfs dirs, topmost first
    env: dict[str, str] = field(default_factory=dict)
    user: str = "user"
    workdir: str = "/home/user"
    services: tuple[str, ...] = ()
    # What every new sandbox starts in the background, and the check that it is up (the
    # templates users build: hutch.templates.custom; run by hutch.server.startup).
    start_cmd: str | None = None
    ready_cmd: str | None = None
    # Where commands naming no directory start, when the template says (a WORKDIR step);
    # None: the user's home.
    default_cwd: str | None = None


@dataclass
class _Shared:
    """One build in flight on one event loop and how many callers await it."""

    task: asyncio.Future
    waiters: int = 0


class TemplateStore:
    """Built templates under ``root``.

    ``uid_base`` is the host uid that is root inside a sandbox; templates are stored shifted by
    it. ``trust_host_cas`` copies the host's extra CA certificates (``ca_dir``, by default
    /usr/local/share/ca-certificates/*.crt) into every template and adds them to its system
    trust store. That is a deliberate decision to extend the host's trust to sandboxes: on a
    host whose egress is TLS-intercepted nothing inside could reach HTTPS otherwise, and the
    host's operator already trusts those CAs. Turn it off where sandboxes must not inherit it.
    """

    def __init__(self, root: Path, *, uid_base: int = 100000, trust_host_cas: bool = True,
                 ca_dir: Path = HOST_CA_DIR, catalog: Catalog | None = None) -> None:
        self.root = Path(root)
        self.uid_base = uid_base
        self.trust_host_cas = trust_host_cas
        self.catalog = catalog or Catalog()
        self.ca_files = _read_cas(ca_dir) if trust_host_cas else {}
        inputs = {
            "uid_base": uid_base,
            "host_cas": {n: hashlib.sha256(b).hexdigest() for n, b in self.ca_files.items()},
        }
        self._digests: dict[str, str] = {}
        for name in self.catalog.names():
            for recipe in reversed(self.catalog.chain(name)):
                if recipe.name not in self._digests:
                    parent = self._digests[recipe.parent] if recipe.parent else None
                    self._digests[recipe.name] = digest(recipe, parent_digest=parent,
                                                        inputs=inputs)
        self._known: dict[str, Template] = {}
        self._inflight: dict[tuple[str, int], _Shared] = {}

    # -- lookups ---------------------------------------------------------------------------

    def resolve(self, name: str) -> str:
        """The canonical name for ``name`` or an alias; NotFoundError lists the known names."""
        return self.catalog.resolve(name)

    def digest(self, name: str) -> str:
        return self._digests[self.resolve(name)]

    def get(self, name: str) -> Template | None:
        """The template if it is built and current, else None. Costs a stat per layer."""
        canonical = self.resolve(name)
        known = self._known.get(canonical)
        if known is not None and known.digest == self._digests[canonical]:
            if all((layer.parent / "meta.json").exists() for layer in known.layers):
                return known
            self._known.pop(canonical, None)
        template = self._load(canonical)
        if template is not None:
            self._known[canonical] = template
        return template

    def metadata(self, name: str) -> dict | None:
        """meta.json of the current build (size, build time, packages), or None."""
        canonical = self.resolve(name)
        try:
            return json.loads((self._dir(canonical) / "meta.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def list(self) -> list[Template]:
        return [t for name in self.catalog.names() if (t := self.get(name)) is not None]

    # -- changes ---------------------------------------------------------------------------

    async def ensure(self, name: str, progress: Progress | None = None) -> Template:
        """The current template, built first if missing or outdated. Concurrent callers in
        any task, thread or process wait for one build instead of starting their own: tasks
        on one event loop share the build (and its outcome) directly, everyone else queues
        on the template's file lock and finds the build done. ``progress`` hears about a
        build this call performs; a caller that only waits hears nothing."""
        canonical = self.resolve(name)
        template = self.get(canonical)
        if template is not None:
            return template
        key = (canonical, id(asyncio.get_running_loop()))
        shared = self._inflight.get(key)
        if shared is None:
            shared = _Shared(asyncio.ensure_future(self._ensure(canonical, progress)))
            self._inflight[key] = shared
            shared.task.add_done_callback(lambda _: self._inflight.pop(key, None))
        shared.waiters += 1
        try:
            return await asyncio.shield(shared.task)
        except asyncio.CancelledError:
            # The last caller to give up stops the build; the others keep it going.
            if shared.waiters == 1 and not shared.task.done():
                shared.task.cancel()
                with contextlib.suppress(BaseException):
                    await shared.task
            raise
        finally:
            shared.waiters -= 1

    async def _ensure(self, canonical: str, progress: Progress | None) -> Template:
        recipe = self.catalog.recipe(canonical)
        if recipe.parent is not None:
            await self.ensure(recipe.parent, progress)
        self._prepare_dirs()
        async with FileLock(self._lock_path(canonical)):
            template = self.get(canonical)
            if template is not None:
                return template          # another thread or process built it meanwhile
            self._sweep(canonical)
            await self._build(recipe, progress)
        template = self.get(canonical)
        if template is None:
            raise TemplateError(f"template {canonical} was built but cannot be read back")
        return template

    async def remove(self, name: str) -> None:
        """Delete every build of the template (sandboxes still using it must be gone)."""
        canonical = self.resolve(name)
        self._prepare_dirs()
        async with FileLock(self._lock_path(canonical)):
            self._known.pop(canonical, None)
            target = self.root / canonical
            if target.exists():
                trash = self._trash(canonical, target)
                await _rmtree(trash)

    # -- internals -------------------------------------------------------------------------

    def _dir(self, canonical: str) -> Path:
        return self.root / canonical / self._digests[canonical]

    def _lock_path(self, canonical: str) -> Path:
        return self.root / ".locks" / f"{canonical}.lock"

    def _prepare_dirs(self) -> None:
        for sub in (".tmp", ".locks", ".cache/apt"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)

    def _load(self, canonical: str) -> Template | None:
        try:
            meta = json.loads((self._dir(canonical) / "meta.json").read_text())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        recipe = self.catalog.recipe(canonical)
        layers: tuple[Path, ...] = (self._dir(canonical) / "rootfs",)
        if recipe.parent is not None:
            below = self.get(recipe.parent)
            if below is None:
                return None
            layers += below.layers
        return Template(name=canonical, digest=meta["digest"], layers=layers,
                        env=dict(meta["env"]), user=meta["user"], workdir=meta["workdir"],
                        services=recipe.services)

    async def _build(self, recipe: Recipe, progress: Progress | None) -> None:
        canonical, want = recipe.name, self._digests[recipe.name]
        work = self.root / ".tmp" / f"{canonical}@{want}.{secrets.token_hex(4)}"
        work.mkdir()
        if progress is not None:
            progress.start(canonical)
        try:
            if recipe.parent is None:
                result = await builder.bootstrap(
                    recipe, work, cache=self.root / ".cache" / "apt", ca_files=self.ca_files,
                    uid_base=self.uid_base, progress=progress)
            else:
                below = self.get(recipe.parent)
                if below is None:
                    raise TemplateError(f"template {canonical}: {recipe.parent} is not built")
                result = await layer.build(recipe, below.layers, work, uid_base=self.uid_base,
                                           progress=progress)
            meta = {
                "name": canonical, "digest": want, "recipe": recipe.content(),
                "env": dict(recipe.env), "user": recipe.user, "workdir": recipe.workdir,
                "uid_base": self.uid_base, "host_cas": sorted(self.ca_files),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": round(result.seconds, 1), "size_bytes": result.bytes,
                "entries": result.entries, "packages": result.packages,
            }
            (work / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
            for leftover in ("configure.sh", "ca"):
                path = work / leftover
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
            _syncfs(work)
            final = self._dir(canonical)
            final.parent.mkdir(exist_ok=True)
            os.chmod(final.parent, 0o755)
            os.chmod(work, 0o755)
            if final.exists():           # a tree without meta.json: not a finished build
                await _rmtree(self._trash(canonical, final))
            os.rename(work, final)
        except BaseException as e:
            await _rmtree(work)
            if progress is not None:
                progress.finish(False, (str(e).splitlines() or [type(e).__name__])[0])
            if isinstance(e, Exception) and not isinstance(e, TemplateError):
                raise TemplateError(f"template {canonical}: build failed: {e}") from e
            raise
        if progress is not None:
            progress.update("done", 1.0)
            progress.finish(True, f"{result.bytes / 2**20:.0f} MiB")
        for old in (self.root / canonical).iterdir():
            if old.name != want:
                await _rmtree(self._trash(canonical, old))

    def _trash(self, canonical: str, path: Path) -> Path:
        """Move ``path`` out of sight in one rename; the slow delete comes after."""
        trash = self.root / ".tmp" / f"{canonical}@trash.{secrets.token_hex(4)}"
        os.rename(path, trash)
        return trash

    def _sweep(self, canonical: str) -> None:
        """Remove what crashed builds and deletes of this template left (we hold its lock)."""
        for stale in (self.root / ".tmp").glob(f"{canonical}@*"):
            _unmount_below(stale)
            shutil.rmtree(stale, ignore_errors=True)


def _read_cas(ca_dir: Path) -> dict[str, bytes]:
    try:
        return {p.name: p.read_bytes() for p in sorted(ca_dir.glob("*.crt")) if p.is_file()}
    except FileNotFoundError:
        return {}


async def _rmtree(path: Path) -> None:
    def remove() -> None:
        _unmount_below(path)
        shutil.rmtree(path, ignore_errors=True)

    await asyncio.shield(asyncio.to_thread(remove))


def _unmount_below(path: Path) -> None:
    """Detach any mount under ``path`` before deleting it, so a delete never walks into a
    mounted /proc, /sys or /dev (builds run in a private mount namespace; this is the net)."""
    prefix = str(path.resolve()) + "/"
    try:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
    except OSError:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        libc.umount2(point.encode(), 2)  # MNT_DETACH


def _syncfs(path: Path) -> None:
    """Flush the new tree to disk before it is renamed into place, so a power loss cannot
    leave a template that looks finished but holds empty files."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)
