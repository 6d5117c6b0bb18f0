"""The agent's code as sandboxes see it: a staged, compiled, world-readable copy.

Each sandbox runs hutch's agent from a read-only bind mount. The installed package cannot be
mounted as it is: runc opens a bind source from inside the sandbox's user namespace, so every
directory above it must be traversable by the unprivileged uid that root inside maps to (an
install under /root is not), and the sandbox cannot write ``__pycache__`` into a read-only
mount, so without compiled files every agent start would recompile its modules (~25 ms).
So the server copies just what the agent imports (``hutch/__init__.py``, ``errors.py``,
``agent/``, ``protocol/``) into ``<data dir>/agent-lib/<content hash>/hutch``, compiles it
once, and mounts that. The hash keeps the copy stable across restarts and distinct across
upgrades (running sandboxes keep the copy they were started with).
"""

from __future__ import annotations

import compileall
import hashlib
import os
import shutil
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent
_PARTS = ("__init__.py", "errors.py", "agent", "protocol")


def _sources() -> list[Path]:
    files: list[Path] = []
    for part in _PARTS:
        path = PACKAGE / part
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        else:
            files.append(path)
    return files


def content_hash(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(PACKAGE)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def stage(data_dir: Path) -> Path:
    """Return the directory to mount at ``/opt/hutch/lib/hutch``, making it if needed."""
    files = _sources()
    root = data_dir / "agent-lib"
    target = root / content_hash(files) / "hutch"
    if (target / ".complete").exists():
        return target
    tmp = root / f".tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for f in files:
        dest = tmp / "hutch" / f.relative_to(PACKAGE)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest)
    compileall.compile_dir(tmp / "hutch", quiet=2, stripdir=str(tmp), prependdir="/opt/hutch/lib")
    for dirpath, dirnames, filenames in os.walk(tmp):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    (tmp / "hutch" / ".complete").touch()
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    try:
        os.rename(tmp, target.parent)
    except OSError:  # another server process staged the same content first
        shutil.rmtree(tmp, ignore_errors=True)
    # Directories above the data dir may be private; the bind source itself must not be.
    for parent in (target.parent, root):
        os.chmod(parent, 0o755)
    return target

