"""Directory watchers on inotify (through ctypes: the stdlib has no binding).

A watcher owns one inotify fd registered with the event loop. Recursive watchers add a watch
for every subdirectory, including ones created later. The fd is released the moment the
watcher is closed (its stream's client left, or RemoveWatcher was called), so an abandoned
watch never keeps kernel resources.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import struct
from typing import Any, Callable, Dict, List, Optional

from ..errors import InvalidArgumentError, RateLimitError
from ..protocol import envd
from . import filesystem
from .users import User, acting_as

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_IGNORED = 0x00008000
IN_ISDIR = 0x40000000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

WATCH_MASK = IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_ONLYDIR

_EVENT = struct.Struct("iIII")

#: statfs f_type of network and FUSE filesystems, where inotify misses remote changes.
NETWORK_FS = {0x6969: "nfs", 0xFF534D42: "cifs", 0xFE534D42: "smb2", 0x517B: "smb", 0x65735546: "fuse"}

_libc = None


def _lib():
    global _libc
    if _libc is None:
        import ctypes

        lib = ctypes.CDLL(None, use_errno=True)
        lib.inotify_add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        _libc = (lib, ctypes)
    return _libc


def _check(result: int, path: str) -> int:
    if result < 0:
        _, ctypes = _lib()
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return result


def filesystem_type(path: str) -> int:
    """The statfs ``f_type`` magic of the filesystem holding ``path``."""
    lib, ctypes = _lib()
    buf = ctypes.create_string_buffer(512)
    _check(lib.statfs(os.fsencode(path), buf), path)
    return struct.unpack_from("l", buf.raw)[0] & 0xFFFFFFFF


def _map(mask: int) -> int:
    if mask & (IN_CREATE | IN_MOVED_TO):
        return envd.EVENT_CREATE
    if mask & IN_DELETE:
        return envd.EVENT_REMOVE
    if mask & IN_MOVED_FROM:
        return envd.EVENT_RENAME
    if mask & IN_MODIFY:
        return envd.EVENT_WRITE
    if mask & IN_ATTRIB:
        return envd.EVENT_CHMOD
    return 0


class DirWatcher:
    """Watches one directory (optionally its whole tree); ``sink`` gets FilesystemEvent dicts.

    ``run_as`` runs a blocking function with the requesting user's filesystem identity, so
    watches are placed with that user's permissions.
    """

    def __init__(
        self,
        root: str,
        recursive: bool,
        include_entry: bool,
        sink: Callable[[Dict[str, Any]], None],
        run_as: Callable[..., Any],
        allow_network_mounts: bool = False,
        user: Optional[User] = None,
    ) -> None:
        self.allow_network_mounts = allow_network_mounts
        self._user = user  # the watching user; None = root
        self.root = root
        self.recursive = recursive
        self.include_entry = include_entry
        self.sink = sink
        self._run_as = run_as
        self.fd = -1
        self._dirs: Dict[int, str] = {}  # watch descriptor -> path relative to root ("" = root)
        self._uploads: set = set()       # rename cookies of uploads leaving their temporary name
        self.closed = False

    async def start(self) -> None:
        """Open the inotify fd and place the watches; raise NotFound / InvalidArgument."""
        st = await self._run_as(filesystem.guarded, os.stat, self.root)
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidArgumentError(f"path {self.root!r} is not a directory")
        if not self.allow_network_mounts:
            kind = NETWORK_FS.get(await self._run_as(filesystem.guarded, filesystem_type, self.root))
            if kind:
                raise InvalidArgumentError(
                    f"path {self.root!r} is on a {kind} mount; watching it needs allowNetworkMounts"
                )
        lib, _ = _lib()
        try:
            self.fd = _check(lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC), self.root)
            added = await self._run_as(self._add_tree, "")
        except OSError as exc:
            self.close()
            if exc.errno in (errno.ENOSPC, errno.EMFILE):
                # The kernel's words ("No space left on device") would mislead here.
                raise RateLimitError(
                    "inotify limit reached (fs.inotify.max_user_watches / max_user_instances)"
                ) from None
            raise filesystem.translate(exc, self.root) from None
        except BaseException:
            self.close()
            raise
        self._dirs.update(added)
        asyncio.get_running_loop().add_reader(self.fd, self._on_readable)

    def _add_tree(self, rel: str) -> Dict[int, str]:
        """Watch ``rel`` (and below it if recursive); blocking, as the watching user.

        The first watch is placed on the user's own thread. Directories that appear later are
        added at once from the loop's thread (see :meth:`_on_readable`), so that a client which
        makes a directory and then writes into it never outruns the watch.
        """
        lib, _ = _lib()
        out: Dict[int, str] = {}
        stack = [rel]
        while stack:
            current = stack.pop()
            full = os.path.join(self.root, current) if current else self.root
            try:
                wd = _check(lib.inotify_add_watch(self.fd, os.fsencode(full), WATCH_MASK), full)
            except OSError:
                if not current:
                    raise
                continue  # a subdirectory we may not read, or one already gone
            out[wd] = current
            if self.recursive:
                try:
                    with os.scandir(full) as it:
                        for item in it:
                            if item.is_dir(follow_symlinks=False):
                                stack.append(os.path.join(current, item.name) if current else item.name)
                except OSError:
                    pass
        return out

    def poll(self) -> None:
        """Take in every event the kernel holds now (non-blocking).

        A client that changes a file and then asks for events expects to see that change:
        the kernel queued the events before the change's syscall returned, so reading the fd
        here, not only when the loop gets round to it, makes that hold.
        """
        if not self.closed and self.fd >= 0:
            self._on_readable()

    def _on_readable(self) -> None:
        while not self.closed:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            if self._user is not None and (self.include_entry or self.recursive):
                # Describing entries and watching new directories happen right here, through
                # paths the user controls (the watched path itself may be their symlink): as
                # the user, so the kernel refuses whatever they could not reach themselves.
                with acting_as(self._user):
                    self._parse(data)
            else:
                self._parse(data)

    def _parse(self, data: bytes) -> None:
        offset = 0
        new_dirs: List[str] = []
        uploads = self._uploads
        while offset + _EVENT.size <= len(data):
            wd, mask, cookie, size = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size: offset + _EVENT.size + size].rstrip(b"\0")
            offset += _EVENT.size + size
            if mask & IN_IGNORED:
                self._dirs.pop(wd, None)
                continue
            base = self._dirs.get(wd)
            if base is None or not raw:
                continue  # events on a watched dir itself (e.g. DELETE_SELF) carry no name
            name = os.path.join(base, os.fsdecode(raw)) if base else os.fsdecode(raw)
            if filesystem.UPLOAD_MARKER in name:
                # An upload in flight is the agent's own file; only its rename into place counts.
                if mask & IN_MOVED_FROM:
                    uploads.add(cookie)
                continue
            kind = _map(mask)
            if not kind:
                continue
            if mask & IN_MOVED_TO and cookie in uploads:
                # An upload landed: report what a client expects of a written file (envd's
                # CREATE, CHMOD, WRITE), not the rename that made the write atomic.
                uploads.discard(cookie)
                entry = self._entry(name)
                for k in (envd.EVENT_CREATE, envd.EVENT_CHMOD, envd.EVENT_WRITE):
                    self.sink(envd.filesystem_event(name, k, entry))
                continue
            if self.recursive and mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                new_dirs.append(name)
            entry = None
            if kind not in (envd.EVENT_REMOVE, envd.EVENT_RENAME):
                entry = self._entry(name)
            self.sink(envd.filesystem_event(name, kind, entry))
        for rel in new_dirs:
            self._add_new_dir(rel)

    def _entry(self, name: str) -> Optional[Dict[str, Any]]:
        if not self.include_entry:
            return None
        try:
            return filesystem.entry(os.path.join(self.root, name))
        except OSError:
            return None

    def _add_new_dir(self, rel: str) -> None:
        """Watch a directory that appeared under a recursive watch.

        Whatever was created in it before its watch was in place (``mkdir -p a/b && touch
        a/b/f`` runs faster than the agent reacts) is reported as CREATE events from a scan,
        so a recursive watcher does not silently miss it.
        """
        if self.closed:
            return
        added = self._add_tree(rel)
        self._dirs.update(added)
        if added:
            for name, entry in self._scan(list(added.values())):
                self.sink(envd.filesystem_event(name, envd.EVENT_CREATE, entry))

    def _scan(self, dirs: List[str]) -> List[tuple]:
        """Blocking: (relative name, entry or None) for the entries of ``dirs``."""
        out = []
        for rel in sorted(set(dirs)):
            try:
                names = sorted(os.listdir(os.path.join(self.root, rel)))
            except OSError:
                continue
            for item in names:
                name = os.path.join(rel, item)
                entry = None
                if self.include_entry:
                    try:
                        entry = filesystem.entry(os.path.join(self.root, name))
                    except OSError:
                        continue
                out.append((name, entry))
        return out

    def close(self) -> None:
        """Release the inotify fd now (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if self.fd >= 0:
            try:
                asyncio.get_running_loop().remove_reader(self.fd)
            except RuntimeError:
                pass
            os.close(self.fd)
            self.fd = -1


class PolledWatcher:
    """A watcher made by CreateWatcher: events wait in a buffer until GetWatcherEvents."""

    def __init__(self, limit: int = 100_000) -> None:
        self.events: List[Dict[str, Any]] = []
        self.limit = limit
        self.watcher: Optional[DirWatcher] = None

    def add(self, event: Dict[str, Any]) -> None:
        if len(self.events) < self.limit:
            self.events.append(event)

    def take(self) -> List[Dict[str, Any]]:
        out, self.events = self.events, []
        return out
