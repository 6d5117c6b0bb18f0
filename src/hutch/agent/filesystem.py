"""Filesystem operations of ``filesystem.Filesystem``, written as plain blocking functions.

They run on a worker thread that already carries the requesting user's filesystem identity
(see :mod:`hutch.agent.users`), so the kernel applies that user's permissions and new files
belong to them. Errors are translated to hutch's exception tree here, at the syscall boundary.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from typing import Any, Callable, Dict, List, Optional, TypeVar

from ..errors import (
    AlreadyExistsError,
    HutchError,
    InvalidArgumentError,
    NotEnoughSpaceError,
    NotFoundError,
    PermissionDeniedError,
)
from ..protocol import envd
from ..protocol.protojson import timestamp_ns

T = TypeVar("T")

_names: Dict[tuple, str] = {}


def _owner(uid: int) -> str:
    key = ("u", uid)
    if key not in _names:
        try:
            _names[key] = pwd.getpwuid(uid).pw_name
        except KeyError:
            _names[key] = str(uid)
    return _names[key]


def _group(gid: int) -> str:
    key = ("g", gid)
    if key not in _names:
        try:
            _names[key] = grp.getgrgid(gid).gr_name
        except KeyError:
            _names[key] = str(gid)
    return _names[key]


def translate(exc: OSError, path: str) -> HutchError:
    """An OSError as the error the client should see."""
    code = exc.errno
    reason = exc.strerror or str(exc)
    if code == errno.ENOENT:
        return NotFoundError(f"path {path!r} does not exist")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDeniedError(f"{path!r}: {reason}")
    if code == errno.EEXIST:
        return AlreadyExistsError(f"path {path!r} already exists")
    if code in (errno.ENOSPC, errno.EDQUOT):
        return NotEnoughSpaceError(f"{path!r}: {reason}")
    if code in (errno.ENOTDIR, errno.EISDIR, errno.EINVAL, errno.ENAMETOOLONG, errno.ELOOP,
                errno.ENOTEMPTY, errno.EXDEV):
        return InvalidArgumentError(f"{path!r}: {reason}")
    return HutchError(f"{path!r}: {reason}")


#: Uploads are written to a hidden temporary file next to their target, then renamed over it;
#: names carrying this marker are the agent's own and watchers do not report them.
UPLOAD_MARKER = ".hutch-upload-"


def guarded(fn: Callable[..., T], path: str, *args) -> T:
    try:
        return fn(path, *args)
    except OSError as exc:
        raise translate(exc, getattr(exc, "filename", None) or path) from None


def _metadata(path: str, follow: bool) -> Dict[str, str]:
    try:
        names = os.listxattr(path, follow_symlinks=follow)
    except OSError:
        return {}
    out = {}
    prefix = envd.METADATA_XATTR_PREFIX
    for name in names:
        if name.startswith(prefix):
            try:
                out[name[len(prefix):]] = os.getxattr(path, name, follow_symlinks=follow).decode(
                    "utf-8", "replace"
                )
            except OSError:
                pass
    return out


def entry(path: str, st: Optional[os.stat_result] = None) -> Dict[str, Any]:
    """The EntryInfo of ``path`` (an absolute path), not following a final symlink."""
    st = st or os.lstat(path)
    is_link = stat.S_ISLNK(st.st_mode)
    target = None
    info = st
    if is_link:
        link = os.readlink(path)
        target = os.path.normpath(os.path.join(os.path.dirname(path), link))
        try:
            info = os.stat(path)
        except OSError:
            info = None  # dangling link
    if info is None:
        kind = envd.FILE_TYPE_SYMLINK
    elif stat.S_ISDIR(info.st_mode):
        kind = envd.FILE_TYPE_DIRECTORY
    else:
        kind = envd.FILE_TYPE_FILE
    shown = info or st
    return envd.entry_info(
        name=os.path.basename(path) or "/",
        type=kind,
        path=path,
        size=shown.st_size,
        mode=stat.S_IMODE(shown.st_mode),
        permissions=stat.filemode(shown.st_mode),
        owner=_owner(st.st_uid),
        group=_group(st.st_gid),
        modified_time=timestamp_ns(shown.st_mtime_ns),
        symlink_target=target,
        metadata=_metadata(path, follow=info is not None) if not is_link or info else None,
        is_symlink=is_link,
    )


def stat_entry(path: str) -> Dict[str, Any]:
    return guarded(entry, path)


def list_dir(path: str, depth: int) -> List[Dict[str, Any]]:
    """Entries under ``path`` down to ``depth`` levels, in lexical walk order."""
    if depth < 1:
        raise InvalidArgumentError("depth should be at least 1")
    st = guarded(os.stat, path)
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidArgumentError(f"path {path!r} is not a directory")
    out: List[Dict[str, Any]] = []

    def walk(directory: str, level: int) -> None:
        try:
            names = sorted(os.listdir(directory))
        except OSError as exc:
            if directory == path:
                raise translate(exc, directory) from None
            return  # an unreadable subdirectory is listed but not descended into
        for name in names:
            child = os.path.join(directory, name)
            try:
                child_st = os.lstat(child)
                out.append(entry(child, child_st))
            except OSError:
                continue  # vanished while we looked
            if level < depth and stat.S_ISDIR(child_st.st_mode):
                walk(child, level + 1)

    walk(path, 1)
    return out


def make_dir(path: str) -> Dict[str, Any]:
    """Create ``path`` and its parents; AlreadyExistsError if it is already there."""
    try:
        os.makedirs(path)
    except FileExistsError:
        if os.path.isdir(path):
            raise AlreadyExistsError(f"directory {path!r} already exists") from None
        raise InvalidArgumentError(f"path {path!r} exists and is not a directory") from None
    except OSError as exc:
        raise translate(exc, path) from None
    return entry(path)


def move(source: str, destination: str) -> Dict[str, Any]:
    try:
        os.lstat(source)
        parent = os.path.dirname(destination)
        if parent:
            os.makedirs(parent, exist_ok=True)
        os.rename(source, destination)
    except OSError as exc:
        raise translate(exc, exc.filename or source) from None
    return entry(destination)


def remove(path: str) -> None:
    try:
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            import shutil

            shutil.rmtree(path)
        else:
            os.unlink(path)
    except OSError as exc:
        raise translate(exc, exc.filename or path) from None


def set_metadata(path: str, metadata: Dict[str, str]) -> None:
    """Store metadata as ``user.e2b.<key>`` xattrs (keys lower-cased, as HTTP headers are)."""
    for key, value in metadata.items():
        try:
            os.setxattr(path, envd.METADATA_XATTR_PREFIX + key.lower(), value.encode())
        except OSError as exc:
            raise translate(exc, path) from None
