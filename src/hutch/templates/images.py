"""OCI images from registries as template bases: pulled with skopeo, unpacked with umoci
(Debian's packages of both), cached by manifest digest.

umoci applies the layers in order, whiteouts included, and shifts every owner into the
sandboxes' id range as it writes (``--uid-map``/``--gid-map``), so the unpacked root
filesystem is a read-only layer like any template's. The image's configuration (its env,
user, working directory, entrypoint and command) becomes the template's.

Layout under ``<template store root>/images``: ``<digest>/rootfs`` and ``meta.json``;
``refs/<name>.json`` remembers which digest a reference was last pulled as.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
from pathlib import Path
from typing import Optional

from hutch.errors import InvalidArgumentError, TemplateError

from .lock import FileLock
from .store import Template

ID_RANGE = 65536
# docker.io/library/python:3.12-slim, ghcr.io/org/img@sha256:..., 127.0.0.1:5000/x/y:1
REF_RE = re.compile(r"^[a-z0-9]+([._:/@-][a-zA-Z0-9._-]+)*$")


def looks_like_image(ref: str) -> bool:
    return bool(REF_RE.match(ref)) and ".." not in ref and len(ref) <= 255


class Images:
    """``insecure``: registries (host[:port]) spoken to over plain HTTP or without checking
    their certificate; ``auth_file``: registry credentials (containers-auth.json format)."""

    def __init__(self, root: Path, *, uid_base: int, insecure: tuple[str, ...] = (),
                 auth_file: Optional[Path] = None) -> None:
        self.root = Path(root)
        self.uid_base = uid_base
        self.insecure = tuple(insecure)
        self.auth_file = auth_file

    def _insecure(self, ref: str) -> bool:
        """Whether ``ref``'s registry is listed (``host:port``, or ``host`` for any port)."""
        registry = ref.split("/", 1)[0] if "/" in ref else ""
        return registry in self.insecure or registry.rsplit(":", 1)[0] in self.insecure

    def _flags(self, ref: str, direction: str = "") -> list[str]:
        flags = []
        if self._insecure(ref):
            flags.append(f"--{direction}tls-verify=false")
        if self.auth_file is not None:
            flags += [f"--{direction}authfile" if direction else "--authfile",
                      str(self.auth_file)]
        return flags

    async def _skopeo(self, *args: str) -> bytes:
        proc = await asyncio.create_subprocess_exec(
            "skopeo", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise TemplateError(f"skopeo {args[0]}: {err.decode(errors='replace').strip()[-800:]}")
        return out

    def _ref_path(self, ref: str) -> Path:
        return self.root / "refs" / (hashlib.sha256(ref.encode()).hexdigest()[:32] + ".json")

    def get(self, ref: str) -> Optional[Template]:
        """The image as last pulled, or None (no network is touched)."""
        try:
            digest = json.loads(self._ref_path(ref).read_text())["digest"]
            meta = json.loads((self.root / digest / "meta.json").read_text())
        except (OSError, ValueError, KeyError):
            return None
        return self._template(ref, digest, meta)

    def _template(self, ref: str, digest: str, meta: dict) -> Template:
        config = meta.get("config") or {}
        env = dict(e.split("=", 1) for e in config.get("Env") or [] if "=" in e)
        start = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
        workdir = config.get("WorkingDir") or None
        return Template(name=ref, digest=digest, layers=(self.root / digest / "rootfs",),
                        env=env, user=config.get("User") or "root", workdir=workdir or "/",
                        start_cmd=shlex.join(start) if start else None, default_cwd=workdir)

    async def ensure(self, ref: str) -> Template:
        """The image ``ref`` (pulled and unpacked unless that digest is here already)."""
        if not looks_like_image(ref):
            raise InvalidArgumentError(f"{ref!r} is no image reference")
        for d in ("refs", ".tmp", ".locks"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)
        inspected = json.loads(await self._skopeo("inspect", *self._flags(ref),
                                                  f"docker://{ref}"))
        digest = inspected["Digest"].replace("sha256:", "")[:32]
        done = self.root / digest
        async with FileLock(self.root / ".locks" / f"{digest}.lock"):
            if not (done / "meta.json").exists():
                await self._pull(ref, done)
        tmp = self._ref_path(ref).with_suffix(f".{secrets.token_hex(4)}")
        tmp.write_text(json.dumps({"ref": ref, "digest": digest}))
        os.replace(tmp, self._ref_path(ref))
        return self.get(ref)

    async def _pull(self, ref: str, done: Path) -> None:
        work = self.root / ".tmp" / secrets.token_hex(8)
        work.mkdir()
        try:
            await self._skopeo("copy", *self._flags(ref, "src-"), f"docker://{ref}",
                               f"oci:{work / 'layout'}:image")
            config = json.loads(await self._skopeo("inspect", "--config",
                                                   f"oci:{work / 'layout'}:image"))
            maps = [f"--uid-map=0:{self.uid_base}:{ID_RANGE}",
                    f"--gid-map=0:{self.uid_base}:{ID_RANGE}"]
            proc = await asyncio.create_subprocess_exec(
                "umoci", "unpack", *maps, "--image", f"{work / 'layout'}:image",
                str(work / "bundle"), stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
            _, err = await proc.communicate()
            if proc.returncode != 0:
                raise TemplateError(f"umoci unpack of {ref}: "
                                    f"{err.decode(errors='replace').strip()[-800:]}")
            done.mkdir()
            os.rename(work / "bundle" / "rootfs", done / "rootfs")
            os.chmod(done, 0o711)
            (done / "meta.json").write_text(json.dumps({"ref": ref,
                                                        "config": config.get("config") or {}}))
        except BaseException:
            if done.exists():
                shutil.rmtree(done, ignore_errors=True)
            raise
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
