"""A template build's context: the files its COPY/ADD steps name, packed for upload.

Only what the steps name is sent (not the whole directory), under the paths they name it by.
A source that matches nothing is an error naming it, never a step that silently copies less.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Optional

from hutch import errors
from hutch.protocol.template import Definition


def sources(definition: Definition) -> list[str]:
    return [src for step in definition.steps if step.kind in ("copy", "add")
            for src in step.args[:-1]]


def pack(definition: Definition, context_dir: Path) -> Optional[bytes]:
    """A gzipped tar of the files ``definition`` copies from ``context_dir``, or None when it
    copies nothing."""
    wanted = sources(definition)
    if not wanted:
        return None
    root = Path(context_dir).resolve()
    if not root.is_dir():
        raise errors.InvalidArgumentError(f"build context {context_dir} is not a directory")
    members: dict[str, Path] = {}
    for pattern in wanted:
        clean = pattern.rstrip("/") or "."
        if clean.startswith("/") or ".." in Path(clean).parts:
            raise errors.InvalidArgumentError(
                f"COPY source {pattern!r} must be a path inside the build context")
        matches = sorted(root.glob(clean)) if any(c in clean for c in "*?[") else \
            [root / clean] if (root / clean).exists() or (root / clean).is_symlink() else []
        if not matches:
            raise errors.InvalidArgumentError(
                f"COPY source {pattern!r} matches nothing in {context_dir}")
        for match in matches:
            members[str(match.relative_to(root))] = match
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, path in sorted(members.items()):
            tar.add(str(path), arcname=name, recursive=True)
    return buffer.getvalue()
