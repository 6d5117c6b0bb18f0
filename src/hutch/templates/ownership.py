"""Shifting a root filesystem's owners into the sandboxes' user namespace.

Sandboxes run in a user namespace where id 0 inside is ``uid_base`` on the host. A template is
a read-only lower layer shared by every sandbox, so its files must already carry the host ids
that map to their original owners (root's files -> uid_base, the user's -> uid_base + 1000);
otherwise they would show up as ``nobody`` inside. One walk with ``lchown`` does it (a fraction
of a second for a Debian root). ``chown`` clears setuid/setgid bits and file capabilities, so
both are put back afterwards; that is what keeps ``sudo`` working.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

ID_RANGE = 65536
_CAP_XATTR = "security.capability"


@dataclass
class Tally:
    entries: int = 0
    bytes: int = 0       # allocated on disk, hard links counted once


def shift(root: Path, uid_base: int, *, gid_base: int | None = None) -> Tally:
    """Add ``uid_base``/``gid_base`` to every owner under ``root`` (``root`` included).

    Ids must be below 65536 (the namespace's mapped range): anything else means the tree was
    already shifted or is not a fresh build, and raises ValueError, as does a mount point in
    the tree (the walk never leaves the root's filesystem)."""
    gid_base = uid_base if gid_base is None else gid_base
    seen: set[tuple[int, int]] = set()
    tally = Tally()
    top_dev = os.lstat(root).st_dev

    def one(path: str, st: os.stat_result) -> None:
        if st.st_dev != top_dev:
            raise ValueError(f"{path}: on another filesystem (a mount inside the root?)")
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in seen:          # a hard link to an inode already shifted
                return
            seen.add(key)
        if st.st_uid >= ID_RANGE or st.st_gid >= ID_RANGE:
            raise ValueError(f"{path}: owner {st.st_uid}:{st.st_gid} is outside 0..{ID_RANGE - 1}")
        caps = None
        special = stat.S_ISREG(st.st_mode) and (st.st_mode & 0o111)
        if special:
            try:
                caps = os.getxattr(path, _CAP_XATTR, follow_symlinks=False)
            except OSError:
                caps = None
        os.lchown(path, uid_base + st.st_uid, gid_base + st.st_gid)
        if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode))
        if caps is not None:
            os.setxattr(path, _CAP_XATTR, caps, follow_symlinks=False)
        tally.entries += 1
        tally.bytes += st.st_blocks * 512

    def walk(directory: str) -> None:
        with os.scandir(directory) as it:
            entries = list(it)
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            one(entry.path, st)
            if stat.S_ISDIR(st.st_mode):
                walk(entry.path)

    top = str(root)
    one(top, os.lstat(top))
    walk(top)
    return tally
